"""Pretrain the world's policy: a tiny Llama trained from scratch on the biography corpus, on CPU.

The result is an ordinary HF directory (config.json, model.safetensors, a fast byte-level
BPE tokenizer with a ChatML chat template, generation_config.json with <|im_end|> as eos),
so `maskdpo sample`, `train` (XTuner) and `eval` load it like any chat model.

It is meant to know the world imperfectly: it learns each topic's shared attributes
quickly, and a person's own facts only as far as the corpus mentions them, so it knows
the popular head and, at temperature 0.8, mixes up the long tail with its neighbours
(factuality about 45-60% on test topics; see FULL below). Loss is on the assistant's answer only, like
instruction tuning: the question is context, the biography is what it learns to say.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.jsonl import read_jsonl
from maskdpo_cli.progress import progress_bar, stderr
from maskdpo_cli.world.generator import load_world

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# The default length is 2 epochs over the corpus: how well the model knows a person is set
# by how often the corpus mentions them (the world's popularity tail), so any world size
# keeps the same head-known, tail-blurred shape. The grammar itself needs about 300 steps
# whatever the world, hence the floor. Measured on worlds of seeds 7 and 8 (T=0.8, test
# topics): full world 387 steps, 51%; quick world 300 steps, 58% and 56%.
FULL = {"vocab_size": 768, "hidden_size": 128, "intermediate_size": 384, "layers": 2, "heads": 4,
        "epochs": 2.0, "min_steps": 300, "batch_size": 32, "lr": 4e-3}
QUICK = dict(FULL, max_steps=300)  # the quick world is small anyway; this caps a quick run on a big one
MAX_LEN = 192


def build_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE fast tokenizer trained on the corpus, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>",
        unk_token=None, additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=CHATML_TEMPLATE, model_max_length=MAX_LEN, clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"])  # a Llama takes no token_type_ids


def encode_examples(tokenizer: Any, examples: list[dict[str, Any]]) -> list[tuple[list[int], int]]:
    """(token ids of the whole chat, length of the prompt part) per corpus example."""
    out = []
    for ex in examples:
        user = [{"role": "user", "content": ex["question"]}]
        prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": ex["text"]}], tokenize=False)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = tokenizer(full, add_special_tokens=False)["input_ids"][:MAX_LEN]
        if ids[:len(p_ids)] != p_ids:  # the loss mask below relies on the prompt being a token prefix
            raise MaskDPOError(f"tokenizer does not keep the chat prompt as a prefix: {ex['question']!r}")
        out.append((ids, len(p_ids)))
    return out


def _batch(encoded: list[tuple[list[int], int]], pad_id: int) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(encoded):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, n_prompt:len(ids)] = torch.tensor(ids[n_prompt:])
        attention[row, :len(ids)] = 1
    return input_ids, attention, labels


def _epoch_batches(rng: random.Random, lengths: list[int], batch_size: int) -> list[list[int]]:
    """One epoch of batches; examples of similar length share a batch so little is padding."""
    order = rng.sample(range(len(lengths)), len(lengths))
    window = batch_size * 16
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def _lr(step: int, steps: int, peak: float) -> float:
    warmup = max(1, steps // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _model(cfg: dict[str, Any], tokenizer: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"], num_key_value_heads=cfg["heads"],
        max_position_embeddings=MAX_LEN * 2, tie_word_embeddings=True, rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, torch_dtype="float32")
    return LlamaForCausalLM(config)


def _save(model: Any, tokenizer: Any, out: Path) -> None:
    """Save next to out, then move the files in with config.json last: a directory that has a
    config.json is complete, even after a crash mid-save."""
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (out / "config.json").unlink(missing_ok=True)
        for f in sorted(staging.iterdir(), key=lambda f: f.name == "config.json"):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def pretrain(world_dir: str, out_dir: str, *, steps: int | None = None, seed: int = 0,
             quick: bool = False) -> dict[str, Any]:
    """Train the world's policy from scratch and save it as an HF directory in out_dir."""
    import torch
    from transformers import GenerationConfig

    world = load_world(world_dir)
    corpus = [rec for _, rec in read_jsonl(Path(world_dir) / "corpus.jsonl")]
    cfg = dict(QUICK if quick else FULL)
    if steps is None:
        steps = max(cfg["min_steps"], math.ceil(cfg["epochs"] * len(corpus) / cfg["batch_size"]))
        steps = min(steps, cfg.get("max_steps", steps))
    if steps < 1:
        raise MaskDPOError("--steps must be at least 1")
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    started = time.time()

    tokenizer = build_tokenizer([ex["question"] + "\n" + ex["text"] for ex in corpus], cfg["vocab_size"])
    encoded = encode_examples(tokenizer, corpus)
    model = _model(cfg, tokenizer)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.98), weight_decay=0.01)

    lengths = [len(ids) for ids, _ in encoded]
    batches: list[list[int]] = []
    losses: list[float] = []
    with progress_bar("steps") as bar:
        task = bar.add_task("pretrain", total=steps, info="")
        for step in range(steps):
            if not batches:
                batches = _epoch_batches(rng, lengths, cfg["batch_size"])
            input_ids, attention, labels = _batch([encoded[i] for i in batches.pop()], tokenizer.pad_token_id)
            for group in optimizer.param_groups:
                group["lr"] = _lr(step, steps, cfg["lr"])
            loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            bar.update(task, advance=1, info=f"loss {sum(losses[-20:]) / len(losses[-20:]):.3f}")

    out = Path(out_dir)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    _save(model, tokenizer, out)
    summary = {
        "dir": str(out), "world_seed": world["seed"], "seed": seed, "quick": quick, "steps": steps,
        "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer),
        "examples": len(encoded), "epochs": round(steps * cfg["batch_size"] / len(encoded), 2),
        "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4), "seconds": round(time.time() - started, 1),
        "config": cfg,
    }
    (out / "world_pretrain.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    stderr.print(f"pretrained {summary['parameters']:,} parameters, {steps} steps, "
                 f"loss {summary['final_loss']}, {summary['seconds']} s -> {out}")
    return summary
