"""`maskdpo sample`: K responses per question, seeded, batched, resumable.

Determinism across interruptions: the input is cut into fixed waves (consecutive questions
by input position, as many as fill one decode batch), and a wave with any question missing
from the output is generated whole again, so every row is always decoded in the same
company and with the same seeds; only the missing questions are then written. The same
seed therefore gives the same records whether or not the run was killed on the way.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from maskdpo_cli.backends import GenerationParams, make_backend
from maskdpo_cli.backends.base import Backend, derive_seed
from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.jsonl import STDIO, display_name, resumable_output
from maskdpo_cli.progress import progress_bar
from maskdpo_cli.records import Record, iter_records


def generation_settings(model: str, backend: str, params: GenerationParams) -> dict[str, Any]:
    """The samples record's "generation" object: what made these responses."""
    return {"model": model, "backend": backend, **params.as_record()}


def question_seed(seed: int, question_id: str) -> int:
    """A question's seed: depends on its id, not on its position or on what else is in the file."""
    return derive_seed(seed, question_id)


def check_resumable(done: list[Record], generation: dict[str, Any], output: str | None) -> set[str]:
    """Ids already written; refuses an output made with other settings (it would mix two runs)."""
    for rec in done:
        theirs = rec.get("generation")
        if theirs != generation:
            changed = sorted(k for k in generation if not isinstance(theirs, dict) or theirs.get(k) != generation[k])
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


def run_sample(questions: str, output: str | None, *, model: str, backend: str, params: GenerationParams,
               batch_size: int | None) -> str:
    """Sample `params.n` responses per question into `output` (stdout if None); a one-line summary."""
    # Everything is read and validated before anything is generated: bad input fails fast.
    records = [rec for _, rec in iter_records(questions, "questions")]
    generation = generation_settings(model, backend, params)

    def load() -> Backend:
        return make_backend(backend, model, **({"batch_size": batch_size} if batch_size else {}))

    # A new output: the model loads before the file is opened, so a model that cannot load
    # leaves no file behind. A resumed one: only if something is left to sample.
    resuming = output not in (None, STDIO) and Path(output).exists()
    engine = None if resuming else load()
    with resumable_output(output) as (writer, done):
        done_ids = check_resumable(done, generation, display_name(output) if output else None)
        resumed = sum(rec["id"] in done_ids for rec in records)
        if resumed == len(records):
            return f"{len(records)} questions ({resumed} resumed), nothing left to sample -> {_dest(output)}"
        engine = engine or load()
        meter = _Meter()
        with progress_bar("questions") as bar:
            task = bar.add_task("sample", total=len(records), completed=resumed, info="")
            for wave in waves(records, max(1, engine.batch_size // params.n)):
                missing = [rec["id"] not in done_ids for rec in wave]
                if not any(missing):
                    continue
                # Regenerated questions that are already written do not count as progress.
                share = sum(missing) / len(wave) / params.n

                def progress(tokens: int, finished: int) -> None:
                    meter.tokens += tokens
                    bar.update(task, advance=finished * share, info=meter.info())

                seeds = [question_seed(params.seed, rec["id"]) for rec in wave]
                responses = engine.generate([rec["prompt"] for rec in wave], params, seeds, on_progress=progress)
                for rec, texts, is_missing in zip(wave, responses, missing):
                    if is_missing:
                        writer.write(sample_record(rec, texts, generation))
                        meter.written += 1
                bar.update(task, completed=resumed + meter.written)
    return (f"{len(records)} questions ({resumed} resumed), {meter.written * params.n} responses, "
            f"{meter.info()} -> {_dest(output)}")


class _Meter:
    """Tokens generated and questions written since the backend was ready."""

    def __init__(self) -> None:
        self.start, self.tokens, self.written = time.perf_counter(), 0, 0

    def info(self) -> str:
        rate = self.tokens / max(time.perf_counter() - self.start, 1e-9)
        return f"{self.tokens} tokens, {rate:.1f} tokens/s"


def _dest(output: str | None) -> str:
    return "stdout" if output in (None, "-") else output
