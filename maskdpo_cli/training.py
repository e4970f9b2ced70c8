"""`maskdpo train`: pairs -> an aligned HF model in W/hf, through XTuner.

The order of work is the safety argument: every pair is validated and tokenized with its
loss mask *before* anything is trained (`check_run`, which `--dry-run` runs alone), so a
pair that cannot be aligned stops the run (exit 2, naming the pair) instead of training on a wrong mask. Then the recipe, a plain
XTuner config, gets the run's settings (`xtuner_ext.recipe`), is written to W/config.py
(what ran, and what `xtuner train W/config.py` would run again) and goes to XTuner's own
train entry (`xtuner_ext.launch`):
- in this process, for one process;
- as N ranks under torchrun with this interpreter, for `--nproc N` CPU processes, N GPUs
  or DeepSpeed (`torchrun_launch`);
- as one rank of a run that torchrun or srun started (`process_group`): rank 0 prepares
  the run and writes W; the others wait for it.

Work dir layout:
    W/pairs.jsonl         the validated pairs trained on
    W/tokenized_pairs.pt  their tokens and loss masks (the check's, loaded by XTuner's dataset)
    W/config.py           the resolved XTuner config
    W/deepspeed.json      under --deepspeed: the config DeepSpeed receives (deepspeed_setup)
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
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from maskdpo_cli.errors import InputError
from maskdpo_cli.jsonl import atomic_output, dumps, write_json_atomic
from maskdpo_cli.process_group import (Launch, cuda_devices, detect_launch, die_with_parent, process_count,
                                       process_group, rank0_decides)
from maskdpo_cli.progress import stderr
from maskdpo_cli.train_config import TrainConfig
from maskdpo_cli.train_resume import clear_checkpoints, resume_point

if TYPE_CHECKING:
    from maskdpo_cli.xtuner_ext.dataset import MaskDPODataset
    from maskdpo_cli.xtuner_ext.recipe import BatchLayout

PAIRS_FILE = "pairs.jsonl"  # the validated pairs trained on
TOKENIZED_FILE = "tokenized_pairs.pt"  # their tokens and loss masks, as the check made them
CONSOLE_LOG = "xtuner_stdout.log"  # mmengine's console output


@dataclass(frozen=True)
class PreparedRun:
    """What every rank needs to train, decided once (by rank 0 under a launcher)."""

    config: TrainConfig  # complete: the recipe's values where the command line gave none
    layout: BatchLayout
    pairs: int
    config_file: Path  # W/config.py
    deepspeed: str | None  # W/deepspeed.json: what XTuner's --deepspeed reads and DeepSpeed receives
    resume_from: str | None  # the checkpoint to continue from

    @property
    def work(self) -> Path:
        return Path(self.config.work_dir)


def run_train(config: TrainConfig) -> str:
    """Train Mask-DPO (or DPO with use_mask=False) on a pairs file; returns a one-line summary
    (empty on the ranks other than 0 of a run that torchrun or srun started)."""
    if config.gpus == 0:
        # Before anything asks torch about CUDA: the answer is cached for the process.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    launch = detect_launch()

    if launch is None:  # started by hand: one process, or our own torchrun
        run = prepare_run(config, launch)
        start = time.perf_counter()
        if run.config.nproc > 1 or run.deepspeed is not None:  # DeepSpeed always goes through a launcher
            _train_as_ranks(run)
        else:
            _train_here(run, launcher="none")
        return summary(run, time.perf_counter() - start)

    if launch.launcher == "torchrun":
        die_with_parent()  # a rank must not outlive a killed torchrun agent and race the rerun
    with process_group(launch):
        run = rank0_decides(launch, lambda: prepare_run(config, launch))
        start = time.perf_counter()
        _train_here(run, launcher="pytorch")
    return summary(run, time.perf_counter() - start) if launch.is_main else ""


# --------------------------------------------------------------------------- prepare

@dataclass(frozen=True)
class CheckedRun:
    """A run checked through and through, nothing written yet: what `prepare_run` writes to W
    and what `--dry-run` plans from. The same checks, so the same errors, in both."""

    config: TrainConfig  # complete: the recipe's values where the command line gave none
    cfg: Any  # the recipe, with the run's values written in
    layout: BatchLayout
    records: list[tuple[int, dict]]
    dataset: MaskDPODataset  # every pair tokenized with its loss mask
    deepspeed: dict[str, Any] | None  # the complete DeepSpeed config
    cuda: bool  # on CUDA GPUs (planned ones, for a dry run)
    pairs_sha256: str
    run_record: dict[str, Any]  # what W/run.json holds, and what a resume compares
    resume_from: str | None


def check_run(config: TrainConfig, launch: Launch | None, *, dry_run: bool = False) -> CheckedRun:
    """Validate and tokenize every pair, complete the config from the recipe, resolve DeepSpeed's
    config and the resume point: every check of a run, and nothing written.

    `dry_run`: `--gpus N` (N > 1) plans for N GPUs whether or not they are here, and a hub
    model's config and tokenizer are enough (no weights are fetched).
    """
    from maskdpo_cli.deepspeed_setup import check_deepspeed_runnable, deepspeed_config
    from maskdpo_cli.records import iter_records

    here = cuda_devices()
    devices = config.gpus if dry_run and config.gpus > 1 else here
    processes = process_count(config.gpus, config.nproc, launch, available=devices)
    cuda = bool(config.gpus and devices)
    if config.deepspeed is not None:
        check_deepspeed_runnable(cuda, planning=dry_run)  # before the slow part: importing XTuner
    from maskdpo_cli.xtuner_ext.recipe import apply_config, batch_layout, load_recipe, resolve_recipe

    recipe = resolve_recipe(config.recipe)
    records = list(iter_records(config.pairs, "pairs"))  # an empty file is an InputError
    cfg = load_recipe(recipe)
    config = complete_config(config, cfg, recipe, processes, devices=devices, config_only=dry_run)
    layout = batch_layout(cfg, config.batch_size, processes, len(records))
    work = Path(config.work_dir)
    apply_config(cfg, config, layout, pairs_file=str(work / PAIRS_FILE), tokenized_file=str(work / TOKENIZED_FILE),
                 cuda=cuda)
    ds_config = None
    if config.deepspeed is not None:
        clip = cfg.optim_wrapper.get("clip_grad") or {}
        ds_config = deepspeed_config(config.deepspeed, micro_batch=layout.micro_batch,
                                     accumulative_counts=layout.accumulative_counts,
                                     max_norm=clip.get("max_norm"), cuda=cuda,
                                     bf16_supported=True if cuda and not here else None)  # GPUs elsewhere
        check_deepspeed_runnable(cuda, planning=dry_run)  # the recipe's default DeepSpeed

    dataset = tokenize_all(config, records)
    pairs_sha256 = _pairs_sha256(records)
    run_record = {**config.run_record(pairs_sha256=pairs_sha256, micro_batch=layout.micro_batch),
                  **pairing_record(records)}
    resume_from = resume_point(work, run_record, config.resume)
    return CheckedRun(config=config, cfg=cfg, layout=layout, records=records, dataset=dataset, deepspeed=ds_config,
                      cuda=cuda, pairs_sha256=pairs_sha256, run_record=run_record, resume_from=resume_from)


def prepare_run(config: TrainConfig, launch: Launch | None) -> PreparedRun:
    """Every check of `check_run`, then write W: all before training."""
    from maskdpo_cli.deepspeed_setup import write_deepspeed_config
    from maskdpo_cli.xtuner_ext.dataset import save_tokenized, tokenization

    checked = check_run(config, launch)
    config, layout, records, dataset = checked.config, checked.layout, checked.records, checked.dataset
    empty = sum(not any(it["chosen_mask"]) or not any(it["rejected_mask"]) for it in dataset.items)

    # Only now, with every pair aligned, does anything get written.
    work = Path(config.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if checked.resume_from is None:
        clear_checkpoints(work)
    write_json_atomic(work / "run.json", checked.run_record)
    with atomic_output(work / PAIRS_FILE) as writer:
        writer.write_all(record for _, record in records)
    # XTuner's dataset loads this instead of tokenizing the pairs again.
    save_tokenized(work / TOKENIZED_FILE, dataset,
                   tokenization(checked.pairs_sha256, config.model, config.max_length, config.use_mask))
    config_file = work / "config.py"
    checked.cfg.dump(str(config_file))
    # The file DeepSpeed receives: XTuner's --deepspeed reads it (and changes nothing in it).
    deepspeed = str(write_deepspeed_config(work, checked.deepspeed)) if checked.deepspeed is not None else None

    run = PreparedRun(config=config, layout=layout, pairs=len(records), config_file=config_file,
                      deepspeed=deepspeed, resume_from=checked.resume_from)
    stderr.print(describe(run), highlight=False, soft_wrap=True)
    stderr.print(f"{dataset.num_truncated} of {run.pairs} pairs truncated at max_length {config.max_length}",
                 highlight=False)
    if empty:
        stderr.print(f"[yellow]warning:[/] {empty} pairs have a side with no token in the loss "
                     "(that side's log-ratio is 0)")
    stderr.print(f"work dir {work} (XTuner logs, checkpoints, train_log.jsonl, hf/)", highlight=False)
    return run


def complete_config(config: TrainConfig, cfg: Any, recipe: Path, processes: int, *, devices: int | None = None,
                    config_only: bool = False) -> TrainConfig:
    """The config with the recipe's value for every field the command line left out, the model
    as an absolute directory, the recipe as its file, and `nproc` the number of processes.
    `devices`: the CUDA GPUs there are (default: those visible); `config_only`: a hub model's
    config and tokenizer are enough (a dry run loads no weights)."""
    from maskdpo_cli.models import resolve_model
    from maskdpo_cli.xtuner_ext.recipe import complete_lora, default_batch_size, recipe_value

    config = complete_lora(config, cfg, cuda=bool(config.gpus and (cuda_devices() if devices is None else devices)))
    deepspeed = config.deepspeed
    if deepspeed is None and cfg.get("deepspeed"):
        if config.gpus and (cuda_devices() if devices is None else devices) and processes > 1 and not config.lora:
            deepspeed = cfg.get("deepspeed")  # the recipe's default, e.g. ZeRO-3 for the 8B setting
        else:
            stderr.print(f"note: the recipe's DeepSpeed {cfg.get('deepspeed')} is for several GPUs; not used "
                         "(pass --deepspeed to force it)")
    model = resolve_model(config.model or recipe_value(cfg, "model"), config_only=config_only).resolve()
    return replace(
        config, model=str(model), recipe=str(recipe), work_dir=str(Path(config.work_dir).resolve()),
        beta=float(config.beta or recipe_value(cfg, "beta")), lr=float(config.lr or recipe_value(cfg, "lr")),
        epochs=config.epochs or int(recipe_value(cfg, "epochs")),
        batch_size=config.batch_size or default_batch_size(cfg, processes),
        max_length=config.max_length or recipe_value(cfg, "max_length"), nproc=processes, deepspeed=deepspeed)


def tokenize_all(config: TrainConfig, records: list[tuple[int, dict]]) -> MaskDPODataset:
    """Every pair through the masking rules before any training; errors name file, line and pair."""
    from maskdpo_cli import masking
    from maskdpo_cli.jsonl import display_name
    from maskdpo_cli.models import load_tokenizer
    from maskdpo_cli.xtuner_ext.dataset import MaskDPODataset, encode_pair

    tokenizer = load_tokenizer(config.model)
    items = []
    for index, (line, pair) in enumerate(records):
        try:
            tokenized = masking.tokenize_pair(tokenizer, pair, max_length=config.max_length,
                                              use_mask=config.use_mask)
        except InputError as err:
            raise InputError(err.message, display_name(config.pairs), line, err.field) from None
        items.append(encode_pair(tokenized, index))
    return MaskDPODataset(items)


def pairing_record(records: list[tuple[int, dict]]) -> dict[str, Any]:
    """How the pairs were built (`pair --unit/--nofact`), for run.json: {} for pairs that do not
    say (the authors' format, pairs from before the option), so their run.json is unchanged."""
    seen = {json.dumps(pair["pairing"], sort_keys=True) for _, pair in records if "pairing" in pair}
    if not seen:
        return {}
    pairings = [json.loads(text) for text in sorted(seen)]
    return {"pairing": pairings[0] if len(pairings) == 1 else pairings}


def _pairs_sha256(records: list[tuple[int, dict]]) -> str:
    """The digest of W/pairs.jsonl, whose lines are these records."""
    digest = hashlib.sha256()
    for _, record in records:
        digest.update(dumps(record).encode("utf-8") + b"\n")
    return digest.hexdigest()


def describe(run: PreparedRun) -> str:
    """What will run, printed before training starts."""
    config, layout, processes = run.config, run.layout, run.config.nproc
    on_gpus = bool(config.gpus and cuda_devices())
    device = f"{processes} GPU(s)" if on_gpus else "CPU, fp32"
    if processes > 1 and not on_gpus:
        device += f", {processes} processes (gloo)"
    ds = f", DeepSpeed {config.deepspeed}" if run.deepspeed else ""
    kind = "Mask-DPO" if config.use_mask else "DPO (--no-mask)"
    if config.lora:
        kind += (f", {'QLoRA (4-bit NF4 base)' if config.qlora else 'LoRA'} r {config.lora} "
                 f"alpha {config.lora_alpha:g} dropout {config.lora_dropout:g}")
    return (f"{kind}: {run.pairs} pairs x {config.epochs} epoch(s), global batch {config.batch_size} "
            f"(micro {layout.micro_batch} x {layout.accumulative_counts} accumulation x {processes}), "
            f"{layout.iters_per_epoch * config.epochs} iterations, lr {config.lr:g}, beta {config.beta:g}, "
            f"max_length {config.max_length}, seed {config.seed}, {device}{ds}")


# --------------------------------------------------------------------------- train

def _xtuner_args(run: PreparedRun, launcher: str) -> list[str]:
    from maskdpo_cli.xtuner_ext.launch import xtuner_train_args

    return xtuner_train_args(str(run.config_file), str(run.work), deepspeed=run.deepspeed,
                             resume_from=run.resume_from, launcher=launcher)


def _train_here(run: PreparedRun, launcher: str) -> None:
    """XTuner's train entry in this process: alone (launcher 'none') or as a rank of the group it joined."""
    from maskdpo_cli.xtuner_ext.compat import trusted_checkpoint_loading
    from maskdpo_cli.xtuner_ext.launch import run_xtuner_train

    with trusted_checkpoint_loading(run.resume_from is not None), _console_to(run.work / CONSOLE_LOG):
        run_xtuner_train(_xtuner_args(run, launcher))


def _train_as_ranks(run: PreparedRun) -> None:
    """XTuner's train entry in `nproc` ranks that torchrun starts; each joins the group itself."""
    from maskdpo_cli.torchrun_launch import run_ranks
    from maskdpo_cli.xtuner_ext.compat import trusted_checkpoint_loading

    with trusted_checkpoint_loading(run.resume_from is not None):  # the ranks inherit it
        run_ranks(run.config.nproc, _xtuner_args(run, "pytorch"), run.work / CONSOLE_LOG)


@contextlib.contextmanager
def _console_to(path: Path) -> Iterator[None]:
    """mmengine's console logging writes to stdout, which carries records in maskdpo: keep it in W."""
    with path.open("a") as fh, contextlib.redirect_stdout(fh):
        yield


def summary(run: PreparedRun, seconds: float) -> str:
    """One line: pairs, epochs and time, throughput, the final loss, where the model is."""
    info: dict[str, Any] = {}
    path = run.work / "train_summary.json"
    if path.is_file():
        info = json.loads(path.read_text())
    last = info.get("last") or {}
    parts = [f"{run.pairs} pairs x {run.config.epochs} epoch(s) in {seconds:.1f} s"
             + (f" (resumed at step {info['resumed_at']})" if info.get("resumed_at") else "")]
    if info.get("train_pairs_per_s"):
        parts.append(f"{info['train_pairs_per_s']:.2f} pairs/s training")
    if "loss" in last:
        parts.append(f"final loss {last['loss']:.4f}, reward acc {last.get('reward_acc', float('nan')):.2f}")
    parts.append(f"model: {run.work / 'hf'}")
    return "; ".join(parts)
