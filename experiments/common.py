"""What the generalization studies (Tables 4, 5 and 6) share, read top to bottom.

Every step is a real `maskdpo` command run as a subprocess, exactly as a user would type
it; the scripts only choose files and flags, and collect each eval's summary.json.

Per world seed, in ROOT/seed<S>/:
    world make, world pretrain          -> world/, world/policy        (the base model)
    sample, annotate (oracle), pair     -> samples, annotated, pairs   (all training pairs)
    train Mask-DPO on all pairs         -> runs/maskdpo-all/hf         (Table 4's full point, Table 6)
    eval the base on the test topics    -> eval-base/                  (the reference row)

Reruns skip what is finished: a step whose output exists is not run again, and the long
commands (sample, annotate, train, eval) resume their own partial outputs.

Tables hold mean ± sd over seeds of the paper's columns (# correct, # incorrect, % score),
the two that show the filler effect (# no fact, % fact precision), and the fact-level
columns of summary.json when the annotator wrote them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MASKDPO = [sys.executable, "-m", "maskdpo_cli.cli"]


@dataclass(frozen=True)
class Settings:
    """Sizes of one study. The full ones follow the shipped demo (RESULTS.md: K=8, lr 1e-4,
    2 epochs, 24 questions per topic) in a world of 12 topics instead of 16 (9 train, 3 test:
    every study splits the training topics three ways) and with 2 eval replications instead
    of 5, so that three seeds of all three tables fit in about an hour on 2 idle cores.
    Quick is sized for the test suite, not for conclusions."""

    quick: bool = False
    topics: int | None = 12
    samples_per_question: int = 8
    max_new_tokens: int = 96
    pretrain_steps: int | None = None   # None: the world's default (2 epochs of its corpus)
    epochs: int = 2
    lr: float = 1e-4
    beta: float = 0.1
    batch_size: int = 8
    replications: int = 2
    eval_temperature: float = 0.8
    best_of_questions: int | None = 24  # Table 6 scores this many test questions (spread over topics)
    kinds: int = 1                      # `world make --kinds`: 1 is the default world (people only)
    questions_per_topic: int = 1        # `world make --questions-per-topic`: questions about each asked entity

    @classmethod
    def for_mode(cls, quick: bool, kinds: int = 1, questions_per_topic: int = 1) -> Settings:
        world = {"kinds": kinds, "questions_per_topic": questions_per_topic}
        if quick:
            # the quick world's own pretraining (300 steps): fewer leaves a policy with no correct sentence
            return cls(quick=True, topics=None, samples_per_question=4, max_new_tokens=64, epochs=1,
                       replications=1, best_of_questions=None, **world)
        return cls(**world)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        return cls.for_mode(args.quick, args.kinds, args.questions_per_topic)

    def seed_dir(self, root: Path, seed: int) -> Path:
        """ROOT/seed<S> for the default world; another world's runs keep apart (ROOT/seed<S>-k<K>q<Q>)."""
        if (self.kinds, self.questions_per_topic) == (1, 1):
            return root / f"seed{seed}"
        return root / f"seed{seed}-k{self.kinds}q{self.questions_per_topic}"

    def world_flags(self) -> list[str]:
        return ["--kinds", str(self.kinds), "--questions-per-topic", str(self.questions_per_topic)]


