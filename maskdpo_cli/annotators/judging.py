"""What the chat-judge annotators (anah-v2, factscore) share; each keeps only its protocol.

- `JudgeConfig` (defined with the judges): how to reach the judge (--judge-* options), and
  where judgments are kept.
- Prompts: `load_prompts` reads a --prompts file over an annotator's built-in templates and
  checks every placeholder; `render` fills them in.
- `JudgmentCache`: judgments by key, appended to a file next to the output and looked up
  on disk, so a sentence already judged before a kill is never asked twice, and resuming
  holds none of them in memory.
- `ChatJudgeAnnotator`: the base of both annotators. It builds the judge, prompts and cache
  from a JudgeConfig, checks that a record has its reference document, asks with re-asks
  (`ask`: a malformed reply is asked again with some sampling, then given up), runs every
  sentence of a question at once (`judge`), and reports the sentences the judge never
  answered (`Failure`, `raise_failures`): a verdict is never guessed.

A protocol subclass sets `name`, `default_prompts`, `placeholders` and `document_use`, and
implements `judge_sentence` (and, when it needs per-question state, `start_question`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from maskdpo_cli.annotators.anah_prompt_file import is_prompt_module, read_prompt_module
from maskdpo_cli.annotators.base import Verdict
from maskdpo_cli.annotators.judges import JudgeConfig, Messages, make_judge  # JudgeConfig: public here too
from maskdpo_cli.errors import InputError, JudgeError, MaskDPOError
from maskdpo_cli.jsonl import RecordWriter
from maskdpo_cli.records import LABELS
from maskdpo_cli.segmentation import detect_language

T = TypeVar("T")
Prompts = dict[str, dict[str, str]]  # language -> template key -> template

# A deterministic judge repeats a malformed greedy reply: re-ask with some sampling.
REASK_TEMPERATURE = 0.7
PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_]\w*)\}")


# ----------------------------------------------------------------------------- prompts

def load_prompts(path: str | Path | None, defaults: Prompts, placeholders: dict[str, set[str]]) -> Prompts:
    """`defaults` overridden by a --prompts file (JSON, or the authors' anahv2_prompt.py); every template is checked.

    `placeholders` maps each template key to the placeholders it may use. A language or key
    the file leaves out keeps its default; an unknown language, key or placeholder is refused.
    """
    prompts = {lang: dict(templates) for lang, templates in defaults.items()}
    if path is None:
        return prompts
    name = str(path)
    try:
        if is_prompt_module(path):  # the authors' anahv2_prompt.py, read without running it
            user: Any = read_prompt_module(path)
        else:
            user = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MaskDPOError(f"--prompts {name}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"not a readable JSON file ({err})", name) from None
    if not isinstance(user, dict):
        raise InputError(f'expected an object like {{"en": {{"{next(iter(placeholders))}": "...", ...}}}}', name)
    for lang, templates in user.items():
        if lang not in prompts:
            raise InputError(f"unknown language; expected {', '.join(prompts)}", name, field=lang)
        if not isinstance(templates, dict):
            raise InputError("expected an object of templates", name, field=lang)
        for key, template in templates.items():
            where = f"{lang}.{key}"
            if key not in placeholders:
                raise InputError(f"unknown template; expected {', '.join(placeholders)}", name, field=where)
            if not isinstance(template, str) or (key != "system" and not template.strip()):
                raise InputError("expected a non-empty string", name, field=where)
            unknown = set(PLACEHOLDER_RE.findall(template)) - placeholders[key]
            if unknown:
                raise InputError(f"unknown placeholder {{{sorted(unknown)[0]}}}; this template may use "
                                 + ", ".join(f"{{{p}}}" for p in sorted(placeholders[key])), name, field=where)
            prompts[lang][key] = template
    return prompts


def render(template: str, values: dict[str, str]) -> str:
    """Replace known {placeholders} only: documents and user templates may contain braces."""
    return PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def digest(value: Any) -> str:
    """A stable hash of a JSON-able value: cache keys, and the fingerprint of the prompts in use."""
    return hashlib.sha256(json.dumps(value, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- the judgment cache

VERDICT_KEYS = ("label", "facts")  # what a cached judgment needs to be reused
HEAD_BYTES = 4096  # the index checks that the file still starts as it did when indexed


class JudgmentCache:
    """Judgments by key, kept in a JSON-lines file and looked up on disk through an SQLite index.

    The file (OUTPUT.judgments.jsonl) is the record: one {"key", "label", ...details} per
    judgment, appended and flushed as it is made, so a kill -9 loses none, and readable by
    people (anah-v2 keeps the judge's replies there). The index beside it (the same name with
    the suffix .sqlite) maps each key to its verdict (VERDICT_KEYS) and remembers how far
    into the file it has read. When a run starts, the lines appended since (the last run's
    judgments; a torn last line is cut first) are indexed in one streaming pass, so
    resuming holds no judgment in memory whatever the file's size.

    Judgments made in this run are written, not indexed: `annotate` asks each distinct
    sentence of a question once, and the next run indexes them. The index is derived
    data: deleted, it is rebuilt from the file; one that no longer matches the file
    (shortened, or starting differently) is rebuilt too.
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = None if path is None else Path(path)
        self.index_path = None if self.path is None else self.path.with_suffix(".sqlite")
        self._db: sqlite3.Connection | None = None
        self._opened = False
        self._writer: RecordWriter | None = None
        self._fh: Any = None

    def get(self, key: str) -> str | None:
        verdict = self.record(key)
        return None if verdict is None else verdict["label"]

    def record(self, key: str) -> dict[str, Any] | None:
        """{"key", "label", and "facts" when the annotator kept them} for a judgment of an earlier run."""
        self._open()
        if self._db is None:
            return None
        row = self._db.execute("SELECT verdict FROM judgments WHERE key = ?", (key,)).fetchone()
        return None if row is None else {"key": key, **json.loads(row[0])}

    def put(self, key: str, label: str, **details: Any) -> None:
        if self.path is None:
            return
        self._open()  # a torn last line is cut before we append
        try:
            if self._writer is None:
                if self._db is None and self.index_path is not None:
                    self.index_path.unlink(missing_ok=True)  # a new file: an old index would not match it
                self._fh = open(self.path, "a", encoding="utf-8")
                self._writer = RecordWriter(self._fh)
            self._writer.write({"key": key, "label": label, **details})
        except OSError as err:
            raise MaskDPOError(f"{self.path}: cannot write judgments ({err.strerror})") from None

    def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            db.close()
        if self._fh is not None:
            fh, self._fh, self._writer = self._fh, None, None
            try:
                with fh:
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as err:
                raise MaskDPOError(f"{self.path}: cannot write judgments ({err.strerror})") from None

    def _open(self) -> None:
        """Open the index and bring it up to the end of the file (once): nothing to do without a file."""
        if self._opened:
            return
        self._opened = True
        if self.path is None or self.index_path is None or not self.path.exists():
            return
        try:
            self._db = sqlite3.connect(self.index_path)
            self._catch_up(self._db)
        except OSError as err:  # e.g. a read-only file whose torn last line cannot be cut
            raise MaskDPOError(f"{self.path}: cannot resume judgments ({err.strerror})") from None
        except sqlite3.Error as err:
            raise MaskDPOError(f"{self.index_path}: cannot index judgments ({err}); it is rebuilt from "
                               f"{self.path.name} when deleted") from None

    def _catch_up(self, db: sqlite3.Connection) -> None:
        assert self.path is not None
        db.execute("PRAGMA synchronous = OFF")  # derived data: a crash at worst leaves lines to index again
        db.execute("CREATE TABLE IF NOT EXISTS judgments (key TEXT PRIMARY KEY, verdict TEXT NOT NULL) WITHOUT ROWID")
        db.execute("CREATE TABLE IF NOT EXISTS progress (upto INTEGER NOT NULL, lines INTEGER NOT NULL, "
                   "head TEXT NOT NULL)")
        row = db.execute("SELECT upto, lines, head FROM progress").fetchone()
        upto, lines = (row[0], row[1]) if row and row[0] <= self.path.stat().st_size \
            and row[2] == self._head(row[0]) else (0, 0)
        with db:  # one transaction: a kill -9 during it leaves the index as it was
            if upto == 0:
                db.execute("DELETE FROM judgments")
            end, lines = self._index_lines(db, upto, lines)
            db.execute("DELETE FROM progress")
            db.execute("INSERT INTO progress VALUES (?, ?, ?)", (end, lines, self._head(end)))

    def _index_lines(self, db: sqlite3.Connection, upto: int, lines: int) -> tuple[int, int]:
        """Index the complete lines from byte `upto` on; cut a torn last line. Returns (end, lines indexed)."""
        assert self.path is not None
        end, lineno, cut = upto, lines, None
        with open(self.path, "rb") as fh:
            fh.seek(upto)

            def verdicts() -> Iterator[tuple[str, str]]:
                nonlocal end, lineno, cut
                for line in fh:
                    if not line.endswith(b"\n"):  # a torn write: everything after the last newline
                        cut = end
                        return
                    try:
                        rec = json.loads(line) if line.strip() else None
                    except ValueError:
                        if not fh.peek(1):  # a torn final record that happened to end in a newline byte
                            cut = end
                            return
                        rec = {}
                    lineno += 1
                    if rec is not None:
                        if not isinstance(rec, dict) or not isinstance(rec.get("key"), str) \
                                or rec.get("label") not in LABELS:
                            raise InputError("not a judgment record; delete the file to judge again",
                                             str(self.path), lineno)
                        yield rec["key"], json.dumps({k: rec[k] for k in VERDICT_KEYS if k in rec},
                                                     ensure_ascii=False)
                    end += len(line)

            db.executemany("INSERT OR REPLACE INTO judgments VALUES (?, ?)", verdicts())
        if cut is not None:
            os.truncate(self.path, cut)
        return end, lineno

    def _head(self, size: int) -> str:
        assert self.path is not None
        with open(self.path, "rb") as fh:
            return hashlib.sha256(fh.read(min(size, HEAD_BYTES))).hexdigest()


# ----------------------------------------------------------------------------- failures

@dataclass(frozen=True)
class Failure:
    """A sentence the judge never answered in the protocol's terms: what was expected, and its last reply."""

    sentence: str
    expected: str
    reply: str


def raise_failures(record: dict[str, Any], outcomes: list[Any], attempts: int, cache_path: Path | None) -> None:
    """The clear error for the sentences of `record` the judge never answered (Failure outcomes), if any."""
    failures = [o for o in outcomes if isinstance(o, Failure)]
    if not failures:
        return
    first = failures[0]
    more = f" ({len(failures) - 1} more sentences failed the same way)" if len(failures) > 1 else ""
    kept = f"; judgments so far are kept in {cache_path}, rerun to resume" if cache_path else ""
    raise JudgeError(
        f"question {record['id']!r}: the judge gave no usable reply for the sentence "
        f"{first.sentence[:200]!r} after {attempts} attempts; expected "
        f"{first.expected}, last reply: {first.reply[:300]!r}{more}{kept}")


async def gather_all(coroutines: list[Any]) -> list[Any]:
    """Their results, in order; on the first exception the others are cancelled, then it is raised."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ----------------------------------------------------------------------------- the annotators' base

class ChatJudgeAnnotator:
    """An annotator that asks a chat judge about each sentence, checked against the question's document.

    Every sentence of a question runs as its own coroutine, so each moves to its next request
    as soon as its previous reply is back, with no barrier across sentences or questions.
    """

    name: str
    fact_level: bool
    default_prompts: Prompts
    placeholders: dict[str, set[str]]
    document_use: str  # why the document is needed, for the error when a record has none

    def __init__(self, config: JudgeConfig) -> None:
        self.config = config
        self.prompts = load_prompts(config.prompts_file, self.default_prompts, self.placeholders)  # fails early
        self.prompts_digest = digest(self.prompts)[:16]
        self.chat_judge = make_judge(config)  # not `judge`: that is the Annotator method
        self.cache = JudgmentCache(config.cache_path)

    def validate(self, record: dict[str, Any], path: str = "<input>", line: int | None = None) -> None:
        document = record.get("document")
        if not isinstance(document, str) or not document.strip():
            raise InputError(f"missing or empty: {self.name} {self.document_use}", path, line, "document")

    def describe(self) -> dict[str, Any]:
        prompts: Any = "builtin"
        if self.config.prompts_file is not None:
            prompts = {"file": str(self.config.prompts_file), "sha256": self.prompts_digest}
        return {"name": self.name, "judge": self.chat_judge.describe(), "prompts": prompts}

    async def aclose(self) -> None:
        try:
            await self.chat_judge.aclose()
        finally:
            self.cache.close()

    async def judge(self, record: dict[str, Any], sentences: list[str]) -> list[Verdict]:
        """Every sentence at once; a sentence the judge never answers stops the question with a clear error."""
        self.validate(record)  # callers other than run_annotate get the same clear error
        await self.chat_judge.ready()  # the served model's name is part of every cache key
        language = record.get("language") or detect_language(record["question"] + record["document"])
        question = self.start_question(record, language)
        outcomes = await gather_all([self.judge_sentence(question, s) for s in sentences])
        raise_failures(record, outcomes, self.config.max_retries + 1, self.cache.path)
        return outcomes

    def start_question(self, record: dict[str, Any], language: str) -> Any:
        """What every sentence of the question shares (the record and its language by default)."""
        return record, language

    async def judge_sentence(self, question: Any, sentence: str) -> Verdict | Failure:
        """The protocol: one sentence's verdict (cached), or a Failure."""
        raise NotImplementedError

    async def ask(self, messages: Messages, parse: Callable[[str], T | None]) -> tuple[T | None, str]:
        """(parsed, reply) for the conversation's last turn; a malformed reply is asked again, then given up (None)."""
        reply = ""
        for attempt in range(self.config.max_retries + 1):
            reply = await self.chat_judge.reply(messages, temperature=0.0 if attempt == 0 else REASK_TEMPERATURE)
            value = parse(reply)
            if value is not None:
                return value, reply
        return None, reply


__all__ = ["JudgeConfig", "ChatJudgeAnnotator", "JudgmentCache", "Failure", "raise_failures", "gather_all",
           "load_prompts", "render", "digest", "REASK_TEMPERATURE", "PLACEHOLDER_RE", "Prompts"]
