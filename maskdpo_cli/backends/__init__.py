"""Inference backends. Each is imported only when chosen: LMDeploy needs a GPU install.

transformers and lmdeploy generate in this process from a local model directory; openai asks
served engines over HTTP (`model` is then the served model's name, or None for the first the
server lists).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from maskdpo_cli.backends.base import Backend, GenerationParams, Messages
from maskdpo_cli.errors import MaskDPOError

if TYPE_CHECKING:
    from maskdpo_cli.backends.openai_backend import OpenAIBackend

BACKENDS = ("transformers", "lmdeploy", "openai")


def make_backend(name: str, model: str | None, **options: object) -> Backend | OpenAIBackend:
    """A backend for `model`: an alias or a local HF directory (resolved the one way), or for
    openai the served name."""
    if name not in BACKENDS:
        raise MaskDPOError(f"--backend {name}: expected one of {', '.join(BACKENDS)}")
    if name == "openai":
        from maskdpo_cli.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(model=model, **options)  # type: ignore[arg-type]
    from maskdpo_cli.models import SMOLLM2_ALIAS, resolve_model

    path = resolve_model(model or SMOLLM2_ALIAS)
    if name == "lmdeploy":
        from maskdpo_cli.backends.lmdeploy_backend import LMDeployBackend

        return LMDeployBackend(path, **options)
    from maskdpo_cli.backends.transformers_backend import TransformersBackend

    return TransformersBackend(path, **options)


__all__ = ["Backend", "GenerationParams", "Messages", "make_backend", "BACKENDS"]
