"""Mask-DPO for XTuner: everything a recipe (a plain XTuner/mmengine config) names.

    model = dict(type=MaskDPO, llm=dict(type=AutoModelForCausalLM.from_pretrained, ...), beta=0.1)
    train_dataloader = dict(dataset=dict(type=build_mask_dpo_dataset, pairs=..., tokenizer=...),
                            collate_fn=dict(type=mask_dpo_collate_fn), ...)
    custom_hooks = [dict(type=ReferenceLogpHook), dict(type=TrainProgressHook), dict(type=HFExportHook)]

Importing this package applies the CPU compatibility shim, so a recipe runs on a CPU even
when XTuner's own entry point loads it.
"""

from maskdpo_cli.xtuner_ext.compat import apply_cpu_shims, quiet_deepspeed_import

apply_cpu_shims()
quiet_deepspeed_import()  # before XTuner and mmengine import it: its log must not reach stdout

from maskdpo_cli.xtuner_ext.collate import mask_dpo_collate_fn  # noqa: E402
from maskdpo_cli.xtuner_ext.dataset import (MaskDPODataset, build_mask_dpo_dataset,  # noqa: E402
                                            build_tokenizer, pair_key)
from maskdpo_cli.xtuner_ext.hooks import HFExportHook, TrainProgressHook  # noqa: E402
from maskdpo_cli.xtuner_ext.model import MaskDPO  # noqa: E402
from maskdpo_cli.xtuner_ext.optim import auto_optim_wrapper  # noqa: E402
from maskdpo_cli.xtuner_ext.ref_cache import ReferenceLogpHook  # noqa: E402

__all__ = ["MaskDPO", "MaskDPODataset", "build_mask_dpo_dataset", "build_tokenizer", "pair_key",
           "mask_dpo_collate_fn", "ReferenceLogpHook", "TrainProgressHook", "HFExportHook", "apply_cpu_shims",
           "auto_optim_wrapper"]
