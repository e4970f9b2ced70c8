"""Blur totals for `eval`: how many wrong facts the world oracle marked `blurred`.

The world oracle marks each wrong span `blurred: true|false` (annotators/world.py): true
when the wrong value is the true value of an entity of a near topic (world/affinity.py).
An eval of world answers then reports, per model, `n_blurred` (blurred wrong facts per
replication, the mean over replications) and `blurred_share` (100 x blurred / wrong facts
that carry the mark, pooled over replications). Annotators that mark nothing give no blur
figures at all.
"""

from __future__ import annotations

from typing import Any


def blur_counts(responses: list[dict[str, Any]]) -> tuple[int, int]:
    """(blurred wrong spans, wrong spans with a blur mark) over annotated responses."""
    marks = [span["blurred"] for r in responses for s in r.get("sentences", ())
             for span in s.get("spans", ()) if "blurred" in span]
    return sum(marks), len(marks)


def blur_summary(replicas: list[list[dict[str, Any]]]) -> dict[str, float | None] | None:
    """summary.json's blur figures from the evaluated responses of each replication; None when unmarked."""
    counts = [blur_counts(responses) for responses in replicas]
    if not any(marked for _, marked in counts):
        return None
    blurred, marked = sum(c[0] for c in counts), sum(c[1] for c in counts)
    return {"n_blurred": blurred / len(counts), "blurred_share": 100.0 * blurred / marked if marked else None}
