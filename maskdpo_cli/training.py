"""`maskdpo train`: pairs -> an aligned HF model in W/hf, through XTuner.

The order of work is the safety argument: every pair is validated and tokenized with its
loss mask *before* anything is trained, so a pair that cannot be aligned stops the run
(exit 2, naming the pair) instead of training on a wrong mask. Then the recipe, a plain
XTuner config, gets the command line's values, is written to W/config.py (what ran, and
what `xtuner train W/config.py` would run again) and goes to XTuner's own train entry:
in this process for one process, as N ranks under torchrun with this interpreter for
`--nproc N` CPU processes or N GPUs, or as one rank of a run that torchrun or srun started
(`maskdpo_cli.distributed`: only rank 0 validates and writes W; the others wait for it).

Work dir layout:
    W/pairs.jsonl         the validated pairs trained on
    W/config.py           the resolved XTuner config
    W/ref_logps.pt        reference log-probs, computed once before the first step
    W/train_log.jsonl     per step: loss, reward_acc, reward_margin, rewards, lr, pairs/s
    W/train_summary.json  totals of the last run
    W/run.json            the settings a checkpoint in W belongs to (resume checks them)
    W/iter_*.pth, W/last_checkpoint   mmengine checkpoints: rerunning the same command
                          continues from the last one (kill -9 loses at most `save_steps`)
    W/<timestamp>/        XTuner/mmengine logs; W/xtuner_stdout.log their console output
    W/hf/                 the trained model (safetensors + tokenizer)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from maskdpo_cli.errors import InputError, MaskDPOError
from maskdpo_cli.jsonl import atomic_output, dumps, write_json_atomic
from maskdpo_cli.progress import stderr

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
DEFAULT_RECIPE = "smollm2_135m_instruct_maskdpo"


@dataclass
class TrainPlan:
    """What will run, resolved from recipe + flags; printed before training starts."""

    pairs: int
    truncated: int
    model_path: str
    max_length: int | None
    epochs: int
    global_batch: int
    micro_batch: int
    accumulative_counts: int
    iters_per_epoch: int
    lr: float
    beta: float
    use_mask: bool
    gpus: int
    processes: int
    deepspeed: str | None
    seed: int

    def describe(self) -> str:
        device = f"{self.processes} GPU(s)" if self.gpus and _cuda_devices() else "CPU, fp32"
        if self.processes > 1 and not (self.gpus and _cuda_devices()):
            device += f", {self.processes} processes (gloo)"
        ds = f", DeepSpeed {self.deepspeed}" if self.deepspeed else ""
        kind = "Mask-DPO" if self.use_mask else "DPO (--no-mask)"
        return (f"{kind}: {self.pairs} pairs x {self.epochs} epoch(s), global batch {self.global_batch} "
                f"(micro {self.micro_batch} x {self.accumulative_counts} accumulation x {self.processes}), "
                f"{self.iters_per_epoch * self.epochs} iterations, lr {self.lr:g}, beta {self.beta:g}, "
                f"max_length {self.max_length}, seed {self.seed}, {device}{ds}")


# --------------------------------------------------------------------------- recipe

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
    from mmengine.config import Config

    from maskdpo_cli.xtuner_ext.compat import apply_cpu_shims

    apply_cpu_shims()
    try:
        return Config.fromfile(str(path))
    except Exception as err:  # noqa: BLE001 - any failure to read the recipe is the user's input
        raise MaskDPOError(f"--recipe {path}: cannot load it as an XTuner config: {type(err).__name__}: {err}") from None


def _type_name(kind: Any) -> str:
    return kind.rsplit(".", 1)[-1] if isinstance(kind, str) else getattr(kind, "__name__", "")


def _dicts(node: Any) -> Iterator[dict]:
    """Every dict inside a config, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _dicts(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _dicts(value)


def _typed(cfg: Any, name: str) -> list[dict]:
    return [d for d in _dicts(cfg._cfg_dict) if _type_name(d.get("type")) == name]


def _recipe_dataset(cfg: Any) -> dict:
    datasets = _typed(cfg, "build_mask_dpo_dataset")
    if not datasets:
        raise MaskDPOError("the recipe builds no dataset with build_mask_dpo_dataset; it is not a Mask-DPO recipe")
    return datasets[0]


def _recipe_model_name(cfg: Any) -> str:
    models = _typed(cfg, "MaskDPO")
    if not models:
        raise MaskDPOError("the recipe's model is not MaskDPO; it is not a Mask-DPO recipe")
    return str(models[0]["llm"]["pretrained_model_name_or_path"])


@dataclass
class Overrides:
    pairs_file: str
    model_path: str
    use_mask: bool
    beta: float | None
    epochs: int | None
    lr: float | None
    batch_size: int | None
    max_length: int | None
    gpus: int
    seed: int
    work_dir: str
    processes: int = 1  # ranks that share the global batch
    cuda: bool = False


def apply_overrides(cfg: Any, ov: Overrides, num_pairs: int) -> TrainPlan:
    """Put the command line's values into every place of the config that holds them."""
    old_model = _recipe_model_name(cfg)
    for d in _dicts(cfg._cfg_dict):
        if d.get("pretrained_model_name_or_path") == old_model:
            d["pretrained_model_name_or_path"] = ov.model_path
    for d in _typed(cfg, "build_mask_dpo_dataset"):
        d["pairs"], d["use_mask"] = ov.pairs_file, ov.use_mask
        if ov.max_length is not None:
            d["max_length"] = ov.max_length
    max_length = _recipe_dataset(cfg).get("max_length")
    for d in _typed(cfg, "MaskDPO"):
        if ov.beta is not None:
            d["beta"] = ov.beta
    beta = _typed(cfg, "MaskDPO")[0].get("beta", 0.1)

    optimizer = cfg.optim_wrapper.optimizer
    if ov.lr is not None:
        optimizer["lr"] = ov.lr

    devices = ov.processes
    micro = int(cfg.train_dataloader.batch_size)
    global_batch = ov.batch_size or int(cfg.get("global_batch_size") or micro * cfg.optim_wrapper.get(
        "accumulative_counts", 1) * devices)
    micro, accumulate = _split_batch(global_batch, micro, devices)
    cfg.train_dataloader.batch_size = micro
    cfg.optim_wrapper.accumulative_counts = accumulate

    old_epochs = cfg.train_cfg.get("max_epochs")
    if old_epochs is None:
        raise MaskDPOError("the recipe's train_cfg must set max_epochs")
    epochs = ov.epochs or int(old_epochs)
    cfg.train_cfg.max_epochs = epochs
    iters_per_epoch = math.ceil(math.ceil(num_pairs / devices) / micro)
    _fit_schedulers(cfg, epochs / old_epochs, iters_per_epoch)

    if not ov.cuda and cfg.get("model_wrapper_cfg") is None:
        # mmengine gives DDP device_ids=[LOCAL_RANK], which DDP refuses for a CPU module;
        # a value in the config wins over that default. Unused by a single process.
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False)
    cfg.randomness = dict(seed=ov.seed, deterministic=False)
    cfg.work_dir = ov.work_dir
    # The top-level knobs are informational once resolved; keep them true in W/config.py.
    for key, value in (("pretrained_model_name_or_path", ov.model_path), ("pairs_file", ov.pairs_file),
                       ("use_mask", ov.use_mask), ("beta", beta), ("lr", optimizer["lr"]),
                       ("max_epochs", epochs), ("global_batch_size", global_batch),
                       ("micro_batch_size", micro), ("accumulative_counts", accumulate),
                       ("max_length", max_length)):
        if key in cfg:
            cfg[key] = value
    return TrainPlan(pairs=num_pairs, truncated=0, model_path=ov.model_path, max_length=max_length,
                     epochs=epochs, global_batch=global_batch, micro_batch=micro,
                     accumulative_counts=accumulate, iters_per_epoch=iters_per_epoch,
                     lr=float(optimizer["lr"]), beta=float(beta), use_mask=ov.use_mask, gpus=ov.gpus,
                     processes=ov.processes, deepspeed=None, seed=ov.seed)


