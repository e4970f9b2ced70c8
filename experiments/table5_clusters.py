"""Table 5 of the paper in miniature: train on the topics near the test topics, or far from them?

    .venv/bin/python experiments/table5_clusters.py [--seeds 7 8 9] [--quick] [-o runs/experiments]

For each world seed, `maskdpo cluster` splits the training pairs into the topics nearest
each test topic and the far ones (plus a random control as large as the near split),
once with the policy's own embeddings (its last hidden layer) and once with MiniLM
(`--embedder all-minilm-l6-v2`). Mask-DPO is trained on each split and scored on the
test topics. Writes table5.md, table5.json and table5.png under --tables.

A training run is keyed by the content of its pairs file, so a split that two embedders
agree on (e.g. the same random control) is trained once.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

EMBEDDERS = {"policy": [], "minilm": ["--embedder", "all-minilm-l6-v2"]}
SPLITS = ("near", "far", "random")


def main() -> None:
    args = common.parse_args(__doc__, "runs/experiments")
    settings = common.Settings.from_args(args)
    started = time.time()
    root, tables = Path(args.output), Path(args.tables)
    results: dict[tuple[str, str], list[dict]] = {}
    sizes: dict[tuple[str, str], list[int]] = {}
    for seed in args.seeds:
        run = common.prepare(root, seed, settings)
        models = {}
        for embedder, flags in EMBEDDERS.items():
            clusters = run.dir / "table5" / f"clusters-{embedder}"
            if not common.done(clusters / "assignment.json"):
                common.maskdpo("cluster", "--model", run.policy, "--train", run.pairs, "--test", run.test,
                               *flags, "--seed", seed, "-o", clusters)
            for split in SPLITS:
                pairs = clusters / f"{split}.jsonl"
                digest = hashlib.sha256(pairs.read_bytes()).hexdigest()[:10]
                models[f"{embedder}-{split}"] = common.train(run, pairs, run.dir / "table5" / "runs" / digest,
                                                             settings)
                sizes.setdefault((embedder, split), []).append(len(common.read_jsonl(pairs)))
        summaries = common.evaluate(run, models, run.dir / "table5" / "eval", settings)
        results.setdefault(("-", "base"), []).append(common.base_summary(run))
        for name, summary in summaries.items():
            results.setdefault(tuple(name.split("-")), []).append(summary)

    rows = [common.Row({"embedder": "-", "split": "base (no training)", "pairs": "0"}, results[("-", "base")])]
    for embedder in EMBEDDERS:
        for split in SPLITS:
            n = sizes[(embedder, split)]
            rows.append(common.Row({"embedder": embedder, "split": split, "pairs": f"{sum(n) / len(n):.0f}"},
                                   results[(embedder, split)]))
    notes = [f"Near minus far, % score: {gap(results, e)} ({e} embeddings)." for e in EMBEDDERS]
    common.write_table(tables, "table5", "Table 5: near vs far vs random training topics (Mask-DPO)", rows,
                       seeds=args.seeds, settings=settings, command=common.command_line(), started=started,
                       notes=notes)
    plot(rows, tables / "table5.png")


def gap(results: dict[tuple[str, str], list[dict]], embedder: str) -> str:
    """Mean ± sd over seeds of the per-seed near - far score difference."""
    diffs = [n["score"] - f["score"] for n, f in zip(results[(embedder, "near")], results[(embedder, "far")])
             if n.get("score") is not None and f.get("score") is not None]
    stat = common.mean_sd(diffs)
    return "-" if stat is None else f"{stat[0]:+.2f} ± {stat[1]:.2f}"


def plot(rows: list[common.Row], path: Path) -> None:
    fig, axes = common.figure()
    ax = axes[0][0]
    width = 0.25
    for i, split in enumerate(SPLITS):
        stats = [next(r for r in rows if r.labels["embedder"] == e and r.labels["split"] == split)
                 .columns(common.COLUMNS)["% score"] for e in EMBEDDERS]
        xs = [k + (i - 1) * width for k in range(len(EMBEDDERS))]
        ax.bar(xs, [s[0] if s else 0 for s in stats], width, yerr=[s[1] if s else 0 for s in stats], capsize=4,
               label=split)
    base = rows[0].columns(common.COLUMNS)["% score"]
    if base is not None:
        ax.axhline(base[0], color="grey", linestyle="--", label="base")
    ax.set_xticks(range(len(EMBEDDERS)), [f"{e} embeddings" for e in EMBEDDERS])
    ax.set_ylabel("factuality score on test topics (%)")
    ax.set_title("Table 5: training topics near vs far from the test topics")
    ax.legend()
    common.save_figure(fig, path)


if __name__ == "__main__":
    main()
