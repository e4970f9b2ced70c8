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

Asking, re-asking, caching and failure reports are maskdpo_cli.annotators.judging's,
shared with anah-v2; this module holds the protocol.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from maskdpo_cli.annotators.base import Fact, Verdict
from maskdpo_cli.annotators.judges import Messages
from maskdpo_cli.annotators.judging import ChatJudgeAnnotator, Failure, JudgeConfig, digest, gather_all, render
from maskdpo_cli.annotators.retrieval import PASSAGE_WORDS, TOP_K, PassageIndex

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


@dataclass
class Question:
    """What every sentence of one question shares: its templates, context and passage index."""

    record: dict[str, Any]
    language: str
    templates: dict[str, str]
    context: dict[str, str]  # {question} and {topic}
    system: Messages
    index: PassageIndex | None = field(default=None)  # built on the first fact to verify, once


class FactScoreAnnotator(ChatJudgeAnnotator):
    """Splits each sentence into atomic facts and verifies each one (see the module docstring)."""

    name = "factscore"
    fact_level = True
    default_prompts = DEFAULT_PROMPTS
    placeholders = PLACEHOLDERS
    document_use = "checks each atomic fact against passages of the question's reference document"

    def __init__(self, config: JudgeConfig, top_k: int = TOP_K, passage_words: int = PASSAGE_WORDS) -> None:
        super().__init__(config)
        self.top_k, self.passage_words = top_k, passage_words

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "retrieval": {"method": "bm25", "package": "bm25s", "top_k": self.top_k,
                                                    "passage_words": self.passage_words}}

    def start_question(self, record: dict[str, Any], language: str) -> Question:
        templates = self.prompts[language]
        context = {"question": record["question"], "topic": _topic(record)}
        system = [{"role": "system", "content": render(templates["system"], context)}] \
            if templates["system"].strip() else []
        return Question(record, language, templates, context, system)

    async def judge_sentence(self, question: Question, sentence: str) -> Verdict | Failure:
        """Split the sentence, then verify each of its facts at once; cached, facts included."""
        key = self._key(question.record, question.language, sentence)
        saved = self.cache.record(key)
        if saved is not None:
            return Verdict(saved["label"], tuple(Fact(f["text"], bool(f["supported"])) for f in saved["facts"]))
        prompt = render(question.templates["split"], {**question.context, "sentence": sentence})
        texts, reply = await self.ask(question.system + [{"role": "user", "content": prompt}], parse_facts)
        if texts is None:
            return Failure(sentence, 'atomic facts as lines starting with "- ", or <No Facts> (<无事实>)', reply)
        checked = await gather_all([self._verify(question, t) for t in texts])
        bad = next((reply for verdict, reply in checked if verdict is None), None)
        if bad is not None:
            return Failure(sentence, "True or False for each of its facts", bad)
        facts = tuple(Fact(t, verdict) for t, (verdict, _) in zip(texts, checked))
        label = sentence_label(facts)
        self.cache.put(key, label, sentence=sentence, facts=[{"text": f.text, "supported": f.supported}
                                                              for f in facts])
        return Verdict(label, facts)

    async def _verify(self, question: Question, fact: str) -> tuple[bool | None, str]:
        if question.index is None:
            question.index = PassageIndex.of_document(question.record["document"], self.passage_words,
                                                      question.language)
        passages = passages_text(question.index.top(fact, self.top_k))
        prompt = render(question.templates["verify"], {**question.context, "passages": passages, "fact": fact})
        return await self.ask(question.system + [{"role": "user", "content": prompt}], parse_verdict)

    def _key(self, record: dict[str, Any], language: str, sentence: str) -> str:
        """Same judge, prompts, retrieval, question, topic, document and sentence: same facts."""
        judge = self.chat_judge.describe()
        identity = [self.name, judge["backend"], judge["model"], language, self.prompts_digest, self.top_k,
                    self.passage_words, record["question"], record.get("topic"), record["document"], sentence]
        return digest(identity)


def _topic(record: dict[str, Any]) -> str:
    topic = record.get("topic")
    return topic if isinstance(topic, str) and topic.strip() else record["question"]


__all__ = ["FactScoreAnnotator", "DEFAULT_PROMPTS", "PLACEHOLDERS", "parse_facts", "parse_verdict",
           "sentence_label"]
