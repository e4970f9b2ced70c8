"""`maskdpo annotate`: split every response into sentences and label each one.

The whole input is validated (and the annotator's own checks run) before anything is
judged. Each question's distinct sentences go to the annotator in one call; the output is
append-only with resume, so a rerun of the same command skips the questions already written.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from maskdpo_cli.annotators import Annotator, make_annotator
from maskdpo_cli.errors import JudgeError
from maskdpo_cli.jsonl import STDIO, display_name, resumable_output
from maskdpo_cli.progress import progress_bar
from maskdpo_cli.records import LABELS, Record, factuality_score, iter_records, sentence_counts
from maskdpo_cli.segmentation import split_sentences


@dataclass(frozen=True)
class JudgeConfig:
    """How to reach the chat judge (used by the anah-v2 annotator)."""

    model: str | None = None          # None with openai: the first model the endpoint serves
    backend: str = "openai"           # openai | transformers | lmdeploy
    url: str | None = None            # None: http://127.0.0.1:23333/v1 (lmdeploy serve's default)
    api_key: str | None = None
    prompts_file: str | Path | None = None
    max_retries: int = 5
    concurrency: int = 8
    timeout: float = 120.0            # seconds per request
    backoff: float = 1.0              # first retry waits up to this long, doubling each time
    cache_path: str | Path | None = None  # where judgments are appended; set from -o


def judgments_path(output: str | None) -> str | None:
    """The judgment cache kept next to -o FILE (none when writing to stdout)."""
    return None if output is None or str(output) == STDIO else str(output) + ".judgments.jsonl"


def run_annotate(samples: str, output: str | None, *, annotator: str, judge: JudgeConfig) -> str:
    """Annotate a samples file into `output` (resuming it); return a one-line summary."""
    name = display_name(samples)
    records = list(iter_records(samples, "samples"))
    if judge.cache_path is None:
        judge = replace(judge, cache_path=judgments_path(output))
    labeler = make_annotator(annotator, judge)
    check = getattr(labeler, "validate", None)  # optional: see annotators.base.InputChecks
    if check is not None:
        for line, record in records:
            check(record, name, line)

    questions = sentences = correct = 0
    with resumable_output(output) as (writer, done):
        done_ids = {rec.get("id") for rec in done}
        todo = [rec for _, rec in records if rec["id"] not in done_ids]
        with progress_bar("questions") as progress:
            task = progress.add_task("annotate", total=len(todo), info="")
            for record in todo:
                annotated = annotate_record(record, labeler)
                writer.write(annotated)
                for resp in annotated["responses"]:
                    sentences += len(resp["sentences"])
                    correct += resp["n_correct"]
                questions += 1
                progress.update(task, advance=1, info=f"{sentences} sentences")
    skipped = len(records) - len(todo)
    resumed = f" ({skipped} already done)" if skipped else ""
    share = f"{100 * correct / sentences:.1f}%" if sentences else "-"
    return (f"{questions} questions{resumed}, {sentences} sentences, {share} hallucination-free "
            f"-> {output if output and output != STDIO else '<stdout>'}")


def annotate_record(record: Record, annotator: Annotator) -> Record:
    """The samples record with labelled sentences, counts and score on every response."""
    language = record.get("language")
    split = [split_sentences(resp["text"], language) for resp in record["responses"]]
    unique = list(dict.fromkeys(s.text for sents in split for s in sents))
    labels = dict(zip(unique, _labels(annotator, record, unique))) if unique else {}
    responses = []
    for resp, sents in zip(record["responses"], split):
        labelled = [{"start": s.start, "end": s.end, "text": s.text, "label": labels[s.text]} for s in sents]
        n_correct, n_incorrect = sentence_counts(labelled)
        responses.append({**resp, "sentences": labelled, "n_correct": n_correct,
                          "n_incorrect": n_incorrect, "score": factuality_score(n_correct, n_incorrect)})
    return {**record, "responses": responses, "annotator": annotator.describe()}


def _labels(annotator: Annotator, record: Record, sentences: list[str]) -> list[str]:
    """The annotator's labels, checked: a wrong count or label is its bug, not the input's."""
    labels = annotator.label(record, sentences)
    if len(labels) != len(sentences):
        raise JudgeError(f"annotator {annotator.name} returned {len(labels)} labels for "
                         f"{len(sentences)} sentences of question {record['id']!r}")
    unknown = [label for label in labels if label not in LABELS]
    if unknown:
        raise JudgeError(f"annotator {annotator.name} returned the unknown label {unknown[0]!r} "
                         f"for question {record['id']!r}; expected one of {', '.join(LABELS)}")
    return labels


__all__ = ["JudgeConfig", "run_annotate", "annotate_record", "judgments_path"]
