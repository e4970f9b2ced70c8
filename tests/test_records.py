"""The JSONL contract: strict reading that names file, line and field; atomic and resumable writing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from maskdpo_cli.errors import InputError, MaskDPOError
from maskdpo_cli.jsonl import OutputLock, atomic_output, read_jsonl, recover_appendable, resumable_output
from maskdpo_cli.records import (default_prompt, factuality_score, question_id, read_records, sentence_counts,
                                 validate_annotated, validate_pair)


def write_bytes(tmp_path: Path, data: bytes, name: str = "in.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_question_defaults_are_filled_and_stable(tmp_path):
    path = write_bytes(tmp_path, b'{"question": "Who is Ada?", "extra": 1}\n')
    [rec] = read_records(path, "questions")
    assert rec["id"] == question_id("Who is Ada?") == read_records(path, "questions")[0]["id"]
    assert rec["prompt"] == default_prompt("Who is Ada?")
    assert rec["extra"] == 1  # unknown keys are carried through


def test_bom_crlf_and_blank_lines_are_accepted(tmp_path):
    path = write_bytes(tmp_path, b'\xef\xbb\xbf{"question": "a"}\r\n\r\n\n{"question": "b"}\r\n')
    assert [r["question"] for r in read_records(path, "questions")] == ["a", "b"]


@pytest.mark.parametrize("data, line, needle", [
    (b'{"question": "a"}\n{"question": 3}\n', 2, "field 'question': expected a string"),
    (b'{"question": "a"}\n\n{"id": "x"}\n', 3, "field 'question': missing"),
    (b'{"question": "a"}\n[1, 2]\n', 2, "expected a JSON object"),
    (b'{"question": "a"}\n{"question": "b"\n', 2, "not valid JSON"),
    (b'{"question": "a"}\n\xff\xfe\n', 2, "invalid UTF-8"),
    (b'{"question": "a", "language": "fr"}\n', 1, "field 'language'"),
    (b'{"question": "   "}\n', 1, "field 'question': is empty"),
    (b'{"question": "a", "prompt": [{"role": "user"}]}\n', 1, "field 'prompt[0].content': missing"),
])
def test_bad_lines_are_located(tmp_path, data, line, needle):
    path = write_bytes(tmp_path, data)
    with pytest.raises(InputError) as info:
        read_records(path, "questions")
    assert str(info.value).startswith(f"{path}:{line}:")
    assert needle in str(info.value)


def test_duplicate_ids_name_both_lines(tmp_path):
    path = write_bytes(tmp_path, b'{"id": "q", "question": "a"}\n{"id": "w", "question": "b"}\n{"id": "q", "question": "c"}\n')
    with pytest.raises(InputError, match=r":3: field 'id': duplicate id 'q' \(first on line 1\)"):
        read_records(path, "questions")


def test_empty_file_is_an_error(tmp_path):
    with pytest.raises(InputError, match="no records"):
        read_records(write_bytes(tmp_path, b"\n\n"), "questions")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(MaskDPOError, match="no such file"):
        list(read_jsonl(tmp_path / "nope.jsonl"))


def annotated(text: str, sentences: list[tuple[int, int, str]]) -> dict:
    return {"question": "q", "responses": [{"index": 0, "text": text, "sentences": [
        {"start": s, "end": e, "text": text[s:e], "label": label} for s, e, label in sentences]}]}


def test_annotated_offsets_must_slice_the_text():
    rec = annotated("One. Two.", [(0, 4, "ok"), (5, 9, "contradictory")])
    assert validate_annotated(rec)
    rec["responses"][0]["sentences"][1]["text"] = "Three."
    with pytest.raises(InputError, match="does not equal"):
        validate_annotated(rec)
    with pytest.raises(InputError, match="out of range"):
        validate_annotated(annotated("One.", [(0, 9, "ok")]))
    with pytest.raises(InputError, match="overlaps"):
        validate_annotated(annotated("One. Two.", [(0, 4, "ok"), (2, 9, "ok")]))
    with pytest.raises(InputError, match="label"):
        validate_annotated(annotated("One.", [(0, 4, "maybe")]))


def with_spans(spans, label: str = "contradictory") -> dict:
    """ "Ada was born in Paris. She paints." with fact spans on its first sentence [0, 22)."""
    rec = annotated("Ada was born in Paris. She paints.", [(0, 22, label), (23, 34, "nofact")])
    rec["responses"][0]["sentences"][0]["spans"] = spans
    return rec


SPAN_CASES = [
    ([{"start": 16, "end": 25, "label": "ok"}], "sentences[0].spans[0]", "not inside its sentence [0, 22)"),
    ([{"start": 16, "end": 16, "label": "ok"}], "sentences[0].spans[0]", "not inside its sentence"),
    ([{"start": -1, "end": 3, "label": "ok"}], "sentences[0].spans[0]", "not inside its sentence"),
    ([{"start": 16, "end": 21, "label": "nofact"}], "sentences[0].spans[0].label", "expected one of ok, contradictory"),
    ([{"start": 16, "end": 21}], "sentences[0].spans[0].label", "missing"),
    ([{"start": "16", "end": 21, "label": "ok"}], "sentences[0].spans[0].start", "expected an integer"),
    ([[16, 21]], "sentences[0].spans[0]", "expected an object"),
    ({"start": 16}, "sentences[0].spans", "expected a list"),
]


def test_sentence_spans_are_validated():
    # Touching and overlapping spans are fine: quotes of two facts may share words.
    good = [{"start": 0, "end": 3, "label": "ok"}, {"start": 16, "end": 21, "label": "contradictory"},
            {"start": 13, "end": 21, "label": "unverifiable"}, {"start": 21, "end": 22, "label": "ok"}]
    assert validate_annotated(with_spans(good))
    for spans, field, message in SPAN_CASES:
        with pytest.raises(InputError, match=re.escape(message)) as err:
            validate_annotated(with_spans(spans))
        assert err.value.field == f"responses[0].{field}"
    nofact = with_spans([{"start": 16, "end": 21, "label": "ok"}], label="nofact")
    with pytest.raises(InputError, match="a nofact sentence states no fact"):
        validate_annotated(nofact)


@pytest.mark.parametrize("case", range(len(SPAN_CASES)))
def test_bad_spans_exit_2_naming_file_line_and_field(tmp_path, case):
    spans, field, message = SPAN_CASES[case]
    good = dict(with_spans([{"start": 16, "end": 21, "label": "contradictory"}]), id="q1")
    src = tmp_path / "annotated.jsonl"
    src.write_text(json.dumps(good) + "\n" + json.dumps(dict(with_spans(spans), id="q2")) + "\n")
    out = tmp_path / "pairs.jsonl"
    proc = subprocess.run([sys.executable, "-m", "maskdpo_cli.cli", "pair", str(src), "--unit", "span", "-o", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{src}:2: field 'responses[0].{field}'" in lines[0] and message in lines[0]
    assert not out.exists()


def test_pairing_field_is_validated():
    assert validate_pair(pair_record(pairing={"unit": "span", "nofact": "neutral"}))
    with pytest.raises(InputError, match="pairing.unit"):
        validate_pair(pair_record(pairing={"unit": "clause", "nofact": "neutral"}))
    with pytest.raises(InputError, match="pairing.nofact"):
        validate_pair(pair_record(pairing={"unit": "span"}))
    assert validate_pair(pair_record(rejected_item={"sents": ["C."], "type": ["no_fact"]}))


def pair_record(**changes) -> dict:
    rec = {"id": "p1", "prompt": [{"role": "user", "content": "q"}],
           "chosen": [{"role": "assistant", "content": "A. B."}],
           "rejected": [{"role": "assistant", "content": "C."}],
           "chosen_item": {"sents": ["A.", "B."], "type": ["no_hallucination", "hallucination"], "spans": [[0, 2], [3, 5]]},
           "rejected_item": {"sents": ["C."], "type": ["hallucination"]}}
    rec.update(changes)
    return rec


def test_pair_validation_accepts_the_authors_format_and_checks_spans():
    assert validate_pair(pair_record())["id"] == "p1"
    bad = pair_record(chosen_item={"sents": ["A.", "B."], "type": ["no_hallucination", "hallucination"], "spans": [[0, 2], [3, 9]]})
    with pytest.raises(InputError, match=r"chosen_item.spans\[1\]"):
        validate_pair(bad)
    with pytest.raises(InputError, match="rejected_item.type"):
        validate_pair(pair_record(rejected_item={"sents": ["C."], "type": ["wrong"]}))


def test_counts_and_score():
    sents = [{"label": "ok"}, {"label": "nofact"}, {"label": "contradictory"}, {"label": "unverifiable"}]
    assert sentence_counts(sents) == (2, 2)
    assert factuality_score(2, 2) == 0.5
    assert factuality_score(0, 0) == 0.0


def test_atomic_output_leaves_the_old_file_on_failure(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text('{"old": true}\n')
    with pytest.raises(RuntimeError):
        with atomic_output(str(target)) as writer:
            writer.write({"new": 1})
            raise RuntimeError("boom")
    assert target.read_text() == '{"old": true}\n'
    assert os.listdir(tmp_path) == ["out.jsonl"]
    with atomic_output(str(target)) as writer:
        writer.write({"new": "é"})
    assert json.loads(target.read_text()) == {"new": "é"}


def test_resume_drops_a_torn_tail(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_bytes(b'{"id": "a"}\n{"id": "b"}\n{"id": "c", "tex')
    assert [r["id"] for r in recover_appendable(target)] == ["a", "b"]
    assert target.read_bytes() == b'{"id": "a"}\n{"id": "b"}\n'
    with resumable_output(str(target)) as (writer, done):
        assert [r["id"] for r in done] == ["a", "b"]
        writer.write({"id": "c"})
    assert [json.loads(x)["id"] for x in target.read_text().splitlines()] == ["a", "b", "c"]


def test_a_second_writer_is_refused(tmp_path):
    target = tmp_path / "out.jsonl"
    with resumable_output(str(target)):
        with pytest.raises(MaskDPOError, match="another maskdpo process"):
            with OutputLock(target):
                pass
    # A lock left behind by a dead process is taken over.
    (tmp_path / "out.jsonl.lock").write_text("999999999")
    with resumable_output(str(target)) as (_, done):
        assert done == []
