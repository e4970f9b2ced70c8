"""A full disk or an unwritable output: exit 2 with one line that names the output and the
OS's reason, and nothing lost. Atomic writers (pair, world make, cluster, report, the eval's
own files) leave the previous output byte-identical; append-only writers (sample, annotate,
eval's per-model files) keep every record written so far and a rerun resumes to the result
of an uninterrupted run.

A full disk is simulated for real: the command runs under RLIMIT_FSIZE, so the kernel fails
writes past the limit with EFBIG ("File too large"; Python ignores SIGXFSZ). An unwritable
output is a directory with mode 0o555; tests run as root, where permission bits do not
stop writes, so the command then runs without CAP_DAC_OVERRIDE (dropped from its bounding
set before exec), which makes root obey the bits like anyone else.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MASKDPO = [sys.executable, "-m", "maskdpo_cli.cli"]
# PYTHONDONTWRITEBYTECODE: a child under a file-size limit would leave truncated .pyc files
# in the tree, and every later import of those modules would fail.
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2", "PYTHONDONTWRITEBYTECODE": "1"}
TOO_LARGE = os.strerror(errno.EFBIG)    # "File too large"
DENIED = os.strerror(errno.EACCES)      # "Permission denied"
NO_SPACE = os.strerror(errno.ENOSPC)    # "No space left on device"

_LIBC = ctypes.CDLL(None, use_errno=True)
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE = 24, 1


def _limits(fsize: int | None, readonly: bool):
    def apply() -> None:  # runs in the child between fork and exec
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        if readonly and os.geteuid() == 0 and _LIBC.prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE)")
    return apply


def cli(*args: str | Path, fsize: int | None = None, readonly: bool = False,
        stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    """The real command line, with a file-size limit (a full disk) and/or obeying permission bits."""
    return subprocess.run([*MASKDPO, *map(str, args)], env=ENV, stdout=stdout, stderr=subprocess.PIPE,
                          text=True, timeout=120, preexec_fn=_limits(fsize, readonly))


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr
    return result


def assert_disk_error(result: subprocess.CompletedProcess, path: Path | str, reason: str) -> str:
    """Exit 2, no traceback, and a last stderr line naming the path and the OS's reason."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("maskdpo: error: "), result.stderr
    assert str(path) in line and reason in line, line
    return line


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder, hidden ones included (a leftover temp or lock file shows up)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def complete_lines(data: bytes) -> bytes:
    return data[:data.rfind(b"\n") + 1]


@pytest.fixture
def readonly(tmp_path):
    """A factory: make a directory unwritable for the commands run with readonly=True."""
    probe = tmp_path / "probe"
    probe.mkdir()
    probe.chmod(0o555)
    try:
        tried = subprocess.run([sys.executable, "-c", f"open({str(probe / 'x')!r}, 'w')"],
                               capture_output=True, preexec_fn=_limits(None, True))
    except OSError:  # no CAP_SETPCAP to drop a capability
        tried = None
    if tried is None or tried.returncode == 0:
        pytest.skip("cannot make a directory unwritable for this user")
    made: list[Path] = []

    def lock(folder: Path) -> Path:
        folder.chmod(0o555)
        made.append(folder)
        return folder

    yield lock
    for folder in made:
        folder.chmod(0o755)


# ---------------------------------------------------------------- inputs


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from maskdpo_cli.world import make_world

    out = tmp_path_factory.mktemp("world")
    make_world(3, str(out), n_topics=4, entities_per_topic=2, bios_per_entity=1)
    return out


@pytest.fixture(scope="module")
def samples(world: Path, tmp_path_factory) -> Path:
    """Samples of the world's train questions: the true document, and a copy with a false fact."""
    records = []
    for line in (world / "train_questions.jsonl").read_text().splitlines():
        q = json.loads(line)
        first = q["document"].split(". ")[0]
        false = q["document"].replace(first, first.rsplit(" ", 1)[0] + " Nowhereville", 1)
        records.append({**q, "responses": [{"index": 0, "text": q["document"]}, {"index": 1, "text": false}]})
    path = tmp_path_factory.mktemp("samples") / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def annotated(world: Path, samples: Path) -> Path:
    from maskdpo_cli.annotation import JudgeConfig, run_annotate

    path = samples.parent / "annotated.jsonl"
    run_annotate(str(samples), str(path), annotator=f"world:{world}", judge=JudgeConfig())
    return path


# ---------------------------------------------------------------- atomic writers


