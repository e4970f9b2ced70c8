"""Recipes (plain XTuner/mmengine configs) and the one mapping by which a run's settings go into them.

`RECIPE_KEYS` lists every config key that `maskdpo train` writes, and which value goes
there; nothing else in a recipe is touched, so everything else is the recipe author's.
The first key of a `TrainConfig` field is also where the recipe's default for it is read.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.train_config import DEFAULT_LORA_DROPOUT, LORA_LR_FACTOR, TrainConfig

RECIPES_DIR = Path(__file__).resolve().parent.parent.parent / "recipes"
DEFAULT_RECIPE = "smollm2_135m_instruct_maskdpo"

# value -> the config keys that hold it. Values: the fields of a complete TrainConfig, and
# what a run decides from them (its files in W, the batch split over the processes).
RECIPE_KEYS: dict[str, tuple[str, ...]] = {
    "model": ("model.llm.pretrained_model_name_or_path",
              "train_dataloader.dataset.tokenizer.pretrained_model_name_or_path"),
    "use_mask": ("train_dataloader.dataset.use_mask",),
    "max_length": ("train_dataloader.dataset.max_length",),
    "beta": ("model.beta",),
    "lr": ("optim_wrapper.optimizer.lr",),
    "epochs": ("train_cfg.max_epochs",),
    "seed": ("randomness.seed",),
    "work_dir": ("work_dir",),
    "pairs_file": ("train_dataloader.dataset.pairs",),
    "tokenized_file": ("train_dataloader.dataset.tokenized",),
    "micro_batch": ("train_dataloader.batch_size",),
    "accumulative_counts": ("optim_wrapper.accumulative_counts",),
}
# Written only where the recipe has them: its top-level settings block and its shared
# tokenizer (informational once resolved; kept true in W/config.py).
RECIPE_KEYS_IF_PRESENT: dict[str, tuple[str, ...]] = {
    "model": ("pretrained_model_name_or_path", "tokenizer.pretrained_model_name_or_path"),
    "pairs_file": ("pairs_file",),
    "use_mask": ("use_mask",),
    "max_length": ("max_length",),
    "beta": ("beta",),
    "lr": ("lr",),
    "epochs": ("max_epochs",),
    "batch_size": ("global_batch_size",),
    "micro_batch": ("micro_batch_size",),
    "accumulative_counts": ("accumulative_counts",),
}
# Defaults of fields whose key a recipe may leave out.
DEFAULTS = {"beta": 0.1, "max_length": None}
# LoRA is a block, not a value: peft's LoraConfig as a dict at LORA_KEY and, for QLoRA, a
# bitsandbytes config at QUANTIZATION_KEY. `apply_lora` writes r, lora_alpha and
# lora_dropout into the first (the recipe's other LoRA keys, e.g. target_modules, stay its
# own) and adds or removes the blocks; `complete_lora` reads the recipe's values from them.
LORA_KEY = "model.lora"
QUANTIZATION_KEY = "model.llm.quantization_config"
DTYPE_KEY = "model.llm.torch_dtype"
# QLoRA's base: 4-bit NormalFloat with double quantization, computing in bf16 (Dettmers et al., 2023).
QLORA_QUANTIZATION = dict(type="transformers.BitsAndBytesConfig", load_in_4bit=True, bnb_4bit_quant_type="nf4",
                          bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype="torch.bfloat16")


@dataclass(frozen=True)
class BatchLayout:
    """How a global batch is split: per process, per forward, per optimizer step."""

    micro_batch: int  # pairs per forward on one process
    accumulative_counts: int  # forwards per optimizer step
    iters_per_epoch: int  # forwards per epoch on one process


# --------------------------------------------------------------------------- files

def resolve_recipe(recipe: str | None) -> Path:
    """A recipe file: a path, or the name of one in recipes/ (default: the SmolLM2 recipe)."""
    name = recipe or DEFAULT_RECIPE
    path = Path(name).expanduser()
    if path.is_file():
        return path
    bundled = RECIPES_DIR / (name if name.endswith(".py") else f"{name}.py")
    if recipe is None or (os.sep not in name and bundled.is_file()):
        if bundled.is_file():
            return bundled
        raise MaskDPOError(f"the default recipe {bundled} is missing; pass --recipe FILE")
    raise MaskDPOError(f"--recipe {recipe}: no such file")


def load_recipe(path: Path) -> Any:
    """The recipe as an mmengine Config, checked to be a Mask-DPO recipe."""
    from mmengine.config import Config

    from maskdpo_cli.xtuner_ext.compat import apply_cpu_shims

    apply_cpu_shims()
    try:
        cfg = Config.fromfile(str(path))
    except Exception as err:  # noqa: BLE001 - any failure to read the recipe is the user's input
        raise MaskDPOError(f"--recipe {path}: cannot load it as an XTuner config: {type(err).__name__}: {err}") from None
    _check_mask_dpo_recipe(cfg)
    return cfg


def _type_name(node: Any) -> str:
    kind = node.get("type") if isinstance(node, dict) else None
    return kind.rsplit(".", 1)[-1] if isinstance(kind, str) else getattr(kind, "__name__", "")


def _check_mask_dpo_recipe(cfg: Any) -> None:
    if _type_name(_get(cfg, "train_dataloader.dataset")) != "build_mask_dpo_dataset":
        raise MaskDPOError("the recipe's train_dataloader.dataset is not built with build_mask_dpo_dataset; "
                           "it is not a Mask-DPO recipe")
    if _type_name(_get(cfg, "model")) != "MaskDPO" or _get(cfg, RECIPE_KEYS["model"][0]) is None:
        raise MaskDPOError("the recipe's model is not MaskDPO with llm.pretrained_model_name_or_path; "
                           "it is not a Mask-DPO recipe")
    if _get(cfg, "train_cfg.max_epochs") is None:
        raise MaskDPOError("the recipe's train_cfg must set max_epochs")


# --------------------------------------------------------------------------- keys

def _get(cfg: Any, key: str, default: Any = None) -> Any:
    node = cfg  # an mmengine Config, then its ConfigDicts
    for part in key.split("."):
        if node is not cfg and not isinstance(node, dict):
            return default
        if part not in node:
            return default
        node = node[part]
    return node


def _has(cfg: Any, key: str) -> bool:
    missing = object()
    return _get(cfg, key, missing) is not missing


def _pop(cfg: Any, key: str) -> None:
    *parents, leaf = key.split(".")
    node = _get(cfg, ".".join(parents)) if parents else cfg
    if isinstance(node, dict) and leaf in node:
        node.pop(leaf)


def _set(cfg: Any, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        if part not in node or node[part] is None:
            node[part] = {}
        node = node[part]
    node[leaf] = value


def recipe_value(cfg: Any, field: str) -> Any:
    """The recipe's own value of a TrainConfig field, read at its first key."""
    return _get(cfg, RECIPE_KEYS[field][0], DEFAULTS.get(field))


