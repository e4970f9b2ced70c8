"""`maskdpo eval`: the paper's factuality score, its replications, and best-of-N (Tables 1 and 6).

For every model, one folder under -o DIR holds, per replication r (seed + r):
samples.r{r}.jsonl (written by `sample`'s run_sample, so it resumes) and
annotated.r{r}.jsonl (written by `annotate`'s run_annotate, resumes too), then
summary.json (DESIGN.md "eval output"). The judge's cache is shared by the whole eval
(DIR/judgments.jsonl), so a sentence that recurs across replications or models is judged once.

The figures, per replication: # correct and # incorrect are sentence counts summed over
the questions (nofact counts as correct), score = 100 x correct / (correct + incorrect).
The summary's correct/incorrect are means over replications, its score is computed from
those means, and score_sd is the sample standard deviation (n - 1) of the per-replication
scores (0 with one replication). A response with no sentence (empty or whitespace) adds
nothing to either count: it is counted as `empty` and reported, never divided by. A
replication with no sentence at all has no score (null).

The evaluated response of a question is its first one. With --best-of N1,N2,... each
question gets max(N) responses (sampled: temperature 0.8 unless given), and for every N
the most factual of the first N by the annotator's score is kept (the earliest wins a tie);
best_of[N] is the score of the kept responses. Replications default to 5, or 1 with
--best-of (as the paper's Table 6).
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maskdpo_cli.backends.base import GenerationParams
from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.jsonl import atomic_output, display_name, output_dir, write_json_atomic, write_text_atomic
from maskdpo_cli.progress import stderr
from maskdpo_cli.records import LABELS, Record, factuality_score, iter_records, read_records, sentence_counts
from maskdpo_cli.reporting import RESULTS, SUMMARY, markdown_table, print_table, results_table

if TYPE_CHECKING:
    from maskdpo_cli.annotation import JudgeConfig

REPLICATIONS = 5
BEST_OF_TEMPERATURE = 0.8
NO_TOPIC = "(no topic)"


@dataclass(frozen=True)
class ModelSpec:
    name: str    # the folder under -o DIR and the label in tables
    model: str   # an alias or a local HF directory, as given


# ---------------------------------------------------------------- arithmetic


def response_counts(response: dict[str, Any]) -> tuple[int, int]:
    return sentence_counts(response["sentences"])


def percent(correct: float, incorrect: float) -> float | None:
    """100 x correct / (correct + incorrect); None when there is no sentence to score."""
    total = correct + incorrect
    return 100.0 * correct / total if total else None


def tally(responses: list[dict[str, Any]]) -> dict[str, Any]:
    """Summed sentence counts of some annotated responses, with the empty ones counted apart.

    `labels` counts each label: a score can rise by stating facts better (ok up) or by
    stating fewer facts (nofact up), and only the labels tell which.
    """
    correct = incorrect = empty = 0
    labels = dict.fromkeys(LABELS, 0)
    for response in responses:
        c, i = response_counts(response)
        correct, incorrect, empty = correct + c, incorrect + i, empty + (c + i == 0)
        for sentence in response["sentences"]:
            labels[sentence["label"]] += 1
    return {"responses": len(responses), "correct": correct, "incorrect": incorrect, "empty": empty,
            "score": percent(correct, incorrect), "labels": labels}


def best_response(responses: list[dict[str, Any]]) -> dict[str, Any]:
    """The most factual response by the annotator's score; max() keeps the earliest of a tie."""
    return max(responses, key=lambda r: factuality_score(*response_counts(r)))


