"""Table 5 of the paper in miniature: train on the topics near the test topics, or far from them?

    .venv/bin/python experiments/table5_clusters.py [--seeds 7 8 ... 16] [--quick] [-o runs/experiments]

The study's world has three kinds of entity (people, ships, inns) and three questions about
each asked entity (`--kinds 3 --questions-per-topic 3`): its topics differ in kind and share
value pools by kind and region, so world.json knows which topics are truly near each other
(maskdpo_cli/world/affinity.py: near is the same kind in the same region).

For each world seed (experiments/common.py prepares world, policy and pairs, in
ROOT/seed<S>-k3q3), `maskdpo cluster --equal-sizes` splits the training pairs into near,
far and random sets of the same number of pairs, with three embedders of a topic:

    policy-seen   the policy's mean last hidden state over text it has seen: the topic's
                  reference documents (`--topic-texts`, the world's train and test questions)
    policy-name   the policy's mean last hidden state over the topic's name (the paper's way)
    minilm        MiniLM over the topic's name (`--embedder all-minilm-l6-v2`)

First it asks whether the clusters recover the world's true affinity: for each split, the
share of its training topics that are truly near the test topic they were clustered with
(random: the one the embedder put them with), against chance (the share of all training x
test topic pairs that are truly near). Then Mask-DPO is trained on every split and scored
with the base on the test topics. Reports mean ± sd over seeds, and the paired differences
near - far, near - random and far - random with 95% t-intervals over seeds; wherever an
interval includes 0 the table says "not detected (underpowered)". Writes
table5.{md,json,png} under --tables (per-seed values in the JSON).

A training run is keyed by the content of its pairs file, so a split that two embedders
agree on is trained once, and a rerun trains nothing already trained.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from maskdpo_cli.world.affinity import NEAR, affinity  # noqa: E402

SEEDS = list(range(7, 17))  # 10 seeds: enough to see the paper's gap (issue 19)
EMBEDDERS = {"policy-seen": "the policy over the topic's documents (--topic-texts)",
             "policy-name": "the policy over the topic's name",
             "minilm": "MiniLM over the topic's name (--embedder all-minilm-l6-v2)"}
SPLITS = ("near", "far", "random")
DIFFERENCES = (("near", "far"), ("near", "random"), ("far", "random"))

# metric -> (column title, how to read it from summary.json); "truly_near" and "pairs" come from the splits
METRICS: dict[str, tuple[str, Any]] = {
    "score": common.ANSWER_METRICS["score"],
    "correct": ("# correct", lambda s: s.get("correct")),
    "incorrect": ("# incorrect", lambda s: s.get("incorrect")),
    "fact_precision": common.ANSWER_METRICS["fact_precision"],
    "blurred": ("% blurred of wrong facts", lambda s: s.get("blurred_share")),
}
COLUMNS = {"pairs": "pairs", "truly_near": "truly near (share)", **{m: title for m, (title, _) in METRICS.items()}}
COMPARED = ("truly_near", "score", "fact_precision", "blurred")  # the paired differences' columns


def cluster_flags(run: common.SeedRun) -> dict[str, list[str | Path]]:
    """`maskdpo cluster` flags of each embedder."""
    documents = [run.world / "train_questions.jsonl", run.world / "test_questions.jsonl"]
    return {"policy-seen": [a for path in documents for a in ("--topic-texts", path)],
            "policy-name": [],
            "minilm": ["--embedder", "all-minilm-l6-v2"]}


# ---------------------------------------------------------------- true affinity


def world_topics(run: common.SeedRun) -> dict[str, dict[str, Any]]:
    """The world's topics by name (the `topic` of its questions and pairs)."""
    world = json.loads((run.world / "world.json").read_text(encoding="utf-8"))
    return {t["name"]: t for t in world["topics"]}


def truly_near_share(clusters: Path, split: str, topics: dict[str, dict[str, Any]]) -> float | None:
    """Share of the split's training topics that are truly near the test topic they were clustered with."""
    cluster_of = {a["topic"]: a["cluster"]
                  for a in json.loads((clusters / "assignment.json").read_text(encoding="utf-8"))}
    in_split = dict.fromkeys(p["topic"] for p in common.read_jsonl(clusters / f"{split}.jsonl"))
    near = [affinity(topics[t], topics[cluster_of[t]]) >= NEAR for t in in_split]
    return statistics.mean(near) if near else None


def chance_share(run: common.SeedRun, topics: dict[str, dict[str, Any]]) -> float:
    """Share of all (training topic with pairs, test topic) pairs that are truly near: random clusters' figure."""
    train = dict.fromkeys(p["topic"] for p in common.read_jsonl(run.pairs))
    test = dict.fromkeys(q["topic"] for q in common.read_jsonl(run.test))
    return statistics.mean(affinity(topics[a], topics[b]) >= NEAR for a in train for b in test)


# ---------------------------------------------------------------- one seed


