"""The JSONL contract between steps (see docs/design.md, "Records").

Every reader goes through `read_records`, which validates each line for the record kind
it expects and reports the first problem as file:line: field. Validation returns the
record normalised (defaults filled in); unknown keys are always carried through.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from typing import Any, Callable

from maskdpo_cli.errors import InputError
from maskdpo_cli.jsonl import display_name, read_jsonl

LABELS = ("nofact", "ok", "contradictory", "unverifiable")
CORRECT_LABELS = frozenset({"nofact", "ok"})
INCORRECT_LABELS = frozenset({"contradictory", "unverifiable"})
# A span is a stated value (a fact) inside a sentence: it is never "nofact".
SPAN_LABELS = ("ok", "contradictory", "unverifiable")
# The authors' released pair format names sentence types this way; "no_fact" is ours
# (`pair --nofact neutral`): a piece masked on both sides.
ITEM_TYPES = ("no_hallucination", "hallucination", "no_fact")
# `pair --unit` and `pair --nofact`: the first of each is the paper's method.
PAIR_UNITS = ("sentence", "span")
NOFACT_POLICIES = ("correct", "neutral")

Record = dict[str, Any]


def question_id(question: str) -> str:
    """A stable id for a question without one: the same text always gets the same id."""
    return "q-" + hashlib.sha256(question.encode("utf-8")).hexdigest()[:12]


def default_prompt(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


def is_correct(label: str) -> bool:
    return label in CORRECT_LABELS


class _Checker:
    """Field checks that name the field, the file and the line when they fail."""

    def __init__(self, path: str, line: int | None) -> None:
        self.path, self.line = path, line

    def fail(self, field: str, message: str) -> InputError:
        return InputError(message, self.path, self.line, field)

    def get(self, obj: Record, key: str, kind: type | tuple[type, ...], field: str | None = None,
            required: bool = True) -> Any:
        field = field or key
        if key not in obj:
            if required:
                raise self.fail(field, "missing")
            return None
        value = obj[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(field, f"expected {_kind_name(kind)}, got a boolean")
        if not isinstance(value, kind):
            raise self.fail(field, f"expected {_kind_name(kind)}, got {type(value).__name__}")
        return value

    def text(self, obj: Record, key: str, field: str | None = None, required: bool = True,
             allow_empty: bool = False) -> str | None:
        value = self.get(obj, key, str, field, required)
        if value is not None and not allow_empty and not value.strip():
            raise self.fail(field or key, "is empty")
        return value

    def messages(self, obj: Record, key: str, field: str | None = None) -> list[dict[str, str]]:
        field = field or key
        msgs = self.get(obj, key, list, field)
        if not msgs:
            raise self.fail(field, "expected at least one message")
        for i, msg in enumerate(msgs):
            if not isinstance(msg, dict):
                raise self.fail(f"{field}[{i}]", "expected a message object")
            self.text(msg, "role", f"{field}[{i}].role")
            self.text(msg, "content", f"{field}[{i}].content", allow_empty=True)
        return msgs


def _short(value: Any, limit: int = 60) -> str:
    """A value quoted in an error message: repr keeps it on one line, the cut keeps the line short."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "a list",
             dict: "an object", bool: "a boolean"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def validate_question(obj: Record, path: str = "<input>", line: int | None = None) -> Record:
    c = _Checker(path, line)
    question = c.text(obj, "question")
    rec = dict(obj)
    rec["id"] = c.text(obj, "id", required=False) or question_id(question)
    if "id" in obj and not isinstance(obj["id"], str):
        raise c.fail("id", "expected a string")
    c.text(obj, "topic", required=False, allow_empty=True)
    language = c.text(obj, "language", required=False)
    if language is not None and language not in ("en", "zh"):
        raise c.fail("language", f"expected 'en' or 'zh', got {_short(language)}")
    c.text(obj, "document", required=False, allow_empty=True)
    rec["prompt"] = c.messages(obj, "prompt") if "prompt" in obj else default_prompt(question)
    return rec


