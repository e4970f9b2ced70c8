"""Table 4 of the paper in miniature: at equal pair budgets, more topics or more questions per topic?

    .venv/bin/python experiments/table4_scaling.py [--seeds 7 8 9] [--quick] [-o runs/experiments]

For each world seed (experiments/common.py prepares world, policy, pairs, and Mask-DPO on
all pairs), Mask-DPO is trained on 1/3 and 2/3 of the pairs chosen two ways, with the same
number of pairs on both axes:
  - topics: whole topics, in a seeded random order, until the budget is met;
  - questions: the same share of every topic's questions (round robin over the topics).
At the full budget both axes are the same run: all pairs. Every model is scored on the
held-out test topics. Writes table4.md, table4.json and table4.png under --tables.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

FRACTIONS = {False: ((1, 3), (2, 3)), True: ((1, 3),)}  # quick: one budget below the full one
AXES = ("topics", "questions")


def subset(pairs: list[dict], axis: str, budget: int, seed: int) -> list[dict]:
    """`budget` pairs spread over few topics (axis=topics) or over all of them (axis=questions)."""
    by_topic: dict[str, list[dict]] = {}
    for p in pairs:
        by_topic.setdefault(p.get("topic", ""), []).append(p)
    topics = sorted(by_topic)
    random.Random(seed).shuffle(topics)
    if axis == "topics":
        ordered = [p for t in topics for p in by_topic[t]]
    else:  # one pair of each topic in turn: every topic gets the same share
        ordered = [by_topic[t][i] for i in range(max(map(len, by_topic.values())))
                   for t in topics if i < len(by_topic[t])]
    return ordered[:budget]


def main() -> None:
    args = common.parse_args(__doc__, "runs/experiments")
    settings = common.Settings.from_args(args)
    fractions = FRACTIONS[args.quick]
    started = time.time()
    root, tables = Path(args.output), Path(args.tables)
    results: dict[tuple[str, str], list[dict]] = {}
    meta: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for seed in args.seeds:
        run = common.prepare(root, seed, settings)
        pairs = common.read_jsonl(run.pairs)
        models = {"all": run.maskdpo_all}
        for num, den in fractions:
            budget = len(pairs) * num // den
            for axis in AXES:
                chosen = subset(pairs, axis, budget, seed)
                name = f"{axis}-{num}of{den}"
                path = common.write_subset(run.dir / "table4" / f"{name}.jsonl", chosen)
                models[name] = common.train(run, path, run.dir / "table4" / "runs" / name, settings)
                meta.setdefault((axis, f"{num}/{den}"), []).append(
                    (len(chosen), len({p.get("topic") for p in chosen})))
        meta.setdefault(("all", "1"), []).append((len(pairs), len({p.get("topic") for p in pairs})))
        summaries = common.evaluate(run, models, run.dir / "table4" / "eval", settings)
        results.setdefault(("base", "0"), []).append(common.base_summary(run))
        for name, summary in summaries.items():
            axis, _, frac = name.partition("-")
            key = ("all", "1") if name == "all" else (axis, frac.replace("of", "/"))
            results.setdefault(key, []).append(summary)

    rows = []
    for key in [("base", "0")] + [(axis, f"{n}/{d}") for axis in AXES for n, d in fractions] + [("all", "1")]:
        sizes = meta.get(key, [(0, 0)] * len(args.seeds))  # the base trains on nothing
        rows.append(common.Row({"data": {"base": "base (no training)", "all": "all pairs (both axes)"}.get(
                                    key[0], f"{key[1]} by {key[0]}"),
                                "pairs": f"{sum(p for p, _ in sizes) / len(sizes):.0f}",
                                "topics": f"{sum(t for _, t in sizes) / len(sizes):.1f}" if key[0] != "base" else "-"},
                               results[key]))
    notes = ["Topics axis: whole training topics; questions axis: the same share of every topic. Same pairs per "
             "budget on both axes, per seed. Scored on held-out test topics."]
    common.write_table(tables, "table4", "Table 4: scaling topics vs questions per topic (Mask-DPO)", rows,
                       seeds=args.seeds, settings=settings, command=common.command_line(), started=started,
                       notes=notes)
    plot(rows, fractions, tables / "table4.png")


def plot(rows: list[common.Row], fractions: tuple[tuple[int, int], ...], path: Path) -> None:
    fig, axes = common.figure()
    ax = axes[0][0]
    stat = {r.labels["data"]: (float(r.labels["pairs"]), r.columns(common.COLUMNS)["% score"]) for r in rows}
    full = stat["all pairs (both axes)"]
    for axis, marker in (("topics", "o"), ("questions", "s")):
        points = [stat[f"{n}/{d} by {axis}"] for n, d in fractions] + [full]
        points = [(x, s) for x, s in points if s is not None]
        ax.errorbar([x for x, _ in points], [s[0] for _, s in points], yerr=[s[1] for _, s in points],
                    marker=marker, capsize=4, label=f"more {axis}" if axis == "topics" else "more questions per topic")
    base = stat["base (no training)"][1]
    if base is not None:
        ax.axhline(base[0], color="grey", linestyle="--", label="base")
    ax.set_xlabel("training pairs")
    ax.set_ylabel("factuality score on test topics (%)")
    ax.set_title("Table 4: scaling topics vs questions per topic")
    ax.legend()
    common.save_figure(fig, path)


if __name__ == "__main__":
    main()
