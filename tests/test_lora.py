"""`maskdpo train --lora R` (and `--qlora`) on a CPU: a tiny random Llama with the SmolLM2
tokenizer, trained through the CLI with an adapter on a frozen base.

What must hold: only adapter tensors train (checkpoints and optimizer state hold nothing
else, and every other weight of the merged export is the base's, bit for bit); the first
step's loss is ln 2 with margin 0 (a fresh adapter leaves the policy equal to the cached
reference, the base); W/hf is base + (alpha/R) B A and loads with plain transformers;
W/adapter loads with peft on the base and gives the merged model's logits; run.json
records the adapter and a resume with another one is refused; `--qlora` without CUDA is
one line, exit 2, nothing written; several processes and kill -9 behave as without LoRA.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.train_config import TrainConfig

from helpers import MASKDPO, REPO, alma_pairs, safetensors_of, train_log, training_env

ENV = training_env(threads=2)
TARGETS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def train_args(pairs: Path, model: Path, work: Path, *extra: str, epochs: int = 1, lora: int = 8) -> list[str]:
    return [*MASKDPO, "train", str(pairs), "--model", str(model), "--recipe", "tiny_cpu_maskdpo", "--batch-size", "2",
            "--epochs", str(epochs), "--lr", "1e-3", "--gpus", "0", "--seed", "5", "--work-dir", str(work),
            "--lora", str(lora), *extra]


def run(cmd: list[str], timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama_path) -> dict[str, Path]:
    """One LoRA run (r 8, default alpha and dropout), shared by the checks below."""
    root = tmp_path_factory.mktemp("lora")
    pairs = alma_pairs(root / "pairs.jsonl", 8)
    work = root / "W"
    done = run(train_args(pairs, tiny_llama_path, work))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == ""
    assert "LoRA r 8 alpha 16 dropout 0.05" in done.stderr
    return {"pairs": pairs, "work": work, "model": tiny_llama_path, "stderr": done.stderr}


# ----------------------------------------------------------------------------- one run, many checks

def test_first_step_is_the_reference_loss_ln2_margin_0(trained):
    first = train_log(trained["work"])[0]
    assert first["step"] == 1
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert first["chosen_rewards"] == pytest.approx(0.0, abs=1e-6)
    assert train_log(trained["work"])[-1]["loss"] < math.log(2)  # and the adapter learned


def test_only_adapter_tensors_train(trained):
    work = trained["work"]
    checkpoint = torch.load(sorted(work.glob("iter_*.pth"))[-1], map_location="cpu", weights_only=False)
    keys = list(checkpoint["state_dict"])
    # 2 layers x 7 linear layers x (A, B): the checkpoint holds the adapter and nothing else...
    assert len(keys) == 2 * 7 * 2 and all(".lora_A." in k or ".lora_B." in k for k in keys)
    # ...and the optimizer kept state for exactly those: no base weight had a gradient.
    assert len(checkpoint["optimizer"]["state"]) == len(keys)
    adapter = safetensors_of(work / "adapter" / "adapter_model.safetensors")
    assert len(adapter) == len(keys)
    assert all(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)  # B left zero: it trained
    config = json.loads((work / "adapter" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == TARGETS  # every linear layer of the decoder, not lm_head
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (8, 16.0, 0.05)
    assert config["base_model_name_or_path"] == str(trained["model"].resolve())


def test_merged_export_is_the_untouched_base_plus_scaled_BA(trained):
    work, base = trained["work"], safetensors_of(trained["model"] / "model.safetensors")
    merged, adapter = safetensors_of(work / "hf" / "model.safetensors"), safetensors_of(work / "adapter" / "adapter_model.safetensors")
    assert merged.keys() == base.keys()
    scale = 16.0 / 8
    changed = 0
    for name, weight in base.items():
        module = name.removesuffix(".weight")
        a_key = f"base_model.model.{module}.lora_A.weight"
        if a_key not in adapter:
            assert torch.equal(merged[name], weight), name  # embeddings, norms: the base's, bit for bit
            continue
        b = adapter[f"base_model.model.{module}.lora_B.weight"]
        torch.testing.assert_close(merged[name], weight + scale * (b @ adapter[a_key]), rtol=0, atol=1e-6, msg=name)
        changed += not torch.equal(merged[name], weight)
    assert changed == 2 * 7


def test_merged_model_loads_plainly_and_the_adapter_gives_its_logits(trained):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from maskdpo_cli.xtuner_ext.lora import without_bitsandbytes

    work = trained["work"]
    merged = AutoModelForCausalLM.from_pretrained(work / "hf").eval()
    assert merged.config.use_cache and (work / "hf" / "tokenizer.json").is_file()
    # This CPU venv's bitsandbytes (XTuner's pin, 0.45.0) cannot import with triton 3.8; peft
    # would import it while loading the adapter. Where it imports, the guard changes nothing.
    with without_bitsandbytes():
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(trained["model"]),
                                            str(work / "adapter")).eval()
    ids = torch.tensor([[1, 400, 2500, 17, 9000, 33, 2]])
    with torch.no_grad():
        logits = merged(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(trained["model"]).eval()(input_ids=ids).logits
    # x W' against x W + s B A x: equal up to float rounding, far below what training moved.
    rounding, trained_shift = (adapted(input_ids=ids).logits - logits).abs().max(), (base - logits).abs().max()
    assert rounding < 1e-4 and trained_shift > 100 * rounding, (rounding, trained_shift)


@pytest.mark.slow  # two more XTuner starts after training (about 15 s)
def test_run_json_records_the_adapter_and_a_resume_with_another_is_refused(trained):
    record = json.loads((trained["work"] / "run.json").read_text())
    assert record["lora"] == {"r": 8, "alpha": 16.0, "dropout": 0.05, "qlora": False}
    other = run(train_args(trained["pairs"], trained["model"], trained["work"], "--lora-alpha", "8"))
    assert other.returncode == 2
    assert "other settings (lora" in other.stderr and "--no-resume" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    full = run(train_args(trained["pairs"], trained["model"], trained["work"], lora=0))
    assert full.returncode == 2 and "other settings (lora" in full.stderr


# ----------------------------------------------------------------------------- refusals, before anything is written

@pytest.mark.slow  # two CLI runs that import XTuner before refusing (about 14 s)
def test_qlora_without_cuda_is_one_line_exit_2_and_nothing_written(tiny_llama_path, tmp_path):
    pairs = alma_pairs(tmp_path / "pairs.jsonl", 2)
    work = tmp_path / "W"
    done = run(train_args(pairs, tiny_llama_path, work, "--qlora"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--qlora needs a CUDA GPU" in done.stderr, done.stderr
    assert not work.exists()
    alone = run([*MASKDPO, "train", str(pairs), "--model", str(tiny_llama_path), "--recipe", "tiny_cpu_maskdpo",
                 "--gpus", "0", "--qlora", "--work-dir", str(work)])
    assert alone.returncode == 2 and "--qlora needs a LoRA adapter: give its rank with --lora R" in alone.stderr
    assert not work.exists()


def test_lora_settings_are_validated_where_they_are_built():
    base = dict(pairs="p.jsonl", work_dir="W")
    for kwargs, message in [(dict(lora=-1), "--lora -1"), (dict(lora=8, lora_alpha=0), "--lora-alpha 0"),
                            (dict(lora=8, lora_dropout=1.0), "--lora-dropout 1.0"),
                            (dict(lora=0, qlora=True), "--qlora needs a LoRA adapter"),
                            (dict(lora=0, lora_alpha=4.0), "--lora-alpha needs a LoRA adapter"),
                            (dict(lora=8, deepspeed="zero3"), "LoRA trains without DeepSpeed")]:
        with pytest.raises(MaskDPOError, match=message):
            TrainConfig(**base, **kwargs)


# ----------------------------------------------------------------------------- the recipe mapping

def test_lora_block_goes_into_the_recipe_and_full_fine_tuning_leaves_it_untouched(tiny_llama_path):
    from maskdpo_cli.xtuner_ext.recipe import (BatchLayout, apply_config, complete_lora, load_recipe,
                                               resolve_recipe)

    layout = BatchLayout(micro_batch=2, accumulative_counts=1, iters_per_epoch=4)
    fields = dict(pairs="p.jsonl", work_dir="/tmp/W", model=str(tiny_llama_path), beta=0.1, lr=1e-3, epochs=1,
                  batch_size=2, max_length=512, nproc=1)

    def applied(config: TrainConfig, recipe: str = "tiny_cpu_maskdpo") -> object:
        cfg = load_recipe(resolve_recipe(recipe))
        config = complete_lora(config, cfg, cuda=True)
        apply_config(cfg, config, layout, pairs_file="p", tokenized_file="t", cuda=False)
        return cfg

    full = applied(TrainConfig(**fields))
    assert "lora" not in full.model and "quantization_config" not in full.model.llm and "torch_dtype" not in full.model.llm
    lora = applied(TrainConfig(**fields, lora=16, use_mask=False))
    assert lora.train_dataloader.dataset.use_mask is False  # --no-mask is as ever
    assert {k: lora.model.lora[k] for k in ("type", "r", "lora_alpha", "lora_dropout", "target_modules")} == {
        "type": "peft.LoraConfig", "r": 16, "lora_alpha": 32.0, "lora_dropout": 0.05, "target_modules": None}
    assert "quantization_config" not in lora.model.llm
    qlora = applied(TrainConfig(**fields, lora=16, lora_alpha=16, lora_dropout=0.1, qlora=True))
    assert (qlora.model.lora.r, qlora.model.lora.lora_alpha, qlora.model.lora.lora_dropout) == (16, 16.0, 0.1)
    quant = qlora.model.llm.quantization_config
    assert (quant.type, quant.load_in_4bit, quant.bnb_4bit_quant_type) == ("transformers.BitsAndBytesConfig", True, "nf4")
    assert qlora.model.llm.torch_dtype == "torch.bfloat16"

    # The one-GPU recipe: its own adapter and base precision, which flags override.
    recipe = applied(TrainConfig(**fields), "llama3_1_8b_instruct_maskdpo_lora")
    assert (recipe.model.lora.r, recipe.model.lora.lora_alpha) == (64, 128)
    assert recipe.get("deepspeed") is None and recipe.model.llm.torch_dtype == "torch.bfloat16"
    assert applied(TrainConfig(**fields, lora=8), "llama3_1_8b_instruct_maskdpo_lora").model.lora.lora_alpha == 16
    with pytest.raises(MaskDPOError, match="--qlora needs a CUDA GPU"):
        complete_lora(TrainConfig(**fields, lora=8, qlora=True), recipe, cuda=False)


def test_lora_without_lr_trains_at_ten_times_a_full_recipes_rate_and_a_lora_recipes_own():
    from maskdpo_cli.xtuner_ext.recipe import complete_lora, load_recipe, recipe_value, resolve_recipe

    fields = dict(pairs="p.jsonl", work_dir="/tmp/W", beta=0.1, epochs=1, batch_size=2, max_length=512, nproc=1)
    full = load_recipe(resolve_recipe("tiny_cpu_maskdpo"))
    assert complete_lora(TrainConfig(**fields, lora=8), full, cuda=False).lr == pytest.approx(
        10 * recipe_value(full, "lr"))
    assert complete_lora(TrainConfig(**fields, lora=8, lr=3e-4), full, cuda=False).lr == 3e-4  # --lr wins
    assert complete_lora(TrainConfig(**fields), full, cuda=False).lr is None  # no LoRA: the recipe's, later
    own = load_recipe(resolve_recipe("llama3_1_8b_instruct_maskdpo_lora"))
    assert complete_lora(TrainConfig(**fields, lora=8), own, cuda=True).lr is None  # its own rate stands


def test_without_bitsandbytes_hides_it_only_inside():
    import importlib.util

    from maskdpo_cli.xtuner_ext.lora import without_bitsandbytes

    if "bitsandbytes" in sys.modules:
        pytest.skip("bitsandbytes is imported in this process: the guard leaves it alone")
    installed = importlib.util.find_spec("bitsandbytes") is not None
    with without_bitsandbytes():
        assert importlib.util.find_spec("bitsandbytes") is None
        with pytest.raises(ImportError):
            import bitsandbytes  # noqa: F401
    assert (importlib.util.find_spec("bitsandbytes") is not None) == installed
    assert "bitsandbytes" not in sys.modules


# ----------------------------------------------------------------------------- processes and kill -9

@pytest.mark.slow
def test_lora_nproc_2_computes_what_one_process_computes(tiny_llama_path, tmp_path):
    # Dropout 0: with dropout each process draws its own masks, so the steps could not match.
    pairs = alma_pairs(tmp_path / "pairs.jsonl", 8)
    one, two = tmp_path / "one", tmp_path / "two"
    for work, extra in ((one, []), (two, ["--nproc", "2"])):
        done = run(train_args(pairs, tiny_llama_path, work, "--lora-dropout", "0", *extra))
        assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes (gloo)" in done.stderr
    got, expected = train_log(two), train_log(one)
    assert [r["step"] for r in got] == [r["step"] for r in expected] == [1, 2, 3, 4]
    for mine, theirs in zip(got, expected):
        for key in ("loss", "reward_acc", "reward_margin"):
            assert mine[key] == pytest.approx(theirs[key], abs=2e-3), (mine["step"], key)
    assert got[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    a, b = safetensors_of(two / "adapter" / "adapter_model.safetensors"), safetensors_of(one / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    assert (two / "hf" / "model.safetensors").is_file()


@pytest.mark.slow
def test_lora_survives_kill_9_and_logs_each_step_once(tiny_llama_path, tmp_path):
    from test_kill_resume import finish, kill_repeatedly, lines

    pairs = alma_pairs(tmp_path / "pairs.jsonl", 8)
    steps = 8  # 2 epochs of 4 steps; a checkpoint every 2

    def cmd(work: Path) -> list[str]:  # dropout 0: the uninterrupted run is then the exact reference
        return train_args(pairs, tiny_llama_path, work, "--lora-dropout", "0", epochs=2)

    reference = tmp_path / "reference"
    seconds = finish(cmd(reference))
    work = tmp_path / "work"
    log = work / "train_log.jsonl"
    seen = kill_repeatedly(cmd(work), lambda: lines(log), steps, seconds, seed=4)
    assert any(0 < n < steps for n in seen), seen
    finish(cmd(work))
    assert [r["step"] for r in train_log(work)] == list(range(1, steps + 1))  # each step once
    expected = safetensors_of(reference / "adapter" / "adapter_model.safetensors")
    got = safetensors_of(work / "adapter" / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-5, msg=name)
