"""DeepSpeed for `maskdpo train --deepspeed`: where it runs, and the one config it gets.

One source of truth: `deepspeed_config` resolves a bundled name (zero1 .. zero3_offload)
or a JSON file into the complete config (the recipe's batch and clipping, the dtype
decided here rather than left "auto"), `write_deepspeed_config` writes it to
W/deepspeed.json, and that file is what XTuner's `--deepspeed` is given. XTuner copies a
file's batch and clipping values only where they differ from the recipe's, and resolves
only "auto" dtypes, so with this file both are no-ops and DeepSpeed receives the file as
written; `check_received` verifies that at the start of training.

DeepSpeed needs no GPU: on a machine without CUDA (or with --gpus 0) it runs with its CPU
accelerator (DS_ACCELERATOR=cpu), whose communication falls back to gloo when Intel's
oneCCL bindings are absent. The ranks are the same torchrun ranks as without DeepSpeed.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from maskdpo_cli.errors import MaskDPOError

DEEPSPEED_CONFIGS = ("zero1", "zero2", "zero2_offload", "zero3", "zero3_offload")
DEEPSPEED_FILE = "deepspeed.json"  # in the work dir: the config DeepSpeed receives
# Set by DeepSpeed's strategy after reading the file (it silences DeepSpeed's step log).
STRATEGY_KEYS = ("steps_per_print",)


def check_deepspeed_runnable(cuda: bool, *, planning: bool = False) -> None:
    """DeepSpeed can start here: its package is installed, for CUDA or for its CPU accelerator.

    Without CUDA, DS_ACCELERATOR=cpu is set before anything imports DeepSpeed (the
    accelerator is chosen once per process; torchrun's ranks inherit the variable). The
    package is located, not imported: this check comes before the seconds of imports.
    """
    from maskdpo_cli.process_group import cuda_devices

    if not cuda or (planning and not cuda_devices()):
        os.environ["DS_ACCELERATOR"] = "cpu"
    for package in ("deepspeed", "hjson", "cpuinfo", "msgpack"):
        if importlib.util.find_spec(package) is None:
            raise MaskDPOError(f"--deepspeed needs the deepspeed package ({package} is missing): "
                               "pip install 'maskdpo[deepspeed]' (`make install` installs it)")


def deepspeed_config(spec: str, *, micro_batch: int, accumulative_counts: int, max_norm: float | None,
                     cuda: bool, bf16_supported: bool | None = None) -> dict[str, Any]:
    """The complete DeepSpeed config for a name (zero1 .. zero3_offload, XTuner's bundled
    configs) or a JSON file: nothing left "auto".

    The batch and clipping fields get the recipe's values (XTuner's train entry would
    impose them anyway). fp16/bf16 "auto": bf16 where CUDA supports it, neither on the CPU
    (fp32, as the CPU path trains without DeepSpeed); `bf16_supported` answers for GPUs
    that are not here (a dry run), else CUDA is asked. ZeRO-3 must gather the shards on
    save, or the model could not be exported at the end, hours later: refused now.
    """
    source = _config_source(spec)
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
    _resolve_dtype(config, cuda, bf16_supported)
    if not cuda:
        _check_cpu_config(config, source)
    return config


def _config_source(spec: str) -> str:
    if Path(spec).is_file():
        return spec
    name = spec.removeprefix("deepspeed_")
    if name not in DEEPSPEED_CONFIGS:
        raise MaskDPOError(f"--deepspeed {spec}: expected a JSON file or one of {', '.join(DEEPSPEED_CONFIGS)}")
    from xtuner.configs import cfgs_name_path

    return cfgs_name_path[f"deepspeed_{name}"]


def _resolve_dtype(config: dict[str, Any], cuda: bool, bf16_supported: bool | None) -> None:
    """fp16/bf16 "auto" -> true/false, as XTuner would decide it on a GPU (bf16 wins over fp16)."""
    bf16_ok = False
    if cuda:
        import torch

        bf16_ok = torch.cuda.is_bf16_supported() if bf16_supported is None else bf16_supported
    bf16, fp16 = config.get("bf16"), config.get("fp16")
    if isinstance(bf16, dict) and bf16.get("enabled") == "auto":
        bf16["enabled"] = bf16_ok
    if isinstance(fp16, dict) and fp16.get("enabled") == "auto":
        fp16["enabled"] = cuda and not (isinstance(bf16, dict) and bf16.get("enabled") is True)


def _check_cpu_config(config: dict[str, Any], source: str) -> None:
    """fp16 on a CPU without fp16 kernels: DeepSpeed's CPU accelerator asks oneDNN, as here, and
    refuses it only after the weights have loaded (DeepSpeedEngine._do_sanity_check)."""
    if (config.get("fp16") or {}).get("enabled") is True and not _cpu_fp16_supported():
        raise MaskDPOError(f"--deepspeed {source}: fp16 is not supported on this CPU (DeepSpeed would stop "
                           "with 'Type fp16 is not supported on your device'); set fp16.enabled to false")


def _cpu_fp16_supported() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False


def write_deepspeed_config(work: Path, config: dict[str, Any]) -> Path:
    """W/deepspeed.json, the file XTuner's --deepspeed is given."""
    from maskdpo_cli.jsonl import write_json_atomic

    path = work / DEEPSPEED_FILE
    write_json_atomic(path, config)
    return path


def check_received(received: dict[str, Any], work: Path) -> None:
    """The config DeepSpeed's strategy holds is W/deepspeed.json (keys the strategy itself sets aside)."""
    written = json.loads((work / DEEPSPEED_FILE).read_text())
    got = {key: value for key, value in received.items() if key not in STRATEGY_KEYS}
    if got != written:
        changed = sorted(key for key in set(got) | set(written) if got.get(key) != written.get(key))
        raise RuntimeError(f"DeepSpeed received another config than {work / DEEPSPEED_FILE} (keys {changed})")
