"""`maskdpo report` and the results tables: eval summaries and training logs as a page.

Inputs are `maskdpo eval -o DIR` folders (one summary.json per model; a single model
folder works too) and `maskdpo train --work-dir W` folders (W/train_log.jsonl, one record
per step with loss, reward_acc and reward_margin). The output folder gets report.html
(self-contained: the plots are embedded as data URIs), report.md, and the PNG plots the
markdown links to. matplotlib runs headless (Agg) and is imported only here.

Training curves are noisy at one point per step: each is drawn smoothed (a trailing moving
average), with the raw curve faint behind it. examples.html, linked from the report, shows
the same test questions answered by every model side by side, each sentence coloured by
its label, read from the first replication's annotated file of each eval folder.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.jsonl import output_dir, write_bytes_atomic, write_text_atomic
from maskdpo_cli.progress import stderr

TRAIN_LOG = "train_log.jsonl"
SUMMARY = "summary.json"
RESULTS = "results.json"  # the eval's model order (baseline first), written by run_eval
TRAIN_METRICS = (("loss", "loss"), ("reward_acc", "reward accuracy"), ("reward_margin", "reward margin"))
EXAMPLE_ANSWERS = "annotated.r0.jsonl"  # the first replication, as the eval writes it
EXAMPLES = 10  # questions on the examples page
# Label colours (background, legend text): hallucination-free greens and greys, hallucinations red and orange.
LABEL_STYLE = {"ok": ("#c8ecc8", "ok (no hallucination)"), "nofact": ("#e4e4e4", "no fact"),
               "contradictory": ("#f6b8b8", "contradictory"), "unverifiable": ("#fbd9a0", "unverifiable")}


# ---------------------------------------------------------------- the results table


def num(value: float | None, digits: int = 2) -> str:
    """A table cell: the value rounded, or "-" when there is none."""
    return "-" if value is None else f"{value:.{digits}f}"


# Per evaluated answer (summary.json's per_answer): what a score cannot show, since filler
# raises it while stating nothing; then the facts pooled over answers.
PER_ANSWER_HEADERS = ["no fact / answer", "correct facts / answer", "incorrect facts / answer",
                      "% atomic precision"]


def per_answer_cells(s: dict[str, Any]) -> list[str]:
    rates = s.get("per_answer") or {}
    return [num(rates.get("nofact")), num(rates.get("facts_correct")), num(rates.get("facts_incorrect")),
            num(s.get("atomic_fact_precision"))]


# The world oracle's blur marks: wrong facts that are a near topic's true values (world/blur.py).
BLUR_HEADERS = ["# blurred", "% blurred of incorrect facts"]


def results_table(summaries: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) side by side; the first model is the baseline of the deltas."""
    best_of = sorted({int(n) for s in summaries for n in s.get("best_of", {})})
    probe = any(s.get("probe_accuracy") is not None for s in summaries)
    blur = any("n_blurred" in s for s in summaries)
    headers = ["model", "questions", "reps", "# correct", "# incorrect", "empty", "% score", "sd",
               "# no fact", "% fact precision", *PER_ANSWER_HEADERS, *(["% probe"] if probe else []),
               *(BLUR_HEADERS if blur else [])]
    if len(summaries) > 1:
        headers.append(f"Δ vs {summaries[0]['name']}")
    headers += [f"best-of-{n}" for n in best_of]
    base = summaries[0].get("score") if summaries else None
    rows = []
    for s in summaries:
        row = [s["name"], str(s["questions"]), str(s["replications"]), num(s["correct"], 1),
               num(s["incorrect"], 1), num(s.get("empty"), 1), num(s["score"]), num(s["score_sd"]),
               # a score can rise by saying less: these two tell stated facts from filler
               num((s.get("labels") or {}).get("nofact"), 1), num(s.get("fact_precision")),
               *per_answer_cells(s)]
        if probe:
            accuracy = s.get("probe_accuracy")
            row.append(num(None if accuracy is None else 100 * accuracy))
        if blur:
            row += [num(s.get("n_blurred"), 1), num(s.get("blurred_share"))]
        if len(summaries) > 1:
            delta = None if s["score"] is None or base is None else s["score"] - base
            row.append("-" if delta is None else f"{delta:+.2f}")
        row += [num(s.get("best_of", {}).get(str(n))) for n in best_of]
        rows.append(row)
    return headers, rows


