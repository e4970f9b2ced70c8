"""`maskdpo annotate`: split every response into sentences and label each one.

Built for paper-scale inputs (8,046 questions x 32 answers x 10 sentences, a 575 MB file)
against served judges, with memory bounded whatever the input's size:

- Input is checked before anything is judged. A file is read twice: a first pass validates
  every record (the samples contract, duplicate ids, the annotator's own checks) keeping only
  the ids, so bad input exits 2 with nothing judged, as before; the second pass streams the
  records to the judge. Standard input and pipes cannot be read twice, and are often fed by
  a `sample` that is still producing: they are checked record by record as they stream, and a
  bad record stops the run at its line once the records before it are written (the output
  stays valid and resumable). Spooling stdin to disk instead would stall the pipeline.
- A window of questions is judged at once: a new question is admitted while the questions
  being judged hold fewer than 4 x (concurrency x servers) distinct sentences and at most
  max(8, concurrency x servers) questions are admitted but not yet written. That keeps
  every server's slots busy (each sentence has one turn in flight at a time) while memory
  holds only the window.
- Output is written strictly in input order: a question judged early waits in the window
  for the ones before it. When a question fails, no new one is admitted, the ones before
  it are finished and written, and then its error is raised.
- Spans: when the annotator locates facts inside a sentence (factscore's quotes), the
  sentence carries `spans`, shifted from the sentence's own text into the response text.
  Facts it could not locate are counted and reported in the summary line: their sentences
  keep sentence level.
- The output is append-only with resume: a rerun of the same command skips the questions
  already written, and the annotator's judgment cache pays for none of the sentences
  already judged.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Callable

from maskdpo_cli.annotators import Annotator, make_annotator
from maskdpo_cli.annotators.base import Verdict
from maskdpo_cli.annotators.judging import JudgeConfig  # public here too: `annotate`'s own settings
from maskdpo_cli.errors import JudgeError, MaskDPOError
from maskdpo_cli.jsonl import STDIO, display_name, resumable_output
from maskdpo_cli.backends.options import DEFAULT_CONCURRENCY
from maskdpo_cli.progress import progress_bar
from maskdpo_cli.records import LABELS, Record, factuality_score, iter_records, sentence_counts
from maskdpo_cli.segmentation import SEGMENTERS, Sentence, split_sentences

SPAN_LABELS = tuple(label for label in LABELS if label != "nofact")  # a span states a fact


def judgments_path(output: str | None) -> str | None:
    """The judgment cache kept next to -o FILE (none when writing to stdout)."""
    return None if output is None or str(output) == STDIO else str(output) + ".judgments.jsonl"


def run_annotate(samples: str, output: str | None, *, annotator: str, judge: JudgeConfig,
                 segmenter: str = "default") -> str:
    """Annotate a samples file into `output` (resuming it); return a one-line summary."""
    if segmenter not in SEGMENTERS:
        raise MaskDPOError(f"--segmenter {segmenter}: expected one of {', '.join(SEGMENTERS)}")
    name = display_name(samples)
    if judge.cache_path is None:
        judge = replace(judge, cache_path=judgments_path(output))
    labeler = make_annotator(annotator, judge)
    check: Callable[[Record, str, int | None], None] | None = getattr(labeler, "validate", None)
    total = None
    if _rereadable(samples):  # check all of it before judging any
        total = sum(1 for _ in _checked(iter_records(samples, "samples"), check, name))

    stats = {"questions": 0, "sentences": 0, "correct": 0, "skipped": 0}
    # Only the ids of what is written are kept: resuming a paper-scale output stays small.
    with resumable_output(output, keep=lambda rec: rec.get("id")) as (writer, done_ids_list):
        done_ids = set(done_ids_list)

        def todo() -> Iterator[Record]:
            for _, record in _checked(iter_records(samples, "samples"), check, name):
                if record["id"] in done_ids:
                    stats["skipped"] += 1
                else:
                    yield record

        with progress_bar("questions") as progress:
            bar = progress.add_task("annotate", info="",
                                    total=None if total is None else max(0, total - len(done_ids)))

            def write(annotated: Record) -> None:
                writer.write(annotated)
                stats["questions"] += 1
                for resp in annotated["responses"]:
                    stats["sentences"] += len(resp["sentences"])
                    stats["correct"] += resp["n_correct"]
                progress.update(bar, advance=1, info=f"{stats['sentences']} sentences")

            unplaced = asyncio.run(annotate_stream(todo(), labeler, write, segmenter=segmenter,
                                                   capacity=judge.capacity))
    resumed = f" ({stats['skipped']} already done)" if stats["skipped"] else ""
    share = f"{100 * stats['correct'] / stats['sentences']:.1f}%" if stats["sentences"] else "-"
    fallback = (f"; {unplaced.facts} facts not found in their sentence, so {unplaced.sentences} sentences "
                "fell back to sentence level (no spans)") if unplaced.facts else ""
    return (f"{stats['questions']} questions{resumed}, {stats['sentences']} sentences, {share} "
            f"hallucination-free -> {output if output and output != STDIO else '<stdout>'}{fallback}")


def _rereadable(path: str) -> bool:
    """A file that can be read twice: not stdin, a pipe or `<(process substitution)`.

    A path that is not there counts as a file: the first pass reports it.
    """
    if str(path) == STDIO:
        return False
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return True
    return not (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode))


def _checked(rows: Iterable[tuple[int, Record]], check: Callable[[Record, str, int | None], None] | None,
             name: str) -> Iterator[tuple[int, Record]]:
    for line, record in rows:
        if check is not None:
            check(record, name, line)
        yield line, record


@dataclass
class _Question:
    record: Record
    split: list[list[Sentence]]
    unique: list[str]
    verdicts: asyncio.Future[list[Verdict]]


@dataclass
class Unplaced:
    """Facts an annotator could not locate in their sentence, over the sentences written.

    Such a sentence has no spans: all of its facts fall back to the sentence's label.
    """

    facts: int = 0
    sentences: int = 0

    def count(self, question: _Question, verdicts: list[Verdict]) -> None:
        by_text = dict(zip(question.unique, verdicts))
        for sents in question.split:
            for sentence in sents:
                missing = by_text[sentence.text].unplaced
                self.facts += missing
                self.sentences += missing > 0


async def annotate_stream(records: Iterable[Record], annotator: Annotator, write: Callable[[Record], None], *,
                          segmenter: str = "default", capacity: int = DEFAULT_CONCURRENCY) -> Unplaced:
    """Judge `records` with a bounded window in flight and `write` each annotated one in input order.

    Returns the tally of facts the annotator could not locate in the records written.
    """
    max_questions, max_sentences = max(8, capacity), 4 * capacity
    unplaced = Unplaced()
    window: deque[_Question] = deque()
    rows = iter(records)
    more, failed = True, False
    bad_input: MaskDPOError | None = None
    try:
        while True:
            while more and not failed and bad_input is None and len(window) < max_questions and (
                    not window or sum(len(q.unique) for q in window if not q.verdicts.done()) < max_sentences):
                try:
                    record = next(rows, None)
                except MaskDPOError as err:  # bad input met while streaming: finish what came before it
                    bad_input = err
                    break
                if record is None:
                    more = False
                    break
                window.append(_start(record, annotator, segmenter))
            if not window:
                break
            if not window[0].verdicts.done():
                await asyncio.wait([q.verdicts for q in window if not q.verdicts.done()],
                                   return_when=asyncio.FIRST_COMPLETED)
            if any(q.verdicts.done() and not q.verdicts.cancelled() and q.verdicts.exception() for q in window):
                failed = True  # admit nothing more; the failure is raised when it reaches the head
            while window and window[0].verdicts.done():
                question = window.popleft()
                write(_assemble(question, annotator, question.verdicts.result()))
                unplaced.count(question, question.verdicts.result())
        if bad_input is not None:
            raise bad_input
        return unplaced
    finally:
        for question in window:
            question.verdicts.cancel()
        await asyncio.gather(*(q.verdicts for q in window), return_exceptions=True)
        aclose = getattr(annotator, "aclose", None)
        if aclose is not None:
            await aclose()


def _start(record: Record, annotator: Annotator, segmenter: str) -> _Question:
    language = record.get("language")
    split = [split_sentences(resp["text"], language, segmenter=segmenter) for resp in record["responses"]]
    unique = list(dict.fromkeys(s.text for sents in split for s in sents))
    # Asked even with no sentence: a served judge's model name, part of the record's
    # "annotator", is learned on the way.
    return _Question(record, split, unique, asyncio.ensure_future(annotator.judge(record, unique)))


def _assemble(question: _Question, annotator: Annotator, verdicts: list[Verdict]) -> Record:
    record = question.record
    by_text = dict(zip(question.unique, _checked_verdicts(annotator, record, question.unique, verdicts)))
    responses = [_response(resp, sents, by_text, annotator.fact_level)
                 for resp, sents in zip(record["responses"], question.split)]
    return {**record, "responses": responses, "annotator": annotator.describe()}


def _response(resp: Record, sents: list[Sentence], by_text: dict[str, Verdict], fact_level: bool) -> Record:
    labelled = [_sentence(s, by_text[s.text]) for s in sents]
    n_correct, n_incorrect = sentence_counts(labelled)
    out: dict[str, Any] = {**resp, "sentences": labelled, "n_correct": n_correct, "n_incorrect": n_incorrect,
                           "score": factuality_score(n_correct, n_incorrect)}
    if fact_level:
        facts = [{"text": f.text, "sentence": i, "label": "supported" if f.supported else "unsupported"}
                 for i, s in enumerate(sents) for f in by_text[s.text].facts or ()]
        supported = sum(f["label"] == "supported" for f in facts)
        out.update(facts=facts, n_facts_supported=supported, n_facts_unsupported=len(facts) - supported,
                   fact_score=factuality_score(supported, len(facts) - supported))
    return out


def _sentence(sentence: Sentence, verdict: Verdict) -> Record:
    """The labelled sentence; its spans, when the annotator located its facts, shifted into the response text."""
    out: Record = {"start": sentence.start, "end": sentence.end, "text": sentence.text, "label": verdict.label}
    if verdict.spans:  # an empty tuple locates nothing
        out["spans"] = [{"start": sentence.start + span.start, "end": sentence.start + span.end, "label": span.label,
                         **({} if span.blurred is None else {"blurred": span.blurred})}
                        for span in verdict.spans]
    if verdict.blurred is not None:
        out["blurred"] = verdict.blurred
    return out


def _checked_verdicts(annotator: Annotator, record: Record, sentences: list[str],
                      verdicts: list[Verdict]) -> list[Verdict]:
    """The annotator's verdicts, checked: a wrong count or label is its bug, not the input's."""
    if len(verdicts) != len(sentences):
        raise JudgeError(f"annotator {annotator.name} returned {len(verdicts)} labels for "
                         f"{len(sentences)} sentences of question {record['id']!r}")
    unknown = [v.label for v in verdicts if v.label not in LABELS]
    if unknown:
        raise JudgeError(f"annotator {annotator.name} returned the unknown label {unknown[0]!r} "
                         f"for question {record['id']!r}; expected one of {', '.join(LABELS)}")
    for sentence, verdict in zip(sentences, verdicts):
        for span in verdict.spans or ():
            if not (0 <= span.start < span.end <= len(sentence) and span.label in SPAN_LABELS):
                raise JudgeError(f"annotator {annotator.name} returned the span {span} outside the sentence "
                                 f"{sentence[:200]!r} or with a label not in {', '.join(SPAN_LABELS)} "
                                 f"(question {record['id']!r})")
    return verdicts


__all__ = ["JudgeConfig", "Unplaced", "run_annotate", "annotate_stream", "judgments_path"]
