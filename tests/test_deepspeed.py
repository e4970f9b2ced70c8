"""DeepSpeed ZeRO on the CPU: `--gpus 0 --nproc 2 --deepspeed zero2|zero3` through the same
MaskDPO model, loss, reference cache, checkpoints and export that GPUs use.

Tiny random Llama, 8 pairs, global batch 2, 1 epoch: the ZeRO runs log the per-step losses
of the plain 2-process (DDP) run and export the same weights; ZeRO-3's export gathers the
partitioned weights whole; its reference pass caches the same log-probs, each pair once;
kill -9 then the same command resumes from DeepSpeed's sharded checkpoint. ZeRO-3 with
offload runs here too (host memory is the only memory: parameters and optimizer stay where
they are) and gives the same result. Plus the config DeepSpeed receives (W/deepspeed.json)
and what a CPU may lack (fp16 kernels), a clear exit 2 before the weights load.

DeepSpeed compiles its shared-memory communication op on first use (about 3 minutes on 2
cores, then cached under ~/.cache/torch_extensions).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import time
from pathlib import Path

import pytest
import torch

from helpers import MASKDPO, alma_pairs, exported_weights, kill_after_lines, run_cli, run_ok, train_log, training_env
from maskdpo_cli.deepspeed_setup import check_received, deepspeed_config
from maskdpo_cli.errors import MaskDPOError


ENV = training_env(threads=1)


def train_args(pairs: Path, model: Path, work: Path, *extra: str) -> list[str]:
    return [*MASKDPO, "train", str(pairs), "--model", str(model), "--recipe", "tiny_cpu_maskdpo",
            "--batch-size", "2", "--epochs", "1", "--lr", "1e-3", "--gpus", "0", "--nproc", "2", "--seed", "5",
            "--work-dir", str(work), *extra]


def run(cmd: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    return run_ok(cmd, ENV, timeout)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, tiny_llama_path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zero")
    pairs = alma_pairs(root / "pairs.jsonl", 8)
    work = root / "ddp"
    run(train_args(pairs, tiny_llama_path, work))
    return {"root": root, "pairs": pairs, "model": tiny_llama_path, "work": work}


@pytest.mark.parametrize("stage", ["zero2", "zero3", "zero3_offload"])
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="the deepspeed extra is not installed")
def test_zero_on_two_cpu_processes_trains_as_ddp_does(ddp, stage):
    work = ddp["root"] / stage
    done = run(train_args(ddp["pairs"], ddp["model"], work, "--deepspeed", stage))
    assert f"DeepSpeed {stage}" in done.stderr and done.stdout == ""

    # The config DeepSpeed received is the file in W (the export hook compares them at the start).
    sent = json.loads((work / "deepspeed.json").read_text())
    assert sent["zero_optimization"]["stage"] == int(stage[4])
    assert (sent["train_micro_batch_size_per_gpu"], sent["gradient_accumulation_steps"],
            sent["gradient_clipping"]) == (1, 1, 1.0)
    assert sent["bf16"]["enabled"] is False and sent["fp16"]["enabled"] is False  # fp32 on the CPU

    got, expected = train_log(work), train_log(ddp["work"])
    assert [r["step"] for r in got] == [r["step"] for r in expected] == [1, 2, 3, 4]
    for mine, theirs in zip(got, expected):
        assert mine["loss"] == pytest.approx(theirs["loss"], abs=2e-3), mine["step"]
    a, b = exported_weights(work), exported_weights(ddp["work"])
    assert a.keys() == b.keys()
    for name in a:  # whole tensors, not ZeRO-3's empty placeholders or one rank's partition
        assert a[name].shape == b[name].shape, name
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-4, msg=name)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(work / "hf").config.num_hidden_layers == 2

    # The reference pass (sharded over the ranks, ZeRO-3 gathering each layer) caches what DDP cached.
    cache = torch.load(work / "ref_logps.pt", weights_only=True)["logps"]
    reference = torch.load(ddp["work"] / "ref_logps.pt", weights_only=True)["logps"]
    assert sorted(cache) == sorted(reference) and len(cache) == 8
    for key, value in cache.items():
        assert value == pytest.approx(reference[key], abs=1e-4), key
    assert "8 pairs computed" in done.stderr


def _ranks_gone(work: Path, timeout: float = 60) -> None:
    """Wait until no process runs this work dir's config (the ranks die with the killed agent)."""
    needle = str(work / "config.py").encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if needle in (proc / "cmdline").read_bytes():
                    alive.append(proc)
            except OSError:
                continue
        if not alive:
            return
        time.sleep(0.1)
    raise AssertionError("the ranks of the killed run are still alive")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="the deepspeed extra is not installed")
