"""Build Mask-DPO preference pairs from annotated samples (paper Sec. 3, docs/design.md "pair").

Per question the highest-scoring response is chosen and the lowest rejected. A pair is
dropped when the two are identical, when the chosen has no hallucination-free unit,
or when the rejected has no hallucinated unit: each would teach nothing (or the
wrong thing) once the masks are applied.

Two options, both defaulting to the paper's method (`Pairing()`):

- `unit`: what a response is scored and masked by. `sentence` (paper): every sentence is
  one unit. `span`: a sentence that carries fact spans counts each span as one unit and
  is masked by them (chosen: only the wrong spans out; rejected: only the wrong spans
  in); a sentence without spans is one unit, as in `sentence`.
- `nofact`: how a no-fact sentence counts. `correct` (paper): as a hallucination-free
  unit. `neutral`: not at all; it is out of the loss on both sides, and a response with
  no fact at all is neither chosen nor rejected.

The pair carries the finer pieces in the authors' own item format, so training has one
path: `sents`/`type`/`spans` list, in order, the pieces of the response that have a type.
A sentence is one piece; a sentence split by spans becomes consecutive pieces (a
"hallucination" piece for each run of characters inside a wrong span, a
"no_hallucination" piece for the rest of the sentence); a no-fact sentence under
`neutral` is one "no_fact" piece, masked on both sides. Pieces touch but never overlap.
One rule needs the pair to say it was split by spans (`"pairing": {"unit": "span"}`):
a token that touches a wrong piece belongs to it, on both sides, even where it also
touches the sentence around it (see masking.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.jsonl import atomic_output
from maskdpo_cli.records import NOFACT_POLICIES, PAIR_UNITS, Record, factuality_score, is_correct, iter_records

DROP_REASONS = {
    "identical": "chosen and rejected are the same text",
    "chosen_without_correct": "the best response has no hallucination-free unit",
    "rejected_without_incorrect": "the worst response has no hallucinated unit",
    "single_response": "fewer than two non-empty responses to compare",
    "too_few_with_facts": "fewer than two responses state a fact (--nofact neutral)",
}


@dataclass(frozen=True)
class Pairing:
    """How responses are scored and masked; the defaults are the paper's (module docstring)."""

    unit: str = "sentence"
    nofact: str = "correct"

    def __post_init__(self) -> None:
        for flag, value, allowed in (("--unit", self.unit, PAIR_UNITS), ("--nofact", self.nofact, NOFACT_POLICIES)):
            if value not in allowed:
                raise MaskDPOError(f"unknown {flag} {value!r}: choose one of {', '.join(allowed)}")


@dataclass
class PairStats:
    questions: int = 0
    pairs: int = 0
    dropped: Counter = field(default_factory=Counter)


def _split_by_spans(sentence: dict[str, Any]) -> list[tuple[int, int, str]]:
    """(start, end, type) pieces covering a sentence with spans: wrong-span runs vs the rest."""
    start, end = sentence["start"], sentence["end"]
    wrong = [(s["start"], s["end"]) for s in sentence["spans"] if not is_correct(s["label"])]
    cuts = sorted({start, end, *(x for span in wrong for x in span)})
    pieces: list[tuple[int, int, str]] = []
    for a, b in zip(cuts, cuts[1:]):
        kind = "hallucination" if any(s <= a and b <= e for s, e in wrong) else "no_hallucination"
        if pieces and pieces[-1][2] == kind:  # spans may touch or overlap: one piece per run
            a = pieces.pop()[0]
        pieces.append((a, b, kind))
    return pieces


def _pieces(sentence: dict[str, Any], pairing: Pairing) -> list[tuple[int, int, str]]:
    """The typed pieces of one sentence under a pairing (module docstring)."""
    label = sentence["label"]
    if label == "nofact" and pairing.nofact == "neutral":
        return [(sentence["start"], sentence["end"], "no_fact")]
    if pairing.unit == "span" and sentence.get("spans"):
        return _split_by_spans(sentence)
    return [(sentence["start"], sentence["end"], "no_hallucination" if is_correct(label) else "hallucination")]


