"""Mask-DPO, tiny and on the CPU: a few fp32 steps on any machine (the tests and the benchmark use it).

    maskdpo train pairs.jsonl --recipe recipes/tiny_cpu_maskdpo.py --model DIR --work-dir W

A plain XTuner (mmengine) config: `maskdpo train` fills in the pairs file, the model and
the command line's values and hands it to XTuner's train entry.
"""

from mmengine.dataset import DefaultSampler
from mmengine.hooks import CheckpointHook, DistSamplerSeedHook, IterTimerHook, LoggerHook, ParamSchedulerHook
from mmengine.optim import CosineAnnealingLR
from torch.optim import AdamW
from transformers import AutoModelForCausalLM
from xtuner.engine.runner import TrainLoop

from maskdpo_cli.xtuner_ext import (HFExportHook, MaskDPO, ReferenceLogpHook, TrainProgressHook,
                                    auto_optim_wrapper, build_mask_dpo_dataset, build_tokenizer,
                                    mask_dpo_collate_fn)

# ----------------------------------------------------------------------------- settings
# `maskdpo train` writes a run's values at the keys listed in maskdpo_cli/xtuner_ext/recipe.py
# (RECIPE_KEYS) and nowhere else; a flag left out takes the value the recipe has there.
pretrained_model_name_or_path = "smollm2-135m-instruct"  # a HF directory or the embedded alias
pairs_file = "pairs.jsonl"  # set by `maskdpo train`
use_mask = True  # False: vanilla DPO through the same code (`--no-mask`)
max_length = 512

beta = 0.1
max_epochs = 1
global_batch_size = 4  # pairs per optimizer step
micro_batch_size = 4  # pairs per forward (x2 sequences: chosen and rejected)
accumulative_counts = global_batch_size // micro_batch_size
lr = 1e-5
weight_decay = 0.0
max_norm = 1.0  # gradient clipping, as TRL's default

save_steps = 2
save_total_limit = 2

# ----------------------------------------------------------------------------- model
tokenizer = dict(type=build_tokenizer, pretrained_model_name_or_path=pretrained_model_name_or_path)

model = dict(
    type=MaskDPO,
    beta=beta,
    use_activation_checkpointing=False,  # tiny model: recomputing costs more than it saves
    llm=dict(type=AutoModelForCausalLM.from_pretrained,
             pretrained_model_name_or_path=pretrained_model_name_or_path),
)

# ----------------------------------------------------------------------------- data
train_dataloader = dict(
    batch_size=micro_batch_size,
    num_workers=0,
    dataset=dict(type=build_mask_dpo_dataset, pairs=pairs_file, tokenizer=tokenizer,
                 max_length=max_length, use_mask=use_mask),
    sampler=dict(type=DefaultSampler, shuffle=True),
    collate_fn=dict(type=mask_dpo_collate_fn),
)

# ----------------------------------------------------------------------------- optimization
optim_wrapper = dict(
    type=auto_optim_wrapper,  # fp32 on the CPU, bf16 autocast on CUDA
    # fused: one pass over the parameters instead of one per operation (10-40x faster step on a CPU)
    optimizer=dict(type=AdamW, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay, fused=True),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts,
)
param_scheduler = [
    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=True, begin=0, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(type=TrainLoop, max_epochs=max_epochs)

# ----------------------------------------------------------------------------- runtime
custom_hooks = [
    dict(type=ReferenceLogpHook),  # reference log-probs once, before the first step
    dict(type=TrainProgressHook, print_every=1),
    dict(type=HFExportHook),  # W/hf at the end
]
default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=1),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(type=CheckpointHook, by_epoch=False, interval=save_steps, max_keep_ckpts=save_total_limit),
    sampler_seed=dict(type=DistSamplerSeedHook),
)
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
               dist_cfg=dict(backend="gloo"))
visualizer = None
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
log_processor = dict(by_epoch=False)