def validate_samples(obj: Record, path: str = "<input>", line: int | None = None) -> Record:
    rec = validate_question(obj, path, line)
    c = _Checker(path, line)
    responses = c.get(obj, "responses", list)
    if not responses:
        raise c.fail("responses", "expected at least one response")
    for i, resp in enumerate(responses):
        if not isinstance(resp, dict):
            raise c.fail(f"responses[{i}]", "expected an object")
        c.get(resp, "index", int, f"responses[{i}].index")
        c.text(resp, "text", f"responses[{i}].text", allow_empty=True)
    return rec


def validate_annotated(obj: Record, path: str = "<input>", line: int | None = None) -> Record:
    rec = validate_samples(obj, path, line)
    c = _Checker(path, line)
    for i, resp in enumerate(rec["responses"]):
        where = f"responses[{i}]"
        sentences = c.get(resp, "sentences", list, f"{where}.sentences")
        text = resp["text"]
        previous_end = 0
        for j, sent in enumerate(sentences):
            sw = f"{where}.sentences[{j}]"
            start, end = _labelled_range(c, sent, sw, LABELS)  # with the world oracle's blur mark
            stext = c.get(sent, "text", str, f"{sw}.text")
            if not 0 <= start < end <= len(text):
                raise c.fail(sw, f"span [{start}, {end}) out of range for a text of {len(text)} characters")
            if start < previous_end:
                raise c.fail(sw, f"span [{start}, {end}) overlaps the previous sentence")
            if text[start:end] != stext:
                raise c.fail(f"{sw}.text", "does not equal the response text at [start, end)")
            _validate_spans(c, sent, sw, start, end)
            previous_end = end
    return rec


def _labelled_range(c: _Checker, obj: Any, where: str, labels: tuple[str, ...]) -> tuple[int, int]:
    """start and end of a sentence or span object whose label is one of `labels` (and whose
    optional `blurred` mark, when present, is a bool)."""
    if not isinstance(obj, dict):
        raise c.fail(where, "expected an object")
    start = c.get(obj, "start", int, f"{where}.start")
    end = c.get(obj, "end", int, f"{where}.end")
    label = c.get(obj, "label", str, f"{where}.label")
    if label not in labels:
        raise c.fail(f"{where}.label", f"expected one of {', '.join(labels)}, got {_short(label)}")
    c.get(obj, "blurred", bool, f"{where}.blurred", required=False)
    return start, end


def _validate_spans(c: _Checker, sent: Record, where: str, sent_start: int, sent_end: int) -> None:
    """A sentence's optional fact spans: known labels, each inside its sentence (may touch or overlap)."""
    spans = c.get(sent, "spans", list, f"{where}.spans", required=False)
    for k, span in enumerate(spans or ()):
        sw = f"{where}.spans[{k}]"
        start, end = _labelled_range(c, span, sw, SPAN_LABELS)
        if not sent_start <= start < end <= sent_end:
            raise c.fail(sw, f"span [{start}, {end}) is not inside its sentence [{sent_start}, {sent_end})")
    if spans and sent["label"] == "nofact":
        raise c.fail(f"{where}.spans", "a nofact sentence states no fact, so it has no spans")


def _validate_item(c: _Checker, obj: Record, side: str, required: bool) -> Record | None:
    item = c.get(obj, f"{side}_item", dict, required=required)
    if item is None:
        return None
    sents = c.get(item, "sents", list, f"{side}_item.sents")
    types = c.get(item, "type", list, f"{side}_item.type")
    if len(sents) != len(types):
        raise c.fail(f"{side}_item", f"has {len(sents)} sents but {len(types)} types")
    for j, (sent, kind) in enumerate(zip(sents, types)):
        if not isinstance(sent, str):
            raise c.fail(f"{side}_item.sents[{j}]", "expected a string")
        if kind not in ITEM_TYPES:
            raise c.fail(f"{side}_item.type[{j}]", f"expected one of {', '.join(ITEM_TYPES)}, got {_short(kind)}")
    content = obj[side][-1]["content"]
    spans = item.get("spans")
    if spans is not None:
        if not isinstance(spans, list) or len(spans) != len(sents):
            raise c.fail(f"{side}_item.spans", f"expected a list of {len(sents)} [start, end] pairs")
        previous_end = 0
        for j, span in enumerate(spans):
            field = f"{side}_item.spans[{j}]"
            if (not isinstance(span, list) or len(span) != 2
                    or not all(isinstance(x, int) and not isinstance(x, bool) for x in span)):
                raise c.fail(field, "expected [start, end] integers")
            start, end = span
            if not 0 <= start <= end <= len(content):
                raise c.fail(field, f"span [{start}, {end}) out of range for content of {len(content)} characters")
            if start < previous_end:
                raise c.fail(field, f"span [{start}, {end}) overlaps the previous sentence")
            if content[start:end] != sents[j]:
                raise c.fail(field, "the content at this span is not the sentence")
            previous_end = end
    return item


