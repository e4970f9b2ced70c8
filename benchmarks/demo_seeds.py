"""RESULTS.md: the demo's table over several world seeds, with mean and spread.

    .venv/bin/python benchmarks/demo_seeds.py --seeds 7 8 9 [--quick] -o runs/demo-seeds --results RESULTS.md
    .venv/bin/python benchmarks/demo_seeds.py --from-json experiments/results/demo_seeds.json --results RESULTS.md

Each seed runs `maskdpo demo --seed S` (the real command) into its own folder, so a rerun
reuses what is done. The figures of every seed and model (each eval summary.json's
figures, and the split of each score change against base) are written as data to --json
(default experiments/results/demo_seeds.json), and the tables are made from that data
alone: the paper's (# correct, # incorrect, % score as mean ± sd over seeds), the score of
every seed, and the per-answer counts that filler cannot game. --from-json remakes the
tables from a stored JSON without running anything, so every number can be checked.
With --results FILE the tables replace the part of FILE between the markers below
(appended when FILE has none), so the prose around them stays.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from maskdpo_cli.demo import MODELS, answer_rates, load_summaries  # noqa: E402
from maskdpo_cli.reporting import score_split  # noqa: E402

BEGIN, END = "<!-- demo_seeds: begin -->", "<!-- demo_seeds: end -->"


FIGURES = ("questions", "replications", "correct", "incorrect", "score", "score_sd", "labels", "fact_precision",
           "facts_correct", "facts_incorrect", "fact_score", "fact_score_sd", "atomic_fact_precision")


def run(seed: int, out: Path, quick: bool, world: list[str] = ()) -> dict[str, dict]:
    folder = out / f"seed{seed}"
    cmd = [sys.executable, "-m", "maskdpo_cli.cli", "demo", "--seed", str(seed), "-o", str(folder), *world]
    subprocess.run(cmd + (["--quick"] if quick else []), check=True)
    return load_summaries(folder)


def figures(summaries: dict[str, dict]) -> dict[str, dict]:
    """What the tables read of one seed's summaries, per model: the data behind every number."""
    out = {}
    for m in MODELS:
        s = summaries[m]
        out[m] = {key: s.get(key) for key in FIGURES}
        out[m]["per_answer"] = answer_rates(s)
        out[m]["split_vs_base"] = None if m == "base" else score_split(summaries["base"], s)
    return out


def _mean_sd(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]  # no score where a model stated nothing checkable
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def tables(results: dict[int, dict[str, dict]], command: str) -> str:
    seeds = sorted(results)
    lines = [f"Command: `{command}`", "",
             f"Mean ± sd over {len(seeds)} seeds (each seed: its own world, policy, pairs and training):", "",
             "| model | # correct | # incorrect | % score | # no fact | % fact precision |",
             "|---|---:|---:|---:|---:|---:|"]
    for m in MODELS:
        cells = [_mean_sd([results[s][m][key] for s in seeds]) for key in ("correct", "incorrect", "score")]
        cells.append(_mean_sd([results[s][m]["labels"]["nofact"] for s in seeds]))
        cells.append(_mean_sd([results[s][m]["fact_precision"] for s in seeds]))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Score of each seed (± sd over that seed's eval replications):", "",
              "| model | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---:|" * len(seeds)]
    for m in MODELS:
        lines.append(f"| {m} | " + " | ".join(f"{results[s][m]['score']:.2f} ± {results[s][m]['score_sd']:.2f}"
                                              for s in seeds) + " |")
    gaps = [results[s]["maskdpo"]["score"] - results[s]["dpo"]["score"] for s in seeds]
    above_base = sum(min(results[s]["maskdpo"]["score"], results[s]["dpo"]["score"]) > results[s]["base"]["score"]
                     for s in seeds)
    holds = sum(results[s]["maskdpo"]["score"] > results[s]["dpo"]["score"] > results[s]["base"]["score"]
                for s in seeds)
    precision = {s: [results[s][m]["fact_precision"] or 0.0 for m in MODELS] for s in seeds}
    precision_holds = sum(p[2] > p[1] > p[0] for p in precision.values())
    lines += ["", f"Mask-DPO minus DPO: {_mean_sd(gaps)} points; both above base on {above_base} of "
              f"{len(seeds)} seeds; the paper's ordering (Mask-DPO > DPO > base) on {holds} of {len(seeds)}; "
              f"the same ordering in fact precision on {precision_holds} of {len(seeds)}."]
    lines += ["", "Per answer (mean ± sd over seeds; facts as the oracle splits them):", "",
              "| model | no fact / answer | correct facts / answer | incorrect facts / answer | % atomic precision |",
              "|---|---:|---:|---:|---:|"]
    for m in MODELS:
        rates = [results[s][m].get("per_answer") or {} for s in seeds]
        cells = [_mean_sd([r.get(key) for r in rates]) for key in ("nofact", "facts_correct", "facts_incorrect")]
        cells.append(_mean_sd([results[s][m].get("atomic_fact_precision") for s in seeds]))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    for m in ("dpo", "maskdpo"):
        splits = [results[s][m].get("split_vs_base") for s in seeds]
        splits = [x for x in splits if x]
        if splits:
            lines += ["", f"{m} vs base, score change split (reporting.score_split; mean ± sd over seeds): "
                      f"{_mean_sd([x['total'] for x in splits])} points = {_mean_sd([x['filler'] for x in splits])} "
                      f"from the filler share + {_mean_sd([x['precision'] for x in splits])} from fact precision."]
    return "\n".join(lines)


