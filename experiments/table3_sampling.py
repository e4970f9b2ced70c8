"""Table 3 of the paper in miniature: where should the responses of a preference pair come from?

    .venv/bin/python experiments/table3_sampling.py [--seeds 7 ... 16] [--kinds 3 --questions-per-topic 3]
                                                    [--quick] [-o runs/experiments]

The paper (Table 3): on-policy samples (the default) beat samples from another model, and
beat "+Doc", where the chosen side is sampled with the topic's reference document in the
prompt and the rejected side without it.

The world is Table 4's (3 kinds of entity, 3 questions per asked entity; runs in
ROOT/seed<S>-k3q3, shared with table4_scaling.py). For each world seed, experiments/common.py
prepares world, policy, on-policy samples, oracle labels and pairs; then three pair sets
are built on the same training questions, all paired by `maskdpo pair` (the paper's rule):

    on-policy     the seed's policy's own samples: the default pipeline's pairs.
    other-policy  another world policy: pretrained on the same world with seed S + 1000
                  (`world pretrain --seed S+1000`, same size and steps), sampled with the
                  same flags, labelled by the oracle and paired.
    doc           +Doc. `maskdpo sample` puts a question record's `prompt` in front of the
                  model and has no document flag, so the script writes a questions file
                  whose prompt is the question's reference `document`, a blank line, then
                  the question (id, question, entity and document unchanged, so the oracle
                  judges the same question), and samples the seed's policy on it. Per
                  question, the best +Doc response (highest oracle score, the earliest of
                  equals) faces the worst on-policy response without the document (lowest
                  score, the latest of equals), re-attached to the original question record:
                  `maskdpo pair` pairs those two, so the training prompt is the bare question,
                  as in on-policy, and the rejected side is the one on-policy pairs too (the
                  same rule), so +Doc and on-policy differ in the chosen side only. A question
                  where the +Doc response scores below the bare one (pair would choose the one
                  without the document) is dropped.

Every pair set is cut to the questions all three pair, so the arms train on the same
question ids. Each arm is Mask-DPO from the seed's policy with the same hyper-parameters
and seed (common.train); `maskdpo eval` scores them with the base on the held-out test
topics. Reports mean ± sd over seeds and the paired differences on-policy - other-policy
and on-policy - doc (and each arm - base) with 95% t-intervals; "not detected
(underpowered)" where an interval includes 0 or one seed gives none. Writes table3.md,
table3.json (per-seed values too) and table3.png under --tables; reruns resume.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SEEDS = list(range(7, 17))
OTHER_SEED = 1000      # the other policy's pretraining seed is the world seed plus this
ARMS = ("on-policy", "other-policy", "doc")
ALL_ARMS = ("base", *ARMS)
METRICS = {m: common.ANSWER_METRICS[m] for m in
           ("score", "filler", "correct_facts", "incorrect_facts", "fact_precision", "atomic_precision")}
DIFFERENCES = [("on-policy", "other-policy"), ("on-policy", "doc"),
               ("on-policy", "base"), ("other-policy", "base"), ("doc", "base")]
STUDY = "sampling"  # ROOT/seed<S>-k<K>q<Q>/sampling/: this study's samples, pairs, runs and eval


# ---------------------------------------------------------------- the three pair sets


def pair(annotated: Path, out: Path) -> Path:
    if not common.done(out):
        common.maskdpo("pair", annotated, "-o", out)
    return out


def other_policy_pairs(run: common.SeedRun, s: common.Settings) -> Path:
    """Pairs from the samples of a second policy pretrained on the same world with another seed."""
    d = run.dir / STUDY
    other = d / "other-policy"
    if not common.done(other / "config.json"):
        steps = ["--steps", s.pretrain_steps] if s.pretrain_steps else []
        common.maskdpo("world", "pretrain", run.world, "-o", other, "--seed", run.seed + OTHER_SEED, *steps,
                       *(["--quick"] if s.quick else []))
    annotated = common.sample_and_annotate(run.world, run.world / "train_questions.jsonl", other,
                                           d / "samples.other-policy.jsonl", d / "annotated.other-policy.jsonl",
                                           s, run.seed)
    return pair(annotated, d / "pairs.other-policy.all.jsonl")


def with_document(question: dict[str, Any]) -> dict[str, Any]:
    """The question record with its reference document in front of the question in the prompt."""
    return {**question, "prompt": [{"role": "user", "content": f"{question['document']}\n\n{question['question']}"}]}


def best(responses: list[dict], worst: bool = False) -> dict | None:
    """The highest-scoring response, the earliest of equals (worst: the lowest, the latest of equals),
    among those with a sentence: `maskdpo pair`'s own choice on one side."""
    said = [r for r in responses if r["sentences"]]
    if not said:
        return None
    ranked = sorted(said, key=lambda r: -r["score"])
    return ranked[-1] if worst else ranked[0]


def doc_pairs(run: common.SeedRun, s: common.Settings) -> tuple[Path, int]:
    """+Doc pairs (docstring) and how many questions the +Doc side lost to the bare one."""
    d = run.dir / STUDY
    questions = common.write_subset(d / "questions.doc.jsonl",
                                    [with_document(q) for q in common.read_jsonl(run.world / "train_questions.jsonl")])
    annotated = common.sample_and_annotate(run.world, questions, run.policy, d / "samples.doc.jsonl",
                                           d / "annotated.doc.jsonl", s, run.seed)
    with_doc = {r["id"]: r for r in common.read_jsonl(annotated)}
    faced = []
    for record in common.read_jsonl(run.dir / "annotated.jsonl"):  # the bare question, as on-policy
        chosen = best(with_doc[record["id"]]["responses"]) if record["id"] in with_doc else None
        rejected = best(record["responses"], worst=True)
        if chosen and rejected:
            faced.append({**record, "responses": [{**chosen, "index": 0}, {**rejected, "index": 1}]})
    pairs = pair(common.write_subset(d / "annotated.doc-vs-bare.jsonl", faced), d / "pairs.doc.faced.jsonl")
    records = common.read_jsonl(pairs) if pairs.is_file() else []
    kept = [p for p in records if p["chosen_index"] == 0]  # chosen is the +Doc response
    return common.write_subset(d / "pairs.doc.all.jsonl", kept), len(records) - len(kept)