def score_split(base: dict[str, Any], model: dict[str, Any]) -> dict[str, float] | None:
    """How much of a score change comes from saying less, and how much from stating facts better.

    With n no-fact, k ok and w wrong sentences (means over replications, labels in
    summary.json), the score is S = (n + k) / (n + k + w) = f + (1 - f) p, where
    f = n / (n + k + w) is the no-fact (filler) share and p = k / (k + w) the fact precision
    of the sentences that state something. From base (f0, p0) to model (f1, p1), exactly:
        S1 - S0 = (f1 - f0)(1 - (p0 + p1) / 2) + (p1 - p0)(1 - (f0 + f1) / 2)
    The first term is the filler part, the second the precision part (each the change of one
    factor at the other's midpoint; the two sum to the total). In points (x 100). None when
    either model has no sentence, or no fact-stating sentence.
    """
    def shares(s: dict[str, Any]) -> tuple[float, float] | None:
        labels = s.get("labels") or {}
        n, k = labels.get("nofact", 0), labels.get("ok", 0)
        w = labels.get("contradictory", 0) + labels.get("unverifiable", 0)
        return None if n + k + w == 0 or k + w == 0 else (n / (n + k + w), k / (k + w))

    before, after = shares(base), shares(model)
    if before is None or after is None:
        return None
    (f0, p0), (f1, p1) = before, after
    filler = 100 * (f1 - f0) * (1 - (p0 + p1) / 2)
    precision = 100 * (p1 - p0) * (1 - (f0 + f1) / 2)
    return {"total": filler + precision, "filler": filler, "precision": precision,
            "filler_share": (100 * f0, 100 * f1), "fact_precision": (100 * p0, 100 * p1)}


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    cells = lambda values: "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"  # noqa: E731
    return "\n".join([cells(headers), "|" + "---|" * len(headers), *map(cells, rows)]) + "\n"


def print_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    # Redirected stderr defaults to 80 columns, which would squeeze a wide table into ellipses.
    console = stderr if stderr.is_terminal else Console(stderr=True, width=200)
    console.print(table)


# ---------------------------------------------------------------- reading the inputs


@dataclass
class TrainingRun:
    name: str
    steps: list[dict[str, Any]]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MaskDPOError(f"{path}: not a readable JSON file ({err}); rerun the command that wrote it") from None


FOLDER = "_folder"  # added to each summary read: the model folder it came from (not in the file)


def read_eval_dir(path: Path) -> list[dict[str, Any]]:
    """The summaries of an eval output dir in the eval's order (or one model folder's own)."""
    if (path / SUMMARY).is_file():
        folders = [path]
    elif (path / RESULTS).is_file():
        folders = [path / name for name in _read_json(path / RESULTS)["models"]]
    else:
        folders = sorted(p.parent for p in path.glob(f"*/{SUMMARY}"))
    return [{**_read_json(folder / SUMMARY), FOLDER: str(folder)} for folder in folders
            if (folder / SUMMARY).is_file()]


def read_train_log(path: Path) -> list[dict[str, Any]]:
    """Steps of a train_log.jsonl; a torn last line (a run still writing) is skipped, not fatal."""
    lines = path.read_text(encoding="utf-8").splitlines()
    steps = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            steps.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise MaskDPOError(f"{path}:{i + 1}: not valid JSON") from None
    return steps


