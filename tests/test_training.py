"""`maskdpo train` end to end on a CPU: a tiny random Llama with the SmolLM2 tokenizer,
a few XTuner steps through the CLI, the exported model, the reference cache on resume,
the recipe overrides, and bad input stopping the run before anything is trained.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.train_config import TrainConfig

REPO = Path(__file__).resolve().parent.parent
TINY_RECIPE = REPO / "recipes" / "tiny_cpu_maskdpo.py"

SENTENCES = ["Paris is the capital of France.", "It has 90 million inhabitants.",
             "The Seine flows through it.", "Its tower was built in 1889."]


def _item(sents: list[str], bad: set[int]) -> dict:
    return {"sents": sents, "type": ["hallucination" if i in bad else "no_hallucination" for i in range(len(sents))]}


def make_pair(i: int) -> dict:
    """Chosen: one hallucinated sentence of four; rejected: two. Authors' format (no spans)."""
    chosen, rejected = SENTENCES, SENTENCES[:3] + ["Its tower was built in 1925."]
    return {
        "id": f"pair-{i}",
        "prompt": [{"role": "user", "content": f"Tell me about Paris, take {i}."}],
        "chosen": [{"role": "assistant", "content": " ".join(chosen)}],
        "rejected": [{"role": "assistant", "content": "\n".join(rejected)}],
        "chosen_item": _item(chosen, {1}),
        "rejected_item": _item(rejected, {1, 3}),
    }


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer random Llama that speaks the SmolLM2 tokenizer (and its chat template)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from maskdpo_cli.models import load_tokenizer, resolve_model

    try:
        tokenizer = load_tokenizer(str(resolve_model("smollm2-135m-instruct")))
    except MaskDPOError as err:
        pytest.skip(f"embedded SmolLM2 tokenizer unavailable: {err}")
    path = tmp_path_factory.mktemp("tiny-smollm2-vocab")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def pairs_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", [make_pair(i) for i in range(8)])