def _split_batch(global_batch: int, micro: int, devices: int) -> tuple[int, int]:
    """(micro batch per device, accumulation steps) whose product with `devices` is `global_batch`."""
    if global_batch < 1:
        raise MaskDPOError(f"--batch-size {global_batch}: must be at least 1")
    if global_batch <= micro * devices:
        if global_batch % devices:
            raise MaskDPOError(f"--batch-size {global_batch} is not a multiple of the {devices} devices")
        return global_batch // devices, 1
    if global_batch % (micro * devices):
        raise MaskDPOError(f"--batch-size {global_batch} is not a multiple of the recipe's micro batch "
                           f"{micro} x {devices} device(s)")
    return micro, global_batch // (micro * devices)


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


# --------------------------------------------------------------------------- checks

def _cuda_devices() -> int:
    from maskdpo_cli.distributed import cuda_devices

    return cuda_devices()


def _last_checkpoint(work: Path) -> str | None:
    """The checkpoint mmengine finished last. The marker is written after the checkpoint is
    complete, so a file a kill tore mid-save is never named by it."""
    marker = work / "last_checkpoint"
    if not marker.is_file():
        return None
    path = marker.read_text().strip()
    return path if path and Path(path).exists() else None


def run_settings(plan: TrainPlan, records: list[tuple[int, dict]], recipe: Path) -> dict[str, Any]:
    """What a checkpoint depends on. Epochs are left out: resuming with more extends the run."""
    digest = hashlib.sha256()
    for _, record in records:
        digest.update(dumps(record).encode("utf-8") + b"\n")
    return {"pairs_sha256": digest.hexdigest(), "model": plan.model_path, "recipe": str(recipe),
            "use_mask": plan.use_mask, "beta": plan.beta, "lr": plan.lr, "global_batch": plan.global_batch,
            "micro_batch": plan.micro_batch, "max_length": plan.max_length, "gpus": plan.gpus,
            "processes": plan.processes, "seed": plan.seed}