def default_batch_size(cfg: Any, processes: int) -> int:
    """The recipe's global batch: `global_batch_size`, or micro x accumulation x processes."""
    return int(cfg.get("global_batch_size") or int(_get(cfg, RECIPE_KEYS["micro_batch"][0]))
               * int(_get(cfg, RECIPE_KEYS["accumulative_counts"][0], 1)) * processes)


# --------------------------------------------------------------------------- batches and schedules

def batch_layout(cfg: Any, global_batch: int, processes: int, num_pairs: int) -> BatchLayout:
    """The recipe's micro batch, or a smaller one, times accumulation times processes = the global batch."""
    micro = int(_get(cfg, RECIPE_KEYS["micro_batch"][0]))
    if global_batch <= micro * processes:
        if global_batch % processes:
            raise MaskDPOError(f"--batch-size {global_batch} is not a multiple of the {processes} devices")
        micro, accumulate = global_batch // processes, 1
    elif global_batch % (micro * processes):
        raise MaskDPOError(f"--batch-size {global_batch} is not a multiple of the recipe's micro batch "
                           f"{micro} x {processes} device(s)")
    else:
        accumulate = global_batch // (micro * processes)
    return BatchLayout(micro, accumulate, math.ceil(math.ceil(num_pairs / processes) / micro))


def _fit_schedulers(cfg: Any, epoch_scale: float, iters_per_epoch: int) -> None:
    """Epoch-fraction schedules (warmup, cosine) -> whole iterations of this run.

    mmengine truncates fractional epochs to iterations and refuses a scheduler whose end
    is not after its begin, which a 3% warmup on a small data set hits; rounding here and
    dropping a phase shorter than one iteration keeps small runs trainable.
    """
    schedulers = cfg.get("param_scheduler")
    if not schedulers:
        return
    fitted = []
    # Edited in place: copying a ConfigDict would build its lazily imported `type`s, which
    # then cannot be written back to W/config.py.
    for sched in (schedulers if isinstance(schedulers, list) else [schedulers]):
        if sched.get("by_epoch", True) and sched.get("convert_to_iter_based"):
            begin = round(sched.get("begin", 0) * epoch_scale * iters_per_epoch)
            end = round(sched.get("end", cfg.train_cfg.max_epochs / epoch_scale) * epoch_scale * iters_per_epoch)
            sched.update(begin=begin, end=end, by_epoch=False, convert_to_iter_based=False)
            if end <= begin:
                continue
        fitted.append(sched)
    cfg.param_scheduler = fitted or None


