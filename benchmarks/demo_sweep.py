"""Why does (or doesn't) Mask-DPO beat DPO on the embedded world? The demo under other settings.

    .venv/bin/python benchmarks/demo_sweep.py --seeds 7 8 9 -o runs/sweep \\
        --variant default --variant "lr2e-4:lr=2e-4" --variant "k16:samples_per_question=16"

Each variant is NAME[:key=value,...] over the fields of `DemoSettings` (epochs, lr, beta,
samples_per_question, max_new_tokens, replications, eval_temperature, batch_size) plus the
world's `questions_per_topic`. Every (seed, variant) runs the real `run_demo` in its own
folder; the pretrained policy depends only on the seed, so it is trained once per seed and
copied into each variant's world. Reruns reuse finished folders. Prints, per variant, the
mean and sd over seeds of each model's score and on how many seeds the paper's ordering
(Mask-DPO > DPO > base) holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from maskdpo_cli.demo import MODELS, DemoSettings, load_summaries, run_demo  # noqa: E402
from maskdpo_cli.world import make_world, pretrain  # noqa: E402

WORLD_KEYS = ("questions_per_topic",)


def parse_variant(text: str) -> tuple[str, dict[str, float | int], dict[str, int]]:
    name, _, assignments = text.partition(":")
    fields = {f.name: f.type for f in dataclasses.fields(DemoSettings)}
    demo, world = {}, {}
    for item in filter(None, assignments.split(",")):
        key, _, value = item.partition("=")
        if key in WORLD_KEYS:
            world[key] = int(value)
        elif key in fields and key not in ("quick", "seed"):
            demo[key] = float(value) if fields[key] in (float, "float") else int(value)
        else:
            raise SystemExit(f"--variant {text}: unknown setting {key!r}")
    return name, demo, world


def policy_for(seed: int, out: Path, quick: bool) -> Path:
    """The seed's pretrained policy, trained once and shared by every variant."""
    shared = out / f"seed{seed}" / "_world"
    if not (shared / "policy" / "config.json").is_file():
        make_world(seed, str(shared), quick=quick)
        pretrain(str(shared), str(shared / "policy"), seed=seed, quick=quick)
    return shared / "policy"


def run_variant(seed: int, variant: str, out: Path, quick: bool) -> dict[str, float]:
    name, demo, world = parse_variant(variant)
    folder = out / f"seed{seed}" / name
    if not (folder / "world" / "world.json").is_file():
        make_world(seed, str(folder / "world"), quick=quick, **world)
    if not (folder / "world" / "policy" / "config.json").is_file():
        shutil.copytree(policy_for(seed, out, quick), folder / "world" / "policy", dirs_exist_ok=True)
    settings = dataclasses.replace(DemoSettings.for_mode(quick, seed), **demo)
    run_demo(str(folder), settings)
    return {m: s["score"] for m, s in load_summaries(folder).items()}


def report(results: dict[str, dict[int, dict[str, float]]]) -> str:
    lines = ["| variant | base | dpo | maskdpo | maskdpo - dpo | ordering holds |", "|---|---:|---:|---:|---:|---:|"]
    for name, by_seed in results.items():
        cells = []
        for m in MODELS:
            scores = [by_seed[s][m] for s in by_seed]
            sd = statistics.stdev(scores) if len(scores) > 1 else 0.0
            cells.append(f"{statistics.mean(scores):.2f} ± {sd:.2f}")
        gaps = [by_seed[s]["maskdpo"] - by_seed[s]["dpo"] for s in by_seed]
        gap_sd = statistics.stdev(gaps) if len(gaps) > 1 else 0.0
        holds = sum(r["maskdpo"] > r["dpo"] > r["base"] for r in by_seed.values())
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {statistics.mean(gaps):+.2f} ± {gap_sd:.2f} | {holds}/{len(by_seed)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    parser.add_argument("--variant", action="append", default=None, help="NAME[:key=value,...]")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-o", "--output", default="runs/demo-sweep")
    args = parser.parse_args()
    out = Path(args.output)
    variants = args.variant or ["default"]
    results = {parse_variant(v)[0]: {s: run_variant(s, v, out, args.quick) for s in args.seeds} for v in variants}
    print(report(results))


if __name__ == "__main__":
    main()
