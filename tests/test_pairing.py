"""The paper's pairing rule and the pair record, through the real `maskdpo pair` command."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

from maskdpo_cli.pairing import Pairing, choose_pair, response_item

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


# ------------------------------------------------------------------ --unit span, --nofact neutral

def with_spans(resp: dict, sentence: int, spans: list[tuple[str, str]]) -> dict:
    """Give one sentence fact spans: (value, label), each value found in order in the sentence."""
    sent = resp["sentences"][sentence]
    out, pos = [], sent["start"]
    for value, label in spans:
        start = resp["text"].index(value, pos)
        out.append({"start": start, "end": start + len(value), "label": label})
        pos = start + len(value)
    sent["spans"] = out
    return resp


def test_span_unit_scores_by_spans_and_splits_sentences_into_pieces():
    # Two facts in one sentence, one wrong: a half-right sentence, not a wrong one.
    half = with_spans(response(0, [("Ada was born in Paris in 1815.", "contradictory"), ("Hi.", "nofact")]),
                      0, [("Paris", "contradictory"), ("1815", "ok")])
    wrong = response(1, [("Ada was born on Mars.", "unverifiable"), ("She is a ship.", "contradictory")])
    paper, _ = choose_pair(record([half, wrong]))
    assert paper["chosen_score"] == 0.5 and paper["pairing"] == {"unit": "sentence", "nofact": "correct"}
    assert paper["chosen_item"]["sents"] == ["Ada was born in Paris in 1815.", "Hi."]
    pair, _ = choose_pair(record([half, wrong]), Pairing(unit="span"))
    assert pair["pairing"] == {"unit": "span", "nofact": "correct"}
    assert pair["chosen_score"] == 2 / 3  # 1815 and the no-fact sentence, against Paris
    item = pair["chosen_item"]
    assert item["sents"] == ["Ada was born in ", "Paris", " in 1815.", "Hi."]
    assert item["type"] == ["no_hallucination", "hallucination", "no_hallucination", "no_hallucination"]
    assert [half["text"][s:e] for s, e in item["spans"]] == item["sents"]
    # Sentences without spans keep the sentence rule.
    assert pair["rejected_item"] == paper["rejected_item"]


def test_touching_and_overlapping_wrong_spans_make_one_piece():
    resp = with_spans(response(0, [("AB CD", "contradictory")]), 0, [("AB", "ok"), ("CD", "contradictory")])
    resp["sentences"][0]["spans"].append({"start": 2, "end": 4, "label": "unverifiable"})
    item = response_item(resp, Pairing(unit="span"))
    assert item["sents"] == ["AB", " CD"] and item["type"] == ["no_hallucination", "hallucination"]


def test_neutral_nofact_prefers_facts_over_filler():
    filler = response(0, [("Ada is a fascinating person.", "nofact"), ("I hope this helps.", "nofact"),
                          ("Ada was born in 1900.", "contradictory")])
    facts = response(1, [("Ada was born in 1815.", "ok"), ("She lived in London.", "ok"),
                         ("She was a ship.", "contradictory")])
    paper, _ = choose_pair(record([filler, facts]))
    assert (paper["chosen_index"], paper["rejected_index"]) == (0, 1)  # 2/3 vs 2/3: the earliest wins
    filler["sentences"].append({"start": len(filler["text"]) + 1, "end": len(filler["text"]) + 4,
                                "text": "Bye", "label": "nofact"})
    filler["text"] += " Bye"
    paper, _ = choose_pair(record([filler, facts]))
    assert (paper["chosen_index"], paper["rejected_index"]) == (0, 1)  # 3/4 beats 2/3
    neutral, _ = choose_pair(record([filler, facts]), Pairing(nofact="neutral"))
    assert (neutral["chosen_index"], neutral["rejected_index"]) == (1, 0)  # 2/3 beats 0/1
    assert neutral["rejected_score"] == 0.0 and neutral["chosen_score"] == 2 / 3
    assert neutral["rejected_item"]["type"] == ["no_fact", "no_fact", "hallucination", "no_fact"]


def test_neutral_nofact_never_chooses_a_response_without_facts():
    all_filler = response(0, [("Hello.", "nofact"), ("Bye.", "nofact")])
    mixed = response(1, [("Ada was born in 1815.", "ok"), ("She was a ship.", "contradictory")])
    worse = response(2, [("She was a car.", "contradictory")])
    assert choose_pair(record([all_filler, mixed, worse]))[0]["chosen_index"] == 0
    pair, _ = choose_pair(record([all_filler, mixed, worse]), Pairing(nofact="neutral"))
    assert (pair["chosen_index"], pair["rejected_index"]) == (1, 2)
    assert choose_pair(record([all_filler, worse]), Pairing(nofact="neutral"))[1] == "too_few_with_facts"


def test_pair_command_options_are_written_and_checked(tmp_path: Path):
    src = tmp_path / "annotated.jsonl"
    resp = with_spans(response(0, [("Ada was born in 1815.", "ok")]), 0, [("1815", "ok")])
    src.write_text(json.dumps(record([resp, response(1, [("X.", "contradictory")])])) + "\n")
    proc = subprocess.run(MASKDPO + ["pair", str(src), "--unit", "span", "--nofact", "neutral"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["pairing"] == {"unit": "span", "nofact": "neutral"}
    proc = subprocess.run(MASKDPO + ["pair", str(src), "--unit", "clause"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "unknown --unit 'clause': choose one of sentence, span" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
