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

What this module holds is the protocol (prompts, markers, turns, cache key); asking,
re-asking, caching and failure reports are maskdpo_cli.annotators.judging's, shared with
factscore.
"""

from __future__ import annotations

from typing import Any, Callable

from maskdpo_cli.annotators.base import Verdict
from maskdpo_cli.annotators.judges import Messages
from maskdpo_cli.annotators.judging import ChatJudgeAnnotator, Failure, digest, render

PLACEHOLDERS = {"system": {"question", "document"},
                "facts": {"question", "document", "sentence"},
                "reference": {"question", "document", "sentence"},
                "judge": {"question", "document", "sentence", "reference"}}
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


class AnahV2Annotator(ChatJudgeAnnotator):
    """Labels each sentence in its own three-turn conversation with the judge (see the module docstring)."""

    name = "anah-v2"
    fact_level = False
    default_prompts = DEFAULT_PROMPTS
    placeholders = PLACEHOLDERS
    document_use = "checks each sentence against the question's reference document"

    def _key(self, record: dict[str, Any], language: str, sentence: str) -> str:
        """Same judge, same prompts, same question and document, same sentence: same label."""
        judge = self.chat_judge.describe()
        identity = [judge["backend"], judge["model"], language, self.prompts_digest,
                    record["question"], record["document"], sentence]
        return digest(identity)

    async def judge_sentence(self, question: tuple[dict[str, Any], str], sentence: str) -> Verdict | Failure:
        """The three turns of one sentence's conversation (fewer when a turn decides); cached."""
        record, language = question
        key = self._key(record, language, sentence)
        cached = self.cache.get(key)
        if cached is not None:
            return Verdict(cached)
        templates = self.prompts[language]
        values = {"question": record["question"], "document": record["document"], "sentence": sentence}
        messages: Messages = []
        if templates["system"].strip():
            messages.append({"role": "system", "content": render(templates["system"], values)})
        replies: list[str] = []
        for turn, parse, expected in TURNS:
            values["reference"] = replies[-1] if replies else ""
            messages.append({"role": "user", "content": render(templates[turn], values)})
            verdict, reply = await self.ask(messages, parse)
            if verdict is None:
                return Failure(sentence, expected, reply)
            messages.append({"role": "assistant", "content": reply})
            replies.append(reply)
            if verdict != CONTINUE:
                self.cache.put(key, verdict, sentence=sentence, replies=replies)
                return Verdict(verdict)
        raise AssertionError("the last turn always decides")


__all__ = ["AnahV2Annotator", "DEFAULT_PROMPTS", "PLACEHOLDERS", "JUDGE_MARKERS", "find_marker"]
