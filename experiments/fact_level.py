"""Fact-level alignment: does an aligned model know more, or only say less?

    .venv/bin/python experiments/fact_level.py [--seeds 7 8 9 10 11] [--quick] [-o runs/experiments]

For each world seed (experiments/common.py prepares world, policy, samples, oracle
annotations and the paper's pairs), the same annotated samples are paired four ways
(`maskdpo pair --unit sentence|span --nofact correct|neutral`), every pairs file is cut to
the questions that all four pair, and seven arms are trained and scored with the same
hyper-parameters and seed:

    base                    the pretrained policy
    dpo                     --no-mask, paper pairs
    maskdpo                 Mask-DPO, paper pairs (sentence units, no-fact counts as correct)
    maskdpo-neutral         Mask-DPO, --nofact neutral
    maskdpo-span            Mask-DPO, --unit span
    maskdpo-span-neutral    Mask-DPO, --unit span --nofact neutral
    dpo-neutral             --no-mask, --nofact neutral pairs (the pair choice alone)

One `maskdpo eval --probe world:DIR` scores all seven on the held-out test topics. Per
arm and seed the study keeps, per answer, no-fact sentences (filler), correct and
incorrect facts, plus the score, the fact precisions and the knowledge probe's accuracy.
It reports paired differences (arm minus base, arm minus maskdpo) with 95% t-intervals
over seeds, and the verdict of issue 18: an arm KNOWS MORE RATHER THAN SAYS LESS when,
against base on every seed, incorrect facts per answer fall by at least 15%, correct facts
per answer stay at or above 0.98 of base, and filler per answer rises by at most 0.2; and
probe accuracy rises with the paired 95% interval above 0. Writes fact_level.{md,json,png}
under --tables (per-seed values in the JSON).

A diagnostic beside the verdict: the same probe on the entities the training questions ask
about ("% probe, trained entities"), which tells whether alignment changed what the model
recalls even where it was trained.
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

SEEDS = [7, 8, 9, 10, 11]
PAIRINGS = {"paper": ("sentence", "correct"), "neutral": ("sentence", "neutral"),
            "span": ("span", "correct"), "span-neutral": ("span", "neutral")}
# arm -> (pairing, masked); base is the policy itself
ARMS = {"dpo": ("paper", False), "maskdpo": ("paper", True), "maskdpo-neutral": ("neutral", True),
        "maskdpo-span": ("span", True), "maskdpo-span-neutral": ("span-neutral", True),
        "dpo-neutral": ("neutral", False)}
ARM_NAMES = ["base", *ARMS]
REFERENCE = "maskdpo"  # the paper's method: the second baseline of the paired differences

METRICS = {**common.ANSWER_METRICS,  # score, filler, facts per answer, precisions, probe (test topics)
           "probe_trained": ("% probe, trained entities",
                             lambda s: None if s.get("probe_trained") is None else 100 * s["probe_trained"])}
# The bar, against base (issue 18): per seed...
INCORRECT_DROP = 0.15   # incorrect facts per answer fall by at least 15%
CORRECT_KEEP = 0.98     # correct facts per answer stay at or above 0.98 of base
FILLER_RISE = 0.2       # filler per answer rises by at most 0.2 sentences
# ...and probe accuracy rises, with the paired 95% interval above 0.
EPS = 1e-9


# ---------------------------------------------------------------- statistics


def seed_checks(arm: dict[str, float | None], base: dict[str, float | None]) -> dict[str, bool]:
    """The three per-seed conditions of the bar for one arm against base on one seed (a bound
    met to within float rounding counts as met: 0.7 - 0.5 is a rise of 0.2)."""
    bad0, bad1 = base["incorrect_facts"], arm["incorrect_facts"]
    good0, good1 = base["correct_facts"], arm["correct_facts"]
    return {"incorrect_fall_15pct": bad0 is not None and bad1 is not None
            and bad1 <= (1 - INCORRECT_DROP) * bad0 + EPS,
            "correct_kept_98pct": good0 is not None and good1 is not None and good1 >= CORRECT_KEEP * good0 - EPS,
            "filler_rise_le_0.2": arm["filler"] - base["filler"] <= FILLER_RISE + EPS}


def verdict(values: dict[str, dict[int, dict[str, float | None]]], arm: str, seeds: list[int]) -> dict[str, Any]:
    """Does `arm` know more rather than say less? Every condition, per seed and overall."""
    checks = {seed: seed_checks(values[arm][seed], values["base"][seed]) for seed in seeds}
    probe = common.paired(values, arm, "base", "probe", seeds)
    every_seed = {name: all(c[name] for c in checks.values()) for name in next(iter(checks.values()))}
    probe_up = probe is not None and probe["low"] is not None and probe["low"] > 0
    return {"per_seed": {str(s): c for s, c in checks.items()}, "on_every_seed": every_seed,
            "probe_rises": probe_up, "knows_more": all(every_seed.values()) and probe_up}


# ---------------------------------------------------------------- running the arms


def pair_files(run: common.SeedRun) -> dict[str, Path]:
    """The seed's annotations paired four ways, each cut to the questions all four pair."""
    d = run.dir / "fact_level"
    full = {}
    for name, (unit, nofact) in PAIRINGS.items():
        full[name] = d / f"pairs.{name}.all.jsonl"
        if not common.done(full[name]):
            d.mkdir(parents=True, exist_ok=True)
            common.maskdpo("pair", run.dir / "annotated.jsonl", "--unit", unit, "--nofact", nofact, "-o", full[name])
    records = {name: common.read_jsonl(path) if path.is_file() else [] for name, path in full.items()}
    shared = set.intersection(*({p["id"] for p in pairs} for pairs in records.values()))
    if not shared:
        sys.exit(f"experiments: no question is paired by all four pairings in {d}; nothing to compare")
    return {name: common.write_subset(d / f"pairs.{name}.jsonl", [p for p in pairs if p["id"] in shared])
            for name, pairs in records.items()}