def resume_point(work: Path, settings: dict[str, Any], resume: bool | None) -> str | None:
    """The checkpoint to continue from: by default the last one of the same run in W.

    resume=None (the default) continues a run with the same settings and refuses one with
    other settings (its optimizer state would silently carry them); False starts over;
    True insists on continuing, as mmengine's --resume does.
    """
    checkpoint = _last_checkpoint(work)
    if resume is False or checkpoint is None:
        if resume:
            stderr.print(f"note: no checkpoint in {work}; training from the start", highlight=False)
        return None
    saved_path = work / "run.json"
    saved = json.loads(saved_path.read_text()) if saved_path.is_file() else None
    if saved is not None and saved != settings:
        changed = ", ".join(f"{key} {saved.get(key)} -> {settings.get(key)}"
                            for key in settings if saved.get(key) != settings[key])
        raise MaskDPOError(f"{work} holds a checkpoint of a run with other settings ({changed}); "
                           "pass --no-resume to start over there, or choose another --work-dir")
    if saved is None and not resume:
        raise MaskDPOError(f"{work} holds a checkpoint of an unknown run; pass --resume to continue it "
                           "or --no-resume to start over")
    stderr.print(f"resuming from {checkpoint} (--no-resume starts over)", highlight=False)
    return checkpoint


# --------------------------------------------------------------------------- run

def _tokenize_all(pairs: str, records: list[dict], model_path: Path, max_length: int | None,
                  use_mask: bool) -> Any:
    """Every pair through the masking rules before any training; errors name file, line and pair."""
    from maskdpo_cli.jsonl import display_name
    from maskdpo_cli.models import load_tokenizer
    from maskdpo_cli.xtuner_ext.dataset import MaskDPODataset, encode_pair
    from maskdpo_cli import masking

    tokenizer = load_tokenizer(str(model_path))
    items = []
    for index, (line, pair) in enumerate(records):
        try:
            tokenized = masking.tokenize_pair(tokenizer, pair, max_length=max_length, use_mask=use_mask)
        except InputError as err:
            raise InputError(err.message, display_name(pairs), line, err.field) from None
        items.append(encode_pair(tokenized, index))
    return MaskDPODataset(items)


def _clear_checkpoints(work: Path) -> None:
    """A fresh start must not leave an older run's checkpoints for a later resume to pick up."""
    for path in [work / "last_checkpoint", *work.glob("iter_*.pth"), *work.glob("epoch_*.pth")]:
        if path.is_dir():
            shutil.rmtree(path)  # DeepSpeed checkpoints are folders
        else:
            path.unlink(missing_ok=True)


