"""`maskdpo eval`: the paper's factuality score, its replications, and best-of-N (Tables 1 and 6).

For every model, one folder under -o DIR holds, per replication r (seed + r):
samples.r{r}.jsonl (written by `sample`'s run_sample, so it resumes) and
annotated.r{r}.jsonl (written by `annotate`'s run_annotate, resumes too), then
summary.json (docs/design.md, "eval output"). The judge's cache is shared by the whole eval
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

Atomic facts (FactScore, paper Table 1's right half): when an annotator labels facts
(factscore, world:DIR), each replication also has facts_correct / facts_incorrect (summed
supported / unsupported facts) and fact_score: FactScore's own figure, the mean over the
responses that state at least one fact of 100 x supported / facts (a response without
facts is left out, as FactScore leaves it out; `fact_responses` counts the ones kept).
The summary's facts_correct/facts_incorrect are means over replications, fact_score the
mean of the replications' fact scores and fact_score_sd their sd. --fact-length-penalty
GAMMA applies FactScore's length penalty (off by default; FactScore's code uses 10): a
response with n <= GAMMA facts has its score multiplied by exp(1 - GAMMA / n).

Several annotators (`--annotator anah-v2 --annotator factscore`) judge the same responses:
samples are generated once, the first annotator writes annotated.r{r}.jsonl and gives the
sentence figures (and picks best-of-N), each other one writes annotated.<name>.r{r}.jsonl
(<name>: the annotator's name, e.g. factscore, world). The fact figures come from the
first annotator that labels facts, for the very responses the sentence figures score.

Figures that filler cannot game: a score counts no-fact sentences as correct, so an answer
padded with "I hope this helps." scores higher while stating nothing more. The summary's
`per_answer` (and each replication's) gives counts per evaluated answer (per question,
empty answers included): `nofact`, `ok` and `wrong` (contradictory + unverifiable)
sentences, and, when an annotator labels facts, `facts_correct` and `facts_incorrect`.
`atomic_fact_precision` is 100 x facts_correct / (facts_correct + facts_incorrect), the
facts pooled over answers (fact_score averages per answer instead). With --probe world:DIR
the summary also has probe_accuracy, probe_count and probe_correct
(maskdpo_cli.world.probe): greedy completions of each attribute's sentence ("<name> comes
from"), scored exactly.
"""

from __future__ import annotations

import math
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
from maskdpo_cli.reporting import RESULTS, SUMMARY, num, markdown_table, print_table, results_table
from maskdpo_cli.world.blur import blur_summary

if TYPE_CHECKING:
    from maskdpo_cli.annotation import JudgeConfig
    from maskdpo_cli.backends.options import BackendOptions

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


def length_penalty(n_facts: int, gamma: float | None) -> float:
    """FactScore's penalty for answers with few facts: exp(1 - gamma / n) up to gamma facts."""
    if not gamma or n_facts > gamma:
        return 1.0
    return math.exp(1 - gamma / n_facts)


def fact_tally(responses: list[dict[str, Any]], gamma: float | None = None) -> dict[str, Any]:
    """Summed fact counts of annotated responses and their FactScore (see the module docstring)."""
    # A response without a sentence was never judged and has no fact fields: no facts.
    counts = [(r.get("n_facts_supported", 0), r.get("n_facts_unsupported", 0)) for r in responses]
    supported, unsupported = sum(c[0] for c in counts), sum(c[1] for c in counts)
    scores = [100.0 * good / (good + bad) * length_penalty(good + bad, gamma) for good, bad in counts if good + bad]
    return {"facts_correct": supported, "facts_incorrect": unsupported, "fact_responses": len(scores),
            "fact_score": _mean(scores) if scores else None}


