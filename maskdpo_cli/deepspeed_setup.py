"""DeepSpeed for `maskdpo train --deepspeed`: which config, and whether it can run here.

XTuner's train entry runs DeepSpeed itself (`--deepspeed NAME_OR_JSON`); what is checked
here is everything that would otherwise fail late: no CUDA or no package (before the
pairs are read), an unknown name or an unreadable JSON, and a ZeRO-3 config that could not
export the model at the end, hours later.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.process_group import cuda_devices

DEEPSPEED_CONFIGS = ("zero1", "zero2", "zero2_offload", "zero3", "zero3_offload")


def check_deepspeed_runnable() -> None:
    """DeepSpeed's kernels and optimizers need CUDA; say so before anything is written."""
    if not cuda_devices():
        raise MaskDPOError("--deepspeed needs CUDA GPUs (DeepSpeed does not train on a CPU); "
                           "leave it out to train with DDP, e.g. --gpus 0 --nproc N")
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise MaskDPOError("--deepspeed needs the deepspeed package: pip install 'maskdpo[deepspeed]'") from None


def resolve_deepspeed_config(spec: str, *, micro_batch: int, accumulative_counts: int,
                             max_norm: float | None) -> tuple[str, dict[str, Any]]:
    """(what XTuner's --deepspeed takes, the JSON DeepSpeed will be given) for a name
    (zero1 .. zero3_offload, XTuner's bundled configs) or a JSON file.

    The batch and clipping fields get the recipe's values, as XTuner's train entry does
    (its values win over the JSON's). ZeRO-3 must gather the shards on save, or the model
    could not be exported at the end, hours later: refused now.
    """
    if Path(spec).is_file():
        source = spec
    else:
        name = spec.removeprefix("deepspeed_")
        if name not in DEEPSPEED_CONFIGS:
            raise MaskDPOError(f"--deepspeed {spec}: expected a JSON file or one of {', '.join(DEEPSPEED_CONFIGS)}")
        from xtuner.configs import cfgs_name_path

        spec, source = f"deepspeed_{name}", cfgs_name_path[f"deepspeed_{name}"]
    try:
        config = json.loads(Path(source).read_text())
    except (OSError, ValueError) as err:
        raise MaskDPOError(f"--deepspeed {source}: not a DeepSpeed JSON config: {err}") from None
    if not isinstance(config, dict):
        raise MaskDPOError(f"--deepspeed {source}: not a DeepSpeed JSON config (a JSON object)")
    zero = config.get("zero_optimization") or {}
    if zero.get("stage") == 3 and not zero.get("stage3_gather_16bit_weights_on_model_save"):
        raise MaskDPOError(f"--deepspeed {source}: ZeRO-3 needs zero_optimization."
                           "stage3_gather_16bit_weights_on_model_save=true to export the model")
    config.update(train_micro_batch_size_per_gpu=micro_batch, gradient_accumulation_steps=accumulative_counts,
                  gradient_clipping=1.0 if max_norm is None else max_norm)
    return spec, config
