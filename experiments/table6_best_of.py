"""Table 6 of the paper in miniature: does Mask-DPO stay ahead of the base under best-of-N?

    .venv/bin/python experiments/table6_best_of.py [--seeds 7 8 9] [--quick] [-o runs/experiments]

For each world seed, `maskdpo eval --best-of 1,4,16,64` scores the base policy and
Mask-DPO trained on all pairs (both from experiments/common.py): every test question gets
64 sampled answers (temperature 0.8), and for each N the most factual of the first N, as
judged by the annotator, is kept. The full study scores 24 test questions spread evenly over
the test topics (64 answers each), not all of them. Writes table6.md, table6.json and table6.png under --tables.

The full columns (# correct, # no fact...) describe N=1; the best-of columns are % score.
A second table says what the kept answers hold, at the smallest and the largest N: sentences
judged correct (`ok`) and filler (`nofact`) per kept answer, so that a best-of gain made of
filler shows.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SIZES = {False: [1, 4, 16, 64], True: [1, 4]}


def main() -> None:
    args = common.parse_args(__doc__, "runs/experiments")
    settings = common.Settings.from_args(args)
    sizes = SIZES[args.quick]
    started = time.time()
    root, tables = Path(args.output), Path(args.tables)
    results: dict[str, list[dict]] = {"base": [], "maskdpo": []}
    kept: dict[str, list[dict]] = {"base": [], "maskdpo": []}
    for seed in args.seeds:
        run = common.prepare(root, seed, settings)
        questions = run.test
        if settings.best_of_questions:  # 64 answers per question: a spread subset keeps this affordable
            test = common.read_jsonl(run.test)
            k = min(settings.best_of_questions, len(test))
            questions = common.write_subset(run.dir / "table6" / "questions.jsonl",
                                            [test[int(i * len(test) / k)] for i in range(k)])
        summaries = common.evaluate(run, {"base": run.policy, "maskdpo": run.maskdpo_all},
                                    run.dir / "table6" / "eval", settings, best_of=sizes, questions=questions)
        for name, summary in summaries.items():
            results[name].append(summary)
            kept[name].append(kept_answers(run.dir / "table6" / "eval" / name / "annotated.r0.jsonl", sizes))

    best_of = [(f"best-of-{n}", lambda s, n=n: (s.get("best_of") or {}).get(str(n))) for n in sizes]
    rows = [common.Row({"model": name}, summaries) for name, summaries in results.items()]
    gaps = {n: common.t_interval([m["best_of"][str(n)] - b["best_of"][str(n)]
                                  for b, m in zip(results["base"], results["maskdpo"])]) for n in sizes}
    notes = ["Mask-DPO minus base, % score, paired over seeds: mean [95% t-interval]; "
             + ", ".join(f"N={n}: {common.fmt_paired(g)}" for n, g in gaps.items()) + "."]
    md, data = common.row_table("Table 6: best-of-N, base vs Mask-DPO", rows, seeds=args.seeds, settings=settings,
                                started=started, notes=notes, extra_columns=best_of)
    data["paired"] = {f"best-of-{n}": g for n, g in gaps.items()}
    md += kept_table(kept, [min(sizes), max(sizes)])
    data["kept"] = {name: dict(zip(map(str, args.seeds), per_seed)) for name, per_seed in kept.items()}
    common.save_results(tables, "table6", md, data)
    plot(results, sizes, tables / "table6.png")


def kept_answers(annotated: Path, sizes: list[int]) -> dict[str, dict[str, float]]:
    """N -> per kept answer (the best of the first N, as eval keeps it): sentences judged ok and nofact."""
    from maskdpo_cli.evaluation import evaluated, tally

    records = common.read_jsonl(annotated)
    out = {}
    for n in sizes:
        labels = tally([evaluated(record, n) for record in records])["labels"]
        out[str(n)] = {label: labels[label] / len(records) for label in ("ok", "nofact")}
    return out


def kept_table(kept: dict[str, list[dict]], sizes: list[int]) -> list[str]:
    head = ["model"] + [f"{what}, N={n}" for n in sizes for what in ("correct sentences", "filler")]
    rows = [[name] + [common.fmt(common.mean_sd([seed[str(n)][label] for seed in per_seed]))
                      for n in sizes for label in ("ok", "nofact")]
            for name, per_seed in kept.items()]
    return ["", "Per kept answer (mean ± sd over seeds): sentences judged correct (ok) and filler (nofact).", ""] \
        + common.markdown_table(head, rows)


def plot(results: dict[str, list[dict]], sizes: list[int], path: Path) -> None:
    fig, axes = common.figure()
    ax = axes[0][0]
    for name, summaries in results.items():
        stats = [common.mean_sd([s["best_of"][str(n)] for s in summaries]) for n in sizes]
        ax.errorbar(sizes, [st[0] for st in stats], yerr=[st[1] for st in stats], marker="o", capsize=4,
                    label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.set_xlabel("N (answers sampled per question)")
    ax.set_ylabel("factuality score of the best answer (%)")
    ax.set_title("Table 6: best-of-N")
    ax.legend()
    common.save_figure(fig, path)


if __name__ == "__main__":
    main()
