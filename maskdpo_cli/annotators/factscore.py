"""The FactScore annotator: atomic facts, each checked against the question's document.

After FActScore (Min et al., 2023), with a chat judge reached through the same backends as
anah-v2 (served endpoints, transformers, LMDeploy):

1. Split: the judge breaks each sentence into atomic facts, one per line starting with
   "- ", each followed by " | " and a quote: the words of the sentence that state it
   ("- Ada Lovelace was born in London. | born in London"), or replies <No Facts> for a
   sentence that claims nothing checkable.
2. Retrieve: the question's `document` is cut into passages and BM25 (the bm25s package)
   picks the top 5 for each fact (maskdpo_cli.annotators.retrieval), as FactScore does
   over Wikipedia.
3. Verify: the judge sees those passages and the fact and answers True or False.

A fact is supported when the verdict is True. The sentence's label follows from its facts,
so the sentence-level figures stay comparable with anah-v2: no facts -> nofact, every fact
supported -> ok, any fact not supported -> unverifiable (FactScore does not tell a
contradicted fact from an unsupported one, so neither does this label).

Spans: a quote found verbatim in the sentence is where its fact is stated, and becomes a
span labelled ok (supported) or unverifiable (not supported); a sentence's spans follow the
order of its facts. A quote that occurs more than once goes to its first occurrence that no
earlier fact of the sentence holds already; when every occurrence is held, to the first
(two facts stated by the same words share them). A quote that is missing or not found
verbatim places nothing: that sentence then has no spans at all (all of its facts fall back
to the sentence's label, as with anah-v2) and `annotate` counts its unplaced facts.

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

from maskdpo_cli.annotators.base import Fact, Span, Verdict
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
            "Write one fact per line: \"- \", the fact, \" | \", then the words of the sentence that "
            "state it, copied exactly as they are written (the shortest part of the sentence that "
            "states the fact). For example, for the sentence \"Marie Curie, born in Warsaw, won two "
            "Nobel Prizes.\" write:\n"
            "- Marie Curie was born in Warsaw. | born in Warsaw\n"
            "- Marie Curie won two Nobel Prizes. | won two Nobel Prizes\n"
            "If the sentence claims nothing that could be checked (a greeting, an opinion, a hedge, a "
            "restatement of the question), reply with exactly <No Facts>."),
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
            "每行写一条事实：先写 \"- \"，再写事实，然后写 \" | \"，最后写句子中陈述这条事实的原文"
            "（逐字照抄，取能陈述这条事实的最短部分）。例如，对句子“居里夫人生于华沙，两次获得诺贝尔奖。”写：\n"
            "- 居里夫人生于华沙。 | 生于华沙\n"
            "- 居里夫人两次获得诺贝尔奖。 | 两次获得诺贝尔奖\n"
            "如果这句话没有陈述任何可以核实的内容（寒暄、观点、模糊的措辞、对问题的复述），请只回复 <无事实>。"),
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
_QUOTE_SEPARATOR = re.compile(r"\s*\|\s*")
_QUOTE_MARKS = {'"': '"', "'": "'", "“": "”", "‘": "’", "「": "」", "『": "』", "«": "»"}
_VERDICT_WORD = re.compile(r"\b(true|false)\b")


@dataclass(frozen=True)
class SplitFact:
    """One line of a split reply: the fact, and the words of the sentence that state it (None: not given)."""

    text: str
    quote: str | None = None


def parse_facts(reply: str) -> tuple[SplitFact, ...] | None:
    """The facts of a split reply: its bulleted lines, or () for <No Facts>; None when it is neither.

    A line is "FACT | QUOTE" (the quote may be wrapped in quotation marks) or just "FACT".
    A fact given twice counts once, with its first quote.
    """
    facts: dict[str, SplitFact] = {}
    for match in map(_BULLET.match, reply.splitlines()):
        if match:
            fact = _split_fact(match.group(1))
            if fact.text:
                facts.setdefault(fact.text, fact)
    norm = "".join(reply.lower().split())
    no_facts = any(marker in norm for marker in NO_FACTS_MARKERS)
    if facts:
        return None if no_facts else tuple(facts.values())  # both at once: contradictory reply
    return () if no_facts else None


def _split_fact(line: str) -> SplitFact:
    parts = _QUOTE_SEPARATOR.split(line, maxsplit=1)
    quote = parts[1].strip() if len(parts) == 2 else ""
    if len(quote) >= 2 and _QUOTE_MARKS.get(quote[0]) == quote[-1]:
        quote = quote[1:-1]
    return SplitFact(parts[0].strip(), quote or None)


def place_quotes(sentence: str, quotes: list[str | None]) -> list[tuple[int, int] | None]:
    """Where each fact's quote stands in the sentence, as (start, end); None where it is not there verbatim.

    A quote found more than once goes to its first occurrence that no earlier quote holds
    already; when every occurrence is held, to the first.
    """
    held: set[tuple[int, int]] = set()
    places: list[tuple[int, int] | None] = []
    for quote in quotes:
        occurrences = [] if not quote else _occurrences(sentence, quote)
        if not occurrences:
            places.append(None)
            continue
        place = next((o for o in occurrences if o not in held), occurrences[0])
        held.add(place)
        places.append(place)
    return places


def _occurrences(text: str, part: str) -> list[tuple[int, int]]:
    """Every (start, end) of `part` in `text`, overlapping ones included, left to right."""
    found, start = [], text.find(part)
    while start >= 0:
        found.append((start, start + len(part)))
        start = text.find(part, start + 1)
    return found


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


def fact_verdict(sentence: str, facts: tuple[Fact, ...], quotes: list[str | None]) -> Verdict:
    """The sentence's verdict from its facts, with a span per fact when every fact's quote is in the sentence."""
    places = place_quotes(sentence, quotes)
    unplaced = sum(place is None for place in places)
    if not facts or unplaced:
        return Verdict(sentence_label(facts), facts, unplaced=unplaced)
    spans = tuple(Span(place[0], place[1], "ok" if fact.supported else "unverifiable")
                  for fact, place in zip(facts, places) if place is not None)
    return Verdict(sentence_label(facts), facts, spans=spans)


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
        if saved is not None:  # judgments of earlier versions have no quotes: their sentences fall back
            facts = tuple(Fact(f["text"], bool(f["supported"])) for f in saved["facts"])
            return fact_verdict(sentence, facts, [f.get("quote") for f in saved["facts"]])
        prompt = render(question.templates["split"], {**question.context, "sentence": sentence})
        split, reply = await self.ask(question.system + [{"role": "user", "content": prompt}], parse_facts)
        if split is None:
            return Failure(sentence, 'atomic facts as lines starting with "- ", or <No Facts> (<无事实>)', reply)
        checked = await gather_all([self._verify(question, f.text) for f in split])
        bad = next((reply for verdict, reply in checked if verdict is None), None)
        if bad is not None:
            return Failure(sentence, "True or False for each of its facts", bad)
        facts = tuple(Fact(f.text, verdict) for f, (verdict, _) in zip(split, checked))
        quotes = [f.quote for f in split]
        verdict = fact_verdict(sentence, facts, quotes)
        self.cache.put(key, verdict.label, sentence=sentence,
                       facts=[{"text": f.text, "supported": f.supported, "quote": q} for f, q in zip(facts, quotes)])
        return verdict

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


__all__ = ["FactScoreAnnotator", "DEFAULT_PROMPTS", "PLACEHOLDERS", "SplitFact", "parse_facts", "parse_verdict",
           "place_quotes", "fact_verdict", "sentence_label"]