def maskdpo(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "maskdpo_cli.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


# ----------------------------------------------------------------------------- end to end

@pytest.mark.slow  # two XTuner training processes (train, then resume); the fast tier trains in test_models.py
def test_train_cli_exports_a_model_and_resume_reuses_the_reference_cache(tiny_model, pairs_file, tmp_path):
    work = tmp_path / "W"
    common = [str(pairs_file), "--model", str(tiny_model), "--work-dir", str(work),
              "--recipe", str(TINY_RECIPE), "--batch-size", "4", "--lr", "1e-4"]
    first = maskdpo("train", *common)
    assert first.returncode == 0, first.stderr
    assert first.stdout == ""  # records only on stdout; training prints none
    assert "0 of 8 pairs truncated" in first.stderr
    assert "reference log-probs: 8 pairs computed" in first.stderr
    assert "pairs/s" in first.stderr and "ETA" in first.stderr

    log = [json.loads(line) for line in (work / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    assert log[0]["loss"] == pytest.approx(0.693147, abs=1e-5)  # policy == reference at step 1
    run_record = json.loads((work / "run.json").read_text())  # what resume compares: the same keys as ever
    assert run_record == {**run_record, "model": str(tiny_model.resolve()), "recipe": str(TINY_RECIPE),
                          "use_mask": True, "beta": 0.1, "lr": 1e-4, "global_batch": 4, "micro_batch": 4,
                          "max_length": 512, "gpus": 1, "processes": 1, "seed": 0}
    assert sorted(run_record) == ["beta", "global_batch", "gpus", "lr", "max_length", "micro_batch", "model",
                                  "pairs_sha256", "processes", "recipe", "seed", "use_mask"]
    assert {"reward_acc", "reward_margin", "lr", "pairs_per_s"} <= set(log[0])
    cache = work / "ref_logps.pt"
    stamp = cache.stat().st_mtime_ns
    assert (work / "config.py").is_file() and list(work.glob("*/*.log"))  # XTuner's logs stay in W
    # The check's tokens are what XTuner's dataset loads: built as W/config.py says, it needs no tokenizer.
    from mmengine.config import Config

    from maskdpo_cli.xtuner_ext.dataset import build_mask_dpo_dataset

    dataset = Config.fromfile(str(work / "config.py")).train_dataloader.dataset
    assert dataset.tokenized == str(work / "tokenized_pairs.pt")
    unbuildable = {"type": "no.such.tokenizer_builder", "pretrained_model_name_or_path": str(tiny_model.resolve())}
    assert len(build_mask_dpo_dataset(dataset.pairs, unbuildable, dataset.max_length, dataset.use_mask,
                                      dataset.tokenized)) == 8

    from maskdpo_cli.models import chat_prompt_text, load_causal_lm, load_tokenizer, resolve_model

    hf = resolve_model(str(work / "hf"))
    assert (hf / "model.safetensors").is_file() and (hf / "tokenizer.json").is_file()
    tokenizer, model = load_tokenizer(str(hf)), load_causal_lm(hf)
    prompt = tokenizer(chat_prompt_text(tokenizer, [{"role": "user", "content": "Hi"}]),
                       return_tensors="pt", add_special_tokens=False)
    out = model.generate(**prompt, max_new_tokens=4, do_sample=True, top_k=40)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    # Training changed the weights.
    from transformers import AutoModelForCausalLM
    before = AutoModelForCausalLM.from_pretrained(tiny_model).model.layers[0].mlp.up_proj.weight
    assert not torch.equal(before, model.model.layers[0].mlp.up_proj.weight)

    second = maskdpo("train", *common, "--epochs", "2", "--resume")
    assert second.returncode == 0, second.stderr
    assert "reference log-probs: 0 pairs computed" in second.stderr
    assert "8 from the cache" in second.stderr
    assert cache.stat().st_mtime_ns == stamp  # never recomputed with trained weights
    log = [json.loads(line) for line in (work / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]


def test_a_run_of_pairs_that_say_how_they_were_built_resumes_its_own_checkpoint(tiny_model, tmp_path):
    """W/run.json holds exactly what a resume compares, the pairing included: pairs from
    `maskdpo pair` must not refuse their own checkpoint after an interruption."""
    from maskdpo_cli.train_config import TrainConfig
    from maskdpo_cli.training import check_run, prepare_run

    pairing = {"unit": "sentence", "nofact": "correct"}
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{**make_pair(i), "pairing": pairing} for i in range(4)])
    work = tmp_path / "W"
    config = TrainConfig(pairs=str(pairs), work_dir=str(work), model=str(tiny_model), recipe=str(TINY_RECIPE),
                         gpus=0, batch_size=2)
    prepare_run(config, None)
    assert json.loads((work / "run.json").read_text())["pairing"] == pairing
    checkpoint = work / "iter_1.pth"  # what XTuner leaves behind when the run is killed after a step
    checkpoint.write_bytes(b"")
    (work / "last_checkpoint").write_text(str(checkpoint))
    assert check_run(config, None).resume_from == str(checkpoint)


# ----------------------------------------------------------------------------- bad input

def test_a_sentence_not_in_its_content_exits_2_naming_the_pair(tiny_model, tmp_path):
    bad = make_pair(3)
    bad["chosen_item"]["sents"][2] = "The Loire flows through it."
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [make_pair(0), bad])
    work = tmp_path / "W"
    result = maskdpo("train", str(pairs), "--model", str(tiny_model), "--work-dir", str(work),
                     "--recipe", str(TINY_RECIPE))
    assert result.returncode == 2, result.stderr
    assert "pair-3" in result.stderr and "The Loire" in result.stderr
    assert ":2:" in result.stderr  # file:line
    assert not work.exists()  # nothing written, nothing trained


def test_empty_pairs_file_is_exit_2(tiny_model, tmp_path):
    from maskdpo_cli.training import run_train

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(MaskDPOError, match="no records") as err:
        run_train(TrainConfig(pairs=str(empty), model=str(tiny_model), work_dir=str(tmp_path / "W"),
                              recipe=str(TINY_RECIPE)))
    assert err.value.exit_code == 2
    assert not (tmp_path / "W").exists()


def test_missing_recipe_is_exit_2_naming_it(tiny_model, pairs_file, tmp_path):
    from maskdpo_cli.training import run_train

    with pytest.raises(MaskDPOError, match="nope/recipe.py") as err:
        run_train(TrainConfig(pairs=str(pairs_file), model=str(tiny_model), work_dir=str(tmp_path / "W"),
                              recipe="nope/recipe.py"))
    assert err.value.exit_code == 2


def test_span_out_of_range_is_exit_2(tiny_model, tmp_path):
    from maskdpo_cli.training import run_train

    bad = make_pair(5)
    bad["chosen_item"]["spans"] = [[0, 31], [32, 62], [63, 90], [91, 4000]]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [bad])
    with pytest.raises(MaskDPOError, match="spans") as err:
        run_train(TrainConfig(pairs=str(pairs), model=str(tiny_model), work_dir=str(tmp_path / "W"),
                              recipe=str(TINY_RECIPE)))
    assert err.value.exit_code == 2