def pair_sets(run: common.SeedRun, s: common.Settings) -> tuple[dict[str, Path], dict[str, Any]]:
    """The three pair sets cut to the questions all of them pair; facts about them."""
    d = run.dir / STUDY
    d.mkdir(parents=True, exist_ok=True)
    doc, doc_lost = doc_pairs(run, s)
    full = {"on-policy": run.pairs, "other-policy": other_policy_pairs(run, s), "doc": doc}
    records = {arm: common.read_jsonl(path) if path.is_file() else [] for arm, path in full.items()}
    shared = set.intersection(*({p["id"] for p in pairs} for pairs in records.values()))
    if not shared:
        sys.exit(f"experiments: no question is paired by all three sampling strategies in {d}; nothing to compare")
    cut = {arm: common.write_subset(d / f"pairs.{arm}.jsonl", [p for p in pairs if p["id"] in shared])
           for arm, pairs in records.items()}
    info = {"pairs_before_cut": {arm: len(pairs) for arm, pairs in records.items()}, "pairs": len(shared),
            "doc_side_lost": doc_lost}
    return cut, info


def run_seed(run: common.SeedRun, s: common.Settings) -> tuple[dict[str, dict], dict[str, Any]]:
    pairs, info = pair_sets(run, s)
    models = {"base": run.policy}
    for arm in ARMS:
        models[arm] = common.train(run, pairs[arm], run.dir / STUDY / "runs" / arm, s)
    return common.evaluate(run, models, run.dir / STUDY / "eval", s), info


# ---------------------------------------------------------------- outputs


def write_outputs(tables: Path, values: dict[str, dict[int, dict[str, float | None]]], seeds: list[int],
                  info: dict[int, dict[str, Any]], s: common.Settings, started: float) -> None:
    means = common.means(values, ALL_ARMS, METRICS, seeds)
    diffs = {f"{a} - {b}": {m: common.paired(values, a, b, m, seeds) for m in METRICS} for a, b in DIFFERENCES}
    elapsed = time.time() - started
    command = common.command_line()
    titles = {m: title for m, (title, _) in METRICS.items()}
    per_seed = lambda key: ", ".join(str(info[seed][key]) for seed in seeds)  # noqa: E731
    md = common.header("Table 3: sampling strategy (Mask-DPO)", command, seeds, s, elapsed,
                       f"Training pairs per seed, the same question ids in every arm: {per_seed('pairs')}. Questions "
                       "dropped from +Doc because the response with the document scored below the one without: "
                       f"{per_seed('doc_side_lost')}.")
    md += [""] + common.markdown_table(["arm", *titles.values()],
                                       [[arm] + [common.fmt(means[arm][m]) for m in METRICS] for arm in ALL_ARMS])
    md += common.paired_table("difference", diffs, titles)
    md += ["", "Paper (Table 3): on-policy samples (the default) beat samples from another model, and beat +Doc "
               "(chosen side sampled with the topic's reference document in the prompt, rejected side without).",
           f"Other policy: pretrained on the same world with seed S + {OTHER_SEED}. +Doc: the document, a blank line, "
           "then the question as the sampling prompt; trained on the bare question."]
    data = {"title": "Table 3: sampling strategy", "command": command, "seeds": seeds, "settings": asdict(s),
            "elapsed_s": round(elapsed, 1), "other_policy_seed_offset": OTHER_SEED, "metrics": titles,
            "per_seed": {arm: {str(seed): values[arm][seed] for seed in seeds} for arm in ALL_ARMS},
            "seed_info": {str(seed): info[seed] for seed in seeds},
            "mean_sd": common.mean_sd_record(means),
            "paired": diffs}
    common.save_results(tables, "table3", md, data)
    plot(means, diffs, tables / "table3.png")


def plot(means: dict[str, dict[str, tuple[float, float] | None]], diffs: dict[str, dict[str, Any]],
         path: Path) -> None:
    """Left: % score by arm (mean ± sd); right: the paired differences of % score (95% intervals)."""
    fig, axes = common.figure(ncols=2, width=12.8)
    ax = axes[0][0]
    stats = [means[arm]["score"] for arm in ALL_ARMS]
    ax.bar(range(len(ALL_ARMS)), [0.0 if st is None else st[0] for st in stats],
           yerr=[0.0 if st is None else st[1] for st in stats], capsize=4,
           color=[f"C{i}" for i in range(len(ALL_ARMS))])
    ax.set_xticks(range(len(ALL_ARMS)), ALL_ARMS)
    ax.set_ylabel("factuality score on test topics (%)")
    ax.set_title("Table 3: sampling strategy")
    common.bar_score_differences(axes[0][1], diffs)
    common.save_figure(fig, path)


def main() -> None:
    args = common.parse_args(__doc__, "runs/experiments", seeds=SEEDS, kinds=3, questions_per_topic=3)
    settings = common.Settings.from_args(args)
    started = time.time()
    summaries, info = common.run_seeds(args, settings, run_seed)
    write_outputs(Path(args.tables), common.metric_values(summaries, METRICS), args.seeds, info, settings, started)


if __name__ == "__main__":
    main()
