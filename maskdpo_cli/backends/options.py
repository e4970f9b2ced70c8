"""Each backend's own settings, one small dataclass per backend.

They live apart from the backends so that building them loads no backend: torch and LMDeploy
are imported only when an in-process backend is made, never for a served one.
`backend_options` turns the command's flags into the chosen backend's settings and refuses
a flag meant for another backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Union

from maskdpo_cli.errors import MaskDPOError

# Requests in flight per server: twice a served engine's usual batch limit (LMDeploy and vLLM
# batch 128 to 256), so a queue waits at the engine and a freed slot is refilled at once
# rather than after a client round trip. Measured against a server of 128 slots answering in
# 0.5 s: 256 in flight drew 92-94% of its 256 calls/s through annotate, 128 drew 83-88%.
DEFAULT_CONCURRENCY = 256


@dataclass(frozen=True)
class TransformersOptions:
    """transformers in this process, on CPU or CUDA."""

    name: ClassVar[str] = "transformers"
    device: str | None = None  # default: cuda when available, else cpu
    dtype: str = "auto"
    batch_size: int | None = None  # sequences decoded together; default by device


@dataclass(frozen=True)
class LMDeployOptions:
    """LMDeploy's pipeline in this process, on CUDA."""

    name: ClassVar[str] = "lmdeploy"
    batch_size: int | None = None  # the engine's max batch; default 256
    engine: str = "turbomind"  # or "pytorch"
    tp: int = 1  # tensor-parallel GPUs
    session_len: int | None = None


@dataclass(frozen=True)
class OpenAIOptions:
    """Served engines that speak the OpenAI chat API (--url, repeated for several servers)."""

    name: ClassVar[str] = "openai"
    urls: tuple[str, ...] = ()
    api_key: str | None = None
    max_retries: int = 5
    concurrency: int = DEFAULT_CONCURRENCY  # requests in flight per server


BackendOptions = Union[TransformersOptions, LMDeployOptions, OpenAIOptions]
OPTIONS: dict[str, type[BackendOptions]] = {o.name: o for o in (TransformersOptions, LMDeployOptions, OpenAIOptions)}
BACKENDS = tuple(OPTIONS)


def backend_options(backend: str, *, urls: Sequence[str] = (), api_key: str | None = None,
                    batch_size: int | None = None) -> BackendOptions:
    """The settings of --backend from the flags of `sample` and `eval`.

    --url belongs to served engines and --batch-size to in-process ones: either given to the
    other kind is an error, not silently dropped. --api-key may come from the environment
    (MASKDPO_API_KEY), so an in-process backend ignores it.
    """
    served = backend == OpenAIOptions.name
    if urls and not served:
        raise MaskDPOError(f"--url is for served engines: pass --backend openai (not {backend})")
    if batch_size and served:
        raise MaskDPOError("--batch-size is for in-process backends; a served engine batches what it is sent")
    if backend not in OPTIONS:
        raise MaskDPOError(f"--backend {backend}: expected one of {', '.join(BACKENDS)}")
    if served:
        return OpenAIOptions(urls=tuple(urls), api_key=api_key)
    if backend == LMDeployOptions.name:
        return LMDeployOptions(batch_size=batch_size)
    return TransformersOptions(batch_size=batch_size)


__all__ = ["TransformersOptions", "LMDeployOptions", "OpenAIOptions", "BackendOptions", "BACKENDS",
           "backend_options"]
