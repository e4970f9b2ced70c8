"""One optimizer wrapper entry for every device, so one recipe runs on a CPU and on GPUs.

On CUDA with bf16 support: mmengine's AmpOptimWrapper (bf16 autocast, fp32 master
weights). Elsewhere: the plain fp32 OptimWrapper (CPU autocast buys nothing here and
XTuner's AMP path assumes CUDA). With `--deepspeed`, XTuner replaces the whole
wrapper by DeepSpeed's and this function is not called.
"""

from __future__ import annotations

from typing import Any

import torch
from mmengine.optim import AmpOptimWrapper, OptimWrapper


def auto_optim_wrapper(optimizer: Any, amp_dtype: str = "bfloat16", **kwargs: Any) -> OptimWrapper:
    if torch.cuda.is_available() and (amp_dtype != "bfloat16" or torch.cuda.is_bf16_supported()):
        return AmpOptimWrapper(optimizer=optimizer, dtype=amp_dtype, loss_scale="dynamic", **kwargs)
    return OptimWrapper(optimizer=optimizer, **kwargs)
