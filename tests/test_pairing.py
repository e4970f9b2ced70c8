"""The paper's pairing rule and the pair record, through the real `maskdpo pair` command."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

from maskdpo_cli.pairing import choose_pair

MASKDPO = [sys.executable, "-m", "maskdpo_cli.cli"]


def response(index: int, parts: list[tuple[str, str]]) -> dict:
    """A response built from (sentence, label) parts joined by spaces, with exact offsets."""
    text, sentences = "", []
    for sentence, label in parts:
        if text:
            text += " "
        sentences.append({"start": len(text), "end": len(text) + len(sentence), "text": sentence, "label": label})
        text += sentence
    return {"index": index, "text": text, "sentences": sentences}


def record(responses: list[dict], **extra) -> dict:
    return {"id": "q1", "question": "Who is Ada?", "prompt": [{"role": "user", "content": "Who is Ada?"}],
            "responses": responses, **extra}


def test_best_and_worst_are_paired_with_items_and_spans():
    good = response(0, [("Ada was born in 1815.", "ok"), ("She liked math.", "nofact")])
    mixed = response(1, [("Ada was born in 1900.", "contradictory"), ("She liked math.", "nofact")])
    bad = response(2, [("Ada lived on Mars.", "unverifiable"), ("She was a ship.", "contradictory"),
                       ("Hello.", "nofact")])
    pair, reason = choose_pair(record([mixed, good, bad], topic="people"))
    assert reason is None
    assert pair["chosen"] == [{"role": "assistant", "content": good["text"]}]
    assert pair["rejected"] == [{"role": "assistant", "content": bad["text"]}]
    assert pair["chosen_score"] == 1.0 and abs(pair["rejected_score"] - 1 / 3) < 1e-12
    assert pair["rejected_item"]["type"] == ["hallucination", "hallucination", "no_hallucination"]
    for side in ("chosen", "rejected"):
        content, item = pair[side][0]["content"], pair[f"{side}_item"]
        assert [content[s:e] for s, e in item["spans"]] == item["sents"]
    assert pair["topic"] == "people" and pair["prompt"][0]["content"] == "Who is Ada?"


def test_ties_pick_the_earliest_response():
    a = response(0, [("A.", "ok"), ("X.", "contradictory")])
    b = response(1, [("B.", "ok"), ("Y.", "contradictory")])
    c = response(2, [("C.", "contradictory")])
    pair, _ = choose_pair(record([a, b, c]))
    assert pair["chosen_index"] == 0 and pair["rejected_index"] == 2


def test_drop_rules():
    same = response(0, [("A.", "ok"), ("X.", "contradictory")])
    assert choose_pair(record([same, {**same, "index": 1}]))[1] == "identical"
    all_bad = [response(0, [("X.", "contradictory")]), response(1, [("Y.", "unverifiable"), ("Z.", "contradictory")])]
    assert choose_pair(record(all_bad))[1] == "chosen_without_correct"
    all_good = [response(0, [("A.", "ok")]), response(1, [("B.", "nofact"), ("C.", "ok")])]
    assert choose_pair(record(all_good))[1] == "rejected_without_incorrect"
    assert choose_pair(record([response(0, [("A.", "ok")])]))[1] == "single_response"


def test_empty_responses_are_neither_chosen_nor_rejected():
    empty = {"index": 0, "text": "  ", "sentences": []}
    good, bad = response(1, [("A.", "ok")]), response(2, [("X.", "contradictory"), ("B.", "ok")])
    pair, reason = choose_pair(record([empty, good, bad]))
    assert reason is None and (pair["chosen_index"], pair["rejected_index"]) == (1, 2)
    assert choose_pair(record([empty, good]))[1] == "single_response"


def test_pair_command_writes_pairs_and_reports_drops(tmp_path: Path):
    usable = record([response(0, [("A.", "ok")]), response(1, [("X.", "contradictory")])])
    dropped = {**record([response(0, [("A.", "ok")]), response(1, [("B.", "ok")])]), "id": "q2"}
    src = tmp_path / "annotated.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in (usable, dropped)) + "\n")
    out = tmp_path / "pairs.jsonl"
    proc = subprocess.run(MASKDPO + ["pair", str(src), "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [p["id"] for p in pairs] == ["q1"]
    assert "1 pairs" in proc.stderr and "dropped 1" in proc.stderr and "rejected_without_incorrect" in proc.stderr
    # Without -o the pairs go to stdout and nothing else does.
    proc = subprocess.run(MASKDPO + ["pair", "-"], input=src.read_text(), capture_output=True, text=True)
    assert [json.loads(line)["id"] for line in proc.stdout.splitlines()] == ["q1"]


def test_pair_command_bad_input_exits_2_without_output(tmp_path: Path):
    src = tmp_path / "annotated.jsonl"
    good = record([response(0, [("A.", "ok")]), response(1, [("X.", "contradictory")])])
    broken = {**copy.deepcopy(good), "id": "q2"}
    broken["responses"][0]["sentences"][0]["label"] = "great"
    src.write_text(json.dumps(good) + "\n" + json.dumps(broken) + "\n")
    out = tmp_path / "pairs.jsonl"
    proc = subprocess.run(MASKDPO + ["pair", str(src), "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"{src}:2: field 'responses[0].sentences[0].label'" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == [src]
