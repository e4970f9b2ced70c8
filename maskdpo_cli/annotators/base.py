"""What every annotator provides to `maskdpo annotate` and `maskdpo eval`.

An annotator judges the distinct sentences of one question's responses and returns one
Verdict per sentence. `judge` is a coroutine: `annotate` keeps many questions in flight at
once on one event loop, so an annotator that waits on a served judge must await its
requests (never block the loop) and a sentence moves to its next turn as soon as its
previous reply is back, without waiting for the other sentences.

Sentence-level annotators (anah-v2) leave `facts` as None. Fact-level annotators
(factscore, the world oracle) also return the sentence's atomic facts, each supported or
not; `annotate` then adds `facts`, `n_facts_supported`, `n_facts_unsupported` and
`fact_score` to every response. An annotator that knows where each fact stands in the
sentence also returns `spans`; `annotate` writes them on the sentence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Fact:
    """One atomic claim of a sentence and whether the knowledge source supports it."""

    text: str
    supported: bool


@dataclass(frozen=True)
class Span:
    """Where one fact stands in its sentence: character offsets into the sentence's text, and its label."""

    start: int
    end: int
    label: str  # one of records.SPAN_LABELS
    blurred: bool | None = None  # a wrong value that is true of a near topic's entity (the world oracle)


@dataclass(frozen=True)
class Verdict:
    """The judgment of one sentence: a label of records.LABELS, and its facts when fact-level.

    `spans`, when the annotator can point at its facts in the sentence, become the
    sentence's "spans" in the annotated record (`pair --unit span` masks by them).
    """

    label: str
    facts: tuple[Fact, ...] | None = None
    spans: tuple[Span, ...] | None = None
    blurred: bool | None = None  # a wrong sentence with a blurred span (the world oracle)


class Annotator(Protocol):
    name: str

    def describe(self) -> dict[str, Any]:
        """How the labels were made (annotator, judge, prompts): the record's "annotator" field."""
        ...

    async def judge(self, record: dict[str, Any], sentences: list[str]) -> list[Verdict]:
        """One Verdict per sentence, for distinct sentences answering `record`'s question."""
        ...


class InputChecks(Protocol):
    """Optional: an annotator that needs more of each record than the samples contract."""

    def validate(self, record: dict[str, Any], path: str, line: int | None) -> None:
        """Raise InputError naming path, line and field before anything is judged."""
        ...