def _write_pairs(path: Path, records: list[tuple[int, dict]]) -> None:
    with atomic_output(path) as writer:
        writer.write_all(rec for _, rec in records)


@contextlib.contextmanager
def _console_to(path: Path) -> Iterator[None]:
    """mmengine's console logging writes to stdout, which carries records in maskdpo: keep it in W."""
    with path.open("a") as fh, contextlib.redirect_stdout(fh):
        yield


@dataclass
class PreparedRun:
    """What every rank needs to train, decided once (by rank 0 under a launcher)."""

    plan: TrainPlan
    work: Path
    config_path: Path
    deepspeed: str | None
    resume_from: str | None


def run_train(pairs: str, *, model: str | None = None, work_dir: str, recipe: str | None = None,
              use_mask: bool = True, beta: float | None = None, epochs: int | None = None,
              lr: float | None = None, batch_size: int | None = None, max_length: int | None = None,
              gpus: int = 1, nproc: int | None = None, deepspeed: str | None = None, resume: bool | None = None,
              seed: int = 0) -> str:
    """Train Mask-DPO (or DPO with use_mask=False) on a pairs file; returns a one-line summary
    (empty on the ranks other than 0 of a run that torchrun or srun started)."""
    from maskdpo_cli.distributed import (detect_launch, die_with_parent, join_process_group, leave_process_group,
                                         process_count, rank0_decides)

    if gpus == 0:
        # Before anything asks torch about CUDA: the answer is cached for the process.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    launch = detect_launch()

    def prepare() -> PreparedRun:
        return prepare_run(pairs, model=model, work_dir=work_dir, recipe=recipe, use_mask=use_mask, beta=beta,
                           epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length, gpus=gpus,
                           processes=process_count(gpus, nproc, launch), deepspeed=deepspeed, resume=resume,
                           seed=seed)

    if launch is None:
        run = prepare()
        start = time.perf_counter()
        _train(run, joined=False)
        return _summary(run.work, run.plan, time.perf_counter() - start)
    if launch.launcher == "torchrun":
        die_with_parent()  # a rank must not outlive a killed torchrun agent and race the rerun
    join_process_group(launch)
    try:
        run = rank0_decides(launch, prepare)
        start = time.perf_counter()
        _train(run, joined=True)
    finally:
        leave_process_group()
    return _summary(run.work, run.plan, time.perf_counter() - start) if launch.is_main else ""