def load_inputs(inputs: list[str]) -> tuple[list[dict[str, Any]], list[TrainingRun]]:
    """(eval summaries, training runs) from the given folders; exit 2 for one that is neither."""
    summaries: list[dict[str, Any]] = []
    runs: list[TrainingRun] = []
    for given in inputs:
        path = Path(given)
        if not path.is_dir():
            raise MaskDPOError(f"{given}: no such directory; pass eval output dirs (maskdpo eval -o DIR) "
                               "and training work dirs (maskdpo train --work-dir W)")
        if (path / TRAIN_LOG).is_file():
            steps = read_train_log(path / TRAIN_LOG)
            if not steps:
                raise MaskDPOError(f"{given}: {TRAIN_LOG} has no steps yet; pass the work dir of a "
                                   "training run that has logged at least one step")
            runs.append(TrainingRun(path.name, steps))
            continue
        found = read_eval_dir(path)
        if not found:
            raise MaskDPOError(
                f"{given}: neither {TRAIN_LOG} (what `maskdpo train --work-dir {given}` logs) nor any "
                f"{SUMMARY} (what `maskdpo eval -o {given}` writes per model); pass a training work dir "
                "with logs or an eval output dir")
        summaries += found
    _unique_labels(summaries)
    return summaries, runs


def _unique_labels(summaries: list[dict[str, Any]]) -> None:
    """Models from several eval dirs may share a folder name: number the repeats."""
    seen: dict[str, int] = {}
    for s in summaries:
        name = s.get("name") or Path(str(s.get("model", "model"))).name
        seen[name] = seen.get(name, 0) + 1
        s["name"] = name if seen[name] == 1 else f"{name} ({seen[name]})"


# ---------------------------------------------------------------- plots


def _figure(width: float = 6.4, height: float = 3.6, ncols: int = 1) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers and in CI
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height), squeeze=False)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, png.getvalue())  # a full disk leaves the previous plot whole
    return path


def plot_scores(summaries: list[dict[str, Any]], path: Path) -> Path:
    fig, axes = _figure()
    ax = axes[0][0]
    names = [s["name"] for s in summaries]
    scores = [s["score"] or 0.0 for s in summaries]
    ax.bar(names, scores, yerr=[s["score_sd"] or 0.0 for s in summaries], capsize=6, color="tab:blue")
    for x, score in enumerate(scores):
        ax.annotate(f"{score:.1f}", (x, score), ha="center", va="bottom", xytext=(0, 3), textcoords="offset points")
    ax.set_ylabel("factuality score (%)")
    ax.set_title("score per model (error bars: sd over replications)")
    ax.set_ylim(0, max(100.0, max(scores, default=0) * 1.1))
    return _save(fig, path)


def plot_counts(summaries: list[dict[str, Any]], path: Path) -> Path:
    fig, axes = _figure()
    ax = axes[0][0]
    xs = range(len(summaries))
    width = 0.4
    for shift, key, color in ((-width / 2, "correct", "tab:green"), (width / 2, "incorrect", "tab:red")):
        ax.bar([x + shift for x in xs], [s[key] for s in summaries], width, label=f"# {key}", color=color)
    ax.set_xticks(list(xs), [s["name"] for s in summaries])
    ax.set_ylabel("sentences (mean over replications)")
    ax.set_title("hallucination-free vs hallucinated sentences")
    ax.legend()
    return _save(fig, path)


