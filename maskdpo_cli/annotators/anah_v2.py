"""The ANAH-v2 annotator: a chat judge labels each sentence in a three-turn conversation.

Turn 1 asks whether the sentence states verifiable facts (`<No Facts>` ends it: nofact).
Turn 2 asks for the information in the question's reference document that bears on the
sentence (`<No Reference Information>` ends it: unverifiable). Turn 3 asks for the
hallucination type (no hallucination / contradictory / unverifiable). Each turn is
appended after the judge's previous reply, in one conversation per sentence. Every
sentence is its own coroutine: it asks its next turn as soon as its previous reply is back,
with no barrier across sentences or questions, so a served judge always has work in flight.

A reply without the expected marker is asked again (up to --max-retries), then reported:
a label is never guessed. Judgments are cached by (judge, prompts, question, document,
sentence), so a sentence repeated across the K samples is judged once, and the cache is
appended to a file next to the output so a resumed run does not pay twice.

--prompts FILE replaces the wording. It is either the authors' own `anahv2_prompt.py`
(the prompts the ANAH-v2 model was trained on; read by anah_prompt_file, never run) or JSON:
    {"en": {"system": "...", "facts": "...", "reference": "...", "judge": "..."}, "zh": {...}}
Templates use {question}, {document} and {sentence}; "judge" may also use {reference}, the
judge's turn-2 reply. Only these placeholders are replaced; other braces are kept as written.
A missing language or key keeps the built-in wording.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from maskdpo_cli.annotators.anah_prompt_file import is_prompt_module, read_prompt_module
from maskdpo_cli.annotators.base import Verdict
from maskdpo_cli.annotators.judges import Messages, make_judge
from maskdpo_cli.errors import InputError, JudgeError, MaskDPOError
from maskdpo_cli.jsonl import RecordWriter, recover_appendable
from maskdpo_cli.records import LABELS
from maskdpo_cli.segmentation import detect_language

if TYPE_CHECKING:
    from maskdpo_cli.annotation import JudgeConfig

PROMPT_KEYS = ("system", "facts", "reference", "judge")
PLACEHOLDERS = {"system": {"question", "document"},
                "facts": {"question", "document", "sentence"},
                "reference": {"question", "document", "sentence"},
                "judge": {"question", "document", "sentence", "reference"}}
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_]\w*)\}")
# A deterministic judge repeats a malformed greedy reply: re-ask with some sampling.
REASK_TEMPERATURE = 0.7
CONTINUE = "continue"  # a turn's verdict that sends the sentence to the next turn

DEFAULT_PROMPTS: dict[str, dict[str, str]] = {
    "en": {
        "system": "",
        "facts": (
            "You are checking an answer for hallucinations, one sentence at a time.\n\n"
            "Question:\n{question}\n\n"
            "Sentence from the answer:\n{sentence}\n\n"
            "Does this sentence state anything that could be checked against a reliable source, "
            "such as names, dates, numbers, places, events or properties of things? Opinions, "
            "greetings, hedges and restatements of the question do not count.\n"
            "Reply with exactly one tag: <Facts Present> or <No Facts>."),
        "reference": (
            "Here is the reference document for the question:\n\n{document}\n\n"
            "List every piece of information in the document that bears on the sentence, "
            "whether it supports it or conflicts with it, separated by <SEP>. If the document "
            "says nothing relevant to the sentence, reply with exactly <No Reference Information>."),
        "judge": (
            "Now compare the sentence with the information you extracted.\n\n"
            "Sentence:\n{sentence}\n\n"
            "Reference information:\n{reference}\n\n"
            "Reply with exactly one tag:\n"
            "<No Hallucination> if the reference information supports everything the sentence states;\n"
            "<Contradictory> if the reference information conflicts with the sentence;\n"
            "<Unverifiable> if the sentence states something the reference information neither "
            "supports nor contradicts."),
    },
    "zh": {
        "system": "",
        "facts": (
            "你在逐句检查一个回答是否存在幻觉。\n\n"
            "问题：\n{question}\n\n"
            "回答中的一句话：\n{sentence}\n\n"
            "这句话是否陈述了可以通过可靠来源核实的内容，例如人名、日期、数字、地点、事件或事物的属性？"
            "个人观点、寒暄、模糊的措辞以及对问题的复述都不算。\n"
            "请只回复一个标签：<有事实> 或 <无事实>。"),
        "reference": (
            "以下是该问题的参考文档：\n\n{document}\n\n"
            "请列出文档中与这句话有关的全部信息，无论是支持还是与之冲突，多条信息之间用 <SEP> 分隔。"
            "如果文档中没有与这句话相关的信息，请只回复 <无参考信息>。"),
        "judge": (
            "现在请把这句话与你提取的参考信息进行比较。\n\n"
            "句子：\n{sentence}\n\n"
            "参考信息：\n{reference}\n\n"
            "请只回复一个标签：\n"
            "<无幻觉>：参考信息支持这句话陈述的全部内容；\n"
            "<矛盾>：参考信息与这句话相冲突；\n"
            "<无法验证>：这句话陈述的内容在参考信息中既得不到支持也没有被否定。"),
    },
}

# Markers per turn, lower-cased with spaces removed (how replies are compared).
FACTS_MARKERS = {"nofact": ("nofacts", "无事实"), CONTINUE: ("factspresent", "有事实")}
REFERENCE_MARKERS = {"unverifiable": ("noreferenceinformation", "无参考信息")}
JUDGE_MARKERS = {"ok": ("nohallucination", "无幻觉"), "contradictory": ("contradictory", "矛盾"),
                 "unverifiable": ("unverifiable", "无法验证")}


def find_marker(reply: str, markers: dict[str, tuple[str, ...]]) -> str | None:
    """The one verdict whose marker the reply contains, or None (none, or several disagreeing).

    A tagged marker (`<Contradictory>`) is trusted over a bare word, so a reply that gives the
    tag and mentions another type in passing still reads as the tag.
    """
    norm = "".join(reply.lower().split())
    for form in ("<{}>", "{}"):
        hits = {verdict for verdict, words in markers.items() if any(form.format(w) in norm for w in words)}
        if len(hits) == 1:
            return hits.pop()
        if hits:
            return None
    return None


def _parse_facts(reply: str) -> str | None:
    return find_marker(reply, FACTS_MARKERS)


def _parse_reference(reply: str) -> str | None:
    if not reply.strip():
        return None
    return find_marker(reply, REFERENCE_MARKERS) or CONTINUE  # anything else is the reference


def _parse_judge(reply: str) -> str | None:
    return find_marker(reply, JUDGE_MARKERS)


TURNS: tuple[tuple[str, Callable[[str], str | None], str], ...] = (
    ("facts", _parse_facts, "<Facts Present> or <No Facts> (<有事实>/<无事实>)"),
    ("reference", _parse_reference, "a non-empty reference or <No Reference Information> (<无参考信息>)"),
    ("judge", _parse_judge, "<No Hallucination>, <Contradictory> or <Unverifiable> (<无幻觉>/<矛盾>/<无法验证>)"),
)


def load_prompts(path: str | Path | None, defaults: dict[str, dict[str, str]] | None = None,
                 placeholders: dict[str, set[str]] | None = None) -> dict[str, dict[str, str]]:
    """The built-in prompts, overridden by a --prompts JSON file; every template is checked.

    `defaults` and `placeholders` (template key -> the placeholders it may use) are another
    annotator's own; anah-v2's when omitted.
    """
    defaults = DEFAULT_PROMPTS if defaults is None else defaults
    placeholders = PLACEHOLDERS if placeholders is None else placeholders
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
            unknown = set(_PLACEHOLDER_RE.findall(template)) - placeholders[key]
            if unknown:
                raise InputError(f"unknown placeholder {{{sorted(unknown)[0]}}}; this template may use "
                                 + ", ".join(f"{{{p}}}" for p in sorted(placeholders[key])), name, field=where)
            prompts[lang][key] = template
    return prompts


def render(template: str, values: dict[str, str]) -> str:
    """Replace known {placeholders} only: documents and user templates may contain braces."""
    return _PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


VERDICT_KEYS = ("key", "label", "facts")  # what a cached judgment needs to be reused


class JudgmentCache:
    """Judgments by key: those of earlier runs (read once, from the file), and new ones appended to it.

    Each judgment is a record {"key", "label", ...details}; `record` returns it whole, for
    annotators that keep more than the label (factscore keeps the sentence's facts).
    With keep_new=False a judgment made in this run is written, not kept in memory: its
    caller holds it already, and keeping every one would grow memory with the input
    (millions of sentences at paper scale); judgments read back keep only their verdict.
    Lines are flushed as they come (a kill -9 loses none) and synced on close.
    """

    def __init__(self, path: str | Path | None, keep_new: bool = True) -> None:
        self.path = None if path is None else Path(path)
        self.keep_new = keep_new
        self._labels: dict[str, dict[str, Any]] | None = None
        self._writer: RecordWriter | None = None
        self._fh: Any = None

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._labels is None:
            self._labels = {}
            try:
                saved = recover_appendable(self.path) if self.path else []
            except OSError as err:  # e.g. a read-only file whose torn last line cannot be cut
                raise MaskDPOError(f"{self.path}: cannot resume judgments ({err.strerror})") from None
            for lineno, rec in enumerate(saved, start=1):
                if not isinstance(rec.get("key"), str) or rec.get("label") not in LABELS:
                    raise InputError("not a judgment record; delete the file to judge again",
                                     str(self.path), lineno)
                # Without keep_new only the verdict (label, facts) is read back: replies are for people.
                self._labels[rec["key"]] = rec if self.keep_new else {k: rec[k] for k in VERDICT_KEYS if k in rec}
        return self._labels

    def get(self, key: str) -> str | None:
        rec = self._load().get(key)
        return None if rec is None else rec["label"]

    def record(self, key: str) -> dict[str, Any] | None:
        return self._load().get(key)

    def put(self, key: str, label: str, **details: Any) -> None:
        rec = {"key": key, "label": label, **details}
        if self.keep_new:
            self._load()[key] = rec
        if self.path is None:
            return
        try:
            if self._writer is None:
                self._load()  # a torn last line is cut before we append
                self._fh = open(self.path, "a", encoding="utf-8")
                self._writer = RecordWriter(self._fh)
            self._writer.write(rec)
        except OSError as err:
            raise MaskDPOError(f"{self.path}: cannot write judgments ({err.strerror})") from None

    def close(self) -> None:
        if self._fh is not None:
            fh, self._fh, self._writer = self._fh, None, None
            try:
                with fh:
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as err:
                raise MaskDPOError(f"{self.path}: cannot write judgments ({err.strerror})") from None


class AnahV2Annotator:
    name = "anah-v2"

    def __init__(self, config: JudgeConfig) -> None:
        self.config = config
        self.prompts = load_prompts(config.prompts_file)  # a bad file stops us before any judging
        self.prompts_digest = _digest(self.prompts)[:16]
        self.chat = make_judge(config)
        self.cache = JudgmentCache(config.cache_path, keep_new=False)

    def validate(self, record: dict[str, Any], path: str = "<input>", line: int | None = None) -> None:
        document = record.get("document")
        if not isinstance(document, str) or not document.strip():
            raise InputError("missing or empty: anah-v2 checks each sentence against the question's "
                             "reference document", path, line, "document")

    def describe(self) -> dict[str, Any]:
        prompts: Any = "builtin"
        if self.config.prompts_file is not None:
            prompts = {"file": str(self.config.prompts_file), "sha256": self.prompts_digest}
        return {"name": self.name, "judge": self.chat.describe(), "prompts": prompts}

    async def aclose(self) -> None:
        try:
            await self.chat.aclose()
        finally:
            self.cache.close()

    async def judge(self, record: dict[str, Any], sentences: list[str]) -> list[Verdict]:
        """Every sentence runs its own conversation at once; each moves on as soon as its reply is back."""
        self.validate(record)  # callers other than run_annotate get the same clear error
        await self.chat.ready()  # the served model's name is part of every cache key
        language = record.get("language") or detect_language(record["question"] + record["document"])
        outcomes = await _all([self._sentence(record, language, s) for s in sentences])
        raise_failures(record, outcomes, self.config.max_retries + 1, self.cache.path)
        return [Verdict(label) for label in outcomes]

    def _key(self, record: dict[str, Any], language: str, sentence: str) -> str:
        """Same judge, same prompts, same question and document, same sentence: same label."""
        judge = self.chat.describe()
        identity = [judge["backend"], judge["model"], language, self.prompts_digest,
                    record["question"], record["document"], sentence]
        return _digest(identity)

    async def _sentence(self, record: dict[str, Any], language: str, sentence: str) -> str | _Failure:
        """The three turns of one sentence's conversation (fewer when a turn decides); cached."""
        key = self._key(record, language, sentence)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        templates = self.prompts[language]
        values = {"question": record["question"], "document": record["document"], "sentence": sentence}
        messages: Messages = []
        if templates["system"].strip():
            messages.append({"role": "system", "content": render(templates["system"], values)})
        replies: list[str] = []
        for turn, parse, expected in TURNS:
            values["reference"] = replies[-1] if replies else ""
            messages.append({"role": "user", "content": render(templates[turn], values)})
            verdict, reply = await self._ask(messages, parse)
            if verdict is None:
                return _Failure(sentence, expected, reply)
            messages.append({"role": "assistant", "content": reply})
            replies.append(reply)
            if verdict != CONTINUE:
                self.cache.put(key, verdict, sentence=sentence, replies=replies)
                return verdict
        raise AssertionError("the last turn always decides")

    async def _ask(self, messages: Messages, parse: Callable[[str], str | None]) -> tuple[str | None, str]:
        """(verdict, reply) for the conversation's last turn; a malformed reply is asked again."""
        reply = ""
        for attempt in range(self.config.max_retries + 1):
            temperature = 0.0 if attempt == 0 else REASK_TEMPERATURE
            reply = await self.chat.reply(messages, temperature=temperature)
            verdict = parse(reply)
            if verdict is not None:
                return verdict, reply
        return None, reply


@dataclass(frozen=True)
class _Failure:
    """A sentence the judge never answered in the protocol's terms."""

    sentence: str
    expected: str
    reply: str


def raise_failures(record: dict[str, Any], outcomes: list[Any], attempts: int, cache_path: Path | None) -> None:
    """The clear error for sentences the judge never answered in the protocol's terms, if any."""
    failures = [o for o in outcomes if isinstance(o, _Failure)]
    if not failures:
        return
    first = failures[0]
    more = f" ({len(failures) - 1} more sentences failed the same way)" if len(failures) > 1 else ""
    kept = f"; judgments so far are kept in {cache_path}, rerun to resume" if cache_path else ""
    raise JudgeError(
        f"question {record['id']!r}: the judge gave no usable reply for the sentence "
        f"{first.sentence[:200]!r} after {attempts} attempts; expected "
        f"{first.expected}, last reply: {first.reply[:300]!r}{more}{kept}")


async def _all(coroutines: list[Any]) -> list[Any]:
    """Their results, in order; on the first exception the others are cancelled, then it is raised."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["AnahV2Annotator", "DEFAULT_PROMPTS", "load_prompts", "find_marker", "render", "JudgmentCache"]
