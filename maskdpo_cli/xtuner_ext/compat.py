"""Process-level fixes for XTuner 0.2.0 on today's torch, and for training on a CPU.

- `apply_cpu_shims`: XTuner asks `get_torch_device().is_bf16_supported()` while preparing attention, and on a
machine without CUDA that device module is `torch.cpu`, which has no such function in
the torch releases XTuner 0.2.0 resolves to. The answer only picks a dtype for flash
attention, which the CPU never uses, so "no" is correct and harmless.
- `trusted_checkpoint_loading`: lets `--resume` unpickle the run's own mmengine checkpoints.
- `tune_cpu_training`: flush subnormal floats and keep large buffers (CPU only; measured
  in BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Iterator

import torch


def apply_cpu_shims() -> None:
    """Idempotent: safe to call from every entry point and every recipe import."""
    if not hasattr(torch.cpu, "is_bf16_supported"):
        torch.cpu.is_bf16_supported = lambda including_emulation=True: False  # type: ignore[attr-defined]
    bnb_logger = logging.getLogger("bitsandbytes.cextension")
    if not any(isinstance(f, _CpuBuildNotice) for f in bnb_logger.filters):
        bnb_logger.addFilter(_CpuBuildNotice())


def quiet_deepspeed_import() -> None:
    """Import DeepSpeed (when installed) with its log on stderr, warnings and errors only.

    XTuner's modules import DeepSpeed when it is there, and DeepSpeed's logger writes to
    stdout from import on (which accelerator it chose), while stdout carries records in
    maskdpo. Its handler binds the stream it finds at import, so it is imported here with
    stdout pointed at stderr. Without CUDA the CPU accelerator is chosen outright.
    """
    if "deepspeed" in sys.modules or importlib.util.find_spec("deepspeed") is None:
        return
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    logging.getLogger("DeepSpeed").addFilter(lambda record: record.levelno >= logging.WARNING)
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        # Its modules decorate with torch.jit.script, which torch now deprecates: a warning per
        # process that would precede every error line.
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        import deepspeed  # noqa: F401


class _CpuBuildNotice(logging.Filter):
    """XTuner imports bitsandbytes, whose CPU build warns on import that it has no GPU
    support: true and irrelevant (maskdpo never uses 8-bit optimizers), and it would be the
    first line of every CPU training run and of every error message."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "compiled without GPU support" not in record.getMessage()


# mmengine checkpoints pickle its own classes (message hub history, numpy scalars), which
# torch >= 2.6 refuses to unpickle by default; mmengine and XTuner call torch.load without
# `weights_only`, so resuming fails. The checkpoints are ones this run wrote into its own
# work dir: allow full unpickling while a resume loads them, and only then.
TRUSTED_LOAD_ENV = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}


@contextlib.contextmanager
def trusted_checkpoint_loading(enabled: bool = True) -> Iterator[None]:
    if not enabled:
        yield
        return
    saved = {key: os.environ.get(key) for key in TRUSTED_LOAD_ENV}
    os.environ.update(TRUSTED_LOAD_ENV)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.*")
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def tune_cpu_training() -> None:
    """Process-wide settings that make CPU training several times cheaper; no-ops with CUDA."""
    if torch.cuda.is_available():
        return
    flush_denormals_on_cpu()
    keep_large_buffers()


def keep_large_buffers() -> None:
    """Serve big tensors from the heap and keep freed memory for the next step.

    glibc returns every allocation above its mmap threshold to the kernel on free, so each
    training step faults in its logits, gradients and activations afresh (about 2 GB of
    page faults per step for the benchmark's batch: a third of the step's CPU time spent
    in the kernel). A 1 GiB threshold and a high trim threshold let the second step
    reuse the first step's pages. Peak memory is unchanged; memory is kept, not returned.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl): nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, (1 << 31) - 1)


def flush_denormals_on_cpu() -> None:
    """Treat subnormal floats as zero on a CPU-only run.

    The softmax of a 49k-entry vocabulary puts many probabilities in the subnormal range,
    and x86 matrix multiplies slow down by an order of magnitude on subnormal inputs: on
    this project's machines the lm-head backward took 19 s instead of 3 s per batch. Values
    below 1.2e-38 contribute nothing to a gradient. No effect where CUDA does the work.
    """
    if not torch.cuda.is_available():
        torch.set_flush_denormal(True)
