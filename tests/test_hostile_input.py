"""Hostile input for every reader (docs/design.md, "Records").

A fuzz test of the JSONL readers over generated malformed files, then every command that
reads records fed each hostile case: exit code 2, one line on stderr naming file, line and
field, and nothing written (no new file, a previous output byte-identical).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers import run_cli
from maskdpo_cli import jsonl
from maskdpo_cli.errors import InputError
from maskdpo_cli.jsonl import dumps, recover_appendable
from maskdpo_cli.records import VALIDATORS, iter_records

BOM = b"\xef\xbb\xbf"
TEXT = "Ana is a baker. She lives in Rome."  # sentences [0, 15) and [16, 34)


# -- valid records of each kind ----------------------------------------------------------------

def question(i: int) -> dict[str, Any]:
    return {"id": f"q{i}", "question": f"Who is person {i}?", "topic": "bakers", "language": "en",
            "document": "Ana is a baker."}


def samples(i: int) -> dict[str, Any]:
    # Empty and whitespace-only responses are valid data: they just have no sentence.
    return {**question(i), "responses": [{"index": 0, "text": TEXT}, {"index": 1, "text": ""},
                                         {"index": 2, "text": " \n\t "}]}


def annotated(i: int) -> dict[str, Any]:
    sentences = [{"start": 0, "end": 15, "text": "Ana is a baker.", "label": "ok"},
                 {"start": 16, "end": 34, "text": "She lives in Rome.", "label": "contradictory"}]
    good = {"start": 0, "end": 15, "text": "Ana is a baker.", "label": "ok"}
    empty = {"n_correct": 0, "n_incorrect": 0, "score": 0.0, "sentences": []}
    return {**question(i), "responses": [
        {"index": 0, "text": TEXT, "sentences": sentences, "n_correct": 1, "n_incorrect": 1, "score": 0.5},
        {"index": 1, "text": "Ana is a baker.", "sentences": [good], "n_correct": 1, "n_incorrect": 0, "score": 1.0},
        {"index": 2, "text": "   ", **empty}, {"index": 3, "text": "", **empty}],
        "annotator": {"name": "test"}}


def pair(i: int) -> dict[str, Any]:
    return {"id": f"p{i}", "topic": "letters", "prompt": [{"role": "user", "content": f"Tell me about A, take {i}."}],
            "chosen": [{"role": "assistant", "content": "A is b. C is d."}],
            "rejected": [{"role": "assistant", "content": "A is x. C is d."}],
            "chosen_item": {"sents": ["A is b.", "C is d."], "type": ["no_hallucination", "no_hallucination"],
                            "spans": [[0, 7], [8, 15]]},
            "rejected_item": {"sents": ["A is x.", "C is d."], "type": ["hallucination", "no_hallucination"]},
            "chosen_score": 1.0, "rejected_score": 0.5}


MAKE: dict[str, Callable[[int], dict[str, Any]]] = {
    "questions": question, "samples": samples, "annotated": annotated, "pairs": pair}


def line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode("utf-8")


def line_count(data: bytes) -> int:
    """Lines as the reader numbers them: a last line without a newline counts too."""
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


# -- the fuzz test ------------------------------------------------------------------------------

WRONG_VALUES = [None, True, False, 0, -1, 1.5, 10**30, "", "   ", "x", "[/]", [], [1], {}, {"a": 1}]
# Raw JSON text a hostile file can hold where a value goes: non-JSON numbers, surrogate
# escapes (lone and paired), deep nesting, near-JSON that Python's json might let through.
RAW_VALUES = [b"NaN", b"Infinity", b"-1e999", b'"\\ud800"', b'"a\\udfff"', b'"\\ud83d\\ude00"', b"[" * 5000,
              b"[" * 500 + b"]" * 500, b"9" * 5000, b"tru", b"'x'", b"0x1F", b"01", b'"\\x41"', b'"\t"']
SPLICES = [b"\xff", b"\xc3", b"\xed\xa0\x80", BOM, b"\r", b"\r\n", b"\n", b"\n\n", b" \t\n", b"{", b"}",
           b"[", b"]", b'"', b",", b":", b"\x00", b"\\", b"NaN", b"-Infinity", b"1e999", b'"\\ud800"',
           b"null", b'{"id": "q0"}', b"[" * 3000, b"9" * 5000]


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key/index path inside a record, so a mutation can reach any field."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for key, value in obj.items():
            out += _paths(value, prefix + (key,))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            out += _paths(value, prefix + (i,))
    return out


def _set(obj: Any, path: tuple, value: Any, delete: bool) -> None:
    for key in path[:-1]:
        obj = obj[key]
    if delete and isinstance(obj, dict):
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


@st.composite
def hostile_files(draw: st.DrawFn) -> tuple[str, bytes, int]:
    """(kind, file bytes, line limit): valid records, mutated as values and then as bytes."""
    kind = draw(st.sampled_from(sorted(MAKE)))
    records = [MAKE[kind](i) for i in range(draw(st.integers(1, 3)))]
    raw: list[bytes] = []
    for _ in range(draw(st.integers(0, 3))):  # raw tokens, wrong types, missing keys
        rec = draw(st.sampled_from(records))
        path = draw(st.sampled_from(_paths(rec)))
        how = draw(st.sampled_from(["raw", "wrong", "delete"]))
        if how == "raw":  # a placeholder, swapped for the raw bytes once serialised
            raw.append(draw(st.sampled_from(RAW_VALUES)))
            _set(rec, path, f"@raw{len(raw) - 1}@", delete=False)
        else:
            _set(rec, path, copy.deepcopy(draw(st.sampled_from(WRONG_VALUES))), delete=how == "delete")
    if draw(st.booleans()):  # a very long (valid) line
        records.append({**MAKE[kind](len(records)), "pad": "y" * draw(st.sampled_from([3000, 70_000]))})
    lines = [json.dumps(r, ensure_ascii=draw(st.booleans())).encode("utf-8") for r in records]
    for i, value in enumerate(raw):
        lines = [text.replace(f'"@raw{i}@"'.encode(), value) for text in lines]
    if draw(st.booleans()):  # duplicate ids
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(lines)))
    data = BOM if draw(st.booleans()) else b""
    for text in lines:
        data += text + draw(st.sampled_from([b"\n", b"\r\n", b"\n\n", b"\r\n \r\n", b"\n\t\n"]))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["truncate", "splice", "delete", "bracket"]))
        at = draw(st.integers(0, len(data)))
        if op == "truncate":
            data = data[:at]
        elif op == "splice":
            data = data[:at] + draw(st.sampled_from(SPLICES)) + data[at:]
        elif op == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 20)):]
        elif at < len(data) and data[at:at + 1] in b"{}[]":
            data = data[:at] + {b"{": b"[", b"[": b"{", b"}": b"]", b"]": b"}"}[data[at:at + 1]] + data[at + 1:]
    limit = draw(st.sampled_from([jsonl.MAX_LINE_BYTES, 4096]))
    return kind, data, limit


def _check_located(err: InputError, path: Path, data: bytes) -> None:
    text = str(err)
    assert "\n" not in text and "\r" not in text, text
    assert err.path == str(path), text
    if err.line is None:
        assert text.startswith(f"{path}: no records"), text
    else:
        assert 1 <= err.line <= line_count(data), (text, line_count(data))
        assert text.startswith(f"{path}:{err.line}:"), text
    if err.field:
        assert f"field '{err.field}'" in text


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _known(kind: str, tail: bytes, limit: int = jsonl.MAX_LINE_BYTES) -> tuple[str, bytes, int]:
    """A valid first line, then `tail`: each once crashed a reader or slipped through it."""
    return kind, BOM + line(MAKE[kind](0)) + b"\r\n\r\n" + tail, limit


KNOWN = [_known("pairs", line(pair(1))[:-1] + b', "chosen_score": NaN}\n'),
         _known("annotated", line(annotated(1))[:-1] + b', "extra": ' + b"[" * 5000 + b"}\n"),
         _known("questions", b'{"question": "a\\ud800"}\n'),
         _known("samples", line(samples(1))[:-1] + b', "extra": ' + b"7" * 5000 + b"}\n"),
         _known("pairs", b"\x00" * 5000, limit=4096)]


def known_examples(test: Callable) -> Callable:
    for case in KNOWN:
        test = example(case=case)(test)
    return test


@FUZZ
@given(case=hostile_files())
@known_examples
def test_readers_either_validate_or_locate_the_problem(fuzz_dir, case):
    kind, data, limit = case
    path = fuzz_dir / f"{kind}.jsonl"
    path.write_bytes(data)
    with mock.patch.object(jsonl, "MAX_LINE_BYTES", limit):
        try:
            rows = list(iter_records(path, kind))
        except InputError as err:
            _check_located(err, path, data)
            return
    lines = [n for n, _ in rows]
    assert lines == sorted(set(lines)) and 1 <= lines[0] and lines[-1] <= line_count(data)
    assert len({rec["id"] for _, rec in rows}) == len(rows)
    for n, rec in rows:
        assert VALIDATORS[kind](rec, str(path), n) == rec  # normalised records validate again
        assert json.loads(dumps(rec).encode("utf-8")) == rec  # and can be written back as they are


@FUZZ
@given(case=hostile_files())
@known_examples
def test_resume_reader_keeps_whole_records_or_locates_the_problem(fuzz_dir, case):
    _, data, _ = case
    path = fuzz_dir / "resume.jsonl"
    path.write_bytes(data)
    try:
        records = recover_appendable(path)
    except InputError as err:
        _check_located(err, path, data)
        assert path.read_bytes() == data  # refused: the file is left as it was
        return
    kept = path.read_bytes()
    assert data.startswith(kept) and (not kept or kept.endswith(b"\n"))
    assert all(isinstance(rec, dict) for rec in records)
    assert all(json.loads(dumps(rec)) == rec for rec in records)


# -- every reading command, every hostile case -------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    line: int | None      # None: the file as a whole ("no records")
    needle: str
    field: str | None = None
    max_line: int | None = None  # lower the line limit so a "huge" line stays small here


def _with(record: dict[str, Any], path: tuple, value: Any) -> dict[str, Any]:
    rec = copy.deepcopy(record)
    _set(rec, path, value, delete=False)
    return rec


# A wrong type in each kind's central field, and in a bracketed value rich must not render.
WRONG_TYPE = {"questions": (("question",), 3, "question"),
              "samples": (("responses", 0, "text"), 5, "responses[0].text"),
              "annotated": (("responses", 0, "sentences", 0, "start"), "0", "responses[0].sentences[0].start"),
              "pairs": (("chosen",), "A is b.", "chosen")}
MARKUP = {"questions": (("language",), "[/]", "language"),
          "samples": (("language",), "[/bold]", "language"),
          "annotated": (("responses", 0, "sentences", 0, "label"), "[/x]", "responses[0].sentences[0].label"),
          "pairs": (("chosen_item", "type", 0), "[/]", "chosen_item.type[0]")}


def generic_cases(kind: str) -> list[Case]:
    make = MAKE[kind]
    one, two = line(make(1)), line(make(2))
    where, value, field = WRONG_TYPE[kind]
    wrong = line(_with(make(2), where, value))
    mwhere, mvalue, mfield = MARKUP[kind]
    return [
        Case("invalid_utf8", one + b"\n" + two.replace(b'"id": "', b'"id": "\xff', 1) + b"\n", 2, "invalid UTF-8"),
        Case("torn_last_line", one + b"\n" + two[:len(two) // 2], 2, "not valid JSON"),
        Case("bom_crlf_blank_lines", BOM + one + b"\r\n\r\n \t\r\n" + wrong + b"\r\n", 4, "expected", field),
        Case("bom_inside_a_line", one + b"\n" + two[:-1] + BOM + b"}\n", 2, "not valid JSON"),
        Case("huge_line", one + b"\n" + two[:-1] + b', "pad": "' + b"x" * 70_000 + b'"}\n', 2,
             "line longer than 65536 bytes", max_line=65536),
        Case("huge_line_without_newline", b"x" * 70_000, 1, "line longer than 65536 bytes", max_line=65536),
        Case("wrong_type", one + b"\n" + wrong + b"\n", 2, "expected", field),
        Case("duplicate_id", one + b"\n" + two + b"\n" + one + b"\n", 3, "(first on line 1)", "id"),
        Case("empty_file", b"", None, "no records"),
        Case("blank_lines_only", b"\r\n\n \t\n", None, "no records"),
        Case("not_an_object", one + b'\n["a", "b"]\n', 2, "expected a JSON object"),
        Case("nan", one + b"\n" + two[:-1] + b', "extra": NaN}\n', 2, "NaN is not a JSON number"),
        Case("infinite_number", one + b"\n" + two[:-1] + b', "extra": -1e999}\n', 2, "out of range"),
        Case("deep_nesting", one + b'\n{"extra": ' + b"[" * 50_000 + b"\n", 2, "nested too deeply"),
        Case("lone_surrogate", one + b"\n" + two[:-1] + b', "extra": "\\udc80"}\n', 2, "surrogate"),
        Case("markup_in_value", one + b"\n" + line(_with(make(2), mwhere, mvalue)) + b"\n", 2, repr(mvalue), mfield),
    ]


def specific_cases(kind: str) -> list[Case]:
    make = MAKE[kind]
    one = line(make(1)) + b"\n"

    def bad(where: tuple, value: Any) -> bytes:
        return one + line(_with(make(2), where, value)) + b"\n"

    if kind == "questions":
        return [Case("empty_question", bad(("question",), " \n "), 2, "is empty", "question")]
    if kind == "samples":
        return [Case("no_responses", bad(("responses",), []), 2, "at least one response", "responses"),
                Case("index_not_an_integer", bad(("responses", 1, "index"), True), 2, "boolean",
                     "responses[1].index")]
    if kind == "annotated":
        s = ("responses", 0, "sentences")
        return [Case("sentence_not_in_text", bad(s + (0, "text"), "Bob is a baker."), 2, "does not equal",
                     "responses[0].sentences[0].text"),
                Case("span_out_of_range", bad(s + (1, "end"), 99), 2, "out of range", "responses[0].sentences[1]"),
                Case("spans_overlap", bad(s + (1, "start"), 10), 2, "overlaps", "responses[0].sentences[1]")]
    spans = ("chosen_item", "spans")
    return [Case("empty_chosen", bad(("chosen", 0, "content"), ""), 2, "is empty", "chosen[-1].content"),
            Case("whitespace_rejected", bad(("rejected", 0, "content"), " \n\t "), 2, "is empty",
                 "rejected[-1].content"),
            Case("span_out_of_range", bad(spans, [[0, 7], [8, 99]]), 2, "out of range", "chosen_item.spans[1]"),
            Case("spans_overlap", bad(spans, [[0, 7], [5, 15]]), 2, "overlaps", "chosen_item.spans[1]"),
            Case("sentence_not_found", bad(("rejected_item", "sents", 1), "Z is z."), 2, "not found",
                 "rejected_item.sents[1]")]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from maskdpo_cli.world import make_world

    out = tmp_path_factory.mktemp("world")
    make_world(7, str(out), quick=True)
    return out


@dataclass(frozen=True)
class Command:
    kind: str
    argv: Callable[[Path, Path, dict[str, Path]], list[str]]  # (input, work dir, fixtures) -> argv
    previous: str | None = None  # an output file that already exists and must survive byte-identical
    model_only: frozenset[str] = frozenset()  # cases that fail only after the tokenizer, so need a model


NO_MODEL = "no-such-model-dir"  # every case must fail on its input before any model is looked for
COMMANDS = {
    "sample": Command("questions", lambda f, d, fx: ["sample", f, "--model", d / NO_MODEL, "-n", "2",
                                                     "-o", d / "out.jsonl"]),
    "eval": Command("questions", lambda f, d, fx: ["eval", f, "--model", d / NO_MODEL,
                                                   "--annotator", f"world:{fx['world']}", "-o", d / "eval"]),
    "cluster": Command("questions", lambda f, d, fx: ["cluster", "--train", f, "--test", f, "--model", d / NO_MODEL,
                                                      "-o", d / "clusters"]),
    "annotate": Command("samples", lambda f, d, fx: ["annotate", f, "--annotator", f"world:{fx['world']}",
                                                     "-o", d / "out.jsonl"], previous="out.jsonl"),
    "pair": Command("annotated", lambda f, d, fx: ["pair", f, "-o", d / "out.jsonl"], previous="out.jsonl"),
    "masks": Command("pairs", lambda f, d, fx: ["masks", f, "--model", fx["model"], "--json"]),
    "train": Command("pairs", lambda f, d, fx: ["train", f, "--model", fx["model"] if fx["real"] else d / NO_MODEL,
                                                "--work-dir", d / "work", "--gpus", "0"],
                     model_only=frozenset({"sentence_not_found"})),
}
TABLE = [(command, case) for command, spec in COMMANDS.items()
         for case in generic_cases(spec.kind) + specific_cases(spec.kind)]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_one_located_line(err: str, path: Path, case: Case) -> None:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    [message] = lines
    assert message.startswith("maskdpo: error: "), message
    where = f"{path}:{case.line}:" if case.line is not None else f"{path}: "
    assert where in message, message
    if case.field:
        assert f"field '{case.field}'" in message, message
    assert case.needle in message, message


@pytest.mark.parametrize("command, case", TABLE, ids=[f"{c}-{case.name}" for c, case in TABLE])
def test_every_reader_refuses_hostile_input(command, case, tmp_path, capsys, monkeypatch, world, smollm2_path):
    spec = COMMANDS[command]
    path = tmp_path / "in [red].jsonl"  # a bracket in the name: printed as is, never as markup
    path.write_bytes(case.data)
    if spec.previous:
        (tmp_path / spec.previous).write_bytes(line(MAKE[spec.kind](0)) + b"\n")  # a previous run's output
    if case.max_line:
        monkeypatch.setattr(jsonl, "MAX_LINE_BYTES", case.max_line)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", ""))  # train --gpus 0 sets it
    fixtures = {"world": world, "model": smollm2_path, "real": case.name in spec.model_only}
    before = snapshot(tmp_path)
    code, out, err = run_cli(spec.argv(path, tmp_path, fixtures), capsys)
    assert code == 2, err
    assert_one_located_line(err, path, case)
    assert out == ""  # nothing half-written on stdout either
    assert snapshot(tmp_path) == before  # no output, temp file or lock left; a previous output untouched


# -- the valid files of the table are accepted, empty responses included ------------------------

def test_empty_and_whitespace_responses_are_annotated_and_paired(tmp_path, capsys, world):
    sample_file = tmp_path / "samples.jsonl"
    sample_file.write_bytes(b"".join(line(samples(i)) + b"\n" for i in range(2)))
    code, _, err = run_cli(["annotate", sample_file, "--annotator", f"world:{world}",
                            "-o", tmp_path / "annotated.jsonl"], capsys)
    assert code == 0, err
    done = [json.loads(x) for x in (tmp_path / "annotated.jsonl").read_text().splitlines()]
    assert [[r["sentences"] for r in rec["responses"][1:]] for rec in done] == [[[], []]] * 2
    assert all(r["score"] == 0.0 for rec in done for r in rec["responses"][1:])

    annotated_file = tmp_path / "hand.jsonl"
    annotated_file.write_bytes(b"".join(line(annotated(i)) + b"\n" for i in range(2)))
    code, _, err = run_cli(["pair", annotated_file, "-o", tmp_path / "pairs.jsonl"], capsys)
    assert code == 0, err
    pairs = [json.loads(x) for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert [p["chosen"][0]["content"] for p in pairs] == ["Ana is a baker."] * 2  # never an empty response
    assert [p["rejected"][0]["content"] for p in pairs] == [TEXT] * 2


def test_valid_pairs_with_a_long_line_are_masked(tmp_path, capsys, smollm2_path):
    path = tmp_path / "pairs.jsonl"
    long = {**pair(1), "pad": "z" * 200_000}  # huge but under the line limit: just data
    path.write_bytes(BOM + line(pair(0)) + b"\r\n\r\n" + line(long) + b"\r\n")
    code, out, err = run_cli(["masks", path, "--model", smollm2_path, "--json"], capsys)
    assert code == 0, err
    assert [json.loads(x)["id"] for x in out.splitlines()] == ["p0", "p1"]


# -- the real process: one line, no traceback ---------------------------------------------------

def run_process(args: list, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MASKDPO_DEBUG"}
    return subprocess.run([sys.executable, "-m", "maskdpo_cli.cli", *map(str, args)], input=stdin,
                          capture_output=True, env=env, timeout=120)


def test_a_real_process_prints_one_line_for_markup_in_the_input(tmp_path):
    path = tmp_path / "in [bold].jsonl"
    [case] = [c for c in generic_cases("annotated") if c.name == "markup_in_value"]
    path.write_bytes(case.data)
    (tmp_path / "out.jsonl").write_bytes(b"previous\n")
    done = run_process(["pair", path, "-o", tmp_path / "out.jsonl"])
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert err.strip().splitlines() == [f"maskdpo: error: {path}:2: field 'responses[0].sentences[0].label': "
                                        "expected one of nofact, ok, contradictory, unverifiable, got '[/x]'"]
    assert (tmp_path / "out.jsonl").read_bytes() == b"previous\n" and done.stdout == b""
    assert sorted(os.listdir(tmp_path)) == ["in [bold].jsonl", "out.jsonl"]


def test_a_real_process_locates_bad_stdin(tmp_path, world):
    # annotate streams stdin (it may be a pipe from `sample` still producing): the records
    # before the bad line are annotated and written, complete, so a fixed rerun resumes them.
    bad = line(samples(2)).replace(b"Who", b"Who \xff", 1)
    out = tmp_path / "out" / "out.jsonl"
    out.parent.mkdir()
    done = run_process(["annotate", "-", "--annotator", f"world:{world}", "-o", out],
                       stdin=line(samples(1)) + b"\n" + bad + b"\n")
    assert done.returncode == 2, done.stderr
    at = bad.index(b"\xff")
    err = done.stderr.decode()
    assert "Traceback" not in err and err.strip().splitlines()[-1] == f"maskdpo: error: <stdin>:2: invalid UTF-8 at byte {at}"
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [samples(1)["id"]]


def test_a_real_process_refuses_a_file_without_newlines_at_the_real_limit(tmp_path):
    path = tmp_path / "blob.jsonl"
    with open(path, "wb") as fh:
        fh.truncate(jsonl.MAX_LINE_BYTES + 10)  # one "line" of zero bytes, larger than the limit
    done = run_process(["pair", path, "-o", tmp_path / "out.jsonl"])
    assert done.returncode == 2, done.stderr
    assert done.stderr.decode().strip().splitlines() == [
        f"maskdpo: error: {path}:1: line longer than 64 MiB; expected one JSON object per line"]
    assert os.listdir(tmp_path) == ["blob.jsonl"]