# ----------------------------------------------------------------------------- recipe and data

def test_flags_override_every_place_of_the_recipe(tiny_model):
    from maskdpo_cli.xtuner_ext.recipe import apply_config, batch_layout, load_recipe

    cfg = load_recipe(REPO / "recipes" / "smollm2_135m_instruct_maskdpo.py")
    config = TrainConfig(pairs="-", work_dir="/w", model=str(tiny_model), use_mask=False, beta=0.3, epochs=6,
                         lr=2e-6, batch_size=32, max_length=256, gpus=1, nproc=1, seed=7)
    layout = batch_layout(cfg, config.batch_size, config.nproc, num_pairs=320)
    apply_config(cfg, config, layout, pairs_file="/w/pairs.jsonl", tokenized_file="/w/tokenized_pairs.pt", cuda=False)
    assert cfg.model.beta == 0.3 and cfg.optim_wrapper.optimizer.lr == 2e-6
    assert cfg.model.llm.pretrained_model_name_or_path == str(tiny_model)
    assert cfg.tokenizer.pretrained_model_name_or_path == str(tiny_model)
    dataset = cfg.train_dataloader.dataset
    assert dataset.tokenizer.pretrained_model_name_or_path == str(tiny_model)
    assert (dataset.pairs, dataset.use_mask, dataset.max_length) == ("/w/pairs.jsonl", False, 256)
    assert dataset.tokenized == "/w/tokenized_pairs.pt"
    assert cfg.train_cfg.max_epochs == 6
    assert (cfg.train_dataloader.batch_size, cfg.optim_wrapper.accumulative_counts) == (4, 8)
    assert layout.iters_per_epoch == 80
    warmup, cosine = cfg.param_scheduler  # 3% of 6 epochs of 80 iterations, in iterations
    assert (warmup.begin, warmup.end, cosine.begin, cosine.end) == (0, 14, 14, 480)
    assert cfg.randomness.seed == 7
    # The recipe's settings block stays true in W/config.py.
    assert (cfg.pretrained_model_name_or_path, cfg.beta, cfg.lr, cfg.max_epochs, cfg.global_batch_size,
            cfg.micro_batch_size, cfg.accumulative_counts) == (str(tiny_model), 0.3, 2e-6, 6, 32, 4, 8)


def test_a_train_config_is_validated_where_it_is_built():
    for flags, message in (({"epochs": 0}, "--epochs 0: must be at least 1"),
                           ({"batch_size": 0}, "--batch-size 0: must be at least 1"),
                           ({"beta": 0.0}, "--beta 0.0: must be positive"), ({"lr": -1.0}, "--lr -1.0: must be"),
                           ({"gpus": -1}, "--gpus -1: must be 0"), ({"nproc": 0}, "--nproc 0: must be")):
        with pytest.raises(MaskDPOError, match=message) as err:
            TrainConfig(pairs="p.jsonl", work_dir="W", **flags)
        assert err.value.exit_code == 2


