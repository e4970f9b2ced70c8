"""kill -9 at random moments, then the same command again: the result is the uninterrupted one.

Each long command (annotate, eval, train; sample has its own test in test_sampling.py) runs
once uninterrupted as the reference, then in another output it is killed several times: once
after it has visibly made progress (so at least one kill lands mid-work), then at random
moments drawn from a seeded generator (start-up, model loading, writing, checkpointing),
each time restarted with the very same command line. Finally the command runs to the end
and its output must equal the reference: no record lost, none duplicated, no torn line.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import alma_pairs, safetensors_of
from judge_server import JudgeServer

# The tier run by `make test-all` only: kill -9 loops, each command run to the end several times.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
MASKDPO = [sys.executable, "-m", "maskdpo_cli.cli"]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}


def finish(cmd: list[str]) -> float:
    """Run to the end; return the wall time."""
    start = time.monotonic()
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return time.monotonic() - start


def kill_once(cmd: list[str], when: Callable[[float], bool], timeout: float = 120) -> bool:
    """Start cmd and SIGKILL it as soon as when(elapsed seconds) holds; False if it finished first."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.monotonic()
    while proc.poll() is None:
        elapsed = time.monotonic() - start
        if when(elapsed) or elapsed > timeout:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    return False


def kill_repeatedly(cmd: list[str], progress: Callable[[], int], total: int, reference_seconds: float,
                    seed: int, random_kills: int = 3) -> list[int]:
    """One kill once progress() shows work done but not all, then `random_kills` at random
    times within a reference run's duration; returns progress() after each kill."""
    rng = random.Random(seed)
    seen = []
    before = progress()
    assert kill_once(cmd, lambda _: before < progress() < total), "the first run ended before it could be killed"
    seen.append(progress())
    for _ in range(random_kills):
        moment = rng.uniform(0.05, 1.0) * reference_seconds
        kill_once(cmd, lambda elapsed: elapsed >= moment)
        seen.append(progress())
    return seen


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


# --------------------------------------------------------------------------- annotate