def test_pair_on_a_full_disk_keeps_the_previous_pairs(tmp_path, annotated):
    out = tmp_path / "pairs.jsonl"
    ok(cli("pair", annotated, "-o", out))
    before = snapshot(tmp_path)
    assert len(before[out.name].splitlines()) >= 2
    assert_disk_error(cli("pair", annotated, "-o", out, fsize=len(before[out.name]) // 2), out, TOO_LARGE)
    assert snapshot(tmp_path) == before  # untouched, and no temp file left behind


def test_pair_into_a_read_only_directory(tmp_path, annotated, readonly):
    folder = tmp_path / "ro"
    folder.mkdir()
    ok(cli("pair", annotated, "-o", folder / "pairs.jsonl"))
    before = snapshot(folder)
    readonly(folder)
    assert_disk_error(cli("pair", annotated, "-o", folder / "pairs.jsonl", readonly=True),
                      folder / "pairs.jsonl", DENIED)
    assert snapshot(folder) == before


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_records_to_a_full_stdout(annotated):
    with open("/dev/full", "w") as full:
        result = cli("pair", annotated, stdout=full)
    assert_disk_error(result, "<stdout>", NO_SPACE)


def test_world_make_on_a_full_disk_and_into_a_read_only_directory(tmp_path, readonly):
    out = tmp_path / "w"
    ok(cli("world", "make", "--seed", "3", "--topics", "4", "--entities", "2", "-o", out))
    before = snapshot(out)
    other_world = ("world", "make", "--seed", "4", "--topics", "4", "--entities", "2", "-o", out)
    assert_disk_error(cli(*other_world, fsize=100), out / "world.json", TOO_LARGE)
    assert snapshot(out) == before
    readonly(out)
    readonly(tmp_path)
    assert_disk_error(cli(*other_world, readonly=True), out / "world.json", DENIED)
    line = assert_disk_error(cli("world", "make", "-o", tmp_path / "new", readonly=True), tmp_path / "new", DENIED)
    assert "cannot create the directory" in line
    assert snapshot(out) == before and not (tmp_path / "new").exists()


def test_report_on_a_full_disk_and_into_a_read_only_directory(tmp_path, readonly):
    evaluated = tmp_path / "eval" / "base"
    evaluated.mkdir(parents=True)
    (evaluated / "summary.json").write_text(json.dumps({
        "model": "base", "name": "base", "questions": 2, "replications": 1, "correct": 3.0, "incorrect": 1.0,
        "empty": 0.0, "score": 75.0, "score_sd": 0.0, "per_replication": [], "per_topic": {}}))
    out = tmp_path / "report"
    ok(cli("report", tmp_path / "eval", "-o", out))
    before = snapshot(out)
    assert {"report.html", "report.md", "scores.png"} <= set(before)
    # The plots are written first: the first PNG fails, and the previous plot stays whole.
    assert_disk_error(cli("report", tmp_path / "eval", "-o", out, fsize=1000), out / "scores.png", TOO_LARGE)
    assert snapshot(out) == before
    readonly(out)
    assert_disk_error(cli("report", tmp_path / "eval", "-o", out, readonly=True), out, DENIED)
    assert snapshot(out) == before


@pytest.mark.slow  # embeds with a policy twice (about 6 s)
def test_cluster_on_a_full_disk_keeps_the_previous_splits(tmp_path, world, tiny_llama_path):
    out = tmp_path / "clusters"
    out.mkdir()
    for name in ("near.jsonl", "far.jsonl", "random.jsonl", "assignment.tsv", "assignment.json"):
        (out / name).write_text(f"the previous run's {name}\n")  # any content: it must survive as it is
    before = snapshot(out)
    result = cli("cluster", "--model", tiny_llama_path, "--train", world / "train_questions.jsonl",
                 "--test", world / "test_questions.jsonl", "-o", out, fsize=200)
    assert_disk_error(result, out / "near.jsonl", TOO_LARGE)
    assert snapshot(out) == before


# ---------------------------------------------------------------- append-only writers


def test_annotate_on_a_full_disk_keeps_what_was_written_and_resumes(tmp_path, world, samples):
    args = ("annotate", samples, "--annotator", f"world:{world}", "-o")
    reference = tmp_path / "reference.jsonl"
    ok(cli(*args, reference))
    full = reference.read_bytes()
    first = full[:full.index(b"\n") + 1]
    out = tmp_path / "out.jsonl"
    # No room even for the lock file's pid: refused before anything is annotated, no lock left.
    assert_disk_error(cli(*args, out, fsize=0), out, TOO_LARGE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reference.jsonl"]
    # Room for one record and a bit: the first stays, the torn second is cut on resume.
    line = assert_disk_error(cli(*args, out, fsize=len(first) + 10), out, TOO_LARGE)
    assert "rerun to resume" in line
    assert out.read_bytes().startswith(first) and not Path(f"{out}.lock").exists()
    assert "1 already done" in ok(cli(*args, out)).stderr
    assert out.read_bytes() == full


def test_annotate_into_a_read_only_directory_keeps_the_previous_output(tmp_path, world, samples, readonly):
    folder = tmp_path / "ro"
    folder.mkdir()
    out = folder / "annotated.jsonl"
    lines = samples.read_text().splitlines(keepends=True)
    fewer = tmp_path / "fewer.jsonl"
    fewer.write_text("".join(lines[:-1]))
    ok(cli("annotate", fewer, "--annotator", f"world:{world}", "-o", out))
    before = snapshot(folder)
    readonly(folder)
    result = cli("annotate", samples, "--annotator", f"world:{world}", "-o", out, readonly=True)
    assert_disk_error(result, out, DENIED)
    assert snapshot(folder) == before


def test_judgments_on_a_full_disk_are_kept_for_the_resume(tmp_path):
    from judge_server import JudgeServer

    record = {"id": "en1", "question": "What is the capital of France?", "document": "Paris is the capital.",
              "responses": [{"index": 0, "text": "Hello! The capital is Paris. It is near Berlin."}]}
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps(record) + "\n")
    out = tmp_path / "out.jsonl"
    cache = Path(f"{out}.judgments.jsonl")
    args = ("annotate", samples, "--concurrency", "1", "-o", out)
    with JudgeServer() as server:  # "Hello!" is decided at turn 1: its judgment is written first
        result = cli(*args, "--judge-url", server.url, fsize=300)
    line = assert_disk_error(result, cache, TOO_LARGE)
    assert "cannot write judgments" in line and not Path(f"{out}.lock").exists()
    with JudgeServer() as server:
        ok(cli(*args, "--judge-url", server.url))
    assert server.chat_requests == 1 + 3 + 3 - 1  # "Hello!" is not judged again
    labels = [s["label"] for s in json.loads(out.read_text())["responses"][0]["sentences"]]
    assert labels == ["nofact", "ok", "contradictory"]


@pytest.mark.slow  # three `maskdpo sample` processes, each loading a model
def test_sample_on_a_full_disk_keeps_what_was_written_and_resumes(tmp_path, world, tiny_llama_path):
    args = ("sample", world / "train_questions.jsonl", "--model", tiny_llama_path, "-n", "2",
            "--max-new-tokens", "6", "-o")
    reference = tmp_path / "reference.jsonl"
    ok(cli(*args, reference))
    full = reference.read_bytes()
    first = full[:full.index(b"\n") + 1]
    assert full.count(b"\n") >= 3
    out = tmp_path / "out.jsonl"
    line = assert_disk_error(cli(*args, out, fsize=len(first) + 10), out, TOO_LARGE)
    assert "records written so far are kept" in line
    assert complete_lines(out.read_bytes()) == first
    assert "(1 resumed)" in ok(cli(*args, out)).stderr
    assert out.read_bytes() == full


@pytest.mark.slow  # two `maskdpo eval` processes, each loading a model
def test_eval_on_a_full_disk_keeps_what_was_written_and_resumes(tmp_path, world, tiny_llama_path):
    out = tmp_path / "eval"
    args = ("eval", world / "test_questions.jsonl", "--model", f"tiny={tiny_llama_path}", "--annotator",
            f"world:{world}", "--replications", "1", "--max-new-tokens", "6", "-o", out)
    questions = len((world / "test_questions.jsonl").read_bytes())
    # Room for the questions (written first) but not for everything: some per-model file fails.
    line = assert_disk_error(cli(*args, fsize=questions + 500), out, TOO_LARGE)
    failed = Path(re.search(r"error: (\S+): ", line).group(1))
    assert failed.parent == out / "tiny", line
    kept = {p: complete_lines(p.read_bytes()) for p in (out / "tiny").glob("*.jsonl")}
    ok(cli(*args))
    for path, lines in kept.items():
        assert path.read_bytes().startswith(lines), path  # nothing written before was rewritten
    summary = json.loads((out / "tiny" / "summary.json").read_text())
    assert summary["questions"] == 2 and (out / "results.md").is_file()
    ids = [json.loads(line)["id"] for line in (out / "tiny" / "annotated.r0.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 2


# ---------------------------------------------------------------- the last line of defence


def test_an_os_error_from_an_unguarded_write_site_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    from maskdpo_cli import cli as cli_module

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, NO_SPACE, str(tmp_path / "plot.png"))

    monkeypatch.setattr("maskdpo_cli.pairing.run_pair", full_disk)
    monkeypatch.setattr(sys, "argv", ["maskdpo", "pair", "-"])
    with pytest.raises(SystemExit) as exited:
        cli_module.main()
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"maskdpo: error: {tmp_path / 'plot.png'}: {NO_SPACE}"

    def a_bug(*args, **kwargs):
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))  # not the disk: still an internal error

    monkeypatch.setattr("maskdpo_cli.pairing.run_pair", a_bug)
    with pytest.raises(SystemExit) as exited:
        cli_module.main()
    assert exited.value.code == 1
    assert "internal error" in capsys.readouterr().err
