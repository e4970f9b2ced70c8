"""A judge that answers in an unexpected language, against a real local OpenAI-compatible server.

What the ANAH-v2 protocol allows and what it does not:
- The protocol's markers exist in English and Chinese and say the same thing in both, so a
  marker of either language is a verdict whatever the record's language (ANAH-v2 is
  bilingual and may switch): accepted, not re-asked.
- A reply in any other language carries no marker: it is malformed. It is asked again (with
  some sampling, as a greedy judge would repeat itself), up to --max-retries; then the run
  stops with exit 1 and one line naming the question, the sentence, the expected markers and
  the last reply, and every sentence judged so far stays in the judgment cache, so the rerun
  pays only for the sentences that failed.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import labels_of, write_jsonl
from judge_server import EN_LABELS, EN_REQUESTS, Q_ZH, ZH_LABELS, JudgeServer, anah_script
from maskdpo_cli.annotation import run_annotate
from maskdpo_cli.annotators.judging import REASK_TEMPERATURE, JudgeConfig
from maskdpo_cli.records import read_records

MASKDPO = [sys.executable, "-m", "maskdpo_cli.cli"]

Q_EN = {"id": "en1", "question": "What is the capital of France?", "document": "Paris is the capital of France.",
        "language": "en",
        "responses": [{"index": 0, "text": "Hello! The capital is Paris. It is near Berlin."},
                      {"index": 1, "text": "The capital is Paris. People on Mars agree."}]}

# The same verdicts in the protocol's other language.
OTHER_LANGUAGE = {
    "<No Facts>": "<无事实>", "<Facts Present>": "<有事实>", "<No Reference Information>": "<无参考信息>",
    "<No Hallucination>": "<无幻觉>", "The sentence is <Contradictory> to the reference.": "<矛盾>",
    "<Unverifiable>": "<无法验证>",
}
OTHER_LANGUAGE.update({zh: en for en, zh in list(OTHER_LANGUAGE.items())})
OTHER_LANGUAGE["<矛盾>"] = "<Contradictory>"
# Prose in languages the protocol does not speak: none holds a marker of either language.
FOREIGN = ["La phrase contient des faits vérifiables, mais je ne peux pas répondre avec une balise.",
           "Это предложение противоречит справочной информации.",
           "Der Satz ist nicht überprüfbar."]


def config(server: JudgeServer, **overrides) -> JudgeConfig:
    return JudgeConfig(urls=(server.url,), **{"max_retries": 3, "concurrency": 1, "backoff": 0.01, **overrides})


def turn(messages: list[dict[str, str]]) -> int:
    return sum(m["role"] == "user" for m in messages)


@pytest.mark.parametrize("record, expected", [(Q_EN, EN_LABELS), (Q_ZH, ZH_LABELS)], ids=["en", "zh"])
def test_markers_in_the_protocols_other_language_are_verdicts(tmp_path, record, expected):
    def other_language(messages):
        reply = anah_script(messages)
        return OTHER_LANGUAGE.get(reply, reply)

    samples = write_jsonl(tmp_path / "s.jsonl", [record])
    with JudgeServer(other_language) as server:
        run_annotate(str(samples), str(tmp_path / "out.jsonl"), annotator="anah-v2", judge=config(server))
    assert labels_of(read_records(tmp_path / "out.jsonl", "annotated")[0]) == expected
    assert {r["temperature"] for r in server.requests} == {0.0}  # nothing was asked twice


def test_replies_in_an_unexpected_language_are_asked_again(tmp_path):
    calls = itertools.count()

    def flaky(messages):  # the first three answers are prose in other languages, then the protocol
        n = next(calls)
        return FOREIGN[n] if n < len(FOREIGN) else anah_script(messages)

    samples = write_jsonl(tmp_path / "s.jsonl", [Q_EN])
    with JudgeServer(flaky) as server:
        run_annotate(str(samples), str(tmp_path / "out.jsonl"), annotator="anah-v2", judge=config(server))
    assert labels_of(read_records(tmp_path / "out.jsonl", "annotated")[0]) == EN_LABELS
    assert server.chat_requests == EN_REQUESTS + len(FOREIGN)  # one more ask per foreign reply
    reasks = [r for r in server.requests if r["temperature"] > 0]
    assert len(reasks) == len(FOREIGN) and {r["temperature"] for r in reasks} == {REASK_TEMPERATURE}
    # A re-ask repeats the question, without the foreign reply in the conversation.
    assert all(all(m["content"] not in FOREIGN for m in r["messages"]) for r in server.requests)


def test_a_judge_stuck_in_another_language_exits_1_and_the_rerun_resumes(tmp_path):
    russian = FOREIGN[1]

    def stuck(messages):  # the type question about Berlin is always answered in Russian
        if turn(messages) == 3 and "Berlin" in messages[0]["content"]:
            return russian
        return anah_script(messages)

    samples = write_jsonl(tmp_path / "s.jsonl", [Q_EN])
    out = tmp_path / "out.jsonl"
    cache = Path(f"{out}.judgments.jsonl")
    with JudgeServer(stuck) as server:
        result = subprocess.run([*MASKDPO, "annotate", str(samples), "--judge-url", server.url,
                                 "--max-retries", "2", "--concurrency", "1", "-o", str(out)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("maskdpo: error: question 'en1': the judge gave no usable reply for the sentence "
                           "'It is near Berlin.' after 3 attempts; expected <No Hallucination>"), line
    assert repr(russian) in line and f"judgments so far are kept in {cache}, rerun to resume" in line
    berlin = [r for r in server.requests if turn(r["messages"]) == 3 and "Berlin" in r["messages"][0]["content"]]
    assert [r["temperature"] for r in berlin] == [0.0, REASK_TEMPERATURE, REASK_TEMPERATURE]
    judged = {j["sentence"]: j["label"] for j in map(json.loads, cache.read_text(encoding="utf-8").splitlines())}
    assert judged == {s: label for s, label in EN_LABELS.items() if "Berlin" not in s}
    assert out.read_text() == ""  # the question is written only once every sentence has a label

    with JudgeServer() as server:
        result = subprocess.run([*MASKDPO, "annotate", str(samples), "--judge-url", server.url, "-o", str(out)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert server.first_turns(turn=1) and all("Berlin" in t for t in server.first_turns(turn=1))
    assert server.chat_requests == 3  # only the sentence that failed is judged again, all three turns
    assert labels_of(read_records(out, "annotated")[0]) == EN_LABELS
