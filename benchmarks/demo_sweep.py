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

WORLD_KEYS = ("questions_per_topic", "max_fillers")
CORPUS_KEYS = ("max_fillers",)  # world settings the pretrained policy depends on


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


def policy_for(seed: int, out: Path, quick: bool, world: dict[str, int]) -> Path:
    """The pretrained policy of a seed and corpus, trained once and shared by every variant."""
    corpus = {k: v for k, v in world.items() if k in CORPUS_KEYS}
    shared = out / f"seed{seed}" / ("_world" + "".join(f"_{k}{v}" for k, v in sorted(corpus.items())))
    if not (shared / "policy" / "config.json").is_file():
        make_world(seed, str(shared), quick=quick, **corpus)
        pretrain(str(shared), str(shared / "policy"), seed=seed, quick=quick)
    return shared / "policy"


def run_variant(seed: int, variant: str, out: Path, quick: bool) -> dict[str, dict]:
    name, demo, world = parse_variant(variant)
    folder = out / f"seed{seed}" / name
    if not (folder / "world" / "world.json").is_file():
        make_world(seed, str(folder / "world"), quick=quick, **world)
    if not (folder / "world" / "policy" / "config.json").is_file():
        shutil.copytree(policy_for(seed, out, quick, world), folder / "world" / "policy", dirs_exist_ok=True)
    settings = dataclasses.replace(DemoSettings.for_mode(quick, seed), **demo)
    run_demo(str(folder), settings)
    return load_summaries(folder)


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def report(results: dict[str, dict[int, dict[str, dict]]]) -> str:
    """Score (mean ± sd over seeds), Mask-DPO's lead over DPO, the ordering count, and the
    fact precision (ok among checkable sentences) that tells real gains from filler."""
    lines = ["| variant | base | dpo | maskdpo | maskdpo - dpo | ordering holds | fact precision base / dpo / maskdpo |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, by_seed in results.items():
        runs = list(by_seed.values())
        cells = [_mean_sd([r[m]["score"] for r in runs]) for m in MODELS]
        gaps = [r["maskdpo"]["score"] - r["dpo"]["score"] for r in runs]
        holds = sum(r["maskdpo"]["score"] > r["dpo"]["score"] > r["base"]["score"] for r in runs)
        precision = " / ".join(f"{statistics.mean(r[m]['fact_precision'] for r in runs):.1f}" for m in MODELS)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_mean_sd(gaps)} | {holds}/{len(runs)} | {precision} |")
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