def plot_best_of(summaries: list[dict[str, Any]], path: Path) -> Path:
    fig, axes = _figure()
    ax = axes[0][0]
    for s in summaries:
        points = sorted((int(n), score) for n, score in s.get("best_of", {}).items() if score is not None)
        if points:
            ax.plot([n for n, _ in points], [v for _, v in points], marker="o", label=s["name"])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (responses per question)")
    ax.set_ylabel("factuality score (%)")
    ax.set_title("best-of-N")
    ax.legend()
    return _save(fig, path)


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average: point i is the mean of the last `window` values up to i."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def smoothing_window(steps: int) -> int:
    return max(1, steps // 15)


def plot_training(runs: list[TrainingRun], path: Path) -> Path:
    fig, axes = _figure(width=13, height=3.6, ncols=len(TRAIN_METRICS))
    for ax, (key, label) in zip(axes[0], TRAIN_METRICS):
        window = 1
        for i, run in enumerate(runs):
            points = [(s["step"], s[key]) for s in run.steps if s.get(key) is not None and "step" in s]
            steps, values = [p[0] for p in points], [p[1] for p in points]
            window = max(window, smoothing_window(len(values)))
            color = f"C{i % 10}"
            ax.plot(steps, values, color=color, alpha=0.25, linewidth=1)
            ax.plot(steps, smooth(values, smoothing_window(len(values))), color=color, linewidth=2, label=run.name)
        ax.set_xlabel("step")
        ax.set_title(f"{label} (smoothed over {window} steps; raw faint)" if window > 1 else label)
        ax.legend()
    return _save(fig, path)


# ---------------------------------------------------------------- example answers


def example_answers(summaries: list[dict[str, Any]], limit: int = EXAMPLES) -> list[tuple[dict, list[dict]]]:
    """(question record, first response of each model) for test questions every model answered.

    Up to `limit` questions, spread evenly over the first model's question order (so over its
    topics); models without an annotated file are left out of the page.
    """
    from maskdpo_cli.records import read_records

    answers = {}
    for s in summaries:
        path = Path(s.get(FOLDER, "")) / EXAMPLE_ANSWERS
        if path.is_file():
            answers[s["name"]] = {rec["id"]: rec for rec in read_records(path, "annotated")}
    if not answers:
        return []
    first = next(iter(answers.values()))
    ids = [qid for qid in first if all(qid in by_id for by_id in answers.values())]
    picked = [ids[int(i * len(ids) / limit)] for i in range(limit)] if len(ids) > limit else ids
    return [(first[qid], [{"model": name, **min(by_id[qid]["responses"], key=lambda r: r["index"])}
                          for name, by_id in answers.items()]) for qid in picked]


def coloured_answer(text: str, sentences: list[dict[str, Any]]) -> str:
    """The answer as HTML, each sentence a span classed (and titled) by its label."""
    parts, pos = [], 0
    for sentence in sorted(sentences, key=lambda x: x["start"]):
        label = sentence["label"]
        parts.append(html.escape(text[pos:sentence["start"]]))
        parts.append(f"<span class='{label}' title='{label}'>{html.escape(text[sentence['start']:sentence['end']])}"
                     "</span>")
        pos = sentence["end"]
    parts.append(html.escape(text[pos:]))
    return "".join(parts)


def _answer_counts(response: dict[str, Any]) -> str:
    labels = [s["label"] for s in response["sentences"]]
    counts = ", ".join(f"{labels.count(label)} {label}" for label in LABEL_STYLE if labels.count(label))
    score = response.get("score")
    return (counts or "no sentence") + ("" if score is None else f"; score {100 * score:.0f}%")


_EXAMPLE_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}"
                  ".answers{display:grid;gap:12px;margin:0.5em 0 2em}"
                  ".answer{border:1px solid #ccc;border-radius:6px;padding:8px 10px;white-space:pre-wrap;"
                  "line-height:1.6}.answer h3{margin:0 0 4px;font-size:1em}.counts{color:#666;font-size:0.85em}"
                  "h2{font-size:1.1em;margin-bottom:0.2em}.topic{color:#666;font-weight:normal}"
                  "span.legend{padding:2px 8px;margin-right:8px;border-radius:3px;white-space:nowrap}"
                  + "".join(f"span.{label}{{background:{color};border-radius:3px}}"
                            for label, (color, _) in LABEL_STYLE.items()))


