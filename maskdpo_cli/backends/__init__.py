"""Inference backends. Each is imported only when chosen: LMDeploy needs a GPU install.

transformers and lmdeploy generate in this process from a local model directory; openai asks
served engines over HTTP (`model` is then the served model's name, or None for the first the
server lists). Each backend takes a dataclass of its own settings (backends/options.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from maskdpo_cli.backends.base import Backend, GenerationParams, Messages
from maskdpo_cli.backends.options import (BACKENDS, BackendOptions, LMDeployOptions, OpenAIOptions,
                                          TransformersOptions, backend_options)
from maskdpo_cli.errors import MaskDPOError

if TYPE_CHECKING:
    from maskdpo_cli.backends.openai_backend import OpenAIBackend


def make_backend(name: str, model: str | None, options: BackendOptions | None = None) -> Backend | OpenAIBackend:
    """The backend `name` for `model`: an alias or a local HF directory (resolved the one way), or for
    openai the served name. `options`: that backend's settings (default: its defaults)."""
    if name not in BACKENDS:
        raise MaskDPOError(f"--backend {name}: expected one of {', '.join(BACKENDS)}")
    if options is not None and options.name != name:
        raise TypeError(f"make_backend({name!r}) given the settings of {options.name!r}")
    if name == OpenAIOptions.name:
        from maskdpo_cli.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(options or OpenAIOptions(), model=model)
    from maskdpo_cli.models import SMOLLM2_ALIAS, resolve_model

    path = resolve_model(model or SMOLLM2_ALIAS)
    if name == LMDeployOptions.name:
        from maskdpo_cli.backends.lmdeploy_backend import LMDeployBackend

        return LMDeployBackend(path, options or LMDeployOptions())
    from maskdpo_cli.backends.transformers_backend import TransformersBackend

    return TransformersBackend(path, options or TransformersOptions())


__all__ = ["Backend", "GenerationParams", "Messages", "make_backend", "BACKENDS", "BackendOptions",
           "TransformersOptions", "LMDeployOptions", "OpenAIOptions", "backend_options"]
