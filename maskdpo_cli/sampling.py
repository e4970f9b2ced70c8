"""`maskdpo sample`: K responses per question, seeded, batched, resumable.

In-process backends (transformers, lmdeploy): determinism across interruptions comes from
fixed waves. The input is cut into waves (consecutive questions by input position, as many
as fill one decode batch), and a wave with any question missing from the output is
generated whole again, so every row is always decoded in the same company and with the same
seeds; only the missing questions are then written. The same seed therefore gives the same
records whether or not the run was killed on the way.

Served engines (--backend openai): every response is its own request with its own seed, so
no wave is needed: only the missing questions are asked, a window of them in flight at once,
and written in input order as they complete. Whether a seed gives the same text again is
then the server's to keep (vLLM and LMDeploy honour `seed`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maskdpo_cli.backends import BackendOptions, GenerationParams, OpenAIOptions, make_backend
from maskdpo_cli.backends.base import Backend, derive_seed
from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.jsonl import STDIO, RecordWriter, display_name, resumable_output
from maskdpo_cli.models import SMOLLM2_ALIAS
from maskdpo_cli.progress import progress_bar
from maskdpo_cli.records import Record, iter_records

if TYPE_CHECKING:  # imported when chosen: it brings the HTTP client
    from maskdpo_cli.backends.openai_backend import OpenAIBackend


def generation_settings(model: str, backend: str, params: GenerationParams) -> dict[str, Any]:
    """The samples record's "generation" object: what made these responses."""
    return {"model": model, "backend": backend, **params.as_record()}


# Where a served run's responses came from: recorded, but a resume may use other servers
# (a restarted job gets new nodes); the model and the settings must match.
SERVERS = ("url", "urls")


def _same_generation(theirs: Any, ours: dict[str, Any]) -> bool:
    if not isinstance(theirs, dict):
        return False
    return ({k: v for k, v in theirs.items() if k not in SERVERS}
            == {k: v for k, v in ours.items() if k not in SERVERS})


def question_seed(seed: int, question_id: str) -> int:
    """A question's seed: depends on its id, not on its position or on what else is in the file."""
    return derive_seed(seed, question_id)


def check_resumable(done: list[Record], generation: dict[str, Any], output: str | None) -> set[str]:
    """Ids already written; refuses an output made with other settings (it would mix two runs)."""
    for rec in done:
        theirs = rec.get("generation")
        if not _same_generation(theirs, generation):
            changed = sorted(k for k in generation if k not in SERVERS
                             and (not isinstance(theirs, dict) or theirs.get(k) != generation[k]))
            detail = ", ".join(f"{k} {theirs.get(k)!r} -> {generation[k]!r}" for k in changed
                               if isinstance(theirs, dict)) or "no generation settings recorded"
            raise MaskDPOError(f"{output}: already holds samples made with other settings ({detail}); "
                               "rerun with the same settings to resume, or choose another -o")
        if "id" not in rec:
            raise MaskDPOError(f"{output}: a record without 'id'; not a samples file, choose another -o")
    return {str(rec["id"]) for rec in done}


def waves(questions: list[Record], size: int) -> list[list[Record]]:
    return [questions[i:i + size] for i in range(0, len(questions), size)]


def sample_record(question: Record, texts: list[str], generation: dict[str, Any]) -> Record:
    return {**question, "responses": [{"index": j, "text": t} for j, t in enumerate(texts)],
            "generation": generation}


