"""LoRA and QLoRA for Mask-DPO: the adapter on a frozen base, and its export both ways.

`MaskDPO` is an XTuner `SupervisedFinetune`, which wraps the LLM in peft when the recipe's
model has `lora=dict(type="peft.LoraConfig", ...)` (`xtuner_ext.recipe.apply_lora` writes
it from `--lora`). XTuner's own wrapping (`SupervisedFinetune._prepare_for_lora`) always
calls peft's `prepare_model_for_kbit_training`, which casts every bf16/fp16 weight to fp32:
right for a 4-bit base (its norms and embeddings), but for a bf16 base it doubles the
frozen weights (32 GB instead of 16 GB for an 8B model). `wrap_in_lora` calls it only for
a quantized base.

The reference stays exact: lora_B starts at zero, so the freshly wrapped policy computes
the base model's log-probs bit for bit (dropout acts on the adapter's input only), and
`ReferenceLogpHook` caches those before the first step.

Export (`export_lora`): W/adapter holds the peft adapter (`PeftModel.from_pretrained(base,
W/adapter)`), W/hf the merged model (plain transformers). A LoRA run merges in place (the
trained base weights, which training must not have moved); a QLoRA run merges into the
base reloaded in its own precision, not into the 4-bit copy it trained on.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ADAPTER_DIR = "adapter"  # W/adapter: the peft adapter


def is_quantized(llm: Any) -> bool:
    """Whether the model's weights were loaded in 4 or 8 bits (bitsandbytes)."""
    return bool(getattr(llm, "is_loaded_in_4bit", False) or getattr(llm, "is_loaded_in_8bit", False))


@contextlib.contextmanager
def without_bitsandbytes() -> Iterator[None]:
    """peft looks for bitsandbytes whenever it wraps or loads a LoRA layer, and imports it when
    installed. XTuner pins bitsandbytes 0.45.0, whose import fails with triton >= 3.2
    ("No module named 'triton.ops'") and has no use without CUDA anyway. A base that is
    not quantized has no bitsandbytes layer to dispatch, so here bitsandbytes is absent:
    `import bitsandbytes` raises ImportError and `importlib.util.find_spec` returns None.
    Nothing changes where bitsandbytes is already imported (it works there)."""
    if "bitsandbytes" in sys.modules:
        yield
        return
    sys.modules["bitsandbytes"] = None  # type: ignore[assignment]  # Python's documented import block
    _forget_bitsandbytes_probes()
    try:
        yield
    finally:
        if "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None:
            del sys.modules["bitsandbytes"]
        _forget_bitsandbytes_probes()


def _forget_bitsandbytes_probes() -> None:
    """peft caches whether bitsandbytes is installed (functools.lru_cache): ask afresh."""
    from peft import import_utils

    for name in ("is_bnb_available", "is_bnb_4bit_available"):
        probe = getattr(import_utils, name, None)
        if hasattr(probe, "cache_clear"):
            probe.cache_clear()


def wrap_in_lora(llm: Any, lora_config: Any, use_activation_checkpointing: bool) -> Any:
    """The LLM as a peft model with a fresh adapter on every linear layer of the decoder
    (unless the config names its targets); the base frozen, in its own dtype unless quantized."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    from xtuner.model.utils import find_all_linear_names

    quantized = is_quantized(llm)
    if quantized:
        llm = prepare_model_for_kbit_training(llm, use_activation_checkpointing)
    if lora_config.target_modules is None:
        # q, k, v, o, gate, up and down for a Llama: every nn.Linear but the output head.
        lora_config.target_modules = sorted(find_all_linear_names(llm))
    with contextlib.nullcontext() if quantized else without_bitsandbytes():
        return get_peft_model(llm, lora_config)


def export_lora(llm: Any, work: Path, merged_dir: str, tokenizer: Any) -> tuple[Path, Path]:
    """Write W/adapter (the adapter) and W/<merged_dir> (base + adapter merged); returns both.

    Each directory is written next to its target and renamed over it. After this, `llm` is
    spent: a LoRA run's model is merged in place (the end of training: no copy of the base).
    """
    from maskdpo_cli.jsonl import replace_dir

    adapter = replace_dir(work / ADAPTER_DIR, lambda staging: llm.save_pretrained(staging, safe_serialization=True))
    if is_quantized(llm):
        merged = merged_from_base(llm.peft_config["default"].base_model_name_or_path, adapter)
    else:
        with without_bitsandbytes():
            merged = llm.merge_and_unload()
    merged.config.use_cache = True  # training turned it off; generation wants it

    def write_merged(staging: Path) -> None:
        merged.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)

    return adapter, replace_dir(work / merged_dir, write_merged)


def merged_from_base(base: str, adapter: Path) -> Any:
    """The base model in its saved precision, on the CPU, with the adapter merged into it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, torch_dtype="auto", low_cpu_mem_usage=True)
    with without_bitsandbytes():
        return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