def prepare_run(pairs: str, *, model: str | None, work_dir: str, recipe: str | None, use_mask: bool,
                beta: float | None, epochs: int | None, lr: float | None, batch_size: int | None,
                max_length: int | None, gpus: int, processes: int, deepspeed: str | None, resume: bool | None,
                seed: int) -> PreparedRun:
    """Validate and tokenize every pair, resolve the recipe, and write W: all before training."""
    from maskdpo_cli.distributed import check_deepspeed_runnable, resolve_deepspeed_config
    from maskdpo_cli.models import resolve_model
    from maskdpo_cli.records import iter_records

    if deepspeed is not None:
        check_deepspeed_runnable()  # before the slow part: the recipe imports all of XTuner
    recipe_path = resolve_recipe(recipe)
    for name, value in (("--epochs", epochs), ("--max-length", max_length)):
        if value is not None and value < 1:
            raise MaskDPOError(f"{name} {value}: must be at least 1")
    if beta is not None and beta <= 0:
        raise MaskDPOError(f"--beta {beta}: must be positive")
    if lr is not None and lr <= 0:
        raise MaskDPOError(f"--lr {lr}: must be positive")
    records = list(iter_records(pairs, "pairs"))  # an empty file is an InputError
    cfg = load_recipe(recipe_path)
    model_path = resolve_model(model or _recipe_model_name(cfg)).resolve()
    cuda = bool(gpus and _cuda_devices())
    if deepspeed is None and cfg.get("deepspeed"):
        if cuda and processes > 1:
            deepspeed = cfg.get("deepspeed")  # the recipe's default, e.g. ZeRO-3 for the 8B setting
        else:
            stderr.print(f"note: the recipe's DeepSpeed {cfg.get('deepspeed')} is for several GPUs; not used "
                         "(pass --deepspeed to force it)")

    work = Path(work_dir).resolve()
    ov = Overrides(pairs_file=str(work / "pairs.jsonl"), model_path=str(model_path), use_mask=use_mask,
                   beta=beta, epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length,
                   gpus=gpus, seed=seed, work_dir=str(work), processes=processes, cuda=cuda)
    plan = apply_overrides(cfg, ov, len(records))
    ds_name = None
    if deepspeed is not None:
        clip = cfg.optim_wrapper.get("clip_grad") or {}
        ds_name, _ = resolve_deepspeed_config(deepspeed, micro_batch=plan.micro_batch,
                                              accumulative_counts=plan.accumulative_counts,
                                              max_norm=clip.get("max_norm"))
        check_deepspeed_runnable()  # the recipe's default DeepSpeed

    dataset = _tokenize_all(pairs, records, model_path, plan.max_length, use_mask)
    plan.truncated, plan.deepspeed = dataset.num_truncated, ds_name
    empty = sum(not any(it["chosen_mask"]) or not any(it["rejected_mask"]) for it in dataset.items)

    # Only now, with every pair aligned, does anything get written.
    settings = run_settings(plan, records, recipe_path)
    resume_from = resume_point(work, settings, resume)
    work.mkdir(parents=True, exist_ok=True)
    if resume_from is None:
        _clear_checkpoints(work)
    write_json_atomic(work / "run.json", settings)
    _write_pairs(work / "pairs.jsonl", records)
    config_path = work / "config.py"
    cfg.dump(str(config_path))

    stderr.print(plan.describe(), highlight=False, soft_wrap=True)
    stderr.print(f"{plan.truncated} of {plan.pairs} pairs truncated at max_length {plan.max_length}",
                 highlight=False)
    if empty:
        stderr.print(f"[yellow]warning:[/] {empty} pairs have a side with no token in the loss "
                     "(that side's log-ratio is 0)")
    stderr.print(f"work dir {work} (XTuner logs, checkpoints, train_log.jsonl, hf/)", highlight=False)
    return PreparedRun(plan=plan, work=work, config_path=config_path, deepspeed=ds_name, resume_from=resume_from)


def _train(run: PreparedRun, *, joined: bool) -> None:
    """XTuner's train entry: in this process, as one rank of a group this process has
    joined, or as N ranks under torchrun (this interpreter) that join theirs the same way.
    DeepSpeed always goes through a launcher, even on one GPU."""
    from maskdpo_cli.distributed import run_torchrun, torchrun_command
    from maskdpo_cli.xtuner_ext.compat import trusted_checkpoint_loading
    from maskdpo_cli.xtuner_ext.launch import run_xtuner_train, xtuner_train_args

    launch_own = not joined and (run.plan.processes > 1 or run.deepspeed is not None)
    args = xtuner_train_args(str(run.config_path), str(run.work), deepspeed=run.deepspeed,
                             resume_from=run.resume_from, launcher="pytorch" if joined or launch_own else "none")
    log = run.work / "xtuner_stdout.log"
    with trusted_checkpoint_loading(run.resume_from is not None):
        if launch_own:
            run_torchrun(torchrun_command(run.plan.processes, "maskdpo_cli.distributed", args), log)
        else:
            with _console_to(log):
                run_xtuner_train(args)


def _summary(work: Path, plan: TrainPlan, seconds: float) -> str:
    info: dict[str, Any] = {}
    path = work / "train_summary.json"
    if path.is_file():
        info = json.loads(path.read_text())
    last = info.get("last") or {}
    parts = [f"{plan.pairs} pairs x {plan.epochs} epoch(s) in {seconds:.1f} s"
             + (f" (resumed at step {info['resumed_at']})" if info.get("resumed_at") else "")]
    if info.get("train_pairs_per_s"):
        parts.append(f"{info['train_pairs_per_s']:.2f} pairs/s training")
    if "loss" in last:
        parts.append(f"final loss {last['loss']:.4f}, reward acc {last.get('reward_acc', float('nan')):.2f}")
    parts.append(f"model: {work / 'hf'}")
    return "; ".join(parts)