def parse_args(doc: str, default_out: str, seeds: list[int] = (7, 8, 9), extra: Any = None,
               kinds: int = 1, questions_per_topic: int = 1) -> argparse.Namespace:
    """The options every study script takes, with the script's default world; `extra(parser)`
    adds a script's own."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if extra:
        extra(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(seeds),
                        help=f"World seeds (default {' '.join(map(str, seeds))}).")
    parser.add_argument("--quick", action="store_true", help="Tiny sizes, for the test suite: not for conclusions.")
    parser.add_argument("--kinds", type=int, default=kinds,
                        help=f"World kinds of entity (`world make --kinds`; default {kinds}).")
    parser.add_argument("--questions-per-topic", type=int, default=questions_per_topic,
                        help="Questions about each asked entity (`world make --questions-per-topic`; "
                             f"default {questions_per_topic}).")
    parser.add_argument("-o", "--output", default=default_out, help="Runs folder; rerun to resume.")
    parser.add_argument("--tables", default="experiments/results",
                        help="Where the table (Markdown, JSON) and its figure (PNG) go.")
    return parser.parse_args()


# ---------------------------------------------------------------- running commands


def maskdpo(*args: str | Path) -> dict[str, float]:
    """Run one maskdpo command; its progress goes to our stderr, a failure stops the study.
    Returns its wall seconds and the peak resident memory of its process (GiB; of the largest
    process for a multi-process run, whose workers are its children)."""
    argv = [str(a) for a in args]
    print(f"$ maskdpo {shlex.join(argv)}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    proc = subprocess.Popen([*MASKDPO, *argv])
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:  # the command said why on stderr; rerunning the study resumes from here
        sys.exit(f"experiments: `maskdpo {argv[0]}` failed (exit {code}); see its message above")
    return {"wall_s": round(time.perf_counter() - started, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3)}


def done(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


@dataclass(frozen=True)
class SeedRun:
    """The shared products of one world seed."""

    seed: int
    dir: Path
    world: Path
    policy: Path
    pairs: Path
    test: Path
    maskdpo_all: Path   # Mask-DPO trained on all pairs (its hf/ folder)

    @property
    def annotator(self) -> str:
        return f"world:{self.world}"


def prepare(root: Path, seed: int, s: Settings, shared_runs: bool = True) -> SeedRun:
    """World, policy, training pairs, Mask-DPO on all pairs and the base eval of one seed
    (the last two only with shared_runs: a study that trains and scores its own arms skips them)."""
    d = s.seed_dir(root, seed)
    world, policy = d / "world", d / "world" / "policy"
    if not done(world / "world.json"):
        size = ["--topics", s.topics] if s.topics else []
        maskdpo("world", "make", "--seed", seed, "-o", world, *size, *(["--quick"] if s.quick else []),
                *s.world_flags())
    if not done(policy / "config.json"):
        steps = ["--steps", s.pretrain_steps] if s.pretrain_steps else []
        maskdpo("world", "pretrain", world, "-o", policy, "--seed", seed, *steps, *(["--quick"] if s.quick else []))
    sample_and_annotate(world, world / "train_questions.jsonl", policy, d / "samples.jsonl", d / "annotated.jsonl",
                        s, seed)
    if not done(d / "pairs.jsonl"):
        maskdpo("pair", d / "annotated.jsonl", "-o", d / "pairs.jsonl")
    if not done(d / "pairs.jsonl"):
        sys.exit(f"experiments: no training pair in {d / 'pairs.jsonl'}: the policy never answered a question "
                 "with a correct sentence (pretrain it longer)")
    run = SeedRun(seed, d, world, policy, d / "pairs.jsonl", world / "test_questions.jsonl",
                  d / "runs" / "maskdpo-all" / "hf")
    if shared_runs:
        train(run, run.pairs, d / "runs" / "maskdpo-all", s)
        evaluate(run, {"base": policy}, d / "eval-base", s)
    return run


def sample_and_annotate(world: Path, questions: Path, model: Path, samples: Path, annotated: Path, s: Settings,
                        seed: int) -> Path:
    """The paper's sampling (K per question, T 0.8, top-k 40) from `model`, labelled by the world's
    oracle; both commands resume their partial outputs. Returns `annotated`."""
    maskdpo("sample", questions, "--model", model, "-n", s.samples_per_question, "--temperature", "0.8",
            "--top-k", "40", "--max-new-tokens", s.max_new_tokens, "--seed", seed, "-o", samples)
    maskdpo("annotate", samples, "--annotator", f"world:{world}", "-o", annotated)
    return annotated


def train(run: SeedRun, pairs: Path, work: Path, s: Settings, *, mask: bool = True, lr: float | None = None,
          extra: list[str] = ()) -> Path:
    """Mask-DPO (or DPO with mask=False) from the seed's policy, at the study's lr unless `lr` is
    given, `extra` flags added (e.g. --lora 8); returns the trained hf/ folder. The wall time and
    peak memory of the run go to WORK/measured.json (a resumed run's cover its last invocation)."""
    if not done(work / "hf" / "config.json"):
        measured = maskdpo("train", pairs, "--model", run.policy, "--work-dir", work, "--recipe", "tiny_cpu_maskdpo",
                           "--beta", s.beta, "--epochs", s.epochs, "--lr", lr or s.lr, "--batch-size", s.batch_size,
                           "--gpus", "0", "--seed", run.seed, *([] if mask else ["--no-mask"]), *extra)
        (work / "measured.json").write_text(json.dumps(measured) + "\n", encoding="utf-8")
    return work / "hf"


def evaluate(run: SeedRun, models: dict[str, Path], out: Path, s: Settings, best_of: list[int] | None = None,
             questions: Path | None = None, extra: list[str] = ()) -> dict[str, dict[str, Any]]:
    """`maskdpo eval` of the models on the seed's test topics (or `questions`), `extra` flags added
    (e.g. --probe); their summary.json by name."""
    if not all(done(out / name / "summary.json") for name in models):
        flags = (["--best-of", ",".join(map(str, best_of))] if best_of
                 else ["--replications", s.replications])
        maskdpo("eval", questions or run.test,
                *[a for name, path in models.items() for a in ("--model", f"{name}={path}")],
                "--annotator", run.annotator, *flags, "--temperature", s.eval_temperature, "--top-k", "40",
                "--max-new-tokens", s.max_new_tokens, "--seed", run.seed, *extra, "-o", out)
    return {name: json.loads((out / name / "summary.json").read_text(encoding="utf-8")) for name in models}


def base_summary(run: SeedRun) -> dict[str, Any]:
    return json.loads((run.dir / "eval-base" / "base" / "summary.json").read_text(encoding="utf-8"))


def run_seeds(args: argparse.Namespace, s: Settings, run_seed: Any, *, shared_runs: bool = False
              ) -> tuple[dict[str, dict[int, Any]], dict[int, Any]]:
    """Prepare every seed of `args` and call run_seed(run, s) -> ({arm: result}, info) on it;
    returns the results by arm and seed ({arm: {seed: result}}) and the infos by seed."""
    by_arm: dict[str, dict[int, Any]] = {}
    info: dict[int, Any] = {}
    for seed in args.seeds:
        results, info[seed] = run_seed(prepare(Path(args.output), seed, s, shared_runs=shared_runs), s)
        for arm, result in results.items():
            by_arm.setdefault(arm, {})[seed] = result
    return by_arm, info


# ---------------------------------------------------------------- subsets of a JSONL file


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_subset(path: Path, records: list[dict[str, Any]]) -> Path:
    """Write a training subset once; an existing one is kept so a rerun trains on the same pairs."""
    if not done(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        tmp.replace(path)
    return path


# ---------------------------------------------------------------- tables


# (column, how to read it from a summary.json); the fact-level ones appear when present.
COLUMNS: list[tuple[str, Any]] = [
    ("# correct", lambda s: s.get("correct")),
    ("# incorrect", lambda s: s.get("incorrect")),
    ("% score", lambda s: s.get("score")),
    ("# no fact", lambda s: (s.get("labels") or {}).get("nofact")),
    ("% fact precision", lambda s: s.get("fact_precision")),
]
FACT_COLUMNS: list[tuple[str, Any]] = [
    ("# facts correct", lambda s: s.get("facts_correct")),
    ("# facts incorrect", lambda s: s.get("facts_incorrect")),
    ("% fact score", lambda s: s.get("fact_score")),
]


# metric -> (column title, how to read it from summary.json)
ANSWER_METRICS: dict[str, tuple[str, Any]] = {
    "score": ("% score", lambda s: s.get("score")),
    "filler": ("no fact / answer", lambda s: s["per_answer"]["nofact"]),
    "correct_facts": ("correct facts / answer", lambda s: s["per_answer"].get("facts_correct")),
    "incorrect_facts": ("incorrect facts / answer", lambda s: s["per_answer"].get("facts_incorrect")),
    "fact_precision": ("% fact precision", lambda s: s.get("fact_precision")),
    "atomic_precision": ("% atomic precision", lambda s: s.get("atomic_fact_precision")),
    "probe": ("% probe", lambda s: None if s.get("probe_accuracy") is None else 100 * s["probe_accuracy"]),
}


def metric_values(summaries: dict[str, dict[int, dict[str, Any]]], metrics: dict[str, tuple[str, Any]]
                  ) -> dict[str, dict[int, dict[str, float | None]]]:
    """{arm: {seed: summary.json}} -> {arm: {seed: {metric: value}}}, read by each metric's getter."""
    return {arm: {seed: {m: get(summary) for m, (_, get) in metrics.items()} for seed, summary in by_seed.items()}
            for arm, by_seed in summaries.items()}


def means(values: dict[str, dict[int, dict[str, float | None]]], arms: list[str], metrics: Any, seeds: list[int]
          ) -> dict[str, dict[str, tuple[float, float] | None]]:
    """{arm: {metric: (mean, sd) over seeds}}."""
    return {arm: {m: mean_sd([values[arm][seed][m] for seed in seeds]) for m in metrics} for arm in arms}


def t_interval(diffs: list[float]) -> dict[str, float | None]:
    """Mean of paired differences with its 95% t-interval over seeds (None bounds below 2 seeds)."""
    from scipy import stats

    n, mean = len(diffs), statistics.mean(diffs)
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "n": n}
    half = float(stats.t.ppf(0.975, n - 1)) * statistics.stdev(diffs) / math.sqrt(n)  # plain floats: JSON
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def paired(values: dict[str, dict[int, dict[str, float | None]]], arm: str, against: str, metric: str,
           seeds: list[int]) -> dict[str, float | None] | None:
    """Arm minus `against`, seed by seed, with its 95% t-interval (None when nothing to compare)."""
    diffs = [values[arm][s][metric] - values[against][s][metric] for s in seeds
             if values[arm][s][metric] is not None and values[against][s][metric] is not None]
    return t_interval(diffs) if diffs else None


def fmt_interval(stat: dict[str, float | None] | None) -> str:
    if stat is None:
        return "-"
    if stat["low"] is None:
        return f"{stat['mean']:+.2f}"
    return f"{stat['mean']:+.2f} [{stat['low']:+.2f}, {stat['high']:+.2f}]"


def detected(stat: dict[str, float | None] | None) -> bool:
    """Whether a paired difference's 95% interval excludes 0 (no interval, e.g. one seed, detects nothing)."""
    return stat is not None and stat["low"] is not None and (stat["low"] > 0 or stat["high"] < 0)


def fmt_paired(stat: dict[str, float | None] | None) -> str:
    """A paired difference with its interval, and "not detected (underpowered)" unless an interval
    exists (2 seeds or more) and excludes 0."""
    if stat is None:
        return "-"
    return fmt_interval(stat) + ("" if detected(stat) else " not detected (underpowered)")


def mean_sd(values: list[float | None]) -> tuple[float, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt_value(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def fmt(stat: tuple[float, float] | None) -> str:
    return "-" if stat is None else f"{stat[0]:.2f} ± {stat[1]:.2f}"


@dataclass
class Row:
    """One table row: its labels (e.g. axis, pairs) and one summary per seed."""

    labels: dict[str, Any]
    summaries: list[dict[str, Any]]

    def columns(self, columns: list[tuple[str, Any]]) -> dict[str, tuple[float, float] | None]:
        return {name: mean_sd([get(s) for s in self.summaries]) for name, get in columns}


def table_columns(rows: list[Row]) -> list[tuple[str, Any]]:
    has_facts = any(s.get("fact_score") is not None for row in rows for s in row.summaries)
    return COLUMNS + (FACT_COLUMNS if has_facts else [])


def row_table(title: str, rows: list[Row], *, seeds: list[int], settings: Settings, started: float,
              notes: list[str] = (), extra_columns: list[tuple[str, Any]] = ()) -> tuple[list[str], dict[str, Any]]:
    """A table of mean ± sd rows: its Markdown lines and its data (save both with save_results)."""
    columns = table_columns(rows) + list(extra_columns)
    label_keys = list(rows[0].labels) if rows else []
    elapsed = time.time() - started
    command = command_line()
    md = header(title, command, seeds, settings, elapsed) + [""] + markdown_table(
        label_keys + [c for c, _ in columns],
        [[str(v) for v in row.labels.values()] + [fmt(st) for st in row.columns(columns).values()] for row in rows],
        labels=len(label_keys))
    md += [""] + list(notes)
    data = {"title": title, "command": command, "seeds": seeds, "settings": asdict(settings),
            "elapsed_s": round(elapsed, 1), "columns": [c for c, _ in columns], "notes": list(notes),
            "rows": [{**row.labels,
                      **{c: (None if st is None else {"mean": st[0], "sd": st[1]})
                         for c, st in row.columns(columns).items()},
                      "per_seed": [{c: get(s) for c, get in columns} for s in row.summaries]}
                     for row in rows]}
    return md, data


QUICK_NOTE = " - QUICK MODE: a smoke run, too small for conclusions"
PAIRED_NOTE = ("{what} over seeds: mean [95% t-interval]; \"not detected (underpowered)\" where the interval "
               "includes 0 or one seed gives none.")


def header(title: str, command: str, seeds: list[int], s: Settings, elapsed: float, details: str = "") -> list[str]:
    """A study table's opening lines: title, command, seeds, world and time, then `details`."""
    world = ("" if (s.kinds, s.questions_per_topic) == (1, 1)
             else f"World: --kinds {s.kinds} --questions-per-topic {s.questions_per_topic}. ")
    return [f"### {title}", "", f"Command: `{command}`", "",
            f"Seeds: {', '.join(map(str, seeds))} (mean ± sd over {len(seeds)} seeds; each seed its own world, "
            f"policy and pairs){QUICK_NOTE if s.quick else ''}.",
            f"{world}This invocation took {elapsed / 60:.1f} min (a rerun skips finished steps)."
            + (f" {details}" if details else "")]


def markdown_table(head: list[str], rows: list[list[str]], labels: int = 1) -> list[str]:
    """A Markdown table whose first `labels` columns are left-aligned labels and the rest numbers."""
    return ["| " + " | ".join(head) + " |", "|" + "---|" * labels + "---:|" * (len(head) - labels)] + \
        ["| " + " | ".join(row) + " |" for row in rows]


def paired_table(first: str, paired: dict[str, dict[str, dict[str, float | None] | None]],
                 metrics: dict[str, str], what: str = "Paired differences") -> list[str]:
    """PAIRED_NOTE and a table of paired differences, one row per label, one column per metric
    (metrics: {metric: title}), each with its interval and "not detected (underpowered)"."""
    return ["", PAIRED_NOTE.format(what=what), ""] + markdown_table(
        [first, *metrics.values()], [[label] + [fmt_paired(stats[m]) for m in metrics] for label, stats in paired.items()])


def mean_sd_record(means: dict[str, dict[str, tuple[float, float] | None]]) -> dict[str, dict[str, Any]]:
    """{row: {column: (mean, sd) or None}} as JSON objects."""
    return {row: {c: (None if st is None else {"mean": st[0], "sd": st[1]}) for c, st in cols.items()}
            for row, cols in means.items()}


def save_results(tables: Path, name: str, md: list[str], data: dict[str, Any]) -> None:
    """A study's table (NAME.md, also printed) and its data (NAME.json) under tables/."""
    text = "\n".join(md).rstrip() + "\n"
    print(text)
    tables.mkdir(parents=True, exist_ok=True)
    (tables / f"{name}.md").write_text(text, encoding="utf-8")
    (tables / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def bar_paired(ax: Any, labels: list[str], stats: list[dict[str, float | None] | None], rotation: int = 30) -> None:
    """Paired differences as bars with their 95% intervals (none drawn where a difference has none)."""
    means = [0.0 if st is None else st["mean"] for st in stats]
    errors = [[0.0 if st is None or st["low"] is None else st["mean"] - st["low"] for st in stats],
              [0.0 if st is None or st["high"] is None else st["high"] - st["mean"] for st in stats]]
    ax.bar(range(len(labels)), means, yerr=errors, capsize=4, color=[f"C{i}" for i in range(len(labels))])
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(labels)), labels, rotation=rotation, ha="right", fontsize=8)


def bar_score_differences(ax: Any, paired: dict[str, dict[str, dict[str, float | None] | None]]) -> None:
    """The panel of paired % score differences, one bar per label of `paired`."""
    labels = list(paired)
    bar_paired(ax, labels, [paired[label]["score"] for label in labels])
    ax.set_ylabel("% score difference (95% t-interval)")
    ax.set_title("paired differences over seeds")


def figure(ncols: int = 1, width: float = 6.4, height: float = 4.0) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height), squeeze=False)


def save_figure(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def command_line() -> str:
    return "python " + shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
