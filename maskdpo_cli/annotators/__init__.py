"""Hallucination annotators: `anah-v2` (sentences, a chat judge), `factscore` (atomic facts, a chat
judge) or `world:DIR` (the embedded world's oracle: sentences and facts).

A chat annotator may name its own served judge: `anah-v2@URL`, `factscore@URL` use that
OpenAI-compatible endpoint (and the model it serves) instead of --judge-url/--judge-model,
so one `eval` can score with two served judges side by side.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from maskdpo_cli.annotators.base import Annotator
from maskdpo_cli.errors import MaskDPOError

if TYPE_CHECKING:  # the world oracle needs no judge: judging (and its HTTP client) loads with a chat annotator
    from maskdpo_cli.annotators.judging import JudgeConfig

ANNOTATORS = ("anah-v2", "factscore", "world:DIR")
CHAT_ANNOTATORS = ("anah-v2", "factscore")


def make_annotator(spec: str, judge: JudgeConfig) -> Annotator:
    """The annotator named by --annotator; nothing is loaded or contacted until it labels."""
    name, _, url = spec.partition("@")
    if name in CHAT_ANNOTATORS and url:
        judge = replace(judge, backend="openai", urls=(url,), model=None)
    if name == "anah-v2":
        from maskdpo_cli.annotators.anah_v2 import AnahV2Annotator

        return AnahV2Annotator(judge)
    if name == "factscore":
        from maskdpo_cli.annotators.factscore import FactScoreAnnotator

        return FactScoreAnnotator(judge)
    if spec.startswith("world:") and spec[len("world:"):]:
        from maskdpo_cli.annotators.world import WorldAnnotator

        return WorldAnnotator(spec[len("world:"):])
    raise MaskDPOError(f"--annotator {spec}: expected one of {', '.join(ANNOTATORS)} "
                       "(a chat annotator may add @URL: its own judge endpoint)")


__all__ = ["Annotator", "make_annotator", "ANNOTATORS", "CHAT_ANNOTATORS"]