def tally(responses: list[dict[str, Any]], gamma: float | None = None) -> dict[str, Any]:
    """Summed sentence counts of some annotated responses, with the empty ones counted apart.

    `labels` counts each label: a score can rise by stating facts better (ok up) or by
    stating fewer facts (nofact up), and only the labels tell which. Responses labelled with
    facts add the fact_tally figures.
    """
    correct = incorrect = empty = 0
    labels = dict.fromkeys(LABELS, 0)
    for response in responses:
        c, i = response_counts(response)
        correct, incorrect, empty = correct + c, incorrect + i, empty + (c + i == 0)
        for sentence in response["sentences"]:
            labels[sentence["label"]] += 1
    out = {"responses": len(responses), "correct": correct, "incorrect": incorrect, "empty": empty,
           "score": percent(correct, incorrect), "labels": labels}
    if any("facts" in r for r in responses):
        out.update(fact_tally(responses, gamma))
    return out


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
    out = {"correct": correct, "incorrect": incorrect, "empty": _mean([t["empty"] for t in tallies]),
           "score": percent(correct, incorrect), "score_sd": _sd(scores), "labels": labels,
           "fact_precision": fact_precision}
    if any("facts_correct" in t for t in tallies):  # a replication of empty answers has no fact fields
        fact_scores = [t["fact_score"] for t in tallies if t.get("fact_score") is not None]
        out.update({key: _mean([t.get(key, 0) for t in tallies])
                    for key in ("facts_correct", "facts_incorrect", "fact_responses")})
        out.update(fact_score=_mean(fact_scores) if fact_scores else None, fact_score_sd=_sd(fact_scores))
    return out


def per_answer(counts: dict[str, Any], answers: float) -> dict[str, float | None]:
    """Sentence and fact counts (a tally or an aggregate) divided by the number of answers."""
    labels = counts["labels"]
    totals = {"nofact": labels["nofact"], "ok": labels["ok"],
              "wrong": labels["contradictory"] + labels["unverifiable"]}
    if "facts_correct" in counts:
        totals.update(facts_correct=counts["facts_correct"], facts_incorrect=counts["facts_incorrect"])
    return {key: value / answers if answers else None for key, value in totals.items()}


def _tally(records: list[Record], facts_from: list[Record] | None, n: int = 1,
           gamma: float | None = None) -> dict[str, Any]:
    """tally() of the evaluated responses; with `facts_from` (the same questions labelled by a
    fact-level annotator), the fact figures are those of the same responses there."""
    chosen = [evaluated(rec, n) for rec in records]
    out = tally(chosen, gamma)
    if facts_from is not None:
        by_index = [{r["index"]: r for r in rec["responses"]} for rec in facts_from]
        out.update(fact_tally([same[r["index"]] for same, r in zip(by_index, chosen)], gamma))
    return out


def summarize(replicas: list[list[Record]], *, name: str, model: str, best_of: list[int] | None = None,
              fact_replicas: list[list[Record]] | None = None, gamma: float | None = None) -> dict[str, Any]:
    """summary.json for one model from its annotated records, one list per replication.

    `fact_replicas`: the same records labelled by another annotator that gives the fact
    figures (when the first one labels no facts); `gamma`: FactScore's length penalty.
    """
    facts = fact_replicas or [None] * len(replicas)
    per_replication = [{"replication": r, **_tally(records, facts[r], gamma=gamma)}
                       for r, records in enumerate(replicas)]
    for t in per_replication:
        t["per_answer"] = per_answer(t, t["responses"])
    overall = aggregate(per_replication)
    summary: dict[str, Any] = {"model": model, "name": name, "questions": len(replicas[0]),
                               "replications": len(replicas), **overall,
                               "per_answer": per_answer(overall, len(replicas[0])),
                               "per_replication": per_replication,
                               "per_topic": per_topic(replicas, fact_replicas, gamma)}
    if "facts_correct" in overall:
        summary["atomic_fact_precision"] = percent(overall["facts_correct"], overall["facts_incorrect"])
    # The world oracle's blur marks (world/blur.py): wrong facts that are a near topic's true values.
    summary.update(blur_summary([[evaluated(rec) for rec in records] for records in replicas]) or {})
    if gamma:
        summary["fact_length_penalty"] = gamma
    if best_of:
        by_n = {n: aggregate([_tally(records, facts[r], n, gamma) for r, records in enumerate(replicas)])
                for n in sorted(set(best_of))}
        summary["best_of"] = {str(n): agg["score"] for n, agg in by_n.items()}
        summary["best_of_sd"] = {str(n): agg["score_sd"] for n, agg in by_n.items()}
    return summary