def run_sample(questions: str, output: str | None, *, model: str | None, backend: BackendOptions,
               params: GenerationParams) -> str:
    """Sample `params.n` responses per question into `output` (stdout if None); a one-line summary.

    `backend`: the backend and its settings (`backend_options` builds them from the flags).
    `model`: a local HF directory or alias (default smollm2-135m-instruct); with backend openai
    the served model's name (default: the first one the server lists).
    """
    # Everything is read and validated before anything is generated: bad input fails fast.
    records = [rec for _, rec in iter_records(questions, "questions")]
    served = isinstance(backend, OpenAIOptions)
    if not served:
        model = model or SMOLLM2_ALIAS

    def load() -> Any:
        engine = make_backend(backend.name, model, backend)
        if served:
            try:  # one real request with every setting, before any record: a refused one is an error now
                engine.probe(params)
            except BaseException:
                engine.close()
                raise
        return engine

    # A new output: the model loads before the file is opened, so a model that cannot load
    # leaves no file behind. A resumed one: only if something is left to sample. A served
    # engine is always asked first: the model id it serves is a setting a resume must match.
    resuming = output not in (None, STDIO) and Path(output).exists()
    engine = None if resuming and not served else load()
    try:
        generation = generation_settings(engine.model if served else model, backend.name, params)
        if served:
            generation.update(engine.describe())
        # What check_resumable reads, not the responses: resuming a large output stays small.
        keep = lambda rec: {k: rec[k] for k in ("id", "generation") if k in rec}  # noqa: E731
        with resumable_output(output, keep=keep) as (writer, done):
            done_ids = check_resumable(done, generation, display_name(output) if output else None)
            todo = [rec for rec in records if rec["id"] not in done_ids]
            resumed = len(records) - len(todo)
            if not todo:
                return f"{len(records)} questions ({resumed} resumed), nothing left to sample -> {_dest(output)}"
            engine = engine or load()
            meter = _Meter()
            with progress_bar("questions") as bar:
                task = bar.add_task("sample", total=len(records), completed=resumed, info="")

                def advance(questions_done: float) -> None:
                    bar.update(task, advance=questions_done, info=meter.info())

                if served:
                    _sample_served(engine, todo, params, generation, writer, meter, advance)
                else:
                    _sample_in_waves(engine, records, done_ids, params, generation, writer, meter, advance)
                bar.update(task, completed=resumed + meter.written)
    finally:
        if served and engine is not None:
            engine.close()
    return (f"{len(records)} questions ({resumed} resumed), {meter.written * params.n} responses, "
            f"{meter.info()} -> {_dest(output)}")


def _sample_in_waves(engine: Backend, records: list[Record], done_ids: set[str], params: GenerationParams,
                     generation: dict[str, Any], writer: RecordWriter, meter: _Meter,
                     advance: Callable[[float], None]) -> None:
    """In-process generation, wave by wave (module docstring: why waves)."""
    for wave in waves(records, max(1, engine.batch_size // params.n)):
        missing = [rec["id"] not in done_ids for rec in wave]
        if not any(missing):
            continue
        # Regenerated questions that are already written do not count as progress.
        share = sum(missing) / len(wave) / params.n

        def progress(tokens: int, finished: int) -> None:
            meter.tokens += tokens
            advance(finished * share)

        seeds = [question_seed(params.seed, rec["id"]) for rec in wave]
        responses = engine.generate([rec["prompt"] for rec in wave], params, seeds, on_progress=progress)
        for rec, texts, is_missing in zip(wave, responses, missing):
            if is_missing:
                writer.write(sample_record(rec, texts, generation))
                meter.written += 1


def _sample_served(engine: OpenAIBackend, todo: list[Record], params: GenerationParams,
                   generation: dict[str, Any], writer: RecordWriter, meter: _Meter,
                   advance: Callable[[float], None]) -> None:
    """Only the missing questions, many in flight, each written as soon as it and all before it are back."""
    def progress(tokens: int, finished: int) -> None:
        meter.tokens += tokens
        advance(finished / params.n)

    seeds = [question_seed(params.seed, rec["id"]) for rec in todo]
    with contextlib.closing(engine.stream([rec["prompt"] for rec in todo], params, seeds, progress)) as answers:
        for rec, texts in zip(todo, answers):
            writer.write(sample_record(rec, texts, generation))
            meter.written += 1


class _Meter:
    """Tokens generated and questions written since the backend was ready."""

    def __init__(self) -> None:
        self.start, self.tokens, self.written = time.perf_counter(), 0, 0

    def info(self) -> str:
        rate = self.tokens / max(time.perf_counter() - self.start, 1e-9)
        return f"{self.tokens} tokens, {rate:.1f} tokens/s"


def _dest(output: str | None) -> str:
    return "stdout" if output in (None, "-") else output
