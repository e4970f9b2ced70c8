"""Inference backends. Each is imported only when chosen: LMDeploy needs a GPU install."""

from __future__ import annotations

from maskdpo_cli.backends.base import Backend, GenerationParams, Messages
from maskdpo_cli.errors import MaskDPOError

BACKENDS = ("transformers", "lmdeploy")


def make_backend(name: str, model: str, **options: object) -> Backend:
    """A backend for `model` (an alias or a local HF directory), resolved the one way."""
    from maskdpo_cli.models import resolve_model

    path = resolve_model(model)
    if name == "transformers":
        from maskdpo_cli.backends.transformers_backend import TransformersBackend

        return TransformersBackend(path, **options)
    if name == "lmdeploy":
        from maskdpo_cli.backends.lmdeploy_backend import LMDeployBackend

        return LMDeployBackend(path, **options)
    raise MaskDPOError(f"--backend {name}: expected one of {', '.join(BACKENDS)}")


__all__ = ["Backend", "GenerationParams", "Messages", "make_backend", "BACKENDS"]
