"""experiments/: the three generalization studies run end to end (--quick) and write well-formed tables."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

# The tier run by `make test-all` only: three studies end to end, many minutes on a CPU. The whole
# suite once took 40 min on a loaded machine, so this one test gets 40 min rather than the
# default per-test limit (pyproject.toml).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {"table4": "table4_scaling.py", "table5": "table5_clusters.py", "table6": "table6_best_of.py"}
COLUMNS = ["# correct", "# incorrect", "% score", "# no fact", "% fact precision"]
CELL = re.compile(r"^(-|\d+\.\d\d ± \d+\.\d\d)$")  # mean ± sd over seeds, or "-" when nothing to score


def _run(script: str, runs: Path, tables: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "experiments" / script), "--quick", "--seeds", "3",
                           "-o", str(runs), "--tables", str(tables)], capture_output=True, text=True, cwd=ROOT)


def _markdown_rows(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = lambda line: [c.strip() for c in line.strip("|").split("|")]  # noqa: E731
    assert set(lines[1].replace("|", "")) <= set("-:")  # the separator row
    return split(lines[0]), [split(line) for line in lines[2:]]


def test_quick_studies_write_well_formed_tables_and_resume(tmp_path: Path):
    runs, tables = tmp_path / "runs", tmp_path / "tables"
    for name, script in SCRIPTS.items():
        proc = _run(script, runs, tables)
        assert proc.returncode == 0, proc.stderr[-3000:]
        headers, rows = _markdown_rows((tables / f"{name}.md").read_text())
        assert all(c in headers for c in COLUMNS)
        data = json.loads((tables / f"{name}.json").read_text())
        assert data["seeds"] == [3] and data["columns"] == headers[-len(data["columns"]):]
        assert len(rows) == len(data["rows"]) >= 2
        for row, record in zip(rows, data["rows"]):
            assert len(row) == len(headers)
            for cell in row[-len(data["columns"]):]:
                assert CELL.match(cell), (name, cell)
            score = record["% score"]
            assert score is not None and 0.0 <= score["mean"] <= 100.0
        png = (tables / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000

    table4 = json.loads((tables / "table4.json").read_text())
    by_data = {r["data"]: r for r in table4["rows"]}
    # equal budgets: the two axes train on the same number of pairs, the topics axis on fewer topics
    for frac in ("1/3",):  # --quick trains one budget below the full one
        topics_axis, questions_axis = by_data[f"{frac} by topics"], by_data[f"{frac} by questions"]
        assert topics_axis["pairs"] == questions_axis["pairs"]
        assert float(topics_axis["topics"]) < float(questions_axis["topics"])
    table5 = json.loads((tables / "table5.json").read_text())
    assert {(r["embedder"], r["split"]) for r in table5["rows"]} >= {
        (e, s) for e in ("policy", "minilm") for s in ("near", "far", "random")}
    table6 = json.loads((tables / "table6.json").read_text())
    assert [r["model"] for r in table6["rows"]] == ["base", "maskdpo"]
    assert all(r["best-of-1"] and r["best-of-4"] for r in table6["rows"])

    # A rerun trains and samples nothing again: every step's output is already there.
    proc = _run(SCRIPTS["table6"], runs, tables)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "$ maskdpo train" not in proc.stderr and "$ maskdpo world" not in proc.stderr