def _samples(path: Path, questions: int) -> Path:
    """Responses whose sentences all differ, so every one costs the judge 1 to 3 requests."""
    facts = ["is near Paris.", "met people from Mars.", "was born near Berlin.", "said hello to everyone."]
    records = []
    for q in range(questions):
        responses = [{"index": r, "text": " ".join(f"Person {q}-{r}-{s} {facts[(q + r + s) % 4]}" for s in range(3))}
                     for r in range(2)]
        records.append({"id": f"q{q}", "question": f"Who is person {q}?", "document": "Paris is in France.",
                        "responses": responses})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_annotate_survives_kill_9(tmp_path):
    total = 16
    samples = _samples(tmp_path / "samples.jsonl", total)
    with JudgeServer() as server:
        server.delay_first, server.delay = 10**9, 0.01  # every reply takes a little while, as a real judge does
        cmd = [*MASKDPO, "annotate", str(samples), "--annotator", "anah-v2", "--judge-url", server.url,
               "--concurrency", "2"]
        reference = tmp_path / "reference.jsonl"
        seconds = finish([*cmd, "-o", str(reference)])
        paid_once = server.chat_requests

        out = tmp_path / "out.jsonl"
        seen = kill_repeatedly([*cmd, "-o", str(out)], lambda: lines(out), total, seconds, seed=1)
        finish([*cmd, "-o", str(out)])
    assert out.read_bytes() == reference.read_bytes()
    assert any(0 < n < total for n in seen), seen
    # Judgments made before a kill are kept (the judgments cache): the interrupted run paid for
    # little more than one run, the requests in flight at each kill.
    assert server.chat_requests - paid_once <= paid_once + 4 * 2 * 3, (paid_once, server.chat_requests)
    # Nothing was judged twice: a judgment written before a kill was found on disk by every later
    # run (each one indexes the lines the runs before it appended), so each key is written once.
    keys = [json.loads(line)["key"] for line in Path(f"{out}.judgments.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == len(Path(f"{reference}.judgments.jsonl").read_text().splitlines())
    assert Path(f"{out}.judgments.sqlite").exists()


# --------------------------------------------------------------------------- eval

@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from maskdpo_cli.world.generator import make_world

    out = tmp_path_factory.mktemp("world")
    make_world(5, str(out), n_topics=4, entities_per_topic=4, bios_per_entity=1)
    return out


def test_eval_survives_kill_9(world, tiny_llama_path, tmp_path):
    test_questions = world / "test_questions.jsonl"
    questions = lines(test_questions)
    cmd = [*MASKDPO, "eval", str(test_questions), "--model", f"a={tiny_llama_path}", "--model",
           f"b={tiny_llama_path}", "--annotator", f"world:{world}", "--replications", "2",
           "--max-new-tokens", "16", "--seed", "4", "--batch-size", "1"]
    reference = tmp_path / "reference"
    seconds = finish([*cmd, "-o", str(reference)])

    out = tmp_path / "out"
    files = [f"{m}/{kind}.r{r}.jsonl" for m in "ab" for r in range(2) for kind in ("samples", "annotated")]
    written = lambda: sum(lines(out / f) for f in files)  # noqa: E731
    seen = kill_repeatedly([*cmd, "-o", str(out)], written, questions * len(files), seconds, seed=2)
    finish([*cmd, "-o", str(out)])
    assert any(0 < n < questions * len(files) for n in seen), seen
    for name in [*files, "a/summary.json", "b/summary.json", "results.md"]:
        assert (out / name).read_bytes() == (reference / name).read_bytes().replace(
            str(reference).encode(), str(out).encode()), name
    assert not list(out.rglob("*.lock")) and not list(out.rglob(".*.tmp"))


# --------------------------------------------------------------------------- train

def test_train_survives_kill_9_and_resumes_from_its_last_checkpoint(tiny_llama_path, tmp_path):
    import torch

    pairs = alma_pairs(tmp_path / "pairs.jsonl", 24)
    cmd = [*MASKDPO, "train", str(pairs), "--model", str(tiny_llama_path), "--recipe", "tiny_cpu_maskdpo",
           "--batch-size", "2", "--epochs", "2", "--lr", "1e-3", "--gpus", "0", "--seed", "3"]
    steps = 24
    reference = tmp_path / "reference"
    seconds = finish([*cmd, "--work-dir", str(reference)])

    work = tmp_path / "work"
    log = work / "train_log.jsonl"
    seen = kill_repeatedly([*cmd, "--work-dir", str(work)], lambda: lines(log), steps, seconds, seed=3)
    assert any(0 < n < steps for n in seen), seen
    resumed = subprocess.run([*cmd, "--work-dir", str(work)], env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr

    expected, got = (safetensors_of(w / "hf" / "model.safetensors") for w in (reference, work))
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-5, msg=name)
    steps_logged = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps_logged == list(range(1, steps + 1))  # each step once: those past the checkpoint were redone


def test_train_refuses_to_resume_a_run_with_other_settings(tiny_llama_path, tmp_path):
    pairs = alma_pairs(tmp_path / "pairs.jsonl", 4)
    cmd = [*MASKDPO, "train", str(pairs), "--model", str(tiny_llama_path), "--recipe", "tiny_cpu_maskdpo",
           "--batch-size", "2", "--gpus", "0", "--max-length", "40", "--work-dir", str(tmp_path / "W")]
    first = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "4 of 4 pairs truncated at max_length 40" in first.stderr  # long answers are cut, and counted
    other = subprocess.run([*cmd, "--lr", "0.5"], env=ENV, capture_output=True, text=True, timeout=300)
    assert other.returncode == 2
    assert "other settings (lr" in other.stderr and "--no-resume" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    fresh = subprocess.run([*cmd, "--lr", "0.5", "--no-resume"], env=ENV, capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    assert "resuming" not in fresh.stderr


def _children(pid: int) -> list[int]:
    """Every live descendant of pid (from /proc: Linux)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        kids = [child for child, parent in parents.items() if parent in frontier]
        found += kids
        frontier = kids
    return found


def _rank_pids(pid: int) -> dict[int, int]:
    """{LOCAL_RANK: pid} of the training ranks under a `maskdpo train --nproc` process."""
    ranks = {}
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            environ = dict(item.split(b"=", 1) for item in Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
                           if b"=" in item)
        except OSError:
            continue
        if b"maskdpo_cli.torchrun_launch" in cmdline and b"LOCAL_RANK" in environ:
            ranks[int(environ[b"LOCAL_RANK"])] = child
    return ranks


def _wait_for(condition: Callable[[], bool], timeout: float = 240) -> None:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.01)


def test_two_process_train_survives_kill_9_of_a_rank_and_of_maskdpo(tiny_llama_path, tmp_path):
    pairs = alma_pairs(tmp_path / "pairs.jsonl", 24)
    work = tmp_path / "work"
    log = work / "train_log.jsonl"
    cmd = [*MASKDPO, "train", str(pairs), "--model", str(tiny_llama_path), "--recipe", "tiny_cpu_maskdpo",
           "--batch-size", "2", "--epochs", "1", "--lr", "1e-3", "--gpus", "0", "--nproc", "2", "--seed", "3",
           "--work-dir", str(work)]
    steps = 12
    env = {**ENV, "OMP_NUM_THREADS": "1"}

    # kill -9 of rank 1 mid-training: torchrun ends the run, maskdpo says it failed.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: lines(log) >= 3 or proc.poll() is not None)
    ranks = _rank_pids(proc.pid)
    assert proc.poll() is None and set(ranks) == {0, 1}, "the run ended before it could be killed"
    os.kill(ranks[1], signal.SIGKILL)
    assert proc.wait(timeout=120) != 0
    assert 3 <= lines(log) < steps

    # kill -9 of maskdpo itself: its torchrun and both ranks go with it, nothing races the rerun.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: len(_rank_pids(proc.pid)) == 2 or proc.poll() is not None)
    left = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _wait_for(lambda: not any(Path(f"/proc/{pid}").exists() and b"Z" not in _state(pid) for pid in left), 60)

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stderr
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == list(range(1, steps + 1))
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(work / "hf").config.num_hidden_layers == 2  # the export loads


def _state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return b"X"
