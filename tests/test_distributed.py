"""Training on several processes, on the CPU over gloo, through the path N GPUs take.

Tiny random Llama, 8 pairs, global batch 2, 1 epoch: one process is the reference; two
processes that `maskdpo train --nproc 2` starts, two that torchrun starts, and two that
look like srun's tasks must log the same per-step losses (reduced over the ranks: the
global batch) and end with the same weights. Plus the launcher detection, the process
count checks, which need no processes at all (DeepSpeed: tests/test_deepspeed.py).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maskdpo_cli.process_group import Launch, detect_launch, first_slurm_host, process_count
from maskdpo_cli.errors import MaskDPOError

from helpers import MASKDPO, REPO, alma_pairs, exported_weights, run_ok, train_log, training_env

# One thread per rank: the machine is small, and torchrun gives each rank one as well.
ENV = training_env(threads=1)


def train_args(pairs: Path, model: Path, work: Path) -> list[str]:
    return ["train", str(pairs), "--model", str(model), "--recipe", "tiny_cpu_maskdpo", "--batch-size", "2",
            "--epochs", "1", "--lr", "1e-3", "--gpus", "0", "--seed", "5", "--work-dir", str(work)]


def run(cmd: list[str], timeout: int = 400) -> subprocess.CompletedProcess:
    return run_ok(cmd, ENV, timeout)


def assert_same_training(work: Path, reference: Path) -> None:
    got, expected = train_log(work), train_log(reference)
    assert [r["step"] for r in got] == [r["step"] for r in expected] == [1, 2, 3, 4]
    for mine, theirs in zip(got, expected):
        for key in ("loss", "reward_acc", "reward_margin"):
            assert mine[key] == pytest.approx(theirs[key], abs=2e-3), (mine["step"], key)
    assert got[0]["loss"] == pytest.approx(0.693147, abs=1e-5)
    a, b = exported_weights(work), exported_weights(reference)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    summary = json.loads((work / "train_summary.json").read_text())
    assert summary["pairs_trained"] == 8  # the global batch's pairs, not rank 0's share
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(work / "hf")  # the export loads
    assert AutoTokenizer.from_pretrained(work / "hf").is_fast and model.config.num_hidden_layers == 2


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_llama_path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dist")
    pairs = alma_pairs(root / "pairs.jsonl", 8)
    reference = root / "one"
    run([*MASKDPO, *train_args(pairs, tiny_llama_path, reference)])
    return {"root": root, "pairs": pairs, "model": tiny_llama_path, "reference": reference}


@pytest.mark.slow  # several training processes
def test_nproc_2_computes_what_one_process_computes(data):
    work = data["root"] / "nproc2"
    done = run([*MASKDPO, *train_args(data["pairs"], data["model"], work), "--nproc", "2"])
    assert "micro 1 x 1 accumulation x 2" in done.stderr and "2 processes (gloo)" in done.stderr
    assert done.stderr.count("trained 8 pairs") == 1 and done.stdout == ""
    assert_same_training(work, data["reference"])


@pytest.mark.slow  # several training processes
def test_torchrun_started_by_the_user_gives_the_same_result(data):
    work = data["root"] / "torchrun"
    done = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "maskdpo_cli.cli", *train_args(data["pairs"], data["model"], work)])
    assert done.stderr.count("trained 8 pairs") == 1  # rank 0 reports, the other rank stays quiet
    assert done.stderr.count("0 of 8 pairs truncated") == 1  # only rank 0 validated
    assert_same_training(work, data["reference"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _srun_tasks(args: list[str], tasks: int = 2) -> list[subprocess.Popen]:
    """What `srun -n 2 maskdpo train ...` starts: one process per task, SLURM's variables."""
    port = _free_port()
    procs = []
    for rank in range(tasks):
        env = {**ENV, "SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0", "SLURM_PROCID": str(rank),
               "SLURM_LOCALID": str(rank), "SLURM_NTASKS": str(tasks), "SLURM_STEP_NUM_TASKS": str(tasks),
               "SLURM_STEP_NODELIST": "localhost", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([*MASKDPO, *args], env=env, cwd=REPO, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return procs


@pytest.mark.slow  # several training processes
def test_srun_tasks_cache_every_reference_pair_once_when_pairs_do_not_divide(data):
    pairs = alma_pairs(data["root"] / "pairs7.jsonl", 7)
    work = data["root"] / "srun"
    procs = _srun_tasks(train_args(pairs, data["model"], work))
    outputs = [p.communicate(timeout=400) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    assert "trained 7 pairs" in outputs[0][1] and "trained" not in outputs[1][1]

    cache = torch.load(work / "ref_logps.pt", weights_only=True)["logps"]
    assert len(cache) == 7 and sorted(key.split(":")[0] for key in cache) == [f"p{i}" for i in range(7)]
    # The same pairs' values as one process computed (the 8-pair reference holds p0..p6 too).
    reference = torch.load(data["reference"] / "ref_logps.pt", weights_only=True)["logps"]
    for key, value in cache.items():
        assert value == pytest.approx(reference[key], abs=1e-4), key
    assert "7 pairs computed" in outputs[0][1]


@pytest.mark.slow  # several training processes
def test_a_bad_pair_stops_every_rank_with_one_error_and_nothing_written(data, tmp_path):
    bad = json.loads(data["pairs"].read_text().splitlines()[0])
    bad["chosen_item"]["sents"][1] = "She is a sculptor."
    pairs = tmp_path / "bad.jsonl"
    pairs.write_text(json.dumps(bad) + "\n")
    work = tmp_path / "W"
    procs = _srun_tasks(train_args(pairs, data["model"], work))
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [2, 2]
    assert "sculptor" in outputs[0][1] and len(outputs[0][1].strip().splitlines()) == 1
    assert outputs[1][1].strip() == ""  # rank 0 said why; the others leave quietly
    assert not work.exists()


# ----------------------------------------------------------------------------- no processes needed

def test_launchers_are_recognised_from_their_environment():
    assert detect_launch({}) is None
    torchrun = {"RANK": "3", "WORLD_SIZE": "16", "LOCAL_RANK": "3", "MASTER_ADDR": "node1", "MASTER_PORT": "6000"}
    assert detect_launch(torchrun) == Launch("torchrun", 3, 16, 3, "node1", 6000)
    srun = {"SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_NTASKS": "16", "SLURM_STEP_ID": "0",
            "SLURM_STEP_NUM_TASKS": "16", "SLURM_STEP_NODELIST": "gpu-[007-008]", "SLURM_JOB_ID": "1234"}
    launch = detect_launch(srun)
    assert (launch.launcher, launch.rank, launch.world_size, launch.local_rank) == ("slurm", 9, 16, 1)
    assert launch.master_addr == "gpu-007" and launch.master_port == 29500 + 1234
    assert detect_launch({**srun, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "7000"}).master_addr == "10.0.0.1"
    # A batch script's own shell has SLURM_PROCID too, but it is no srun step: nobody else will join.
    assert detect_launch({"SLURM_PROCID": "0", "SLURM_NTASKS": "16", "SLURM_JOB_ID": "1"}) is None
    assert [first_slurm_host(s) for s in ("n01", "gpu[3-4,9],cpu1", "rack[2-3]-n[05-06]")] == ["n01", "gpu3",
                                                                                               "rack2-n05"]


def test_process_counts_and_their_errors():
    assert process_count(0, 3, None) == 3 and process_count(0, None, None) == 1
    assert process_count(0, None, Launch("torchrun", 0, 4, 0, "h", 1)) == 4
    with pytest.raises(MaskDPOError, match="leave --nproc out") as err:
        process_count(0, 2, Launch("slurm", 0, 4, 0, "h", 1))
    assert err.value.exit_code == 2
    if not torch.cuda.is_available():
        with pytest.raises(MaskDPOError, match="CUDA device"):
            process_count(2, None, None)
