"""mmengine hooks: live progress on stderr, a machine-readable log, the HF export.

XTuner's own logs (mmengine's logger) stay in the work dir; what a user watches is the
compact line (or the bar on a terminal) printed here, and what `report` plots is
`W/train_log.jsonl`: one record per iteration with loss, reward accuracy and margin.
"""

from __future__ import annotations

import datetime
import json
import resource
import time
from pathlib import Path
from typing import Any

from mmengine.dist import get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from maskdpo_cli.jsonl import replace_dir

METRICS = ("loss", "reward_acc", "reward_margin", "chosen_rewards", "rejected_rewards")


def _unwrap(model: Any) -> Any:
    return model.module if is_model_wrapper(model) else model


def _fmt_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class TrainProgressHook(Hook):
    """Loss, reward accuracy, margin, pairs/s and ETA on stderr; the same per step in a JSONL log.

    `step` in the log is the mmengine iteration (one micro-batch); `epoch` is fractional.
    On resume the log keeps the steps up to the checkpoint and continues after them.
    """

    priority = "LOW"

    def __init__(self, log_file: str = "train_log.jsonl", summary_file: str = "train_summary.json",
                 print_every: int | None = None) -> None:
        self.log_file, self.summary_file, self.print_every = log_file, summary_file, print_every
        self._fh: Any = None
        self._bar: Any = None
        self._last: dict[str, float] = {}
        self._lr: float | None = None

    def before_train(self, runner: Any) -> None:
        self.start_time = time.perf_counter()
        self.start_cpu = _cpu_seconds()
        self.first_iter = runner.iter
        self.total_iters = runner.max_iters
        self.iters_per_epoch = max(len(runner.train_dataloader), 1)
        self.world = get_world_size()
        self.pairs = 0
        self.tokens = 0
        if not is_main_process():
            return
        path = Path(runner.work_dir) / self.log_file
        self._fh = _reopen_log(path, keep_through_step=self.first_iter)
        self.every = self.print_every or max(1, (self.total_iters - self.first_iter) // 20)
        from maskdpo_cli.progress import progress_bar, stderr

        if stderr.is_terminal:
            self._bar = progress_bar("it")
            self._bar.start()
            self._task = self._bar.add_task("train", total=self.total_iters, completed=self.first_iter, info="")
        elif self.first_iter:
            stderr.print(f"resumed at step {self.first_iter}/{self.total_iters}")

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        self._lr = _current_lr(runner)  # the rate this step uses; the scheduler moves it afterwards

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        metrics = {key: _scalar(value) for key, value in (outputs or {}).items() if key in METRICS}
        pairs = int(data_batch["data"]["pair_index"].numel()) if data_batch else 0
        # Real (unpadded) tokens through the policy, chosen and rejected.
        tokens = int(data_batch["data"]["attention_mask"].sum()) if data_batch else 0
        if self.world > 1:  # every rank takes part: the log describes the global batch
            metrics, pairs, tokens = global_batch(metrics, pairs, tokens)
        self.pairs += pairs
        self.tokens += tokens
        if not is_main_process():
            return
        step = runner.iter + 1
        elapsed = time.perf_counter() - self.start_time
        rate = self.pairs / elapsed if elapsed > 0 else 0.0
        eta = (self.total_iters - step) * elapsed / max(step - self.first_iter, 1)
        lr = self._lr
        record = {"step": step, "epoch": round(step / self.iters_per_epoch, 4), **metrics, "lr": lr,
                  "pairs_per_s": round(rate, 4), "elapsed_s": round(elapsed, 3)}
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        self._last = record
        info = (f"loss {metrics.get('loss', float('nan')):.4f} acc {metrics.get('reward_acc', float('nan')):.2f} "
                f"margin {metrics.get('reward_margin', float('nan')):+.3f} | {rate:.2f} pairs/s")
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)
        elif step % self.every == 0 or step == self.total_iters or step == self.first_iter + 1:
            from maskdpo_cli.progress import stderr

            stderr.print(f"train {step}/{self.total_iters} ep {record['epoch']:.2f} | {info} | "
                         f"ETA {_fmt_eta(eta)}", highlight=False, soft_wrap=True)

    def after_run(self, runner: Any) -> None:
        if self._bar is not None:
            self._bar.stop()
        if not is_main_process():
            return
        if self._fh is not None:
            self._fh.close()
        elapsed = time.perf_counter() - getattr(self, "start_time", time.perf_counter())
        summary = {
            "steps": runner.iter, "max_steps": runner.max_iters, "resumed_at": getattr(self, "first_iter", 0),
            "pairs_trained": self.pairs if hasattr(self, "pairs") else 0,
            "train_seconds": round(elapsed, 3),
            # CPU time of this process over the loop: with train_seconds, how many cores were busy.
            "train_cpu_seconds": round(_cpu_seconds() - getattr(self, "start_cpu", _cpu_seconds()), 3),
            "train_pairs_per_s": round(self.pairs / elapsed, 4) if getattr(self, "pairs", 0) and elapsed > 0 else None,
            "train_tokens_per_s": round(self.tokens / elapsed, 1) if getattr(self, "tokens", 0) and elapsed > 0 else None,
            "reference_seconds": runner.message_hub.get_info("maskdpo/ref_seconds", 0.0),
            "reference_pairs_computed": runner.message_hub.get_info("maskdpo/ref_computed", 0),
            "peak_gpu_memory_gb": _peak_gpu_memory_gb(),
            "last": self._last,
        }
        (Path(runner.work_dir) / self.summary_file).write_text(json.dumps(summary, indent=2) + "\n")