def test_paper_recipe_is_the_papers_setting():
    from maskdpo_cli.xtuner_ext.recipe import load_recipe

    cfg = load_recipe(REPO / "recipes" / "llama3_1_8b_instruct_maskdpo.py")
    assert cfg.max_epochs == 3 and cfg.global_batch_size == 64 and cfg.model.beta == 0.1
    assert cfg.optim_wrapper.optimizer.lr == 5e-7 and cfg.deepspeed == "zero3"
    assert cfg.optim_wrapper.optimizer.type.__name__ == "AdamW"
    assert [s.type.__name__ for s in cfg.param_scheduler] == ["LinearLR", "CosineAnnealingLR"]


def test_no_mask_is_the_same_pipeline_with_every_response_token(tiny_model, pairs_file):
    from maskdpo_cli.xtuner_ext.dataset import build_mask_dpo_dataset, build_tokenizer

    tokenizer = build_tokenizer(str(tiny_model))
    masked = build_mask_dpo_dataset(str(pairs_file), tokenizer, max_length=None, use_mask=True)
    plain = build_mask_dpo_dataset(str(pairs_file), tokenizer, max_length=None, use_mask=False)
    a, b = masked[0], plain[0]
    assert a["chosen_ids"] == b["chosen_ids"] and a["rejected_ids"] == b["rejected_ids"]
    for side in ("chosen", "rejected"):
        # Masking only removes tokens from the loss, never adds any.
        assert all(bm or not am for am, bm in zip(a[f"{side}_mask"], b[f"{side}_mask"]))
        assert sum(a[f"{side}_mask"]) < sum(b[f"{side}_mask"])
    assert a["key"] != b["key"]  # cached reference values are never shared across masks


def test_xtuner_dataset_loads_the_tokens_of_the_check_when_they_match(tiny_model, pairs_file, tmp_path):
    from maskdpo_cli.records import read_records
    from maskdpo_cli.xtuner_ext.dataset import (build_mask_dpo_dataset, build_tokenizer, file_sha256,
                                                save_tokenized, tokenization, tokenize_pairs)

    tokenizer = build_tokenizer(str(tiny_model))
    checked = tokenize_pairs(tokenizer, read_records(str(pairs_file), "pairs"), max_length=64, use_mask=True)
    saved = tmp_path / "tokenized_pairs.pt"
    save_tokenized(saved, checked, tokenization(file_sha256(str(pairs_file)), str(tiny_model), 64, True))
    # As the recipe's config builds it: a tokenizer that cannot be built proves it is never needed.
    unbuildable = {"type": "no.such.tokenizer_builder", "pretrained_model_name_or_path": str(tiny_model)}
    loaded = build_mask_dpo_dataset(str(pairs_file), unbuildable, max_length=64, use_mask=True, tokenized=str(saved))
    assert loaded.items == checked.items and loaded.num_truncated == checked.num_truncated > 0
    # Other settings than the file's (a hand-edited W/config.py): tokenized afresh, never the stale tokens.
    fresh = build_mask_dpo_dataset(str(pairs_file), tokenizer, max_length=None, use_mask=True, tokenized=str(saved))
    assert fresh.num_truncated == 0 and fresh.keys != checked.keys


# ----------------------------------------------------------------------------- GPU

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bf16_training_step(tiny_model, pairs_file, tmp_path):
    from maskdpo_cli.training import run_train

    summary = run_train(TrainConfig(pairs=str(pairs_file), model=str(tiny_model), work_dir=str(tmp_path / "W"),
                                    recipe=str(TINY_RECIPE), batch_size=4, gpus=1))
    assert "pairs/s" in summary and (tmp_path / "W" / "hf" / "model.safetensors").is_file()


def test_run_json_records_how_the_pairs_were_built_and_only_when_they_say():
    from maskdpo_cli.training import pairing_record

    authors = [(1, make_pair(0)), (2, make_pair(1))]
    assert pairing_record(authors) == {}  # pairs that do not say keep the run.json of before
    span = {"unit": "span", "nofact": "neutral"}
    ours = [(i, {**make_pair(i), "pairing": span}) for i in range(3)]
    assert pairing_record(ours) == {"pairing": span}
    sentence = {"unit": "sentence", "nofact": "correct"}
    mixed = ours + [(9, {**make_pair(9), "pairing": sentence})]
    assert pairing_record(mixed) == {"pairing": [sentence, span]}  # a mix is shown, not hidden
