"""Does the gain survive LoRA? Full Mask-DPO against LoRA Mask-DPO on the world.

    .venv/bin/python experiments/lora_vs_full.py [--seeds 7 8 9] [--sweep-seed 6] [--quick] [-o runs/experiments]

1. LoRA's learning rate is chosen on a world seed of its own (--sweep-seed, not one of the
   study's seeds, so that the choice is not fitted to the worlds it is then judged on):
   Mask-DPO with a rank-8 adapter (alpha 16, dropout 0.05, every linear layer) is trained at
   each rate of --sweep-lrs and scored on that world's test topics, beside full Mask-DPO at
   the study's rate. The rate with the highest fact precision wins (a tie goes to the lower
   rate). Not the % score: it counts filler as correct, and a rate too high for the adapter
   buys score with filler, stating fewer correct facts (see fact_level.py).
2. For each study seed (experiments/common.py prepares world, policy and pairs), full
   Mask-DPO (the demo's lr 1e-4) and LoRA Mask-DPO at the chosen rate are trained on the
   same pairs with the same seed and hyper-parameters, and scored with the base on the test
   topics: % score, the fact metrics per answer, and each training run's wall time and peak
   resident memory.

Reports mean ± sd over seeds and the paired differences LoRA minus full and LoRA minus base,
with 95% t-intervals. Writes lora_vs_full.{md,json} under --tables (per-seed values in the JSON).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

RANK = 8        # the policy's hidden size is 128: a rank-8 adapter is 1/16 of it
SWEEP_LRS = {False: [1e-4, 3e-4, 1e-3, 3e-3], True: [1e-4, 1e-3]}
ARMS = ("base", "full", "lora")
METRICS = {m: common.ANSWER_METRICS[m] for m in
           ("score", "filler", "correct_facts", "incorrect_facts", "fact_precision", "atomic_precision")}
SWEEP_METRICS = {m: common.ANSWER_METRICS[m] for m in ("fact_precision", "score", "filler", "correct_facts")}
COST = {"train_s": "train wall s", "peak_rss_gib": "train peak RSS GiB"}


def lora_flags(rank: int = RANK) -> list[str]:
    return ["--lora", str(rank), "--lora-alpha", str(2 * rank), "--lora-dropout", "0.05"]


def measured(work: Path) -> dict[str, float]:
    """Wall seconds and peak RSS of the training run in `work` (written by common.train)."""
    m = json.loads((work / "measured.json").read_text(encoding="utf-8"))
    return {"train_s": m["wall_s"], "peak_rss_gib": m["peak_rss_gib"]}


def sweep(root: Path, seed: int, s: common.Settings, lrs: list[float]) -> dict[str, Any]:
    """Score LoRA Mask-DPO at every rate on the sweep world; the best rate and every score."""
    run = common.prepare(root, seed, s, shared_runs=False)
    d = run.dir / "lora_sweep"
    models = {"full": common.train(run, run.pairs, d / "full", s)}
    for lr in lrs:
        models[f"lora-lr{lr:g}"] = common.train(run, run.pairs, d / f"lora-lr{lr:g}", s, lr=lr, extra=lora_flags())
    summaries = common.evaluate(run, models, d / "eval", s)
    figures = {m: {name: get(summaries[name]) for name in models} for m, (_, get) in SWEEP_METRICS.items()}
    precision = {lr: figures["fact_precision"][f"lora-lr{lr:g}"] or 0.0 for lr in lrs}
    best = max(sorted(lrs), key=lambda lr: precision[lr])  # max keeps the first (lowest) of equal precisions
    return {"seed": seed, **figures, "best_lr": best}


def run_seed(run: common.SeedRun, s: common.Settings, lr: float) -> tuple[dict[str, dict[str, float | None]], None]:
    """Base, full and LoRA Mask-DPO on one study seed: (every metric and cost by arm, no seed facts)."""
    d = run.dir / "lora_study"
    full = common.train(run, run.pairs, d / "full", s)
    lora = common.train(run, run.pairs, d / f"lora-lr{lr:g}", s, lr=lr, extra=lora_flags())
    summaries = common.evaluate(run, {"base": run.policy, "full": full, "lora": lora}, d / f"eval-lr{lr:g}", s)
    values = {arm: {m: get(summaries[arm]) for m, (_, get) in METRICS.items()} for arm in ARMS}
    values["base"].update({c: None for c in COST})
    values["full"].update(measured(full.parent))
    values["lora"].update(measured(lora.parent))
    return values, None


def write_outputs(tables: Path, swept: dict[str, Any], values: dict[str, dict[int, dict[str, float | None]]],
                  seeds: list[int], s: common.Settings, started: float) -> None:
    columns = {**{m: title for m, (title, _) in METRICS.items()}, **COST}
    means = common.means(values, ARMS, columns, seeds)
    diffs = {f"{arm} - {against}": {c: common.paired(values, arm, against, c, seeds) for c in columns}
             for arm, against in (("lora", "full"), ("lora", "base"), ("full", "base"))}
    elapsed = time.time() - started
    command = common.command_line()
    lr = swept["best_lr"]
    md = common.header("Full Mask-DPO against LoRA Mask-DPO", command, seeds, s, elapsed,
                       f"Full: lr {s.lr:g}. LoRA: rank {RANK}, alpha {2 * RANK}, dropout 0.05, every linear layer, "
                       f"lr {lr:g}.")
    md += ["", f"LoRA's learning rate, swept on world seed {swept['seed']} (its test topics; the highest fact "
          f"precision wins), beside full Mask-DPO at lr {s.lr:g}:", "",
          "| | " + " | ".join(f"LoRA lr {k.removeprefix('lora-lr')}" if k != "full" else f"full, lr {s.lr:g}"
                              for k in swept["score"]) + " |",
          "|---|" + "---:|" * len(swept["score"])]
    md += [f"| {SWEEP_METRICS[m][0]} | " + " | ".join(common.fmt_value(v) for v in swept[m].values()) + " |"
           for m in SWEEP_METRICS]
    md += ["", f"Chosen: lr {lr:g}.", ""]
    md += common.markdown_table(["arm", *columns.values()],
                                [[arm] + [common.fmt(means[arm][c]) for c in columns] for arm in ARMS])
    md += common.paired_table("difference", diffs, columns)
    data = {"title": "full vs LoRA Mask-DPO", "command": command, "seeds": seeds, "settings": asdict(s),
            "elapsed_s": round(elapsed, 1), "lora": {"rank": RANK, "alpha": 2 * RANK, "dropout": 0.05, "lr": lr},
            "sweep": swept, "columns": columns,
            "per_seed": {arm: {str(seed): values[arm][seed] for seed in seeds} for arm in ARMS},
            "mean_sd": common.mean_sd_record(means),
            "paired": diffs}
    common.save_results(tables, "lora_vs_full", md, data)


def main() -> None:
    args = common.parse_args(__doc__, "runs/experiments", seeds=[7, 8, 9],
                             extra=lambda p: (p.add_argument("--sweep-seed", type=int, default=6,
                                                             help="World seed of the learning-rate sweep "
                                                                  "(default 6: not a study seed)."),
                                              p.add_argument("--sweep-lrs", type=float, nargs="+", default=None,
                                                             help="LoRA learning rates to try (default "
                                                                  "1e-4 3e-4 1e-3 3e-3).")))
    settings = common.Settings.from_args(args)
    started = time.time()
    root, tables = Path(args.output), Path(args.tables)
    swept = sweep(root, args.sweep_seed, settings, args.sweep_lrs or SWEEP_LRS[args.quick])
    values, _ = common.run_seeds(args, settings, lambda run, s: run_seed(run, s, swept["best_lr"]))
    write_outputs(tables, swept, values, args.seeds, settings, started)


if __name__ == "__main__":
    main()
