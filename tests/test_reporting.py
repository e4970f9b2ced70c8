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
from maskdpo_cli.reporting import results_table, run_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _summary(name: str, score: float, best_of: dict | None = None) -> dict:
    summary = {"model": f"runs/{name}/hf", "name": name, "questions": 10, "replications": 3,
               "correct": score / 10, "incorrect": 10 - score / 10, "empty": 0.0, "score": score,
               "score_sd": 1.5, "per_replication": [], "per_topic": {}}
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
