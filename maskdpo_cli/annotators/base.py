"""What every annotator provides to `maskdpo annotate` and `maskdpo eval`.

An annotator judges the distinct sentences of one question's responses and returns one
Verdict per sentence. `judge` is a coroutine: `annotate` keeps many questions in flight at
once on one event loop, so an annotator that waits on a served judge must await its
requests (never block the loop) and a sentence moves to its next turn as soon as its
previous reply is back, without waiting for the other sentences.

Sentence-level annotators (anah-v2) leave `facts` as None. Fact-level annotators
(factscore, the world oracle) also return the sentence's atomic facts, each supported or
not; `annotate` then adds `facts`, `n_facts_supported`, `n_facts_unsupported` and
`fact_score` to every response. An annotator says which kind it is with `fact_level`.
A fact-level annotator that knows where each fact is stated also returns spans, which
`annotate` writes on the sentence (offsets shifted into the response text).

An annotator that needs more of each record than the samples contract (anah-v2 and factscore
need the question's `document`) also has `validate(record, path, line)`, which raises
InputError naming the file, line and field; `annotate` calls it on every record before
anything is judged.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Fact:
    """One atomic claim of a sentence and whether the knowledge source supports it."""

    text: str
    supported: bool


@dataclass(frozen=True)
class Span:
    """The characters of a sentence that state one fact: [start, end) into the sentence's own text."""

    start: int
    end: int
    label: str  # ok | contradictory | unverifiable: the fact's verdict
    blurred: bool | None = None  # a wrong value that is true of a near topic's entity (the world oracle)


@dataclass(frozen=True)
class Verdict:
    """The judgment of one sentence: a label of records.LABELS, and its facts when fact-level.

    `spans`, when the annotator can tell, is where each fact is stated in the sentence; None
    leaves the sentence as the unit (`pair --unit span` then uses its label). `unplaced`
    counts the facts the annotator could not locate in the sentence: a sentence with any
    such fact has no spans, so its located facts fall back to the sentence too.
    """

    label: str
    facts: tuple[Fact, ...] | None = None
    _: KW_ONLY  # the optional details by name: two annotators fill different ones
    spans: tuple[Span, ...] | None = None
    unplaced: int = 0
    blurred: bool | None = None  # a wrong sentence with a blurred span (the world oracle)


class Annotator(Protocol):
    name: str
    # Whether verdicts carry atomic facts: `annotate` then adds the fact fields to every
    # response, even to those of a question with no sentence at all.
    fact_level: bool

    def describe(self) -> dict[str, Any]:
        """How the labels were made (annotator, judge, prompts): the record's "annotator" field."""
        ...

    async def judge(self, record: dict[str, Any], sentences: list[str]) -> list[Verdict]:
        """One Verdict per sentence, for distinct sentences answering `record`'s question."""
        ...
