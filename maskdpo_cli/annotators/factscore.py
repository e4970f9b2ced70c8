"""The FactScore annotator: atomic facts, each checked against the question's document.

After FActScore (Min et al., 2023), with a chat judge reached through the same backends as
anah-v2 (served endpoints, transformers, LMDeploy):

1. Split: the judge breaks each sentence into atomic facts, one per line starting with
   "- ", or replies <No Facts> for a sentence that claims nothing checkable.
2. Retrieve: the question's `document` is cut into passages and BM25 (the bm25s package)
   picks the top 5 for each fact (maskdpo_cli.annotators.retrieval), as FactScore does
   over Wikipedia.
3. Verify: the judge sees those passages and the fact and answers True or False.

A fact is supported when the verdict is True. The sentence's label follows from its facts,
so the sentence-level figures stay comparable with anah-v2: no facts -> nofact, every fact
supported -> ok, any fact not supported -> unverifiable (FactScore does not tell a
contradicted fact from an unsupported one, so neither does this label).

A reply that is neither a list of facts nor <No Facts>, or neither True nor False (both
words without one leading counts as neither), is asked again with some sampling, up to
--max-retries times, then reported: a verdict is never guessed (FactScore's own script
guesses from keywords such as "not" or "unknown"; this one does not). Judgments are cached
per sentence, facts included, in the same judgment file as anah-v2's, under keys that
name this annotator, so a rerun or a sentence repeated across samples costs nothing.

--prompts FILE replaces the wording, e.g. with FactScore's own prompts:
    {"en": {"system": "...", "split": "...", "verify": "..."}, "zh": {...}}
"split" may use {question}, {topic} and {sentence}; "verify" may use {question}, {topic},
{passages} and {fact}; "system" {question} and {topic}. {topic} is the question's "topic"
field, or the question itself when it has none (FactScore's topic is the person asked
about). {passages} is the retrieved passages, best first, each as "Passage N:" and its
text, separated by blank lines. A missing language or key keeps the built-in wording.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from maskdpo_cli.annotators.anah_v2 import (REASK_TEMPERATURE, JudgmentCache, _all, _digest, _Failure, load_prompts,
                                           raise_failures, render)
from maskdpo_cli.annotators.base import Fact, Verdict
from maskdpo_cli.annotators.judges import make_judge
from maskdpo_cli.annotators.retrieval import PASSAGE_WORDS, TOP_K, PassageIndex
from maskdpo_cli.errors import InputError
from maskdpo_cli.segmentation import detect_language

if TYPE_CHECKING:
    from maskdpo_cli.annotation import JudgeConfig

T = TypeVar("T")

PLACEHOLDERS = {"system": {"question", "topic"},
                "split": {"question", "topic", "sentence"},
                "verify": {"question", "topic", "passages", "fact"}}

DEFAULT_PROMPTS: dict[str, dict[str, str]] = {
    "en": {
        "system": "",
        "split": (
            "Break a sentence from an answer into atomic facts: short statements that each make "
            "exactly one claim and can be read on their own. Replace pronouns with the names they "
            "stand for; the question tells who or what the answer is about.\n\n"
            "Question:\n{question}\n\n"
            "Sentence:\n{sentence}\n\n"
            "Write one fact per line, each line starting with \"- \". If the sentence claims nothing "
            "that could be checked (a greeting, an opinion, a hedge, a restatement of the question), "
            "reply with exactly <No Facts>."),
        "verify": (
            "Here are passages from a reference document for the question \"{question}\".\n\n"
            "{passages}\n\n"
            "Claim: {fact}\n\n"
            "Do the passages support the claim? Answer True if they state it or it follows from them; "
            "answer False if they contradict it or say nothing about it. Reply with one word: True or False."),
    },
    "zh": {
        "system": "",
        "split": (
            "请把回答中的一句话拆分成原子事实：每条事实是一句简短、独立可读、只陈述一件事的话。"
            "请把代词换成它所指的名字；问题说明了回答的对象。\n\n"
            "问题：\n{question}\n\n"
            "句子：\n{sentence}\n\n"
            "每行写一条事实，每行以 \"- \" 开头。如果这句话没有陈述任何可以核实的内容"
            "（寒暄、观点、模糊的措辞、对问题的复述），请只回复 <无事实>。"),
        "verify": (
            "以下是问题“{question}”的参考文档片段。\n\n"
            "{passages}\n\n"
            "陈述：{fact}\n\n"
            "这些片段是否支持该陈述？如果片段中写明了它或能由片段推出，回答 True；"
            "如果片段与它矛盾或没有提到它，回答 False。请只回复一个词：True 或 False。"),
    },
}

NO_FACTS_MARKERS = ("<nofacts>", "<无事实>")
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+(.*\S)\s*$")
_VERDICT_WORD = re.compile(r"\b(true|false)\b")


def parse_facts(reply: str) -> tuple[str, ...] | None:
    """The facts of a split reply: its bulleted lines, or () for <No Facts>; None when it is neither."""
    facts = [m.group(1) for m in map(_BULLET.match, reply.splitlines()) if m]
    norm = "".join(reply.lower().split())
    no_facts = any(marker in norm for marker in NO_FACTS_MARKERS)
    if facts:
        return None if no_facts else tuple(dict.fromkeys(facts))  # both at once: contradictory reply
    return () if no_facts else None


def parse_verdict(reply: str) -> bool | None:
    """True/False from a verify reply: its leading word, else the only one of the two it uses."""
    words = _VERDICT_WORD.findall(reply.lower())
    if not words:
        return None
    leading = re.match(r"\W*(true|false)\b", reply.lower())
    if leading:
        return leading.group(1) == "true"
    return words[0] == "true" if len(set(words)) == 1 else None


def passages_text(passages: list[str]) -> str:
    return "\n\n".join(f"Passage {i}:\n{p}" for i, p in enumerate(passages, start=1))


def sentence_label(facts: tuple[Fact, ...]) -> str:
    if not facts:
        return "nofact"
    return "ok" if all(f.supported for f in facts) else "unverifiable"


class FactScoreAnnotator:
    name = "factscore"

    def __init__(self, config: JudgeConfig, top_k: int = TOP_K, passage_words: int = PASSAGE_WORDS) -> None:
        self.config = config
        self.top_k, self.passage_words = top_k, passage_words
        self.prompts = load_prompts(config.prompts_file, DEFAULT_PROMPTS, PLACEHOLDERS)
        self.prompts_digest = _digest(self.prompts)[:16]
        self.chat_judge = make_judge(config)  # not `judge`: that is the Annotator method
        self.cache = JudgmentCache(config.cache_path, keep_new=False)  # memory stays flat, as anah-v2's

    def validate(self, record: dict[str, Any], path: str = "<input>", line: int | None = None) -> None:
        document = record.get("document")
        if not isinstance(document, str) or not document.strip():
            raise InputError("missing or empty: factscore checks each atomic fact against passages of "
                             "the question's reference document", path, line, "document")

    def describe(self) -> dict[str, Any]:
        prompts: Any = "builtin"
        if self.config.prompts_file is not None:
            prompts = {"file": str(self.config.prompts_file), "sha256": self.prompts_digest}
        return {"name": self.name, "judge": self.chat_judge.describe(), "prompts": prompts,
                "retrieval": {"method": "bm25", "package": "bm25s", "top_k": self.top_k,
                              "passage_words": self.passage_words}}

    async def aclose(self) -> None:
        try:
            await self.chat_judge.aclose()
        finally:
            self.cache.close()

    async def judge(self, record: dict[str, Any], sentences: list[str]) -> list[Verdict]:
        """Every sentence is split, and each of its facts verified, at once; each step awaits only its own replies."""
        self.validate(record)  # callers other than run_annotate get the same clear error
        await self.chat_judge.ready()  # the cache key names the judge's model
        language = record.get("language") or detect_language(record["question"] + record["document"])
        templates = self.prompts[language]
        context = {"question": record["question"], "topic": _topic(record)}
        system = [{"role": "system", "content": render(templates["system"], context)}] \
            if templates["system"].strip() else []
        index: list[PassageIndex] = []  # built on the first fact to verify, once per question

        def passages(fact: str) -> str:
            if not index:
                index.append(PassageIndex.of_document(record["document"], self.passage_words, language))
            return passages_text(index[0].top(fact, self.top_k))

        async def verify(fact: str) -> tuple[bool | None, str]:
            prompt = render(templates["verify"], {**context, "passages": passages(fact), "fact": fact})
            return await self._ask(system + [{"role": "user", "content": prompt}], parse_verdict)

        async def one(sentence: str) -> Verdict | _Failure:
            key = self._key(record, language, sentence)
            saved = self.cache.record(key)
            if saved is not None:
                return Verdict(saved["label"], tuple(Fact(f["text"], bool(f["supported"])) for f in saved["facts"]))
            prompt = render(templates["split"], {**context, "sentence": sentence})
            texts, reply = await self._ask(system + [{"role": "user", "content": prompt}], parse_facts)
            if texts is None:
                return _Failure(sentence, 'atomic facts as lines starting with "- ", or <No Facts> (<无事实>)', reply)
            checked = await _all([verify(t) for t in texts])
            bad = next((reply for verdict, reply in checked if verdict is None), None)
            if bad is not None:
                return _Failure(sentence, "True or False for each of its facts", bad)
            facts = tuple(Fact(t, verdict) for t, (verdict, _) in zip(texts, checked))
            label = sentence_label(facts)
            self.cache.put(key, label, sentence=sentence, facts=[{"text": f.text, "supported": f.supported}
                                                                  for f in facts])
            return Verdict(label, facts)

        outcomes = await _all([one(s) for s in sentences])
        raise_failures(record, outcomes, self.config.max_retries + 1, self.cache.path)
        return outcomes

    def _key(self, record: dict[str, Any], language: str, sentence: str) -> str:
        """Same judge, prompts, retrieval, question, topic, document and sentence: same facts."""
        judge = self.chat_judge.describe()
        identity = [self.name, judge["backend"], judge["model"], language, self.prompts_digest, self.top_k,
                    self.passage_words, record["question"], record.get("topic"), record["document"], sentence]
        return _digest(identity)

    async def _ask(self, messages: list[dict[str, str]], parse: Callable[[str], T | None]) -> tuple[T | None, str]:
        """(parsed, reply); a malformed reply is asked again with some sampling, then given up (None)."""
        reply = ""
        for attempt in range(self.config.max_retries + 1):
            reply = await self.chat_judge.reply(messages, temperature=0.0 if attempt == 0 else REASK_TEMPERATURE)
            value = parse(reply)
            if value is not None:
                return value, reply
        return None, reply


def _topic(record: dict[str, Any]) -> str:
    topic = record.get("topic")
    return topic if isinstance(topic, str) and topic.strip() else record["question"]


__all__ = ["FactScoreAnnotator", "DEFAULT_PROMPTS", "PLACEHOLDERS", "parse_facts", "parse_verdict",
           "sentence_label"]
