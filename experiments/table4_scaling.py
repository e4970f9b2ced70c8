"""Table 4 of the paper in miniature: at equal pair budgets, more topics or more questions per topic?

    .venv/bin/python experiments/table4_scaling.py [--seeds 7 ... 16] [--kinds 3 --questions-per-topic 3]
                                                   [--quick] [-o runs/experiments]

The paper (Table 4, ANAH-train, the same pair budget at each row; % score at 1/3, 2/3, full):
topics axis (whole topics added) 65.04, 71.56, 77.53; questions axis (all topics, questions
per topic added) 69.03, 73.03, 77.53. So at equal pairs the questions axis scores higher
(level gaps questions - topics: +3.99 at 1/3, +1.47 at 2/3), and the topics axis gains more
per step (+6.52 and +5.97, against +4.00 and +4.50), which the paper reads as "the diversity
of topics is more important than the diversity of questions". In ANAH a topic is one entity
with several questions about it.

The default world is the one where both axes mean what they mean in ANAH: 3 kinds of
entity (`world make --kinds 3`) and 3 questions about each asked entity, the open one plus
two about its attributes (`--questions-per-topic 3`). Its runs live in ROOT/seed<S>-k3q3.
For each world seed (experiments/common.py prepares world, policy, pairs, and Mask-DPO on
all pairs), Mask-DPO is trained at the budgets 1/3 and 2/3 of the seed's pairs
(floor(N x 1/3), floor(N x 2/3)), each budget chosen two ways with exactly that many pairs:

  - topics axis: whole training topics in a seeded random order, all the pairs of each,
    until the budget is met (the last topic taken is cut to fit);
  - questions axis: every training topic, each with its share of the budget in proportion
    to its pairs (budget x its pairs / N, rounded down, the pairs left over going to the
    topics with the largest remainders, ties in a seeded order). Inside a topic the pairs
    are taken round robin over its asked entities (entities in a seeded order, each
    entity's pairs in a seeded order): first one pair of every entity, then a second of
    every entity, and so on. So the number of questions any two entities of a topic keep
    differs by at most one, unless an entity has no more pairs (a question the oracle's
    labels could not pair); at 1/3 of a world of 3 questions per entity that is about one
    question per entity, at 2/3 about two.

At the full budget both axes are the same run: all pairs. Every model is scored on the
held-out test topics. Besides the mean ± sd table, it reports, as paired differences over
seeds with 95% t-intervals, for % score and the fact metrics: the level gap questions -
topics at each budget below the full one, and each axis's per-step increments (2/3 - 1/3,
full - 2/3; --quick trains 1/3 only: full - 1/3). An interval that includes 0 (or a single
seed, which has none) is printed "not detected (underpowered)". Writes table4.md,
table4.json (per-seed values and the intervals too) and table4.png under --tables.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SEEDS = list(range(7, 17))  # issue 19: at least 10 seeds to decide
FRACTIONS = {False: ((1, 3), (2, 3)), True: ((1, 3),)}  # quick: one budget below the full one
AXES = ("topics", "questions")
METRICS = {m: common.ANSWER_METRICS[m] for m in
           ("score", "filler", "correct_facts", "incorrect_facts", "fact_precision", "atomic_precision")}
STUDY = "scaling"  # ROOT/seed<S>-k<K>q<Q>/scaling/: this study's subsets, runs and eval
PAPER = {"topics": (65.04, 71.56, 77.53), "questions": (69.03, 73.03, 77.53)}  # % score at 1/3, 2/3, full


# ---------------------------------------------------------------- the two axes


def group(pairs: list[dict], key: Any) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for p in pairs:
        out.setdefault(key(p), []).append(p)
    return out


def topics_subset(pairs: list[dict], budget: int, seed: int) -> list[dict]:
    """`budget` pairs from whole topics in a seeded order (the last one cut to fit)."""
    by_topic = group(pairs, lambda p: p.get("topic", ""))
    topics = sorted(by_topic)
    random.Random(seed).shuffle(topics)
    return [p for t in topics for p in by_topic[t]][:budget]


def shares(sizes: dict[str, int], budget: int, rng: random.Random) -> dict[str, int]:
    """Split `budget` over topics in proportion to their sizes, by largest remainder (exact total)."""
    total = sum(sizes.values())
    quota = {t: budget * n / total for t, n in sizes.items()}
    share = {t: int(q) for t, q in quota.items()}
    order = sorted(sizes)
    rng.shuffle(order)  # ties in a seeded order
    order.sort(key=lambda t: share[t] - quota[t])  # stable: largest remainder first
    for t in order[:budget - sum(share.values())]:
        share[t] += 1
    return share


def round_robin(entities: dict[str, list[dict]], rng: random.Random) -> list[dict]:
    """One pair of every entity, then a second of every entity, ... (seeded orders)."""
    names = sorted(entities)
    rng.shuffle(names)
    queues = {e: rng.sample(entities[e], len(entities[e])) for e in names}
    return [queues[e][i] for i in range(max(map(len, queues.values()))) for e in names if i < len(queues[e])]


def questions_subset(pairs: list[dict], budget: int, seed: int, entity_of: dict[str, str]) -> list[dict]:
    """`budget` pairs from every topic, its share taken round robin over its entities (docstring)."""
    rng = random.Random(seed)
    by_topic = group(pairs, lambda p: p.get("topic", ""))
    share = shares({t: len(ps) for t, ps in by_topic.items()}, budget, rng)
    chosen = []
    for t in sorted(by_topic):
        chosen += round_robin(group(by_topic[t], lambda p: entity_of.get(p["id"], p["id"])), rng)[:share[t]]
    return chosen


def sizes(pairs: list[dict], entity_of: dict[str, str]) -> dict[str, Any]:
    """What a training subset covers: pairs, topics, entities, and pairs per entity."""
    entities = group(pairs, lambda p: entity_of.get(p["id"], p["id"]))
    return {"pairs": len(pairs), "topics": len({p.get("topic") for p in pairs}), "entities": len(entities),
            "pairs_per_entity": (len(pairs) / len(entities)) if entities else 0.0}


# ---------------------------------------------------------------- running one seed


def arm(axis: str, num: int, den: int) -> str:
    """An arm's name: its eval folder and run folder (no "/" in a model name)."""
    return f"{axis}-{num}of{den}"


