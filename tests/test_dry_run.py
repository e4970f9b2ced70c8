"""`maskdpo train --dry-run`: every check of a real run, a plan, nothing trained or written.

The 8B recipe on 8 GPUs is planned on this machine (no GPU) from a hub cache that holds
only config.json and a tokenizer; its model-state figure agrees with DeepSpeed's own ZeRO-3
estimator. Bad data or settings give the real run's error: the same one line, exit 2.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TOKENIZER_FILES
from helpers import alma_pairs, run_cli
from test_memory_plan import zero3_estimate

REPO = Path(__file__).resolve().parent.parent
MASKDPO = [sys.executable, "-m", "maskdpo_cli.cli"]
COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
# meta-llama/Llama-3.1-8B-Instruct's config.json (the shapes and the fields transformers reads).
LLAMA_3_1_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False, "hidden_act": "silu",
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "torch_dtype": "bfloat16",
}


def config_only_hub(root: Path, repo_id: str, tokenizer_dir: Path) -> Path:
    """A hub cache holding a model's config.json and tokenizer, no weights (HF_HUB_CACHE's layout)."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(LLAMA_3_1_8B))
    for name in TOKENIZER_FILES:  # SmolLM2's: a real fast tokenizer with a chat template
        shutil.copy(tokenizer_dir / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return root


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                    reason="the 8B recipe trains under ZeRO-3: a run (and its plan) needs the deepspeed extra")
def test_the_8b_recipe_on_8_gpus_is_planned_here_from_its_config_alone(tmp_path, smollm2_path):
    hub = config_only_hub(tmp_path / "hub", "meta-llama/Llama-3.1-8B-Instruct", smollm2_path)
    pairs = alma_pairs(tmp_path / "pairs.jsonl", 128)
    work = tmp_path / "W"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
           "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([*MASKDPO, "train", str(pairs), "--recipe", "llama3_1_8b_instruct_maskdpo", "--gpus", "8",
                           "--work-dir", str(work), "--dry-run"], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    plan = done.stderr
    assert done.stdout == "" and not work.exists()  # nothing written, nothing started
    assert "128 pairs, every one located and tokenized (Mask-DPO)" in plan
    assert "LlamaForCausalLM, 8,030,261,248 parameters, 32 layers" in plan and "no weights here" in plan
    assert "8 GPU(s), one process each" in plan
    assert "global 64 = micro 1 x 8 accumulation x 8 process(es)" in plan
    assert "2 optimizer steps per epoch (16 micro-batches per process) x 3 epoch(s) = 6 steps" in plan
    assert re.search(r"ref_logps\.pt: [\d.]+ KiB for 128 pairs", plan)
    assert '"stage":3' in plan and '"bf16":{"enabled":true}' in plan  # the recipe's ZeRO-3, bf16 on GPUs
    assert "8 devices, zero3, bf16, micro-batch 1 pair (2 sequences) x 2048 tokens, checkpointing on" in plan

    states = float(re.search(r"model states\s+([\d.]+) GiB", plan).group(1)) * 2**30
    expected = zero3_estimate(8_030_261_248, 128256 * 4096, 8, offload=False)
    assert states == pytest.approx(expected, rel=0.10)


@pytest.fixture()
def tiny(tmp_path, tiny_llama_path):
    pairs = alma_pairs(tmp_path / "pairs.jsonl", 8)
    return pairs, ["--model", tiny_llama_path, "--recipe", "tiny_cpu_maskdpo", "--gpus", "0",
                   "--work-dir", tmp_path / "W"]


def test_a_cpu_plan_prints_batch_steps_cache_and_memory(tiny, tmp_path, capsys):
    pairs, args = tiny
    code, out, err = run_cli(["train", pairs, *args, "--batch-size", "2", "--nproc", "2", "--dry-run"], capsys)
    assert code == 0 and out == "", err
    assert "2 CPU processes (gloo)" in err and "global 2 = micro 1 x 1 accumulation x 2" in err
    assert "4 optimizer steps per epoch" in err and "memory plan per device: 2 devices, DDP, fp32" in err
    assert "chosen" in err and "tokens in the loss" in err and "weights not loaded" in err
    assert not (tmp_path / "W").exists()


def _bad_pair(pairs: Path, out: Path) -> Path:
    bad = json.loads(pairs.read_text().splitlines()[0])
    bad["id"], bad["chosen_item"]["sents"][1] = "bad", "She is a sculptor."
    out.write_text(pairs.read_text() + json.dumps(bad) + "\n")
    return out


@pytest.mark.parametrize("case", ["unlocated sentence", "batch", "model", "deepspeed name", "zero3 without gather",
                                  "other run's checkpoint"])
def test_bad_input_gives_the_real_runs_error(tiny, tmp_path, capsys, case):
    pairs, args = tiny
    work = tmp_path / "W"
    extra: list = []
    if case == "unlocated sentence":
        pairs = _bad_pair(pairs, tmp_path / "bad.jsonl")
    elif case == "batch":
        extra = ["--batch-size", "3", "--nproc", "2"]
    elif case == "model":
        args = [*args, "--model", tmp_path / "no-such-model"]
    elif case == "deepspeed name":
        extra = ["--deepspeed", "zero4"]
    elif case == "zero3 without gather":
        ds = tmp_path / "ds.json"
        ds.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
        extra = ["--deepspeed", ds, "--nproc", "2"]
    elif case == "other run's checkpoint":
        work.mkdir()
        (work / "run.json").write_text(json.dumps({"pairs_sha256": "0" * 64}))
        (work / "iter_2.pth").write_bytes(b"")
        (work / "last_checkpoint").write_text(str(work / "iter_2.pth"))
    before = sorted(p.name for p in work.iterdir()) if work.exists() else None

    planned = run_cli(["train", pairs, *args, *extra, "--dry-run"], capsys)
    real = run_cli(["train", pairs, *args, *extra], capsys)
    assert planned[0] == real[0] == 2, (planned, real)
    assert planned[2] == real[2] and len(real[2].strip().splitlines()) == 1, (planned[2], real[2])
    if case == "unlocated sentence":
        assert "bad.jsonl:9: field 'chosen_item.sents[1]': pair 'bad'" in real[2]
    assert (sorted(p.name for p in work.iterdir()) if work.exists() else None) == before  # nothing written


def test_an_error_is_one_line_on_stderr_and_nothing_on_stdout(tiny, tmp_path):
    """In a fresh process, where DeepSpeed (when installed) is imported and would log and warn."""
    pairs, args = tiny
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([*MASKDPO, "train", _bad_pair(pairs, tmp_path / "bad.jsonl"), *map(str, args), "--dry-run"],
                          env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "sculptor" in done.stderr


def test_a_lora_plan_counts_only_the_adapter_as_trained_and_qlora_needs_cuda(tiny, tmp_path, capsys):
    from maskdpo_cli.memory_plan import lora_parameters, LlamaShape

    pairs, args = tiny
    code, out, err = run_cli(["train", pairs, *args, "--batch-size", "2", "--lora", "4", "--dry-run"], capsys)
    assert code == 0 and out == "", err
    assert "LoRA rank 4" in err
    config = json.loads((Path(args[1]) / "config.json").read_text())
    trained = int(re.search(r"\(([\d,]+) trained\)", err).group(1).replace(",", ""))
    assert trained == lora_parameters(LlamaShape.from_config(config), 4)  # the adapter alone
    assert not (tmp_path / "W").exists()
    code, out, err = run_cli(["train", pairs, *args, "--lora", "4", "--qlora", "--dry-run"], capsys)
    assert code == 2 and "CUDA" in err and len(err.strip().splitlines()) == 1