def per_topic(replicas: list[list[Record]], fact_replicas: list[list[Record]] | None = None,
              gamma: float | None = None) -> dict[str, dict[str, Any]]:
    """The summary's figures per question topic (questions without one under "(no topic)")."""
    topics = list(dict.fromkeys(rec.get("topic") or NO_TOPIC for rec in replicas[0]))
    facts = fact_replicas or [None] * len(replicas)
    out = {}
    for topic in topics:
        keep = [(rec.get("topic") or NO_TOPIC) == topic for rec in replicas[0]]
        pick = lambda records: [rec for rec, k in zip(records, keep) if k]  # noqa: E731
        tallies = [_tally(pick(records), None if facts[r] is None else pick(facts[r]), gamma=gamma)
                   for r, records in enumerate(replicas)]
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


def _load_questions(questions: str, annotators: list[str], judge: JudgeConfig) -> list[Record]:
    """Validated questions, checked up front for what each annotator needs (e.g. anah-v2's document)."""
    from maskdpo_cli.annotators import make_annotator

    name = display_name(questions)
    rows = list(iter_records(questions, "questions"))  # an empty file is an InputError already
    for annotator in annotators:
        check = getattr(make_annotator(annotator, judge), "validate", None)
        if check is not None:
            for line, record in rows:
                check(record, name, line)
    return [record for _, record in rows]


def annotator_files(annotators: list[str]) -> list[str]:
    """The annotated-file stem of each annotator: "annotated" for the first, "annotated.<name>" after."""
    stems, seen = [], set()
    for i, spec in enumerate(annotators):
        kind = re.split(r"[:@]", spec, maxsplit=1)[0]
        if kind in seen:
            raise MaskDPOError(f"--annotator {spec}: given twice; each kind of annotator judges once per eval")
        seen.add(kind)
        stems.append("annotated" if i == 0 else f"annotated.{kind}")
    return stems


def run_eval(questions: str, models: list[str], out_dir: str, *, annotator: str | list[str], judge: JudgeConfig,
             replications: int | None = None, best_of: list[int] | None = None,
             params: GenerationParams | None = None, backend: BackendOptions | None = None, seed: int = 0,
             fact_length_penalty: float | None = None, segmenter: str = "default",
             probe: str | None = None) -> list[dict[str, Any]]:
    """Evaluate every model on the questions; write DIR/<model>/summary.json and DIR/results.md.

    `backend`: the generating backend's settings (default: transformers); with OpenAIOptions each
    model is a name served at its urls (sample --backend openai).
    `probe`: world:DIR, the world's knowledge probe of every model (module docstring).

    Replication r generates with seed + r (params.seed is replaced); params.n is set from best_of.
    `annotator`: one spec, or several that all judge the same responses (module docstring).
    """
    from maskdpo_cli.backends import TransformersOptions
    from maskdpo_cli.models import resolve_model

    backend = backend or TransformersOptions()
    annotators = [annotator] if isinstance(annotator, str) else list(annotator)
    if not annotators:
        raise MaskDPOError("no annotator; pass --annotator at least once")
    annotator_files(annotators)  # a repeated annotator fails before any work
    if replications is None:
        replications = 1 if best_of else REPLICATIONS
    _check_request(models, replications, best_of)
    probe_world = _probe_world(probe, backend)
    records = _load_questions(questions, annotators, judge)
    specs = parse_models(models)
    for spec in specs:
        if backend.name != "openai":  # a served model is the server's to find
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
        summaries.append(evaluate_model(spec, out, [rec["id"] for rec in records], annotator=annotators,
                                        judge=judge, params=params,
                                        replications=replications, best_of=best_of, backend=backend,
                                        seed=seed, fact_length_penalty=fact_length_penalty,
                                        segmenter=segmenter, probe=probe_world))
    write_results(summaries, out)
    return summaries


def _probe_world(probe: str | None, backend: BackendOptions) -> str | None:
    """The world directory of --probe world:DIR, checked before any model runs."""
    if probe is None:
        return None
    from maskdpo_cli.world.probe import world_dir_of

    if backend.name == "openai":  # the probe prefills the answer: it needs the weights, not a chat API
        raise MaskDPOError(f"--probe {probe}: needs local model weights; use --backend transformers")
    return world_dir_of(probe)


