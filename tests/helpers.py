"""Small helpers shared by the test files (imported as `helpers`: tests/ is on sys.path)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MASKDPO = [sys.executable, "-m", "maskdpo_cli.cli"]
# Left over from a launcher that started the test run, these would make a `maskdpo train`
# child wait for peers that never come (or pick DeepSpeed's accelerator for it).
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "DS_ACCELERATOR")


def training_env(threads: int) -> dict[str, str]:
    """The environment of a `maskdpo train` child: this checkout first on PYTHONPATH, `threads`
    OpenMP threads per process, and no launcher or SLURM variables."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**{k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES and not k.startswith("SLURM_")},
            "PYTHONPATH": path, "OMP_NUM_THREADS": str(threads)}


def train_log(work: Path) -> list[dict]:
    """The records of WORK/train_log.jsonl, one per optimizer step."""
    return [json.loads(line) for line in (work / "train_log.jsonl").read_text().splitlines()]


def safetensors_of(path: Path) -> dict:
    """name -> tensor of one .safetensors file."""
    from safetensors.torch import load_file

    return load_file(str(path))


def exported_weights(work: Path) -> dict:
    """name -> tensor of the model a training run exported to WORK/hf."""
    return safetensors_of(work / "hf" / "model.safetensors")


def run_ok(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run a command from the repository root; it must succeed (the tail of its stderr says why not)."""
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def labels_of(record: dict) -> dict[str, str]:
    """{sentence text: label} over every response of an annotated record."""
    return {s["text"]: s["label"] for resp in record["responses"] for s in resp["sentences"]}


def run_cli(args: list, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """The real `maskdpo` entry point in-process: (exit code, stdout, stderr)."""
    from maskdpo_cli.cli import main

    old = sys.argv
    sys.argv = ["maskdpo", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def alma_pairs(path: Path, count: int) -> Path:
    """`count` pairs in the authors' format (no spans), each with hallucinated and correct sentences."""
    records = []
    for i in range(count):
        chosen = [f"Alma {i} lives in Paris.", "She is a painter.", "She was born in 1950."]
        rejected = [f"Alma {i} lives in Rome.", "She is a painter.", "She was born in 1990."]
        records.append({
            "id": f"p{i}", "prompt": [{"role": "user", "content": f"Who is Alma {i}?"}],
            "chosen": [{"role": "assistant", "content": " ".join(chosen)}],
            "rejected": [{"role": "assistant", "content": " ".join(rejected)}],
            "chosen_item": {"sents": chosen, "type": ["no_hallucination", "no_hallucination", "hallucination"]},
            "rejected_item": {"sents": rejected, "type": ["hallucination", "no_hallucination", "hallucination"]},
        })
    return write_jsonl(path, records)


def kill_after_lines(cmd: list[str], out: Path, lines: int, env: dict[str, str], timeout: float = 60) -> int:
    """Start `cmd`, SIGKILL it once `out` holds `lines` complete lines; the lines written by then."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < lines):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return out.read_text().count("\n")