def arm_names(fractions: tuple[tuple[int, int], ...]) -> list[str]:
    return [arm(axis, n, d) for axis in AXES for n, d in fractions] + ["all"]


def run_seed(run: common.SeedRun, s: common.Settings,
             fractions: tuple[tuple[int, int], ...]) -> tuple[dict[str, dict], dict[str, dict]]:
    """Train both axes at every budget; (summary by arm, incl. base and all; subset sizes by arm)."""
    pairs = common.read_jsonl(run.pairs)
    entity_of = {q["id"]: q.get("entity", q["id"]) for q in common.read_jsonl(run.world / "train_questions.jsonl")}
    d = run.dir / STUDY
    models, info = {"all": run.maskdpo_all}, {"all": sizes(pairs, entity_of)}
    for num, den in fractions:
        budget = len(pairs) * num // den
        for axis in AXES:
            chosen = (topics_subset(pairs, budget, run.seed) if axis == "topics"
                      else questions_subset(pairs, budget, run.seed, entity_of))
            name = arm(axis, num, den)
            path = common.write_subset(d / f"{name}.jsonl", chosen)  # a rerun keeps the pairs it drew
            info[name] = sizes(common.read_jsonl(path), entity_of)
            models[name] = common.train(run, path, d / "runs" / name, s)
    summaries = common.evaluate(run, models, d / "eval", s)
    summaries["base"] = common.base_summary(run)
    return summaries, info


# ---------------------------------------------------------------- outputs


def comparisons(fractions: tuple[tuple[int, int], ...]) -> dict[str, tuple[str, str]]:
    """label -> (arm, against): level gaps at each budget, then each axis's steps."""
    out = {f"gap at {n}/{d}: questions - topics": (arm("questions", n, d), arm("topics", n, d)) for n, d in fractions}
    for axis in AXES:
        chain = [arm(axis, n, d) for n, d in fractions] + ["all"]
        names = [f"{n}/{d}" for n, d in fractions] + ["full"]
        for i in range(1, len(chain)):
            out[f"{axis} step {names[i]} - {names[i - 1]}"] = (chain[i], chain[i - 1])
    return out


def paper_notes() -> list[str]:
    t, q = PAPER["topics"], PAPER["questions"]
    return ["Paper (Table 4, ANAH-train, same pairs per row, % score at 1/3, 2/3, full): topics axis "
            f"{t[0]:.2f} / {t[1]:.2f} / {t[2]:.2f}; questions axis {q[0]:.2f} / {q[1]:.2f} / {q[2]:.2f}. "
            f"Level gaps questions - topics: {q[0] - t[0]:+.2f} at 1/3, {q[1] - t[1]:+.2f} at 2/3 (the questions "
            f"axis covers every topic). Steps: topics {t[1] - t[0]:+.2f}, {t[2] - t[1]:+.2f}; questions "
            f"{q[1] - q[0]:+.2f}, {q[2] - q[1]:+.2f} (the topics axis gains more per step).",
            "Topics axis: whole training topics, the last cut to fit; questions axis: every topic, its share of "
            "the budget round robin over its asked entities. Same pairs per budget on both axes, per seed. Both "
            "axes end in the same run (all pairs). Scored on held-out test topics."]


