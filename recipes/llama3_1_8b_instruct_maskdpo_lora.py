"""Mask-DPO on Llama-3.1-8B-Instruct on one GPU: a LoRA adapter on the frozen bf16 base.

    maskdpo train pairs.jsonl --recipe llama3_1_8b_instruct_maskdpo_lora --work-dir runs/llama-lora
    maskdpo train pairs.jsonl --recipe llama3_1_8b_instruct_maskdpo_lora --qlora --work-dir runs/llama-qlora

The paper's setting (llama3_1_8b_instruct_maskdpo.py: 3 epochs, global batch 64, beta 0.1,
cosine schedule) with the model states of one GPU instead of eight under ZeRO-3:
- LoRA: the base frozen in bf16 (16 GB), a rank-64 adapter (alpha 128, dropout 0.05) on
  every linear layer of the decoder (168M parameters, 2%: with AdamW's fp32 states about
  2.7 GB), activations recomputed: fits one 40-80 GB GPU.
- `--qlora`: the decoder's linear layers in 4-bit NF4 (3.5 GB) plus the embeddings and the
  head, which stay unquantized and which peft's k-bit preparation keeps in fp32 (4.2 GB):
  about 8 GB of base, fits one 24 GB GPU.
`--lora R`, `--lora-alpha`, `--lora-dropout` override the adapter (alpha defaults to 2R
when R is given). W/adapter holds the adapter, W/hf the merged model.

The reference log-probs are those of the base (QLoRA: of the 4-bit base the adapter trains
on), computed once before the first step; the fresh adapter (lora_B = 0) starts the policy
exactly there. Learning rate: 10x the full recipe's 5e-7 (the authors' released config),
the factor `--lora` applies to any full recipe. On the embedded world a rank-8 adapter
matched full Mask-DPO's fact precision at 10x the full rate, and fell short at 1x and 3x
(experiments/lora_vs_full.py, RESULTS.md). Not tuned on the 8B model.
"""

from mmengine.dataset import DefaultSampler
from mmengine.hooks import CheckpointHook, DistSamplerSeedHook, IterTimerHook, LoggerHook, ParamSchedulerHook
from mmengine.optim import CosineAnnealingLR, LinearLR
from peft import LoraConfig
from torch.optim import AdamW
from transformers import AutoModelForCausalLM
from xtuner.engine.runner import TrainLoop

from maskdpo_cli.xtuner_ext import (HFExportHook, MaskDPO, ReferenceLogpHook, TrainProgressHook,
                                    auto_optim_wrapper, build_mask_dpo_dataset, build_tokenizer,
                                    mask_dpo_collate_fn)

# ----------------------------------------------------------------------------- settings
# `maskdpo train` writes a run's values at the keys listed in maskdpo_cli/xtuner_ext/recipe.py
# (RECIPE_KEYS) and nowhere else; a flag left out takes the value the recipe has there.
pretrained_model_name_or_path = "meta-llama/Llama-3.1-8B-Instruct"  # a hub id, a HF directory or an alias
pairs_file = "pairs.jsonl"  # set by `maskdpo train`
use_mask = True  # False: vanilla DPO through the same code (`--no-mask`)
max_length = 2048

beta = 0.1
max_epochs = 3
num_gpus = 1
global_batch_size = 64  # pairs per optimizer step
micro_batch_size = 2  # pairs per forward (x2 sequences: chosen and rejected)
accumulative_counts = global_batch_size // (micro_batch_size * num_gpus)  # `maskdpo train` recomputes it
lr = 5e-6  # 10x the full recipe's 5e-7 (see above)
lora_r = 64
lora_alpha = 2 * lora_r
lora_dropout = 0.05
weight_decay = 0.0
max_norm = 1.0
warmup_ratio = 0.03

save_steps = 200
save_total_limit = 2  # a checkpoint holds the adapter and its optimizer state: about 2 GB

# ----------------------------------------------------------------------------- model
tokenizer = dict(type=build_tokenizer, pretrained_model_name_or_path=pretrained_model_name_or_path)

model = dict(
    type=MaskDPO,
    beta=beta,
    use_activation_checkpointing=True,  # 2 x 2 x 2048 tokens through 32 layers
    llm=dict(type=AutoModelForCausalLM.from_pretrained,
             pretrained_model_name_or_path=pretrained_model_name_or_path,
             torch_dtype="torch.bfloat16"),  # the frozen base (`--qlora` adds a 4-bit quantization_config)
    # peft's LoraConfig; target_modules None: every linear layer of the decoder (q, k, v, o, gate, up, down).
    lora=dict(type=LoraConfig, r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bias="none",
              target_modules=None, task_type="CAUSAL_LM"),
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
    type=auto_optim_wrapper,  # bf16 autocast on CUDA, fp32 adapter weights and optimizer states
    optimizer=dict(type=AdamW, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts,
)
param_scheduler = [
    dict(type=LinearLR, start_factor=1e-5, by_epoch=True, begin=0, end=warmup_ratio * max_epochs,
         convert_to_iter_based=True),
    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=True, begin=warmup_ratio * max_epochs,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type=TrainLoop, max_epochs=max_epochs)

# ----------------------------------------------------------------------------- runtime
custom_hooks = [
    dict(type=ReferenceLogpHook),  # the base's log-probs once, before the first step
    dict(type=TrainProgressHook),
    dict(type=HFExportHook),  # W/adapter and W/hf (base + adapter merged) at the end
]
default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=10),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(type=CheckpointHook, by_epoch=False, interval=save_steps, max_keep_ckpts=save_total_limit),
    sampler_seed=dict(type=DistSamplerSeedHook),
)
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
               dist_cfg=dict(backend="nccl"))
visualizer = None
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
log_processor = dict(by_epoch=False)