def test_zero3_survives_kill_9_and_resumes_from_its_sharded_checkpoint(tiny_llama_path, tmp_path):
    pairs = alma_pairs(tmp_path / "pairs.jsonl", 24)
    steps = 12
    reference = tmp_path / "reference"
    run(train_args(pairs, tiny_llama_path, reference, "--deepspeed", "zero3"))

    work = tmp_path / "work"
    cmd = train_args(pairs, tiny_llama_path, work, "--deepspeed", "zero3")
    seen = kill_after_lines(cmd, work / "train_log.jsonl", 5, ENV, timeout=600)
    assert 5 <= seen < steps, seen
    _ranks_gone(work)
    assert any(path.is_dir() for path in work.glob("iter_*.pth"))  # DeepSpeed's checkpoints are folders

    done = run(cmd)
    assert "resuming from" in done.stderr
    assert [r["step"] for r in train_log(work)] == list(range(1, steps + 1))  # each step once
    got, expected = train_log(work), train_log(reference)
    for mine, theirs in zip(got, expected):
        assert mine["loss"] == pytest.approx(theirs["loss"], abs=2e-3), mine["step"]
    a, b = exported_weights(work), exported_weights(reference)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-4, msg=name)


# ----------------------------------------------------------------------------- no processes needed

def test_the_config_deepspeed_receives_is_complete_and_checked(tmp_path):
    config = deepspeed_config("zero3", micro_batch=1, accumulative_counts=8, max_norm=1.0, cuda=False)
    assert config["zero_optimization"]["stage"] == 3
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]  # W/hf needs it
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"],
            config["gradient_clipping"]) == (1, 8, 1.0)  # the recipe's values, as XTuner sets them
    assert "auto" not in json.dumps(config)  # XTuner has nothing left to decide: it passes the file as is
    assert (config["bf16"]["enabled"], config["fp16"]["enabled"]) == (False, False)  # fp32 on the CPU
    on_gpus = deepspeed_config("zero3", micro_batch=1, accumulative_counts=8, max_norm=None, cuda=True,
                               bf16_supported=True)
    assert (on_gpus["bf16"]["enabled"], on_gpus["fp16"]["enabled"]) == (True, False)
    for spec in ("zero1", "zero2", "zero2_offload", "deepspeed_zero3_offload"):
        assert deepspeed_config(spec, micro_batch=2, accumulative_counts=1, max_norm=None,
                                cuda=False)["gradient_clipping"] == 1.0

    own = tmp_path / "ds.json"
    for text, message in ((json.dumps({"zero_optimization": {"stage": 3}}), "stage3_gather_16bit_weights"),
                          ("{not json", "not a DeepSpeed JSON config"),
                          (json.dumps({"fp16": {"enabled": True}}), "fp16 is not supported on this CPU")):
        own.write_text(text)
        if "fp16" in text and torch.ops.mkldnn._is_mkldnn_fp16_supported():
            continue  # this CPU has fp16 kernels: DeepSpeed's CPU accelerator accepts fp16
        with pytest.raises(MaskDPOError, match=message):
            deepspeed_config(str(own), micro_batch=1, accumulative_counts=1, max_norm=1.0, cuda=False)
    with pytest.raises(MaskDPOError, match="zero1, zero2") as err:
        deepspeed_config("zero4", micro_batch=1, accumulative_counts=1, max_norm=1.0, cuda=False)
    assert err.value.exit_code == 2

    # What the strategy holds is compared with the file at the start of training.
    (tmp_path / "deepspeed.json").write_text(json.dumps(config))
    check_received({**config, "steps_per_print": 10**13}, tmp_path)
    with pytest.raises(RuntimeError, match="gradient_accumulation_steps"):
        check_received({**config, "gradient_accumulation_steps": 2}, tmp_path)


def test_without_the_deepspeed_package_it_is_a_clear_exit_2(tiny_llama_path, tmp_path, capsys, monkeypatch):
    # A machine without deepspeed, whether or not this one has it: the package is not found.
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    pairs = alma_pairs(tmp_path / "pairs.jsonl", 2)
    code, out, err = run_cli(["train", pairs, "--model", tiny_llama_path, "--recipe", "tiny_cpu_maskdpo", "--gpus", "0",
                              "--nproc", "2", "--deepspeed", "zero3", "--work-dir", tmp_path / "W"], capsys)
    assert code == 2 and out == "" and "--deepspeed needs the deepspeed package" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "W").exists()