def probe_trained(run: common.SeedRun, model: Path, out: Path) -> float:
    """The probe's accuracy (0-1) on the entities the training questions ask about: did alignment
    change what the model recalls about the very entities it was trained on? (A diagnostic
    beside the test-topic probe; items in OUT/probe.train.json.)"""
    from maskdpo_cli.world.probe import run_probe

    run_probe(run.world, model, out, split="train")
    asked = {q["entity"] for q in common.read_jsonl(run.world / "train_questions.jsonl")}
    items = [i for i in json.loads((out / "probe.train.json").read_text(encoding="utf-8"))["items"]
             if i["entity"] in asked]
    return sum(i["correct"] for i in items) / len(items)


def run_seed(run: common.SeedRun, settings: common.Settings) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Train the six arms, evaluate all seven with the probe; (summaries by arm, facts about the pairs)."""
    pairs = pair_files(run)
    models = {"base": run.policy}
    for arm, (pairing, masked) in ARMS.items():
        models[arm] = common.train(run, pairs[pairing], run.dir / "fact_level" / "runs" / arm, settings, mask=masked)
    summaries = common.evaluate(run, models, run.dir / "fact_level" / "eval", settings,
                                extra=["--probe", f"world:{run.world}"])
    for arm, model in models.items():
        summaries[arm]["probe_trained"] = probe_trained(run, model, run.dir / "fact_level" / "eval" / arm)
    annotated = common.read_jsonl(run.dir / "annotated.jsonl")
    sentences = [s for rec in annotated for r in rec["responses"] for s in r.get("sentences", [])]
    info = {"pairs": len(common.read_jsonl(pairs["paper"])),
            "sentences_with_spans": sum(bool(s.get("spans")) for s in sentences), "sentences": len(sentences)}
    return summaries, info


# ---------------------------------------------------------------- outputs


def write_outputs(tables: Path, values: dict[str, dict[int, dict[str, float | None]]], seeds: list[int],
                  info: dict[int, dict[str, Any]], settings: common.Settings, started: float) -> dict[str, Any]:
    means = common.means(values, ARM_NAMES, METRICS, seeds)
    diffs = {against: {arm: {m: common.paired(values, arm, against, m, seeds) for m in METRICS}
                       for arm in ARM_NAMES if arm != against} for against in ("base", REFERENCE)}
    verdicts = {arm: verdict(values, arm, seeds) for arm in ARMS}
    elapsed = time.time() - started
    command = common.command_line()
    titles = {m: title for m, (title, _) in METRICS.items()}
    spans = ", ".join(f"{info[s]['sentences_with_spans']}/{info[s]['sentences']}" for s in seeds)
    md = common.header("Fact-level alignment: knows more, or says less?", command, seeds, settings, elapsed,
                       "Training pairs per seed (the questions all four pairings pair): "
                       f"{', '.join(str(info[s]['pairs']) for s in seeds)}; annotated sentences with fact spans: "
                       f"{spans}.")
    md += [""] + common.markdown_table(["arm", *titles.values()],
                                       [[arm] + [common.fmt(means[arm][m]) for m in METRICS] for arm in ARM_NAMES])
    for against, label in (("base", "base"), (REFERENCE, "Mask-DPO (paper)")):
        md += common.paired_table("arm", diffs[against], titles, what=f"Paired differences against {label}")
    md += ["", "Knows more rather than says less (against base: incorrect facts / answer -15% or more, correct "
               "facts / answer at least 0.98 of base, filler / answer +0.2 or less, each on every seed; and the "
               "probe's paired interval above 0):", "",
           "| arm | incorrect -15% | correct ≥ 0.98 | filler ≤ +0.2 | probe rises | verdict |",
           "|---|---|---|---|---|---|"]
    for arm, v in verdicts.items():
        seeds_ok = lambda name: f"{sum(c[name] for c in v['per_seed'].values())}/{len(seeds)}"  # noqa: E731
        md.append(f"| {arm} | {seeds_ok('incorrect_fall_15pct')} | {seeds_ok('correct_kept_98pct')} | "
                  f"{seeds_ok('filler_rise_le_0.2')} | {'yes' if v['probe_rises'] else 'no'} | "
                  f"{'KNOWS MORE' if v['knows_more'] else 'no'} |")
    data = {"title": "fact-level alignment", "command": command, "seeds": seeds, "settings": asdict(settings),
            "elapsed_s": round(elapsed, 1), "arms": {arm: {"pairing": ARMS[arm][0], "masked": ARMS[arm][1]}
                                                     for arm in ARMS},
            "pairings": {k: {"unit": u, "nofact": n} for k, (u, n) in PAIRINGS.items()},
            "metrics": titles,
            "per_seed": {arm: {str(s): values[arm][s] for s in seeds} for arm in ARM_NAMES},
            "seed_info": {str(s): info[s] for s in seeds},
            "mean_sd": common.mean_sd_record(means),
            "paired": diffs, "verdict": verdicts,
            "bar": {"incorrect_drop": INCORRECT_DROP, "correct_keep": CORRECT_KEEP, "filler_rise": FILLER_RISE}}
    common.save_results(tables, "fact_level", md, data)
    plot(diffs["base"], tables / "fact_level.png")
    return data


def plot(diffs: dict[str, dict[str, dict[str, float | None] | None]], path: Path) -> None:
    """Arm minus base, with 95% intervals, for the four figures the verdict reads."""
    shown = ("filler", "correct_facts", "incorrect_facts", "probe", "probe_trained")
    fig, axes = common.figure(ncols=len(shown), width=14, height=4.0)
    arms = list(diffs)
    for ax, metric in zip(axes[0], shown):
        common.bar_paired(ax, arms, [diffs[arm][metric] for arm in arms], rotation=45)
        ax.set_title(f"{METRICS[metric][0]}, minus base")
    common.save_figure(fig, path)


def main() -> None:
    args = common.parse_args(__doc__, "runs/experiments", seeds=SEEDS)
    settings = common.Settings.from_args(args)
    started = time.time()
    summaries, info = common.run_seeds(args, settings, run_seed)
    write_outputs(Path(args.tables), common.metric_values(summaries, METRICS), args.seeds, info, settings, started)


if __name__ == "__main__":
    main()