def evaluate_model(spec: ModelSpec, out: Path, ids: list[str], *, annotator: str | list[str], judge: JudgeConfig,
                   params: GenerationParams, replications: int, best_of: list[int] | None,
                   backend: BackendOptions, seed: int,
                   fact_length_penalty: float | None = None, segmenter: str = "default",
                   probe: str | None = None) -> dict[str, Any]:
    """Generate, annotate and summarize one model in out/<name>/; each step resumes.
    `probe`: a world directory whose knowledge probe the model also takes (out/<name>/probe.json)."""
    from maskdpo_cli.annotation import run_annotate
    from maskdpo_cli.sampling import run_sample

    annotators = [annotator] if isinstance(annotator, str) else list(annotator)
    stems = annotator_files(annotators)
    folder = output_dir(out / spec.name)
    replicas: list[list[list[Record]]] = [[] for _ in annotators]  # [annotator][replication]
    for r in range(replications):
        samples = folder / f"samples.r{r}.jsonl"
        rep_params = replace(params, seed=seed + r)
        stderr.print(f"  replication {r + 1}/{replications} (seed {rep_params.seed})")
        done = run_sample(str(out / "questions.jsonl"), str(samples), model=spec.model, params=rep_params,
                          backend=backend)
        stderr.print(f"  sampled {done}", markup=False, highlight=False)
        for i, (spec_a, stem) in enumerate(zip(annotators, stems)):
            annotated = folder / f"{stem}.r{r}.jsonl"
            done = run_annotate(str(samples), str(annotated), annotator=spec_a, judge=judge, segmenter=segmenter)
            stderr.print(f"  annotated ({spec_a}) {done}", markup=False, highlight=False)
            replicas[i].append(_read_replica(annotated, ids, params.n))
    # Fact figures: from the first annotator whose records carry facts (none: no fact figures).
    fact_source = next((i for i, reps in enumerate(replicas)
                        if any("facts" in resp for recs in reps for rec in recs for resp in rec["responses"])), None)
    summary = summarize(replicas[0], name=spec.name, model=spec.model, best_of=best_of, gamma=fact_length_penalty,
                        # 0: the first annotator's own records carry the facts, tally() reads them
                        fact_replicas=replicas[fact_source] if fact_source else None)
    summary["generation"] = {**params.as_record(), "seeds": [seed + r for r in range(replications)],
                             "backend": backend.name}
    summary["annotator"] = annotators[0]
    summary["fact_annotator"] = None if fact_source is None else annotators[fact_source]
    if len(annotators) > 1:
        summary["annotators"] = annotators
    if probe is not None:
        from maskdpo_cli.models import resolve_model
        from maskdpo_cli.world.probe import run_probe

        summary.update(run_probe(probe, resolve_model(spec.model), folder))
        stderr.print(f"  probe: {summary['probe_correct']}/{summary['probe_count']} values known", highlight=False)
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
    title = "factuality (first model is the baseline)"
    if any(s.get("fact_annotator") for s in summaries):
        # The paper's Table 1: the sentence evaluator's columns, then FactScore's, per model.
        headers += ["# correct facts", "# incorrect facts", "% fact score", "fact sd"]
        for s, row in zip(summaries, rows):
            row += [num(s.get("facts_correct"), 1), num(s.get("facts_incorrect"), 1),
                    num(s.get("fact_score")), num(s.get("fact_score_sd"))]
        first = summaries[0]
        title = (f"factuality: sentences by {first.get('annotator')}, atomic facts by "
                 f"{first.get('fact_annotator')} (first model is the baseline)")
    print_table(title, headers, rows)
    write_json_atomic(out / RESULTS, {"models": [s["name"] for s in summaries]})
    write_text_atomic(out / "results.md", markdown_table(headers, rows))
    return out / "results.md"


__all__ = ["run_eval", "evaluate_model", "summarize", "tally", "fact_tally", "length_penalty", "aggregate",
           "percent", "evaluated", "annotator_files", "per_answer",
           "best_response", "per_topic", "parse_models", "folder_name", "eval_params", "parse_sizes", "ModelSpec",
           "write_results", "REPLICATIONS"]
