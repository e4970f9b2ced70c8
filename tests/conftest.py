"""Shared fixtures: the embedded SmolLM2 and a tiny random Llama that loads in a blink."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests share a small machine: two threads at most, unless the caller chose.
os.environ.setdefault("OMP_NUM_THREADS", "2")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The embedded SmolLM2-135M-Instruct as a local HF directory (converted once, then cached)."""
    from maskdpo_cli.models import resolve_model

    return resolve_model("smollm2-135m-instruct")


def build_tiny_llama(out: Path, tokenizer_dir: Path, seed: int = 0, **config: object) -> Path:
    """A randomly initialised Llama (2 layers, hidden 64, grouped-query attention) with
    SmolLM2's tokenizer and chat template, saved as a HF directory."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    settings = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                    tie_word_embeddings=True, initializer_range=0.3, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    settings.update(config)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**settings))
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, out / name)
    return out


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> Path:
    """A tiny random Llama HF directory with the SmolLM2 tokenizer (eos <|im_end|> = 2, pad 0)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smollm2_path)


@pytest.fixture(scope="session")
def served_smollm2(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> Iterator[str]:
    """`transformers serve` (transformers 5, its own directory) serving the embedded SmolLM2 on the
    CPU, shared by the whole session: its base URL http://127.0.0.1:PORT/v1 (tests/served.py)."""
    from served import transformers_serve

    with transformers_serve(smollm2_path, tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url