def evaluated(record: Record, n: int = 1) -> dict[str, Any]:
    """The response that stands for the question: the best of its first n (n=1: the first)."""
    responses = sorted(record["responses"], key=lambda r: r["index"])
    return best_response(responses[:n])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(tallies: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over replications of the counts, the score of those means, and its sd over replications."""
    correct = _mean([t["correct"] for t in tallies])
    incorrect = _mean([t["incorrect"] for t in tallies])
    scores = [t["score"] for t in tallies if t["score"] is not None]
    labels = {label: _mean([t["labels"][label] for t in tallies]) for label in LABELS}
    # The score of the checkable claims alone: nofact sentences are neither right nor wrong.
    fact_precision = percent(labels["ok"], labels["contradictory"] + labels["unverifiable"])
    return {"correct": correct, "incorrect": incorrect, "empty": _mean([t["empty"] for t in tallies]),
            "score": percent(correct, incorrect), "score_sd": _sd(scores), "labels": labels,
            "fact_precision": fact_precision}


def summarize(replicas: list[list[Record]], *, name: str, model: str,
              best_of: list[int] | None = None) -> dict[str, Any]:
    """summary.json for one model from its annotated records, one list per replication."""
    per_replication = [{"replication": r, **tally([evaluated(rec) for rec in records])}
                       for r, records in enumerate(replicas)]
    summary: dict[str, Any] = {"model": model, "name": name, "questions": len(replicas[0]),
                               "replications": len(replicas), **aggregate(per_replication),
                               "per_replication": per_replication, "per_topic": per_topic(replicas)}
    if best_of:
        by_n = {n: aggregate([tally([evaluated(rec, n) for rec in records]) for records in replicas])
                for n in sorted(set(best_of))}
        summary["best_of"] = {str(n): agg["score"] for n, agg in by_n.items()}
        summary["best_of_sd"] = {str(n): agg["score_sd"] for n, agg in by_n.items()}
    return summary


def per_topic(replicas: list[list[Record]]) -> dict[str, dict[str, Any]]:
    """The summary's figures per question topic (questions without one under "(no topic)")."""
    topics = list(dict.fromkeys(rec.get("topic") or NO_TOPIC for rec in replicas[0]))
    out = {}
    for topic in topics:
        tallies = [tally([evaluated(rec) for rec in records if (rec.get("topic") or NO_TOPIC) == topic])
                   for records in replicas]
        out[topic] = {"questions": tallies[0]["responses"], **aggregate(tallies)}
    return out


# ---------------------------------------------------------------- models and folders


def folder_name(model: str) -> str:
    """A filesystem-safe folder name: the alias, or the path's last two parts (runs/dpo/hf -> dpo-hf)."""
    parts = [p for p in Path(model).parts if p not in ("/", ".", "..")]
    name = "-".join(parts[-2:]) or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip(".") or "model"


def parse_models(models: list[str]) -> list[ModelSpec]:
    """`PATH`, an alias, or `NAME=PATH`; names made unique (-2, -3...) in the given order."""
    specs, used = [], set()
    for given in models:
        name, model = None, given
        if "=" in given and not Path(given).exists():
            name, model = given.split("=", 1)
        base = folder_name(name or model)
        unique, k = base, 1
        while unique in used:
            k += 1
            unique = f"{base}-{k}"
        used.add(unique)
        specs.append(ModelSpec(unique, model))
    return specs


def responses_per_question(best_of: list[int] | None) -> int:
    return max(best_of) if best_of else 1


def eval_params(best_of: list[int] | None = None, temperature: float | None = None,
                **options: Any) -> GenerationParams:
    """Greedy by default (Table 1), sampled at 0.8 for best-of-N; other options as `sample`'s."""
    if temperature is None:
        temperature = BEST_OF_TEMPERATURE if best_of else 0.0
    return GenerationParams(n=responses_per_question(best_of), temperature=temperature, **options)


def parse_sizes(text: str | None) -> list[int] | None:
    """--best-of "1,16,64" -> [1, 16, 64]."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise MaskDPOError(f"--best-of {text}: pass sizes separated by commas, e.g. --best-of 1,16,64") from None


# ---------------------------------------------------------------- the command


def _check_request(models: list[str], replications: int, best_of: list[int] | None) -> None:
    if not models:
        raise MaskDPOError("no model to evaluate; pass --model M (an HF directory or an alias) at least once")
    if replications < 1:
        raise MaskDPOError(f"--replications {replications}: pass 1 or more")
    if best_of is not None and (not best_of or min(best_of) < 1):
        raise MaskDPOError(f"--best-of {best_of}: pass positive sizes, e.g. --best-of 1,4,16")


def _load_questions(questions: str, annotator: str, judge: JudgeConfig) -> list[Record]:
    """Validated questions, checked up front for what the annotator needs (e.g. anah-v2's document)."""
    from maskdpo_cli.annotators import make_annotator

    name = display_name(questions)
    rows = list(iter_records(questions, "questions"))  # an empty file is an InputError already
    check = getattr(make_annotator(annotator, judge), "validate", None)
    if check is not None:
        for line, record in rows:
            check(record, name, line)
    return [record for _, record in rows]


def run_eval(questions: str, models: list[str], out_dir: str, *, annotator: str, judge: JudgeConfig,
             replications: int | None = None, best_of: list[int] | None = None,
             params: GenerationParams | None = None, backend: str = "transformers", seed: int = 0,
             batch_size: int | None = None) -> list[dict[str, Any]]:
    """Evaluate every model on the questions; write DIR/<model>/summary.json and DIR/results.md.

    Replication r generates with seed + r (params.seed is replaced); params.n is set from best_of.
    """
    from maskdpo_cli.models import resolve_model

    if replications is None:
        replications = 1 if best_of else REPLICATIONS
    _check_request(models, replications, best_of)
    records = _load_questions(questions, annotator, judge)
    specs = parse_models(models)
    for spec in specs:
        resolve_model(spec.model)  # a missing model fails now, not after the first one's hours
    params = replace(params or eval_params(best_of), n=responses_per_question(best_of))
    out = output_dir(out_dir)
    # The questions as evaluated, so stdin works and the folder says what it measured.
    with atomic_output(out / "questions.jsonl") as writer:
        writer.write_all(records)
    if judge.cache_path is None:
        judge = replace(judge, cache_path=out / "judgments.jsonl")

    summaries = []
    for spec in specs:
        stderr.print(f"[bold]eval[/] {spec.name} ({spec.model})", highlight=False)
        summaries.append(evaluate_model(spec, out, [rec["id"] for rec in records], annotator=annotator,
                                        judge=judge, params=params,
                                        replications=replications, best_of=best_of, backend=backend,
                                        seed=seed, batch_size=batch_size))
    write_results(summaries, out)
    return summaries


def evaluate_model(spec: ModelSpec, out: Path, ids: list[str], *, annotator: str, judge: JudgeConfig,
                   params: GenerationParams, replications: int, best_of: list[int] | None,
                   backend: str, seed: int, batch_size: int | None) -> dict[str, Any]:
    """Generate, annotate and summarize one model in out/<name>/; each step resumes."""
    from maskdpo_cli.annotation import run_annotate
    from maskdpo_cli.sampling import run_sample

    folder = output_dir(out / spec.name)
    replicas = []
    for r in range(replications):
        samples, annotated = folder / f"samples.r{r}.jsonl", folder / f"annotated.r{r}.jsonl"
        rep_params = replace(params, seed=seed + r)
        stderr.print(f"  replication {r + 1}/{replications} (seed {rep_params.seed})")
        done = run_sample(str(out / "questions.jsonl"), str(samples), model=spec.model, backend=backend,
                          params=rep_params, batch_size=batch_size)
        stderr.print(f"  sampled {done}", markup=False, highlight=False)
        done = run_annotate(str(samples), str(annotated), annotator=annotator, judge=judge)
        stderr.print(f"  annotated {done}", markup=False, highlight=False)
        replicas.append(_read_replica(annotated, ids, params.n))
    summary = summarize(replicas, name=spec.name, model=spec.model, best_of=best_of)
    summary["generation"] = {**params.as_record(), "seeds": [seed + r for r in range(replications)],
                             "backend": backend}
    summary["annotator"] = annotator
    if summary["empty"]:
        stderr.print(f"  [yellow]{spec.name}: {summary['empty']:g} empty responses per replication "
                     "(no sentence: counted, not scored)[/]")
    write_json_atomic(folder / SUMMARY, summary)
    return summary


def _read_replica(path: Path, ids: list[str], n: int) -> list[Record]:
    """The annotated records of these questions, in their order; a folder left by an eval with
    other questions or fewer responses per question is refused rather than mixed in."""
    by_id = {rec["id"]: rec for rec in read_records(path, "annotated")}
    stale = "the folder holds an earlier eval with other settings: delete it or choose another -o"
    missing = next((qid for qid in ids if qid not in by_id), None)
    if missing is not None:
        raise MaskDPOError(f"{path}: no annotated record for question {missing!r}; {stale}")
    short = next((by_id[qid] for qid in ids if len(by_id[qid]["responses"]) < n), None)
    if short is not None:
        raise MaskDPOError(f"{path}: question {short['id']!r} has {len(short['responses'])} responses but "
                           f"this eval needs {n}; {stale}")
    return [by_id[qid] for qid in ids]


def write_results(summaries: list[dict[str, Any]], out: Path) -> Path:
    """The side-by-side table: rich on stderr, results.md and results.json in the output dir."""
    headers, rows = results_table(summaries)
    print_table("factuality (first model is the baseline)", headers, rows)
    write_json_atomic(out / RESULTS, {"models": [s["name"] for s in summaries]})
    write_text_atomic(out / "results.md", markdown_table(headers, rows))
    return out / "results.md"


__all__ = ["run_eval", "evaluate_model", "summarize", "tally", "aggregate", "percent", "evaluated",
           "best_response", "per_topic", "parse_models", "folder_name", "eval_params", "parse_sizes", "ModelSpec",
           "write_results", "REPLICATIONS"]