def global_batch(metrics: dict[str, float], pairs: int, tokens: int) -> tuple[dict[str, float], int, int]:
    """The step over all ranks: each metric (a mean over this rank's pairs) averaged with
    every rank's pair count as weight, and the pairs and tokens summed. Collective.

    XTuner's DPO (and mmengine's logger) show rank 0's share only: on 8 GPUs with micro
    batch 1, a curve of single pairs.
    """
    import torch
    from mmengine.dist import all_reduce

    keys = sorted(metrics)
    sums = torch.tensor([metrics[key] * pairs for key in keys] + [pairs, tokens], dtype=torch.float64)
    all_reduce(sums, op="sum")
    total = sums[-2].item()
    means = {key: sums[i].item() / total if total else float("nan") for i, key in enumerate(keys)}
    return means, int(total), int(sums[-1].item())


def _peak_gpu_memory_gb() -> float | None:
    """Peak memory torch allocated on this rank's GPU over the run; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 3)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _scalar(value: Any) -> float:
    return float(value.detach()) if hasattr(value, "detach") else float(value)


def _current_lr(runner: Any) -> float | None:
    try:
        lrs = runner.optim_wrapper.get_lr()
        return float(next(iter(lrs.values()))[0])
    except Exception:  # noqa: BLE001 - the lr is informative only
        return None


def _reopen_log(path: Path, keep_through_step: int) -> Any:
    """Append handle on the log with records after `keep_through_step` dropped (a fresh run
    keeps none; a resumed one drops the steps a crash left beyond its checkpoint)."""
    kept: list[str] = []
    if keep_through_step and path.is_file():
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= keep_through_step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a torn last line
    path.write_text("".join(line + "\n" for line in kept))
    return path.open("a")


class HFExportHook(Hook):
    """Saves the trained policy as a HF model (safetensors + tokenizer) in `W/<out_dir>`.

    The directory is written next to the target and renamed over it, so W/hf is either
    the previous complete export or the new one. Under DeepSpeed ZeRO-3 the shards are
    gathered first (all ranks take part; rank 0 writes). A LoRA run also writes its
    adapter, W/adapter, and W/hf holds base + adapter merged (`xtuner_ext.lora`).
    """

    priority = "LOWEST"

    def __init__(self, out_dir: str = "hf") -> None:
        self.out_dir = out_dir

    def before_train(self, runner: Any) -> None:
        strategy = getattr(runner, "strategy", None)
        if _is_deepspeed(strategy):  # the gather-on-save setting this export relies on is the file's
            from maskdpo_cli.deepspeed_setup import check_received

            check_received(strategy.config, Path(runner.work_dir))

    def after_run(self, runner: Any) -> None:
        state_dict = _gathered_state_dict(runner)
        if not is_main_process():
            return
        model = _unwrap(runner.model)
        llm = model.llm
        from maskdpo_cli.progress import stderr

        if getattr(model, "use_lora", False):
            from maskdpo_cli.xtuner_ext.lora import export_lora

            adapter, merged = export_lora(llm, Path(runner.work_dir), self.out_dir, _export_tokenizer(runner, llm))
            stderr.print(f"exported the LoRA adapter to {adapter} and the merged model to {merged}", highlight=False)
            return
        llm.config.use_cache = True  # training turned it off; generation wants it

        def write(staging: Path) -> None:
            if state_dict is None:
                llm.save_pretrained(staging, safe_serialization=True)
            else:
                prefix = "llm."
                llm.save_pretrained(staging, safe_serialization=True,
                                    state_dict={k[len(prefix):]: v for k, v in state_dict.items()
                                                if k.startswith(prefix)})
            _export_tokenizer(runner, llm).save_pretrained(staging)

        target = replace_dir(Path(runner.work_dir) / self.out_dir, write)
        stderr.print(f"exported the trained model to {target}", highlight=False)


def _export_tokenizer(runner: Any, llm: Any) -> Any:
    tokenizer_cfg = runner.cfg.get("tokenizer")
    if tokenizer_cfg is not None:
        from xtuner.registry import BUILDER

        return BUILDER.build(tokenizer_cfg)
    from maskdpo_cli.xtuner_ext.dataset import build_tokenizer

    return build_tokenizer(llm.config._name_or_path)


def _gathered_state_dict(runner: Any) -> dict[str, Any] | None:
    """Full weights under DeepSpeed (None otherwise: the module holds them already)."""
    strategy = getattr(runner, "strategy", None)
    if not _is_deepspeed(strategy):
        return None
    engine = strategy.model
    if engine.zero_optimization_partition_weights():
        if not engine.zero_gather_16bit_weights_on_model_save():
            raise RuntimeError("set zero_optimization.stage3_gather_16bit_weights_on_model_save=true "
                               "in the DeepSpeed config to export the model")
        return engine._zero3_consolidated_16bit_state_dict()
    return engine.module_state_dict(exclude_frozen_parameters=strategy.exclude_frozen_parameters)


def _is_deepspeed(strategy: Any) -> bool:
    return strategy is not None and type(strategy).__name__ == "DeepSpeedStrategy"