# --------------------------------------------------------------------------- the mapping

def apply_config(cfg: Any, config: TrainConfig, layout: BatchLayout, *, pairs_file: str, tokenized_file: str,
                 cuda: bool) -> None:
    """Write a complete config into the recipe at the keys of RECIPE_KEYS (and of
    RECIPE_KEYS_IF_PRESENT where the recipe has them), and fit its schedules to the run."""
    values = {**asdict(config), "pairs_file": pairs_file, "tokenized_file": tokenized_file,
              "micro_batch": layout.micro_batch, "accumulative_counts": layout.accumulative_counts}
    recipe_epochs = recipe_value(cfg, "epochs")
    for name, keys in RECIPE_KEYS.items():
        for key in keys:
            _set(cfg, key, values[name])
    for name, keys in RECIPE_KEYS_IF_PRESENT.items():
        for key in keys:
            if _has(cfg, key):
                _set(cfg, key, values[name])
    _fit_schedulers(cfg, values["epochs"] / recipe_epochs, layout.iters_per_epoch)
    apply_lora(cfg, config)
    if not cuda and cfg.get("model_wrapper_cfg") is None:
        # mmengine gives DDP device_ids=[LOCAL_RANK], which DDP refuses for a CPU module;
        # a value in the config wins over that default. Unused by a single process.
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False)


# --------------------------------------------------------------------------- LoRA

def complete_lora(config: TrainConfig, cfg: Any, *, cuda: bool) -> TrainConfig:
    """The LoRA fields of a config completed from the recipe: rank 0 without LoRA; alpha 2R
    unless given (or the recipe's, with the recipe's rank); dropout DEFAULT_LORA_DROPOUT unless
    given; and, when --lora puts an adapter on a recipe that has none and no --lr is given,
    lr LORA_LR_FACTOR times the recipe's."""
    own = _get(cfg, LORA_KEY) or {}
    rank = config.lora if config.lora is not None else int(own.get("r") or 0)
    qlora = config.qlora if config.qlora is not None else _get(cfg, QUANTIZATION_KEY) is not None
    if not rank:
        # The recipe's quantization goes with its adapter; --qlora without one is refused here.
        return replace(config, lora=0, qlora=config.qlora)
    alpha = config.lora_alpha or (own.get("lora_alpha") if config.lora is None else None) or 2 * rank
    dropout = config.lora_dropout if config.lora_dropout is not None else own.get("lora_dropout")
    lr = config.lr
    if lr is None and config.lora is not None and not own:
        lr = LORA_LR_FACTOR * float(recipe_value(cfg, "lr"))
    config = replace(config, lora=rank, lora_alpha=float(alpha), qlora=qlora, lr=lr,
                     lora_dropout=float(DEFAULT_LORA_DROPOUT if dropout is None else dropout))
    if qlora and not cuda:
        raise MaskDPOError("--qlora needs a CUDA GPU (bitsandbytes' 4-bit base) and none is in use here; "
                           "on the CPU train the adapter on the full-precision base: --lora R without --qlora")
    return config


def apply_lora(cfg: Any, config: TrainConfig) -> None:
    """Write a complete config's LoRA settings into the recipe (LORA_KEY, QUANTIZATION_KEY), or remove them."""
    if not config.lora:
        if _has(cfg, LORA_KEY):
            _set(cfg, LORA_KEY, None)  # SupervisedFinetune's default: full fine-tuning
        _pop(cfg, QUANTIZATION_KEY)
        return
    settings = dict(r=config.lora, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout)
    if _get(cfg, LORA_KEY):
        _get(cfg, LORA_KEY).update(settings)  # in place: the recipe's own `type` stays as it was loaded
    else:  # None for target_modules: every linear layer of the decoder (xtuner_ext.lora.wrap_in_lora)
        _set(cfg, LORA_KEY, dict(type="peft.LoraConfig", task_type="CAUSAL_LM", bias="none",
                                 target_modules=None, **settings))
    if not config.qlora:
        _pop(cfg, QUANTIZATION_KEY)
    elif _get(cfg, QUANTIZATION_KEY) is None:
        _set(cfg, QUANTIZATION_KEY, dict(QLORA_QUANTIZATION))
        if _get(cfg, DTYPE_KEY) is None:
            _set(cfg, DTYPE_KEY, "torch.bfloat16")  # the weights bitsandbytes leaves unquantized
