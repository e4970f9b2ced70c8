"""Sentence-level hallucination annotators: `anah-v2` (a chat judge) or `world:DIR` (an oracle)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from maskdpo_cli.annotators.base import Annotator
from maskdpo_cli.errors import MaskDPOError

if TYPE_CHECKING:
    from maskdpo_cli.annotation import JudgeConfig

ANNOTATORS = ("anah-v2", "world:DIR")


def make_annotator(spec: str, judge: JudgeConfig) -> Annotator:
    """The annotator named by --annotator; nothing is loaded or contacted until it labels."""
    if spec == "anah-v2":
        from maskdpo_cli.annotators.anah_v2 import AnahV2Annotator

        return AnahV2Annotator(judge)
    if spec.startswith("world:") and spec[len("world:"):]:
        from maskdpo_cli.annotators.world import WorldAnnotator

        return WorldAnnotator(spec[len("world:"):])
    raise MaskDPOError(f"--annotator {spec}: expected one of {', '.join(ANNOTATORS)}")


__all__ = ["Annotator", "make_annotator", "ANNOTATORS"]
