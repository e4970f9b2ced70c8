"""What every sentence-level hallucination annotator provides to `maskdpo annotate`."""

from __future__ import annotations

from typing import Any, Protocol


class Annotator(Protocol):
    name: str

    def describe(self) -> dict[str, Any]:
        """How the labels were made (annotator, judge, prompts): the record's "annotator" field."""
        ...

    def label(self, record: dict[str, Any], sentences: list[str]) -> list[str]:
        """One of records.LABELS per sentence, for sentences answering `record`'s question."""
        ...


class InputChecks(Protocol):
    """Optional: an annotator that needs more of each record than the samples contract."""

    def validate(self, record: dict[str, Any], path: str, line: int | None) -> None:
        """Raise InputError naming path, line and field before anything is judged."""
        ...