def validate_pair(obj: Record, path: str = "<input>", line: int | None = None) -> Record:
    c = _Checker(path, line)
    rec = dict(obj)
    c.get(obj, "id", (str, int))
    rec["id"] = str(obj["id"])
    c.messages(obj, "prompt")
    for side in ("chosen", "rejected"):
        msgs = c.messages(obj, side)
        if msgs[-1]["role"] != "assistant":
            raise c.fail(f"{side}[-1].role", "expected the last message to be the assistant's")
        # An empty response has nothing to prefer or to mask: a pair of it would train on nothing.
        if not msgs[-1]["content"].strip():
            raise c.fail(f"{side}[-1].content", "is empty; a pair needs a response on each side")
    # The authors' format always carries the items; plain DPO data may omit them (no mask).
    for side in ("chosen", "rejected"):
        _validate_item(c, obj, side, required=False)
    for key in ("chosen_score", "rejected_score"):
        c.get(obj, key, (int, float), required=False)
    pairing = c.get(obj, "pairing", dict, required=False)
    if pairing is not None:
        for key, allowed in (("unit", PAIR_UNITS), ("nofact", NOFACT_POLICIES)):
            value = c.get(pairing, key, str, f"pairing.{key}")
            if value not in allowed:
                raise c.fail(f"pairing.{key}", f"expected one of {', '.join(allowed)}, got {_short(value)}")
    return rec


VALIDATORS: dict[str, Callable[[Record, str, int | None], Record]] = {
    "questions": validate_question,
    "samples": validate_samples,
    "annotated": validate_annotated,
    "pairs": validate_pair,
}


def validate_rows(rows: Iterable[tuple[int, Record]], kind: str, name: str) -> Iterator[tuple[int, Record]]:
    """Validated (line, record) of one kind from (line, object) rows; duplicate ids are refused naming both lines."""
    validate = VALIDATORS[kind]
    seen: dict[str, int] = {}
    for line, obj in rows:
        rec = validate(obj, name, line)
        rid = rec["id"]
        if rid in seen:
            raise InputError(f"duplicate id {_short(rid)} (first on line {seen[rid]})", name, line, "id")
        seen[rid] = line
        yield line, rec


def iter_records(path: str | os.PathLike, kind: str) -> Iterator[tuple[int, Record]]:
    """Validated (line, record) of one kind, streaming; duplicate ids are refused naming both lines."""
    name = display_name(path)
    count = 0
    for line, rec in validate_rows(read_jsonl(path), kind, name):
        count += 1
        yield line, rec
    if count == 0:
        raise InputError(f"no records (expected {kind} JSONL, one object per line)", name)


def read_records(path: str | os.PathLike, kind: str) -> list[Record]:
    """All validated records of one kind; an empty file is an error."""
    return [rec for _, rec in iter_records(path, kind)]


def sentence_counts(sentences: list[dict[str, Any]]) -> tuple[int, int]:
    """(hallucination-free, hallucinated) sentence counts; nofact counts as hallucination-free."""
    correct = sum(is_correct(s["label"]) for s in sentences)
    return correct, len(sentences) - correct


def factuality_score(correct: float, incorrect: float) -> float:
    """The fraction of hallucination-free sentences; 0 for a response with no sentence."""
    total = correct + incorrect
    return correct / total if total else 0.0
