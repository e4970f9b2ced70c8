"""Training throughput and memory on the CPU: full Mask-DPO against LoRA (r 8, r 64) on SmolLM2-135M.

The embedded SmolLM2-135M-Instruct, the synthetic biography pairs of bench_train.py (with
their masks), batch 8, 1 epoch, constant lr, data in file order, no mid-run checkpoints
(bench_train.bench_recipe). Each run is its own `maskdpo train` process; peak RSS is that
process's maximum resident set (os.wait4). The configurations alternate run by run, so
that load from other processes hits each alike; the table gives medians.

    python benchmarks/bench_lora.py                      # 32 pairs, 3 runs each
    python benchmarks/bench_lora.py --pairs 16 --runs 1  # a short run

Prints a Markdown table and writes DIR/results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import REPO, bench_recipe, make_pairs, run_measured  # noqa: E402

CONFIGS = {"full": [], "LoRA r 8": ["--lora", "8"], "LoRA r 64": ["--lora", "64"]}


def run_one(args: argparse.Namespace, data: Path, model: Path, recipe: Path, work: Path, extra: list[str]) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    cmd = [sys.executable, "-m", "maskdpo_cli.cli", "train", str(data), "--model", str(model), "--work-dir", str(work),
           "--recipe", str(recipe), "--batch-size", str(args.batch), "--epochs", "1", "--lr", str(args.lr),
           "--max-length", str(args.max_length), "--gpus", "0", "--seed", "0", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
    code, wall, rss = run_measured(cmd, env, work.with_suffix(".log"))
    if code:
        raise SystemExit(f"maskdpo train failed ({code}); see {work.with_suffix('.log')}")
    summary = json.loads((work / "train_summary.json").read_text())
    first = json.loads((work / "train_log.jsonl").read_text().splitlines()[0])
    seconds = summary["train_seconds"] + summary["reference_seconds"]
    return {"pairs_per_s": args.pairs / seconds, "loop_pairs_per_s": summary["train_pairs_per_s"],
            "reference_seconds": summary["reference_seconds"], "wall_s": wall, "peak_rss_gb": rss,
            "first_loss": first["loss"], "last_loss": summary["last"]["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from maskdpo_cli.models import resolve_model

    out = args.out or Path(tempfile.mkdtemp(prefix="bench-lora-"))
    out.mkdir(parents=True, exist_ok=True)
    data = out / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in make_pairs(args.pairs)))
    model, recipe = resolve_model("smollm2-135m-instruct"), bench_recipe(out, args.batch)
    results: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for run in range(args.runs):
        for name, extra in CONFIGS.items():  # alternate: full, r 8, r 64, full, ...
            result = run_one(args, data, model, recipe, out / f"{name.replace(' ', '_')}-{run}", extra)
            results[name].append(result)
            print(f"run {run + 1} {name}: {result['pairs_per_s']:.3f} pairs/s, {result['peak_rss_gb']:.2f} GB, "
                  f"first loss {result['first_loss']:.6f}", file=sys.stderr, flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    print(f"| SmolLM2-135M, {args.pairs} pairs, batch {args.batch}, {args.runs} run(s), medians "
          "| pairs/s (with the reference pass) | pairs/s (training loop) | peak RSS | first-step loss |")
    print("|---|---|---|---|---|")
    for name in CONFIGS:
        ln2 = all(abs(r["first_loss"] - math.log(2)) < 1e-5 for r in results[name])
        print(f"| {name} | {median(name, 'pairs_per_s'):.3f} | {median(name, 'loop_pairs_per_s'):.3f} "
              f"| {median(name, 'peak_rss_gb'):.2f} GB | {'ln 2' if ln2 else 'NOT ln 2'} |")
    print(f"results: {out / 'results.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
