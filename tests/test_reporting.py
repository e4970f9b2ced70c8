"""`maskdpo report`: a page with real PNG plots from eval summaries and training logs; bad dirs exit 2."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.reporting import results_table, run_report, smooth

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _summary(name: str, score: float, best_of: dict | None = None) -> dict:
    summary = {"model": f"runs/{name}/hf", "name": name, "questions": 10, "replications": 3,
               "correct": score / 10, "incorrect": 10 - score / 10, "empty": 0.0, "score": score,
               "score_sd": 1.5, "per_replication": [], "per_topic": {},
               "labels": {"nofact": 1.5, "ok": 2.5, "contradictory": 4.0, "unverifiable": 1.0},
               "fact_precision": 33.333}
    if best_of:
        summary["best_of"] = best_of
    return summary


def _eval_dir(root: Path) -> Path:
    out = root / "eval"
    for summary in (_summary("base", 40.0), _summary("maskdpo", 62.5, {"1": 50.0, "4": 60.0, "16": 70.0})):
        (out / summary["name"]).mkdir(parents=True)
        (out / summary["name"] / "summary.json").write_text(json.dumps(summary))
    (out / "results.json").write_text(json.dumps({"models": ["base", "maskdpo"]}))
    return out


def _work_dir(root: Path, name: str, steps: int = 5) -> Path:
    work = root / name
    work.mkdir()
    lines = [json.dumps({"step": s, "epoch": s / steps, "loss": 0.69 - 0.05 * s, "reward_acc": s / steps,
                         "reward_margin": 0.1 * s, "lr": 5e-7}) for s in range(1, steps + 1)]
    (work / "train_log.jsonl").write_text("\n".join(lines) + "\n" + '{"step": 6, "lo')  # a torn last line
    return work


def test_report_renders_a_page_whose_images_are_png(tmp_path):
    inputs = [str(_eval_dir(tmp_path)), str(_work_dir(tmp_path, "maskdpo_run")), str(_work_dir(tmp_path, "dpo_run"))]
    page = Path(run_report(inputs, str(tmp_path / "report")))
    html = page.read_text()
    images = re.findall(r"src='data:image/png;base64,([^']+)'", html)
    assert len(images) == 4  # scores, counts, best-of-N, training
    for data in images:
        png = base64.b64decode(data)
        assert png.startswith(PNG_MAGIC) and len(png) > 1000
    md = (tmp_path / "report" / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(linked) == ["best_of.png", "counts.png", "scores.png", "training.png"]
    for name in linked:
        data = (tmp_path / "report" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert "maskdpo_run" in html and "+22.50" in md  # the delta against the first model


def test_results_table_deltas_against_the_first_model():
    headers, rows = results_table([_summary("a", 40.0), _summary("b", 45.25, {"2": 50.0})])
    assert headers[-2:] == ["Δ vs a", "best-of-2"]
    assert rows[0][-2:] == ["+0.00", "-"] and rows[1][-2:] == ["+5.25", "50.00"]


def test_results_table_shows_no_fact_sentences_and_fact_precision():
    headers, rows = results_table([_summary("a", 40.0), {**_summary("b", 0.0), "fact_precision": None}])
    no_fact, precision = headers.index("# no fact"), headers.index("% fact precision")
    assert [rows[0][no_fact], rows[0][precision]] == ["1.5", "33.33"]
    assert rows[1][precision] == "-"  # a model that stated no checkable fact has no precision


def test_smoothing_is_a_trailing_moving_average():
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert smooth([4.0, 0.0], 1) == [4.0, 0.0]


ANSWERS = {  # model -> (answer text, labels of its sentences in order)
    "base": ("Ana Vell was born in 1801. She was a potter. I hope this helps.", ["contradictory", "ok", "nofact"]),
    "dpo": ("Ana Vell was born in 1802. She lived in <Mora> & Dale.", ["ok", "unverifiable"]),
    "maskdpo": ("Ana Vell was born in 1802.", ["ok"]),
}


def _annotated_eval_dir(root: Path, questions: int = 12) -> Path:
    out = root / "eval"
    for name, (text, labels) in ANSWERS.items():
        (out / name).mkdir(parents=True)
        (out / name / "summary.json").write_text(json.dumps(_summary(name, 50.0)))
        spans = [(m.start(), m.end()) for m in re.finditer(r"[^.]+\.", text)]
        spans = [(a + (text[a] == " "), b) for a, b in spans]
        records = []
        for q in range(questions):
            sentences = [{"start": a, "end": b, "text": text[a:b], "label": label}
                         for (a, b), label in zip(spans, labels)]
            ok = sum(label in ("ok", "nofact") for label in labels)
            other = {"index": 1, "text": "Not shown.", "sentences": [], "n_correct": 0, "n_incorrect": 0,
                     "score": 0.0}
            records.append({"id": f"q{q}", "question": f"Who is person {q}?", "topic": f"topic {q % 3}",
                            "responses": [other, {"index": 0, "text": text, "sentences": sentences,
                                                  "n_correct": ok, "n_incorrect": len(labels) - ok,
                                                  "score": ok / len(labels)}]})
        (out / name / "annotated.r0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "results.json").write_text(json.dumps({"models": list(ANSWERS)}))
    return out


def test_example_answers_page_shows_each_question_side_by_side_coloured_by_label(tmp_path):
    page = Path(run_report([str(_annotated_eval_dir(tmp_path))], str(tmp_path / "report")))
    assert "href='examples.html'" in page.read_text()
    html = (tmp_path / "report" / "examples.html").read_text()
    questions = re.findall(r"<h2>Who is person (\d+)\?", html)
    assert len(questions) == 10 and len(set(questions)) == 10  # 10 of the 12, spread over them
    assert questions[0] == "0" and int(questions[-1]) >= 10
    first = html.split("<h2>")[1]
    assert [m for m in re.findall(r"<h3>(\w+)</h3>", first)] == ["base", "dpo", "maskdpo"]  # eval order
    spans = re.findall(r"<span class='(\w+)' title='\1'>([^<]*)</span>", first)
    assert spans == [("contradictory", "Ana Vell was born in 1801."), ("ok", "She was a potter."),
                     ("nofact", "I hope this helps."), ("ok", "Ana Vell was born in 1802."),
                     ("unverifiable", "She lived in &lt;Mora&gt; &amp; Dale."), ("ok", "Ana Vell was born in 1802.")]
    assert "Not shown." not in html  # the evaluated answer is the first response (index 0)
    assert "1 ok, 1 nofact, 1 contradictory; score 67%" in first


def test_work_dir_without_logs_is_bad_input(tmp_path):
    work = tmp_path / "runs" / "dpo"
    (work / "hf").mkdir(parents=True)
    with pytest.raises(MaskDPOError, match="train_log.jsonl") as err:
        run_report([str(work)], str(tmp_path / "report"))
    assert err.value.exit_code == 2
    (work / "train_log.jsonl").write_text("")
    with pytest.raises(MaskDPOError, match="no steps"):
        run_report([str(work)], str(tmp_path / "report"))


def test_report_command_exit_code_2_for_a_missing_dir(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "maskdpo_cli.cli", "report", str(tmp_path / "nope"),
                           "-o", str(tmp_path / "r")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no such directory" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_score_split_parts_sum_exactly_to_the_score_change():
    from maskdpo_cli.reporting import score_split

    def labelled(nofact: float, ok: float, wrong: float) -> dict:
        score = 100 * (nofact + ok) / (nofact + ok + wrong)
        return {"labels": {"nofact": nofact, "ok": ok, "contradictory": wrong / 2, "unverifiable": wrong / 2},
                "score": score}

    base, padded, better = labelled(10, 30, 60), labelled(60, 30, 60), labelled(10, 50, 40)
    for before, after in ((base, padded), (base, better), (padded, better)):
        split = score_split(before, after)
        assert split["filler"] + split["precision"] == pytest.approx(after["score"] - before["score"])
        assert split["total"] == pytest.approx(after["score"] - before["score"])
    # Filler alone: the precision of the fact-stating sentences is unchanged, so its part is 0.
    assert score_split(base, padded)["precision"] == pytest.approx(0.0) and score_split(base, padded)["filler"] > 0
    # Precision alone: the no-fact share is unchanged.
    assert score_split(base, better)["filler"] == pytest.approx(0.0) and score_split(base, better)["precision"] > 0
    assert score_split(base, labelled(5, 0, 0)) is None  # nothing stated: no precision to split by


def test_results_table_shows_facts_per_answer_and_the_probe():
    with_facts = {**_summary("b", 50.0), "per_answer": {"nofact": 0.5, "ok": 1.0, "wrong": 1.0,
                                                        "facts_correct": 1.25, "facts_incorrect": 2.0},
                  "atomic_fact_precision": 38.46, "probe_accuracy": 0.4}
    headers, rows = results_table([_summary("a", 40.0), with_facts])
    cells = dict(zip(headers, rows[1]))
    assert (cells["no fact / answer"], cells["correct facts / answer"], cells["incorrect facts / answer"],
            cells["% atomic precision"], cells["% probe"]) == ("0.50", "1.25", "2.00", "38.46", "40.00")
    assert dict(zip(headers, rows[0]))["% probe"] == "-"  # a summary without a probe
    assert "% probe" not in results_table([_summary("a", 40.0)])[0]