def write_outputs(tables: Path, summaries: dict[str, dict[int, dict]], info: dict[int, dict[str, dict]],
                  seeds: list[int], s: common.Settings, fractions: tuple[tuple[int, int], ...],
                  started: float) -> None:
    arms = ["base", *arm_names(fractions)]
    rows = []
    labels = {"base": "base (no training)", "all": "all pairs (both axes)",
              **{arm(axis, n, d): f"{n}/{d} by {axis}" for axis in AXES for n, d in fractions}}
    for name in arms:
        seen = [info[seed].get(name) for seed in seeds]
        mean = lambda key: sum(x[key] for x in seen) / len(seen)  # noqa: E731
        trained = name != "base"
        rows.append(common.Row({"data": labels[name],
                                "pairs": f"{mean('pairs'):.0f}" if trained else "0",
                                "topics": f"{mean('topics'):.1f}" if trained else "-",
                                "entities": f"{mean('entities'):.1f}" if trained else "-",
                                "pairs / entity": f"{mean('pairs_per_entity'):.2f}" if trained else "-"},
                               [summaries[name][seed] for seed in seeds]))
    md, data = common.row_table("Table 4: scaling topics vs questions per topic (Mask-DPO)", rows, seeds=seeds,
                                settings=s, started=started, notes=paper_notes())
    values = common.metric_values(summaries, METRICS)
    paired = {label: {m: common.paired(values, a, against, m, seeds) for m in METRICS}
              for label, (a, against) in comparisons(fractions).items()}
    md += common.paired_table("comparison", paired, {m: title for m, (title, _) in METRICS.items()})
    data.update({"paper": {axis: dict(zip(("1/3", "2/3", "full"), v)) for axis, v in PAPER.items()},
                 "metrics": {m: title for m, (title, _) in METRICS.items()},
                 "per_seed": {name: {str(seed): values[name][seed] for seed in seeds} for name in arms},
                 "sizes": {str(seed): info[seed] for seed in seeds},
                 "paired": {label: {"arm": a, "against": against, **{m: paired[label][m] for m in METRICS}}
                            for label, (a, against) in comparisons(fractions).items()}})
    common.save_results(tables, "table4", md, data)
    plot(values, paired, fractions, seeds, tables / "table4.png")


def plot(values: dict[str, dict[int, dict]], paired: dict[str, dict], fractions: tuple[tuple[int, int], ...],
         seeds: list[int], path: Path) -> None:
    """Left: % score against the budget on both axes (mean ± sd); right: the paired differences."""
    fig, axes = common.figure(ncols=2, width=12.8)
    ax = axes[0][0]
    budgets = [n / d for n, d in fractions] + [1.0]
    for axis, marker in (("topics", "o"), ("questions", "s")):
        stats = [common.mean_sd([values[a][seed]["score"] for seed in seeds])
                 for a in [arm(axis, n, d) for n, d in fractions] + ["all"]]
        ax.errorbar(budgets, [st[0] for st in stats], yerr=[st[1] for st in stats], marker=marker, capsize=4,
                    label="more topics" if axis == "topics" else "more questions per topic")
    base = common.mean_sd([values["base"][seed]["score"] for seed in seeds])
    ax.axhline(base[0], color="grey", linestyle="--", label="base")
    ax.set_xticks(budgets, [f"{n}/{d}" for n, d in fractions] + ["full"])
    ax.set_xlabel("share of the training pairs")
    ax.set_ylabel("factuality score on test topics (%)")
    ax.set_title("Table 4: scaling topics vs questions per topic")
    ax.legend()
    common.bar_score_differences(axes[0][1], paired)
    common.save_figure(fig, path)


def main() -> None:
    args = common.parse_args(__doc__, "runs/experiments", seeds=SEEDS, kinds=3, questions_per_topic=3)
    settings = common.Settings.from_args(args)
    fractions = FRACTIONS[args.quick]
    started = time.time()
    summaries, info = common.run_seeds(args, settings, lambda run, s: run_seed(run, s, fractions), shared_runs=True)
    write_outputs(Path(args.tables), summaries, info, args.seeds, settings, fractions, started)


if __name__ == "__main__":
    main()