def run_seed(run: common.SeedRun, s: common.Settings) -> tuple[dict[str, dict[str, float | None]], dict[str, Any]]:
    """Cluster with every embedder, train every split, evaluate them with the base; (values by arm, seed facts)."""
    d = run.dir / "table5"
    topics = world_topics(run)
    digests: dict[str, str] = {}            # arm ("policy-seen near") -> its training run
    figures: dict[str, dict[str, Any]] = {}  # arm -> pairs, truly near
    models = {"base": run.policy}
    for embedder, flags in cluster_flags(run).items():
        clusters = d / f"clusters-{embedder}"
        if not common.done(clusters / "assignment.json"):
            common.maskdpo("cluster", "--model", run.policy, "--train", run.pairs, "--test", run.test,
                           "--equal-sizes", *flags, "--seed", run.seed, "-o", clusters)
        for split in SPLITS:
            arm, pairs = f"{embedder} {split}", clusters / f"{split}.jsonl"
            if not common.done(pairs):
                sys.exit(f"experiments: {pairs} is empty: no {split} pairs to train on")
            digest = hashlib.sha256(pairs.read_bytes()).hexdigest()[:10]
            models[f"run-{digest}"] = common.train(run, pairs, d / "runs" / digest, s)
            digests[arm] = digest
            figures[arm] = {"pairs": len(common.read_jsonl(pairs)),
                            "truly_near": truly_near_share(clusters, split, topics)}
    summaries = common.evaluate(run, models, d / "eval", s)
    read = lambda summary: {m: get(summary) for m, (_, get) in METRICS.items()}  # noqa: E731
    values = {"base": {"pairs": 0, "truly_near": None, **read(summaries["base"])}}
    for arm, digest in digests.items():
        values[arm] = {**figures[arm], **read(summaries[f"run-{digest}"])}
    info = {"pairs": len(common.read_jsonl(run.pairs)), "chance": chance_share(run, topics),
            "runs": {arm: digest for arm, digest in digests.items()}}
    return values, info


# ---------------------------------------------------------------- outputs


def write_outputs(tables: Path, values: dict[str, dict[int, dict[str, float | None]]], seeds: list[int],
                  info: dict[int, dict[str, Any]], s: common.Settings, started: float) -> dict[str, Any]:
    arms = ["base"] + [f"{e} {split}" for e in EMBEDDERS for split in SPLITS]
    means = common.means(values, arms, COLUMNS, seeds)
    paired = {e: {f"{a} - {b}": {m: common.paired(values, f"{e} {a}", f"{e} {b}", m, seeds) for m in COMPARED}
                  for a, b in DIFFERENCES} for e in EMBEDDERS}
    for by_difference in paired.values():
        for stats in by_difference.values():
            for stat in stats.values():
                if stat is not None:
                    stat["detected"] = common.detected(stat)
    chance = common.mean_sd([info[seed]["chance"] for seed in seeds])
    elapsed = time.time() - started
    command = common.command_line()
    md = common.header("Table 5: training topics near vs far from the test topics (Mask-DPO)", command, seeds, s,
                       elapsed, f"Training pairs per seed (all): {', '.join(str(info[seed]['pairs']) for seed in seeds)}"
                       "; near, far and random hold the same number (`cluster --equal-sizes`).")
    md += ["", "Embedders: " + "; ".join(f"{e}: {what}" for e, what in EMBEDDERS.items()) + ".", "",
          f"Truly near: the share of a split's training topics that are truly near (world affinity >= {NEAR}: "
          f"the same kind in the same region) the test topic they were clustered with. Chance (random "
          f"clusters): {common.fmt(chance)}.", ""]
    md += common.markdown_table(
        ["embedder", "split", *COLUMNS.values()],
        [[*(arm.split(" ") if " " in arm else ("-", "base (no training)"))] + [common.fmt(means[arm][c]) for c in COLUMNS]
         for arm in arms], labels=2)
    md += ["", common.PAIRED_NOTE.format(what="Paired differences"), ""] + common.markdown_table(
        ["embedder", "difference", *(COLUMNS[m] for m in COMPARED)],
        [[e, difference] + [common.fmt_paired(stats[m]) for m in COMPARED]
         for e, by_difference in paired.items() for difference, stats in by_difference.items()], labels=2)
    data = {"title": "Table 5: near vs far vs random training topics", "command": command, "seeds": seeds,
            "settings": asdict(s), "elapsed_s": round(elapsed, 1), "embedders": EMBEDDERS, "columns": COLUMNS,
            "per_seed": {arm: {str(seed): values[arm][seed] for seed in seeds} for arm in arms},
            "seed_info": {str(seed): info[seed] for seed in seeds},
            "chance": None if chance is None else {"mean": chance[0], "sd": chance[1]},
            "mean_sd": common.mean_sd_record(means),
            "paired": paired}
    common.save_results(tables, "table5", md, data)
    plot(means, chance, tables / "table5.png")
    return data


def plot(means: dict[str, dict[str, tuple[float, float] | None]], chance: tuple[float, float] | None,
         path: Path) -> None:
    """Truly-near share and % score per embedder and split (mean ± sd), with chance and the base."""
    fig, axes = common.figure(ncols=2, width=12, height=4.0)
    width = 0.25
    for ax, column, reference, label in ((axes[0][0], "truly_near", chance, "chance"),
                                         (axes[0][1], "score", means["base"]["score"], "base")):
        for i, split in enumerate(SPLITS):
            stats = [means[f"{e} {split}"][column] for e in EMBEDDERS]
            xs = [k + (i - 1) * width for k in range(len(EMBEDDERS))]
            ax.bar(xs, [st[0] if st else 0 for st in stats], width, yerr=[st[1] if st else 0 for st in stats],
                   capsize=4, label=split)
        if reference is not None:
            ax.axhline(reference[0], color="grey", linestyle="--", label=label)
        ax.set_xticks(range(len(EMBEDDERS)), list(EMBEDDERS))
        ax.set_ylabel(COLUMNS[column] if column == "truly_near" else "factuality score on test topics (%)")
        ax.legend()
    axes[0][0].set_title("Do the clusters recover the true affinity?")
    axes[0][1].set_title("Mask-DPO trained on each split")
    common.save_figure(fig, path)


def main() -> None:
    args = common.parse_args(__doc__, "runs/experiments", seeds=SEEDS, kinds=3, questions_per_topic=3)
    settings = common.Settings.from_args(args)
    started = time.time()
    values, info = common.run_seeds(args, settings, run_seed)
    write_outputs(Path(args.tables), values, args.seeds, info, settings, started)


if __name__ == "__main__":
    main()