def examples_page(examples: list[tuple[dict, list[dict]]]) -> str:
    """examples.html: one row per question, one column per model."""
    legend = "".join(f"<span class='legend {label}'>{html.escape(text)}</span>"
                     for label, (_, text) in LABEL_STYLE.items())
    page = ["<!doctype html><html><head><meta charset='utf-8'><title>Example answers</title>"
            f"<style>{_EXAMPLE_STYLE}</style></head><body><h1>Example answers</h1>",
            "<p>The same test questions answered by each model (its first replication's answer), every "
            f"sentence coloured by its label: {legend}</p><p><a href='report.html'>back to the report</a></p>"]
    for question, responses in examples:
        topic = f" <span class='topic'>({html.escape(question['topic'])})</span>" if question.get("topic") else ""
        page.append(f"<h2>{html.escape(question['question'])}{topic}</h2>"
                    f"<div class='answers' style='grid-template-columns:repeat({len(responses)},1fr)'>")
        for response in responses:
            page.append(f"<div class='answer'><h3>{html.escape(response['model'])}</h3>"
                        f"<div class='counts'>{html.escape(_answer_counts(response))}</div>"
                        f"{coloured_answer(response['text'], response['sentences'])}</div>")
        page.append("</div>")
    page.append("</body></html>")
    return "\n".join(page) + "\n"


# ---------------------------------------------------------------- the page


def _training_table(runs: list[TrainingRun]) -> tuple[list[str], list[list[str]]]:
    headers = ["work dir", "steps", "final loss", "final reward acc", "final margin"]
    rows = [[r.name, str(r.steps[-1].get("step", len(r.steps)))]
            + [num(r.steps[-1].get(key), 4) for key, _ in TRAIN_METRICS] for r in runs]
    return headers, rows


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
          "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}"
          "th:first-child,td:first-child{text-align:left}img{max-width:100%;margin:1em 0}")


def run_report(inputs: list[str], out_dir: str) -> str:
    """Write report.html (self-contained), report.md and the PNG plots into out_dir; return the HTML path."""
    if not inputs:
        raise MaskDPOError("nothing to report; pass eval output dirs and/or training work dirs")
    summaries, runs = load_inputs(inputs)
    out = output_dir(out_dir)

    sections: list[tuple[str, tuple[list[str], list[list[str]]] | None, list[Path]]] = []
    if summaries:
        plots = [plot_scores(summaries, out / "scores.png"), plot_counts(summaries, out / "counts.png")]
        sections.append(("Factuality", results_table(summaries), plots))
        if any(s.get("best_of") for s in summaries):
            sections.append(("Best-of-N", None, [plot_best_of(summaries, out / "best_of.png")]))
    if runs:
        sections.append(("Training", _training_table(runs), [plot_training(runs, out / "training.png")]))

    md = ["# Mask-DPO report\n"]
    page = [f"<!doctype html><html><head><meta charset='utf-8'><title>Mask-DPO report</title>"
            f"<style>{_STYLE}</style></head><body><h1>Mask-DPO report</h1>"]
    for title, table, images in sections:
        md.append(f"\n## {title}\n")
        page.append(f"<h2>{html.escape(title)}</h2>")
        if table is not None:
            md.append("\n" + markdown_table(*table))
            page.append(_html_table(*table))
        for image in images:
            md.append(f"\n![{image.stem}]({image.name})\n")
            data = base64.b64encode(image.read_bytes()).decode("ascii")
            page.append(f"<img alt='{image.stem}' src='data:image/png;base64,{data}'>")
    examples = example_answers(summaries)
    if examples:
        write_text_atomic(out / "examples.html", examples_page(examples))
        md.append(f"\n## Example answers\n\n[{len(examples)} test questions, every model side by side, sentences "
                  "coloured by label](examples.html)\n")
        page.append(f"<h2>Example answers</h2><p><a href='examples.html'>{len(examples)} test questions, every "
                    "model side by side, each sentence coloured by its label</a></p>")
    page.append("</body></html>")
    write_text_atomic(out / "report.md", "".join(md))
    write_text_atomic(out / "report.html", "\n".join(page) + "\n")
    return str(out / "report.html")


__all__ = ["run_report", "load_inputs", "results_table", "num", "per_answer_cells", "PER_ANSWER_HEADERS",
           "score_split", "markdown_table", "print_table",
           "read_train_log", "TrainingRun", "smooth", "example_answers", "coloured_answer", "examples_page"]
