"""Build Mask-DPO preference pairs from annotated samples (paper Sec. 3, docs/design.md "pair").

Per question the highest-scoring response is chosen and the lowest rejected. A pair is
dropped when the two are identical, when the chosen has no hallucination-free sentence,
or when the rejected has no hallucinated sentence: each would teach nothing (or the
wrong thing) once the masks are applied.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from maskdpo_cli.jsonl import atomic_output
from maskdpo_cli.records import Record, factuality_score, is_correct, iter_records, sentence_counts

DROP_REASONS = {
    "identical": "chosen and rejected are the same text",
    "chosen_without_correct": "the best response has no hallucination-free sentence",
    "rejected_without_incorrect": "the worst response has no hallucinated sentence",
    "single_response": "fewer than two non-empty responses to compare",
}


@dataclass
class PairStats:
    questions: int = 0
    pairs: int = 0
    dropped: Counter = field(default_factory=Counter)


def response_item(response: dict[str, Any]) -> dict[str, Any]:
    """The authors' `*_item` for a response (sentences and their type), plus our exact spans."""
    sentences = response["sentences"]
    return {
        "sents": [s["text"] for s in sentences],
        "type": ["no_hallucination" if is_correct(s["label"]) else "hallucination" for s in sentences],
        "spans": [[s["start"], s["end"]] for s in sentences],
    }


def _counts(response: dict[str, Any]) -> tuple[int, int]:
    return sentence_counts(response["sentences"])


def _score(response: dict[str, Any]) -> float:
    return factuality_score(*_counts(response))


def choose_pair(record: Record) -> tuple[Record | None, str | None]:
    """(pair, None) for a usable question, (None, reason) for one that is dropped."""
    # A response with no sentence says nothing true or false: it is neither best nor worst.
    responses = [r for r in record["responses"] if r["sentences"]]
    if len(responses) < 2:
        return None, "single_response"
    # Stable: among equal scores the earliest response wins, so pairs are reproducible.
    ranked = sorted(responses, key=lambda r: -_score(r))
    chosen, rejected = ranked[0], ranked[-1]
    if chosen["text"] == rejected["text"]:
        return None, "identical"
    if _counts(chosen)[0] == 0:
        return None, "chosen_without_correct"
    if _counts(rejected)[1] == 0:
        return None, "rejected_without_incorrect"
    pair = {
        "id": record["id"],
        **({"topic": record["topic"]} if "topic" in record else {}),
        "prompt": record["prompt"],
        "chosen": [{"role": "assistant", "content": chosen["text"]}],
        "rejected": [{"role": "assistant", "content": rejected["text"]}],
        "chosen_item": response_item(chosen),
        "rejected_item": response_item(rejected),
        "chosen_score": _score(chosen),
        "rejected_score": _score(rejected),
        "question": record["question"],
        "chosen_index": chosen["index"],
        "rejected_index": rejected["index"],
    }
    return pair, None


def run_pair(annotated: str, output: str | None) -> PairStats:
    """Read annotated samples, write pairs atomically, and count what was dropped and why."""
    stats = PairStats()
    with atomic_output(output) as writer:
        for _, record in iter_records(annotated, "annotated"):
            stats.questions += 1
            pair, reason = choose_pair(record)
            if pair is None:
                stats.dropped[reason] += 1
                continue
            writer.write(pair)
            stats.pairs += 1
    return stats