def response_item(response: dict[str, Any], pairing: Pairing = Pairing()) -> dict[str, Any]:
    """The authors' `*_item` for a response (pieces and their type), plus our exact offsets."""
    text = response["text"]
    pieces = [p for s in response["sentences"] for p in _pieces(s, pairing)]
    return {
        "sents": [text[a:b] for a, b, _ in pieces],
        "type": [kind for _, _, kind in pieces],
        "spans": [[a, b] for a, b, _ in pieces],
    }


def unit_counts(response: dict[str, Any], pairing: Pairing = Pairing()) -> tuple[int, int]:
    """(hallucination-free, hallucinated) units of a response: its pair score's numerator and rest."""
    correct = incorrect = 0
    for sentence in response["sentences"]:
        label = sentence["label"]
        if label == "nofact" and pairing.nofact == "neutral":
            continue
        if pairing.unit == "span" and sentence.get("spans"):
            ok = sum(is_correct(s["label"]) for s in sentence["spans"])
            correct, incorrect = correct + ok, incorrect + len(sentence["spans"]) - ok
        elif is_correct(label):
            correct += 1
        else:
            incorrect += 1
    return correct, incorrect


def pair_score(response: dict[str, Any], pairing: Pairing = Pairing()) -> float:
    """The fraction of a response's units that are hallucination-free (0 without units)."""
    return factuality_score(*unit_counts(response, pairing))


def choose_pair(record: Record, pairing: Pairing = Pairing()) -> tuple[Record | None, str | None]:
    """(pair, None) for a usable question, (None, reason) for one that is dropped."""
    # A response with no sentence says nothing true or false: it is neither best nor worst.
    responses = [r for r in record["responses"] if r["sentences"]]
    if len(responses) < 2:
        return None, "single_response"
    if pairing.nofact == "neutral":
        # Without a counted unit a response has no score: it can be neither chosen nor rejected.
        responses = [r for r in responses if sum(unit_counts(r, pairing))]
        if len(responses) < 2:
            return None, "too_few_with_facts"
    # Stable: among equal scores the earliest response wins, so pairs are reproducible.
    ranked = sorted(responses, key=lambda r: -pair_score(r, pairing))
    chosen, rejected = ranked[0], ranked[-1]
    if chosen["text"] == rejected["text"]:
        return None, "identical"
    if unit_counts(chosen, pairing)[0] == 0:
        return None, "chosen_without_correct"
    if unit_counts(rejected, pairing)[1] == 0:
        return None, "rejected_without_incorrect"
    pair = {
        "id": record["id"],
        **({"topic": record["topic"]} if "topic" in record else {}),
        "prompt": record["prompt"],
        "chosen": [{"role": "assistant", "content": chosen["text"]}],
        "rejected": [{"role": "assistant", "content": rejected["text"]}],
        "chosen_item": response_item(chosen, pairing),
        "rejected_item": response_item(rejected, pairing),
        "chosen_score": pair_score(chosen, pairing),
        "rejected_score": pair_score(rejected, pairing),
        "pairing": asdict(pairing),
        "question": record["question"],
        "chosen_index": chosen["index"],
        "rejected_index": rejected["index"],
    }
    return pair, None


def run_pair(annotated: str, output: str | None, pairing: Pairing = Pairing()) -> PairStats:
    """Read annotated samples, write pairs atomically, and count what was dropped and why."""
    stats = PairStats()
    with atomic_output(output) as writer:
        for _, record in iter_records(annotated, "annotated"):
            stats.questions += 1
            pair, reason = choose_pair(record, pairing)
            if pair is None:
                stats.dropped[reason] += 1
                continue
            writer.write(pair)
            stats.pairs += 1
    return stats
