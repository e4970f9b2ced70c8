"""`maskdpo train --dry-run`: every check of a run, and its plan, in seconds; nothing trained or written.

The checks are `training.check_run`, the very code a real run starts with: the recipe,
every pair located and tokenized with its loss mask, the model's config and tokenizer (no
weights: a hub id fetches config.json and the tokenizer alone), the batch split, the
DeepSpeed config and the resume point. So every error a real run would hit on its data or
settings comes out here as the same one line with exit 2. Then the plan: processes, batch,
steps, the reference cache's size on disk and the memory per device
(`maskdpo_cli.memory_plan`). `--gpus 8` plans for 8 GPUs on a machine without any.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.train_config import TrainConfig


def plan_train(config: TrainConfig) -> str:
    """The plan of `maskdpo train` with these settings, after every check a real run makes."""
    from maskdpo_cli.process_group import detect_launch
    from maskdpo_cli.training import check_run

    if detect_launch() is not None:
        raise MaskDPOError("--dry-run starts nothing: run it directly, not under torchrun or srun")
    if config.gpus == 0:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # as a real run does
    checked = check_run(config, None, dry_run=True)  # --gpus N > 1: N GPUs, here or not
    return render(checked)


def render(checked: Any) -> str:
    """The plan as plain text: one fact per line."""
    from maskdpo_cli.xtuner_ext.ref_cache import cache_bytes

    config, layout, dataset = checked.config, checked.layout, checked.dataset
    processes, pairs = config.nproc, len(checked.records)
    work = Path(config.work_dir)
    model_json = json.loads((Path(config.model) / "config.json").read_text())
    steps_per_epoch = math.ceil(layout.iters_per_epoch / layout.accumulative_counts)
    kind = "Mask-DPO" if config.use_mask else "DPO (--no-mask)"
    lines = [
        "dry run: every check of a real run passed; nothing trained, nothing written",
        f"recipe      {config.recipe}",
        f"pairs       {config.pairs}: {pairs} pairs, every one located and tokenized ({kind}); "
        f"{dataset.num_truncated} truncated at max_length {config.max_length}",
        f"loss tokens {_loss_tokens(dataset)}",
        f"model       {config.model}: {_describe_model(model_json)}; {_weights_here(Path(config.model))}",
        f"processes   {_describe_processes(checked)}",
        f"batch       global {config.batch_size} = micro {layout.micro_batch} x {layout.accumulative_counts} "
        f"accumulation x {processes} process(es)",
        f"steps       {steps_per_epoch} optimizer steps per epoch ({layout.iters_per_epoch} micro-batches per "
        f"process) x {config.epochs} epoch(s) = {steps_per_epoch * config.epochs} steps; lr {config.lr:g}, "
        f"beta {config.beta:g}, seed {config.seed}",
        f"reference   {work / 'ref_logps.pt'}: {_size(cache_bytes(dataset.keys))} for {pairs} pairs "
        "(computed once, before the first step)",
        f"deepspeed   {_describe_deepspeed(checked)}",
        f"resume      {'from ' + checked.resume_from if checked.resume_from else 'none: training starts at step 0'}",
        _memory_plan(checked, model_json),
    ]
    return "\n".join(lines)


def _loss_tokens(dataset: Any) -> str:
    chosen = [sum(item["chosen_mask"]) for item in dataset.items]
    rejected = [sum(item["rejected_mask"]) for item in dataset.items]
    empty = sum(not c or not r for c, r in zip(chosen, rejected))
    text = (f"chosen {sum(chosen)} of {sum(len(item['chosen_ids']) for item in dataset.items)}, rejected "
            f"{sum(rejected)} of {sum(len(item['rejected_ids']) for item in dataset.items)} tokens in the loss")
    return text + (f"; {empty} pairs have a side with no token in the loss" if empty else "")


def _describe_model(model_json: dict[str, Any]) -> str:
    from maskdpo_cli.memory_plan import LlamaShape, count_parameters

    arch = ",".join(model_json.get("architectures") or [model_json.get("model_type", "?")])
    try:
        shape = LlamaShape.from_config(model_json)
    except MaskDPOError:
        return f"{arch} (config.json only)"
    return (f"{arch}, {count_parameters(shape).total:,} parameters, {shape.layers} layers, hidden {shape.hidden}, "
            f"vocab {shape.vocab} (config.json only)")


def _weights_here(model: Path) -> str:
    files = [*model.glob("*.safetensors"), *model.glob("*.bin")]
    return "weights not loaded" if files else "no weights here yet (a real run downloads them)"


def _describe_processes(checked: Any) -> str:
    processes = checked.config.nproc
    if checked.cuda:
        where = f"{processes} GPU(s), one process each"
    elif processes > 1:
        where = f"{processes} CPU processes (gloo)"
    else:
        where = "1 process on the CPU"
    launched = processes > 1 or checked.deepspeed is not None  # DeepSpeed always runs under torchrun
    return where + (", started by torchrun" if launched else "")


def _describe_deepspeed(checked: Any) -> str:
    ds = checked.deepspeed
    if ds is None:
        return "none (DDP)" if checked.config.nproc > 1 else "none"
    text = json.dumps(ds, separators=(",", ":"))
    return (f"{checked.config.deepspeed}, {'CUDA' if checked.cuda else 'CPU accelerator (gloo)'}; "
            f"{Path(checked.config.work_dir) / 'deepspeed.json'} will hold {text}")


def zero_name(ds: dict[str, Any] | None) -> str | None:
    """The memory plan's name for a DeepSpeed config: zero1 .. zero3_offload, None without one."""
    if ds is None:
        return None
    zero = ds.get("zero_optimization") or {}
    stage = int(zero.get("stage", 0))
    if stage == 0:
        return None
    offload = (zero.get("offload_optimizer") or {}).get("device") in ("cpu", "nvme")
    return f"zero{stage}" + ("_offload" if offload and stage > 1 else "")


def _dtype(checked: Any) -> str:
    ds = checked.deepspeed
    if ds is not None:
        for dtype in ("bf16", "fp16"):
            if (ds.get(dtype) or {}).get("enabled") is True:
                return dtype
        return "fp32"
    return "bf16" if checked.cuda else "fp32"  # autocast on CUDA, fp32 on the CPU


def _memory_plan(checked: Any, model_json: dict[str, Any]) -> str:
    from maskdpo_cli.memory_plan import plan_memory, render_plan

    model_cfg = checked.cfg.get("model") or {}
    try:
        plan = plan_memory(model_json, devices=checked.config.nproc, deepspeed=zero_name(checked.deepspeed),
                           dtype=_dtype(checked), micro_batch=checked.layout.micro_batch,
                           max_length=checked.config.max_length or _longest(checked.dataset),
                           checkpointing=bool(model_cfg.get("use_activation_checkpointing", False)),
                           lora_rank=checked.config.lora or None, qlora=bool(checked.config.qlora),
                           source=str(Path(checked.config.model) / "config.json"))
    except MaskDPOError as err:
        return f"memory plan: not available for this model ({err.message})"
    return render_plan(plan)


def _longest(dataset: Any) -> int:
    """The longest sequence to train on, when no max_length cuts them."""
    return max(max(len(item["chosen_ids"]), len(item["rejected_ids"])) for item in dataset.items)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