def write_section(path: Path, body: str, name: str = "demo_seeds") -> None:
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    begin, end = BEGIN.replace("demo_seeds", name), END.replace("demo_seeds", name)
    section = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section + "\n"
    path.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--kinds", type=int, default=1, help="`demo --kinds` (default 1: the default world).")
    parser.add_argument("--questions-per-topic", type=int, default=1, help="`demo --questions-per-topic` (default 1).")
    parser.add_argument("-o", "--output", default=None, help="Runs folder (default runs/demo-seeds, "
                        "runs/demo-seeds-k<K>q<Q> for another world).")
    parser.add_argument("--results", type=Path, help="Markdown file whose demo_seeds section (demo_seeds-k<K>q<Q> "
                        "for another world) is (re)written.")
    parser.add_argument("--json", type=Path, default=None,
                        help="Where the figures of every seed and model go (the tables' data; default "
                             "experiments/results/demo_seeds.json, demo_seeds-k<K>q<Q>.json for another world).")
    parser.add_argument("--from-json", type=Path, help="Make the tables from this stored JSON; run nothing.")
    args = parser.parse_args()
    name = "demo_seeds" + ("" if (args.kinds, args.questions_per_topic) == (1, 1)
                           else f"-k{args.kinds}q{args.questions_per_topic}")
    world = [] if name == "demo_seeds" else ["--kinds", str(args.kinds),
                                             "--questions-per-topic", str(args.questions_per_topic)]
    args.json = args.json or Path("experiments/results") / f"{name}.json"
    args.output = args.output or "runs/" + name.replace("_", "-")
    if args.from_json:
        data = json.loads(args.from_json.read_text(encoding="utf-8"))
        results = {int(seed): models for seed, models in data["per_seed"].items()}
        command = data["command"]
    else:
        out = Path(args.output)
        results = {s: figures(run(s, out, args.quick, world)) for s in args.seeds}
        command = ("python benchmarks/demo_seeds.py --seeds " + " ".join(map(str, args.seeds))
                   + "".join(f" {w}" for w in world) + (" --quick" if args.quick else ""))
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": command, "seeds": args.seeds, "quick": args.quick,
                                         "per_seed": {str(s): results[s] for s in args.seeds}}, indent=1) + "\n",
                             encoding="utf-8")
    body = tables(results, command)
    print(body)
    if args.results:
        write_section(args.results, body, name)


if __name__ == "__main__":
    main()
