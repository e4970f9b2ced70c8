"""RESULTS.md: the demo's table over several world seeds, with mean and spread.

    .venv/bin/python benchmarks/demo_seeds.py --seeds 7 8 9 [--quick] -o runs/demo-seeds

Each seed runs `maskdpo demo --seed S` (the real command) into its own folder, so a rerun
reuses what is done; the per-seed summaries are then combined into RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

MODELS = ("base", "dpo", "maskdpo")


def run(seed: int, out: Path, quick: bool) -> dict[str, dict]:
    folder = out / f"seed{seed}"
    cmd = [sys.executable, "-m", "maskdpo_cli.cli", "demo", "--seed", str(seed), "-o", str(folder)]
    subprocess.run(cmd + (["--quick"] if quick else []), check=True)
    return {m: json.loads((folder / m / "summary.json").read_text()) for m in MODELS}


def table(results: dict[int, dict[str, dict]]) -> str:
    seeds = sorted(results)
    lines = ["| model | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | sd |",
             "|---|" + "---:|" * (len(seeds) + 2)]
    for m in MODELS:
        scores = [results[s][m]["score"] for s in seeds]
        sd = statistics.stdev(scores) if len(scores) > 1 else 0.0
        lines.append(f"| {m} | " + " | ".join(f"{x:.2f}" for x in scores)
                     + f" | {statistics.mean(scores):.2f} | {sd:.2f} |")
    wins = sum(results[s]["maskdpo"]["score"] > results[s]["dpo"]["score"] > results[s]["base"]["score"]
               for s in seeds)
    lines.append("")
    lines.append(f"Paper ordering (Mask-DPO > DPO > base) holds on {wins} of {len(seeds)} seeds.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-o", "--output", default="runs/demo-seeds")
    args = parser.parse_args()
    out = Path(args.output)
    results = {s: run(s, out, args.quick) for s in args.seeds}
    print(table(results))


if __name__ == "__main__":
    main()
