"""Reference log-probabilities: computed once per pair before the first step, cached in W.

DPO's reference model is the policy as it was before training. Instead of keeping a frozen
copy in memory and running it at every step (what XTuner's DPO does: one extra forward
per step per epoch), `ReferenceLogpHook` runs the initial policy once over every pair in
eval mode without gradients, stores the two summed log-probs per pair in
`W/ref_logps.pt`, and hands the table to `MaskDPO`. The cache is keyed by pair id plus a
hash of the tokens and the loss mask (masked and unmasked runs never share values) and
tagged with a fingerprint of the reference model, so a resumed run (whose weights are
no longer the reference) reuses it and never recomputes it.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from mmengine.dist import all_gather_object, barrier, get_rank, get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

CACHE_VERSION = 1


def model_fingerprint(model_path: str | os.PathLike, load_from: str | None = None) -> str:
    """Identifies the reference weights: the directory and the size and mtime of its weight files."""
    path = Path(model_path)
    parts = [str(path.resolve()) if path.exists() else str(model_path)]
    if path.is_dir():
        for weight in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
            stat = weight.stat()
            parts.append(f"{weight.name}:{stat.st_size}:{stat.st_mtime_ns}")
    if load_from:
        parts.append(f"load_from={load_from}")
    return "|".join(parts)


def load_cache(path: Path, fingerprint: str) -> dict[str, tuple[float, float]]:
    """The cached {pair key: (chosen, rejected)}; empty when absent or made by another model."""
    if not path.is_file():
        return {}
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("version") != CACHE_VERSION or blob.get("fingerprint") != fingerprint:
        return {}
    return {key: (float(c), float(r)) for key, (c, r) in blob["logps"].items()}


def save_cache(path: Path, fingerprint: str, logps: dict[str, tuple[float, float]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"version": CACHE_VERSION, "fingerprint": fingerprint,
                "logps": {key: [c, r] for key, (c, r) in logps.items()}}, tmp)
    os.replace(tmp, path)


def cache_bytes(keys: list[str]) -> int:
    """The size of the cache file for these pair keys, as `save_cache` writes it (every
    value takes the same bytes, so zeros measure it exactly, fingerprint aside)."""
    import io

    buffer = io.BytesIO()
    torch.save({"version": CACHE_VERSION, "fingerprint": "",
                "logps": {key: [0.0, 0.0] for key in keys}}, buffer)
    return buffer.tell()


def _shard(indices: list[int], rank: int, world: int) -> list[int]:
    """This rank's share, padded so every rank runs the same number of forwards (ZeRO-3
    gathers parameters collectively: a rank that stops early would hang the others)."""
    per_rank = math.ceil(len(indices) / world)
    mine = indices[rank::world]
    return mine + [indices[-1]] * (per_rank - len(mine))


class ReferenceLogpHook(Hook):
    """Fills `MaskDPO.reference_logps` before training, from the cache or one reference pass."""

    priority = "VERY_HIGH"

    def __init__(self, cache_file: str = "ref_logps.pt", batch_size: int | None = None) -> None:
        self.cache_file = cache_file
        self.batch_size = batch_size
        self.seconds = 0.0
        self.computed = 0

    def before_train(self, runner: Any) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        dataset = runner.train_dataloader.dataset
        keys = dataset.keys
        path = Path(runner.work_dir) / self.cache_file
        load_from = None if runner.cfg.get("resume") else runner.cfg.get("load_from")
        fingerprint = model_fingerprint(model.llm.config._name_or_path, load_from)
        if getattr(model.llm, "is_loaded_in_4bit", False):  # QLoRA: the reference is the 4-bit base
            fingerprint += "|4bit"
        cache = load_cache(path, fingerprint)
        missing = [i for i, key in enumerate(keys) if key not in cache]
        if missing:
            if runner.iter > 0:
                raise RuntimeError(
                    f"{path} lacks reference log-probs for {len(missing)} pairs (e.g. {keys[missing[0]]}); "
                    "they cannot be recomputed after training started: the weights are no longer the "
                    "reference. Train from scratch in a new work dir.")
            start = time.perf_counter()
            cache.update(self._compute(runner, model, dataset, missing))
            self.seconds, self.computed = time.perf_counter() - start, len(missing)
            if is_main_process():
                save_cache(path, fingerprint, cache)
            barrier()
        runner.message_hub.update_info("maskdpo/ref_seconds", self.seconds)
        runner.message_hub.update_info("maskdpo/ref_computed", self.computed)
        _say(f"reference log-probs: {self.computed} pairs computed in {self.seconds:.1f} s, "
             f"{len(keys) - len(missing)} from the cache ({path})")
        model.set_reference_logps(torch.tensor([cache[key] for key in keys], dtype=torch.float64))

    def _compute(self, runner: Any, model: Any, dataset: Any, indices: list[int]) -> dict[str, tuple[float, float]]:
        collate = runner.train_dataloader.collate_fn
        batch_size = self.batch_size or runner.train_dataloader.batch_size or 1
        mine = _shard(indices, get_rank(), get_world_size())
        context = _precision_context(runner, model)
        results: dict[str, tuple[float, float]] = {}
        was_training = model.training
        model.eval()
        try:
            with _ReferenceProgress(len(mine)) as progress:
                for start in range(0, len(mine), batch_size):
                    chunk = [dataset[i] for i in mine[start:start + batch_size]]
                    batch = model.data_preprocessor(collate(chunk), False)
                    with context():
                        values = model.reference_pass(batch["data"]).double().cpu().tolist()
                    for item, (chosen, rejected) in zip(chunk, values):
                        results[item["key"]] = (chosen, rejected)
                    progress.advance(len(chunk))
        finally:
            model.train(was_training)
        if get_world_size() > 1:
            merged: dict[str, tuple[float, float]] = {}
            for part in all_gather_object(results):
                merged.update(part)
            results = merged
        return results


def _precision_context(runner: Any, model: Any) -> Any:
    """The training step's autocast (AMP bf16 on GPU), so that at step 0 the policy's
    log-probs equal the cached reference ones exactly, not up to a precision change."""
    wrapper = getattr(runner, "optim_wrapper", None)
    if wrapper is not None and hasattr(wrapper, "optim_context"):
        return lambda: wrapper.optim_context(model)
    return nullcontext


def _say(message: str) -> None:
    if is_main_process():
        from maskdpo_cli.progress import stderr

        stderr.print(message, highlight=False, soft_wrap=True)


class _ReferenceProgress:
    """A bar on a terminal, nothing otherwise (the hook prints one summary line)."""

    def __init__(self, total: int) -> None:
        self.total, self.bar, self.task = total, None, None

    def __enter__(self) -> _ReferenceProgress:
        from maskdpo_cli.progress import progress_bar, stderr

        if is_main_process() and stderr.is_terminal:
            self.bar = progress_bar("pairs")
            self.bar.start()
            self.task = self.bar.add_task("reference", total=self.total, info="")
        return self

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
