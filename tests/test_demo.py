"""`maskdpo demo --quick` end to end on the embedded world: the main job, as a user runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from maskdpo_cli.reporting import score_split

# The tier run by `make test-all` only: the whole demo, minutes on a CPU.
pytestmark = pytest.mark.slow

MASKDPO = [sys.executable, "-m", "maskdpo_cli.cli"]


def test_quick_demo_runs_end_to_end_and_resumes(tmp_path: Path):
    out = tmp_path / "demo"
    proc = subprocess.run(MASKDPO + ["demo", "--quick", "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == ""  # records and tables never go to stdout

    table = (out / "RESULTS.md").read_text()
    rows = [line for line in table.splitlines() if re.match(r"\| (base|dpo|maskdpo) \|", line)]
    assert [row.split("|")[1].strip() for row in rows] == ["base", "dpo", "maskdpo"]
    for row in rows:
        score = float(row.split("|")[4].split("±")[0])
        assert 0.0 <= score <= 100.0
    # the quick world cannot separate the models: the table says so and points to the full demo
    assert "SMOKE RUN" in table and "too small to separate the models" in table and "`maskdpo demo`" in table
    for name in ("base", "dpo", "maskdpo"):
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["questions"] > 0 and summary["replications"] == len(summary["per_replication"])
        total = summary["correct"] + summary["incorrect"]
        assert abs(summary["score"] - 100 * summary["correct"] / total) < 1e-6
    assert (out / "report" / "report.html").stat().st_size > 1000
    # Under the table, one line splits each score change into filler share and fact precision,
    # parts that sum to the change, with the change in correct and incorrect facts per answer.
    line = table.split("SMOKE RUN")[0].strip().splitlines()[-1]
    assert line.startswith("Where the score change comes from") and "dpo vs base" in line and "maskdpo vs base" in line
    assert "correct facts / answer" in line and "incorrect facts / answer" in line
    summaries = {name: json.loads((out / name / "summary.json").read_text()) for name in ("base", "dpo", "maskdpo")}
    for name in ("dpo", "maskdpo"):
        split = score_split(summaries["base"], summaries[name])
        change = summaries[name]["score"] - summaries["base"]["score"]
        assert abs(split["filler"] + split["precision"] - change) < 1e-9
        assert f"{name} vs base: {change:+.2f} points = {split['filler']:+.2f} from the filler share" in line
        assert set(summaries[name]["per_answer"]) >= {"nofact", "facts_correct", "facts_incorrect"}
    for name in ("maskdpo", "dpo"):
        assert (out / "runs" / name / "hf" / "config.json").is_file()

    # A rerun reuses everything already done: nothing is trained again, the table is the same.
    trained = (out / "runs" / "maskdpo" / "hf" / "config.json").stat().st_mtime_ns
    proc = subprocess.run(MASKDPO + ["demo", "--quick", "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "runs" / "maskdpo" / "hf" / "config.json").stat().st_mtime_ns == trained
    assert (out / "RESULTS.md").read_text() == table
