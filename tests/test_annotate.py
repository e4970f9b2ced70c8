"""`maskdpo annotate` with the anah-v2 annotator against a real local OpenAI-compatible judge."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import labels_of, write_jsonl
from judge_server import EN_LABELS, EN_REQUESTS, JudgeServer, MALFORMED, Q_ZH, ZH_LABELS, anah_script, first_turn
from maskdpo_cli.annotation import annotate_stream, run_annotate
from maskdpo_cli.annotators import make_annotator
from maskdpo_cli.annotators.anah_v2 import DEFAULT_PROMPTS, PLACEHOLDERS, find_marker
from maskdpo_cli.annotators.judging import REASK_TEMPERATURE, JudgeConfig
from maskdpo_cli.annotators.judging import load_prompts as load_any_prompts
from maskdpo_cli.annotators.base import Fact, Verdict
from maskdpo_cli.errors import InputError, MaskDPOError
from maskdpo_cli.openai_client import EndpointError
from maskdpo_cli.records import read_records

MASKDPO = [sys.executable, "-m", "maskdpo_cli.cli"]

Q_EN = {"id": "en1", "question": "What is the capital of France?", "document": "Paris is the capital of France.",
        "responses": [{"index": 0, "text": "Hello! The capital is Paris. It is near Berlin."},
                      {"index": 1, "text": "The capital is Paris. People on Mars agree."},
                      {"index": 2, "text": "The capital is Paris. It is near Berlin. Hello!"}]}


def config(server: JudgeServer, **overrides) -> JudgeConfig:
    return JudgeConfig(urls=(server.url,), **{"max_retries": 3, "concurrency": 4, "backoff": 0.01, **overrides})


def load_prompts(path: Path):
    """anah-v2's prompts with a --prompts file, as its annotator loads them."""
    return load_any_prompts(path, DEFAULT_PROMPTS, PLACEHOLDERS)


def annotate_one(record: dict, annotator) -> dict:
    """The annotated record, through the streaming path `annotate` runs."""
    import asyncio

    written: list[dict] = []
    asyncio.run(annotate_stream([record], annotator, written.append))
    (annotated,) = written
    return annotated


def cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*MASKDPO, *args], capture_output=True, text=True, input=input, timeout=60)


def test_three_turns_in_one_conversation_and_labels_for_every_branch(tmp_path):
    samples = write_jsonl(tmp_path / "s.jsonl", [Q_EN])
    with JudgeServer() as server:
        run_annotate(str(samples), str(tmp_path / "out.jsonl"), annotator="anah-v2", judge=config(server))
    (record,) = read_records(tmp_path / "out.jsonl", "annotated")
    assert labels_of(record) == EN_LABELS
    assert not any("spans" in s for resp in record["responses"] for s in resp["sentences"])  # per sentence only
    third_turns = [c for c in server.conversations if len(c) == 5]
    assert len(third_turns) == 2  # Paris and Berlin reach the type question
    for conv in third_turns:
        assert [m["role"] for m in conv] == ["user", "assistant", "user", "assistant", "user"]
        assert conv[1]["content"] == "<Facts Present>"  # each turn follows the judge's own reply
        assert Q_EN["document"] in conv[2]["content"]  # turn 2 hands over the reference document
        assert conv[3]["content"] in conv[4]["content"]  # turn 3 quotes the extracted reference
    assert {r["temperature"] for r in server.requests} == {0.0}
    assert record["annotator"] == {"name": "anah-v2", "prompts": "builtin",
                                   "judge": {"backend": "openai", "url": server.url, "model": "anah-v2-test"}}


def test_chinese_prompts_and_markers(tmp_path):
    samples = write_jsonl(tmp_path / "s.jsonl", [Q_ZH])
    with JudgeServer() as server:
        run_annotate(str(samples), str(tmp_path / "out.jsonl"), annotator="anah-v2", judge=config(server))
    (record,) = read_records(tmp_path / "out.jsonl", "annotated")
    assert labels_of(record) == ZH_LABELS
    assert all("请只回复" in conv[0]["content"] for conv in server.conversations)


def test_sentences_repeated_across_samples_are_judged_once_and_resume_pays_nothing(tmp_path):
    samples = write_jsonl(tmp_path / "s.jsonl", [Q_EN, Q_ZH])
    out = tmp_path / "out.jsonl"
    with JudgeServer() as server:
        run_annotate(str(samples), str(out), annotator="anah-v2", judge=config(server))
    zh_requests = 1 + 3 + 3 + 3 + 2
    assert server.chat_requests == EN_REQUESTS + zh_requests
    assert len(server.first_turns(turn=1)) == len(EN_LABELS) + len(ZH_LABELS)
    # Lose the last annotated question (as after kill -9): the rerun rewrites it from the cache.
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    out.write_text(lines[0] + lines[1][:40], encoding="utf-8")
    with open(str(out) + ".judgments.jsonl", "a", encoding="utf-8") as torn:
        torn.write('{"key": "abc", "lab')
    with JudgeServer() as again:
        summary = run_annotate(str(samples), str(out), annotator="anah-v2", judge=config(again))
    assert again.chat_requests == 0
    assert "1 already done" in summary
    assert [r["id"] for r in read_records(out, "annotated")] == ["en1", "zh1"]


def test_429_and_5xx_are_retried_then_succeed(tmp_path):
    samples = write_jsonl(tmp_path / "s.jsonl", [Q_EN])
    with JudgeServer() as server:
        server.fail_first, server.fail_status = 3, 429
        run_annotate(str(samples), str(tmp_path / "a.jsonl"), annotator="anah-v2", judge=config(server))
    assert server.chat_requests == EN_REQUESTS + 3
    with JudgeServer() as server:
        server.fail_first, server.fail_status, server.retry_after = 2, 500, None  # backoff decides
        run_annotate(str(samples), str(tmp_path / "b.jsonl"), annotator="anah-v2",
                     judge=config(server, concurrency=1))
    assert server.chat_requests == EN_REQUESTS + 2
    for name in ("a.jsonl", "b.jsonl"):
        assert labels_of(read_records(tmp_path / name, "annotated")[0]) == EN_LABELS


def test_a_slow_reply_times_out_and_is_retried(tmp_path):
    samples = write_jsonl(tmp_path / "s.jsonl", [Q_EN])
    with JudgeServer() as server:
        server.delay_first, server.delay = 1, 1.0
        run_annotate(str(samples), str(tmp_path / "out.jsonl"), annotator="anah-v2",
                     judge=config(server, timeout=0.3, concurrency=1))
    assert server.chat_requests == EN_REQUESTS + 1
    assert labels_of(read_records(tmp_path / "out.jsonl", "annotated")[0]) == EN_LABELS


def test_an_endpoint_that_keeps_failing_gives_a_clear_error(tmp_path):
    samples = write_jsonl(tmp_path / "s.jsonl", [Q_EN])
    with JudgeServer() as server:
        server.fail_first = 1000
        with pytest.raises(EndpointError, match=r"no usable answer after 3 attempts .*HTTP 503") as failure:
            run_annotate(str(samples), str(tmp_path / "out.jsonl"), annotator="anah-v2",
                         judge=config(server, max_retries=2, concurrency=1))
    assert f"{server.url}/chat/completions" in str(failure.value)
    # Each of the 4 sentences in flight spends at most its 3 attempts before the run stops.
    assert 3 <= server.chat_requests <= 4 * 3
    assert not (tmp_path / "out.jsonl").read_text()


def test_malformed_replies_are_asked_again(tmp_path):
    samples = write_jsonl(tmp_path / "s.jsonl", [Q_EN])
    with JudgeServer() as server:
        server.malformed_first = 2
        run_annotate(str(samples), str(tmp_path / "out.jsonl"), annotator="anah-v2",
                     judge=config(server, concurrency=1))
    assert labels_of(read_records(tmp_path / "out.jsonl", "annotated")[0]) == EN_LABELS
    assert server.chat_requests == EN_REQUESTS + 2
    asked: set[str] = set()
    for r in server.requests:  # a conversation's first ask is greedy, its re-asks sample
        turn = json.dumps(r["messages"])
        assert r["temperature"] == (REASK_TEMPERATURE if turn in asked else 0.0)
        asked.add(turn)
    assert sum(r["temperature"] > 0 for r in server.requests) == 2


def test_persistently_malformed_judge_exits_1_and_keeps_what_was_judged(tmp_path):
    broken = {"id": "q2", "question": "Which city is the capital?", "document": "Paris is the capital of France.",
              "responses": [{"index": 0, "text": "It is Paris. This is gibberish."}]}
    samples = write_jsonl(tmp_path / "s.jsonl", [Q_EN, broken])
    out = tmp_path / "out.jsonl"
    with JudgeServer() as server:
        result = cli("annotate", str(samples), "--judge-url", server.url, "--max-retries", "1", "-o", str(out))
    assert result.returncode == 1, result.stderr
    assert "'This is gibberish.'" in result.stderr and MALFORMED in result.stderr
    assert [r["id"] for r in read_records(out, "annotated")] == ["en1"]
    judged = [json.loads(line) for line in Path(str(out) + ".judgments.jsonl").read_text().splitlines()]
    assert "It is Paris." in {j["sentence"] for j in judged}

    def forgiving(messages):
        reply = anah_script([{**m, "content": m["content"].replace("gibberish", "nonsense")} for m in messages])
        return reply

    with JudgeServer(forgiving) as server:
        result = cli("annotate", str(samples), "--judge-url", server.url, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert server.chat_requests == 3  # only the sentence that failed is judged again
    assert [r["id"] for r in read_records(out, "annotated")] == ["en1", "q2"]


def test_missing_document_is_bad_input_before_anything_is_judged(tmp_path):
    no_doc = {k: v for k, v in Q_ZH.items() if k != "document"}
    samples = write_jsonl(tmp_path / "s.jsonl", [Q_EN, no_doc])
    out = tmp_path / "out.jsonl"
    with JudgeServer() as server:
        result = cli("annotate", str(samples), "--judge-url", server.url, "-o", str(out))
    assert result.returncode == 2
    assert f"{samples}:2: field 'document'" in result.stderr
    assert server.chat_requests == 0 and not out.exists()


def test_user_prompts_file(tmp_path):
    prompts = {"en": {"system": "You judge answers to: {question}",
                      "facts": "FACTS? {sentence}", "reference": "DOC {document} FOR {sentence}",
                      "judge": "TYPE? {sentence} given {reference} {not a placeholder}"}}
    prompts_file = tmp_path / "prompts.json"
    prompts_file.write_text(json.dumps(prompts))
    samples = write_jsonl(tmp_path / "s.jsonl", [Q_EN])
    with JudgeServer() as server:
        run_annotate(str(samples), str(tmp_path / "out.jsonl"), annotator="anah-v2",
                     judge=config(server, prompts_file=prompts_file))
    (record,) = read_records(tmp_path / "out.jsonl", "annotated")
    assert labels_of(record) == EN_LABELS
    conv = next(c for c in server.conversations if len(c) == 6 and "Paris" in c[1]["content"])
    assert conv[0] == {"role": "system", "content": f"You judge answers to: {Q_EN['question']}"}
    assert conv[1]["content"] == "FACTS? The capital is Paris."
    assert conv[3]["content"] == f"DOC {Q_EN['document']} FOR The capital is Paris."
    assert conv[5]["content"] == f"TYPE? The capital is Paris. given {conv[4]['content']} {{not a placeholder}}"
    assert record["annotator"]["prompts"]["file"] == str(prompts_file)


def test_bad_prompts_file_is_refused(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"en": {"facts": "Judge {response}"}}))
    with pytest.raises(InputError, match=r"en.facts.*unknown placeholder \{response\}"):
        load_prompts(bad)
    bad.write_text(json.dumps({"fr": {}}))
    with pytest.raises(InputError, match="unknown language"):
        load_prompts(bad)


def test_cli_end_to_end_then_pair(tmp_path):
    samples = write_jsonl(tmp_path / "s.jsonl", [Q_EN, Q_ZH])
    out, pairs = tmp_path / "out.jsonl", tmp_path / "pairs.jsonl"
    with JudgeServer() as server:
        result = cli("annotate", str(samples), "--annotator", "anah-v2", "--judge-backend", "openai",
                     "--judge-url", server.url, "-o", str(out))
        assert result.returncode == 0, result.stderr
        assert server.model_requests == 1  # no --judge-model: the endpoint's first model is used
        assert {r["model"] for r in server.requests} == {"anah-v2-test"}
        piped = cli("annotate", "-", "--judge-url", server.url, "--judge-model", "named",
                    input=samples.read_text(encoding="utf-8"))
    assert piped.returncode == 0, piped.stderr
    assert server.model_requests == 1
    records = read_records(out, "annotated")
    assert [labels_of(r) for r in records] == [EN_LABELS, ZH_LABELS]
    for record in records:
        for resp in record["responses"]:
            assert all(resp["text"][s["start"]:s["end"]] == s["text"] for s in resp["sentences"])
            correct = sum(s["label"] in ("ok", "nofact") for s in resp["sentences"])
            assert (resp["n_correct"], resp["n_incorrect"]) == (correct, len(resp["sentences"]) - correct)
            assert resp["score"] == correct / len(resp["sentences"])
    assert [json.loads(line)["id"] for line in piped.stdout.splitlines()] == ["en1", "zh1"]

    result = cli("pair", str(out), "-o", str(pairs))
    assert result.returncode == 0, result.stderr
    made = read_records(pairs, "pairs")
    assert [p["id"] for p in made] == ["en1", "zh1"]
    assert made[0]["chosen"][0]["content"] == Q_EN["responses"][0]["text"]
    assert made[1]["rejected_item"]["type"] == ["hallucination", "hallucination"]


def test_empty_response_has_no_sentences_and_score_zero(tmp_path):
    record = {**Q_EN, "responses": [{"index": 0, "text": "  \n "}, {"index": 1, "text": "Hello!"}]}
    samples = write_jsonl(tmp_path / "s.jsonl", [record])
    with JudgeServer() as server:
        run_annotate(str(samples), str(tmp_path / "out.jsonl"), annotator="anah-v2", judge=config(server))
    empty, hello = read_records(tmp_path / "out.jsonl", "annotated")[0]["responses"]
    assert (empty["sentences"], empty["n_correct"], empty["n_incorrect"], empty["score"]) == ([], 0, 0, 0.0)
    assert hello["score"] == 1.0


@pytest.mark.parametrize("reply, expected", [
    ("<Contradictory>", "contradictory"),
    ("  no HALLUCINATION ", "ok"),
    ("<Unverifiable>: the reference does not say; it is not contradictory", "unverifiable"),
    ("<无法验证>", "unverifiable"),
    ("contradictory or unverifiable", None),  # two verdicts, no tag: not guessed
    ("<Contradictory> <Unverifiable>", None),
    ("I cannot tell.", None),
])
def test_find_marker(reply, expected):
    from maskdpo_cli.annotators.anah_v2 import JUDGE_MARKERS

    assert find_marker(reply, JUDGE_MARKERS) == expected


def test_unknown_annotator_lists_the_choices():
    with pytest.raises(MaskDPOError, match="expected one of anah-v2, .*world:DIR"):
        make_annotator("gpt-judge", JudgeConfig())


# --------------------------------------------------------------------------- streaming, many servers

def _people(n: int, sentences: int = 3) -> list[dict]:
    """Questions whose sentences all differ; "Paris" sentences take 3 turns, the others 2 or 1."""
    facts = ["lives in Paris.", "met people from Mars.", "said hello."]
    return [{"id": f"p{q}", "question": f"Who is person {q}?", "document": "Paris is in France.",
             "responses": [{"index": 0, "text": " ".join(f"Person {q}-{s} {facts[s % 3]}" for s in range(sentences))}]}
            for q in range(n)]


def test_no_barrier_a_slow_sentence_holds_no_other_sentence(tmp_path):
    """Turn 2 of every other sentence is asked while one sentence's turn 1 is still unanswered."""
    def script(messages):
        if len(messages) == 1 and "Person 0-0 " in messages[0]["content"]:
            time.sleep(1.5)
        return anah_script(messages)

    samples = write_jsonl(tmp_path / "s.jsonl", _people(3))
    with JudgeServer(script) as server:
        run_annotate(str(samples), str(tmp_path / "out.jsonl"), annotator="anah-v2", judge=config(server, concurrency=8))
    order = [(first_turn(c).split("Person ")[1].split(" ")[0], len([m for m in c if m["role"] == "user"]))
             for c in server.conversations]
    slow_turn2 = order.index(("0-0", 2))
    # Every other sentence finished all its turns before the slow one's second turn was asked,
    # even those of the same question and of the questions after it.
    later_turns = [o for o in order[slow_turn2:] if o[0] != "0-0"]
    assert later_turns == [], later_turns
    assert [r["id"] for r in read_records(tmp_path / "out.jsonl", "annotated")] == ["p0", "p1", "p2"]


def test_the_window_bounds_what_is_in_flight_and_output_keeps_input_order(tmp_path):
    """With one server of concurrency 1 the window is 8 questions: question j is never asked
    before question j - 7 is written, and records come out in input order."""
    out = tmp_path / "out.jsonl"
    written_when_asked: list[tuple[int, int]] = []

    def script(messages):
        q = int(first_turn(messages).split("Person ")[1].split("-")[0])
        if len(messages) == 1:
            written = out.read_text().count("\n") if out.exists() else 0
            written_when_asked.append((q, written))
        if q == 0:
            time.sleep(0.05)  # the first question is the slowest: the others must wait for it
        return anah_script(messages)

    samples = write_jsonl(tmp_path / "s.jsonl", _people(20, sentences=1))
    with JudgeServer(script) as server:
        run_annotate(str(samples), str(out), annotator="anah-v2", judge=config(server, concurrency=1))
    assert [r["id"] for r in read_records(out, "annotated")] == [f"p{q}" for q in range(20)]
    assert all(written >= q - 7 for q, written in written_when_asked), written_when_asked
    assert max(q for q, _ in written_when_asked) == 19


def test_several_judge_urls_share_the_work_and_one_dying_mid_run_is_survived(tmp_path):
    samples = write_jsonl(tmp_path / "s.jsonl", _people(12, sentences=4))
    out = tmp_path / "out.jsonl"
    with JudgeServer() as a, JudgeServer() as b:
        a.delay_first = b.delay_first = 10**9
        a.delay = b.delay = 0.01
        b.fail_after, b.retry_after = 15, None  # b answers 15 requests, then 503 for ever
        result = cli("annotate", str(samples), "--judge-url", a.url, "--judge-url", b.url,
                     "--concurrency", "4", "--max-retries", "3", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert a.chat_requests > 15 and b.chat_requests > 15
    records = read_records(out, "annotated")
    assert [r["id"] for r in records] == [f"p{q}" for q in range(12)]
    assert records[0]["annotator"]["judge"] == {"backend": "openai", "urls": [a.url, b.url], "model": "anah-v2-test"}


class Facts:
    """A fact-level annotator: Paris sentences hold one true fact, Hello none, the others three."""

    name = "facts"
    fact_level = True

    def describe(self):
        return {"name": self.name}

    async def judge(self, record, sentences):
        return [Verdict("ok", (Fact(f"{s} is true", True),)) if "Paris" in s else
                Verdict("nofact", ()) if "Hello" in s else
                Verdict("contradictory", (Fact("x", True), Fact("y", False), Fact("z", False)))
                for s in sentences]


def test_fact_level_verdicts_add_facts_and_fact_score(tmp_path):
    """An annotator returning atomic facts (as factscore does) gets them on every response."""
    record = annotate_one(Q_EN, Facts())
    first, second = record["responses"][:2]
    assert first["facts"] == [{"text": "The capital is Paris. is true", "sentence": 1, "label": "supported"},
                              {"text": "x", "sentence": 2, "label": "supported"},
                              {"text": "y", "sentence": 2, "label": "unsupported"},
                              {"text": "z", "sentence": 2, "label": "unsupported"}]
    assert (first["n_facts_supported"], first["n_facts_unsupported"], first["fact_score"]) == (2, 2, 0.5)
    assert (second["n_facts_supported"], second["n_facts_unsupported"]) == (2, 2)
    with JudgeServer() as server:  # a sentence-level annotator adds no fact fields
        plain = annotate_one(Q_EN, make_annotator("anah-v2", config(server)))
    assert all("facts" not in resp and "fact_score" not in resp for resp in plain["responses"])


def test_a_fact_level_annotator_keeps_the_fact_fields_when_every_response_is_empty():
    """The annotator says it is fact-level: a question with no sentence at all still gets fact fields."""
    record = annotate_one({**Q_EN, "responses": [{"index": 0, "text": ""}, {"index": 1, "text": " \n"}]}, Facts())
    for resp in record["responses"]:
        assert (resp["sentences"], resp["facts"], resp["n_facts_supported"], resp["n_facts_unsupported"]) == \
            ([], [], 0, 0)
        assert resp["fact_score"] == 0.0


# --------------------------------------------------------------------------- the authors' prompt file

# The shape of open-compass/ANAH's anahv2_prompt.py (same functions, parameters and structure),
# in our own words. The module-level line would leave a mark if the file were ever run.
AUTHORS_SHAPE = '''
import pathlib
pathlib.Path(__file__).with_name("EXECUTED").write_text("the prompt file was run")


def fact_check_prompt(question, annotation, language):
    cn_user_prompt = f"""
    事实？问题：{question}
    句子：{annotation}
    """

    en_user_prompt = f"""
    Facts? Q: {question}
    S: {annotation} {{literal braces}}
    """
    return cn_user_prompt if language == "zh" else en_user_prompt


def reference_check_prompt(question, reference, annotation, language):
    cn_user_prompt = f"""参考：{reference} 问题：{question} 句子：{annotation}"""
    en_user_prompt = f"""Extract from: {reference} for Q: {question} S: {annotation}"""
    return cn_user_prompt if language == "zh" else en_user_prompt


def hallucination_check_prompt(question, reference, annotation, language):
    cn_user_prompt = f"""类型？{annotation} 要点：{reference}"""
    en_user_prompt = f"""Type? {annotation} points: {reference}"""

    return cn_user_prompt if language == "zh" else en_user_prompt
'''


def test_the_authors_prompt_file_is_read_for_both_languages_without_running_it(tmp_path):
    prompt_file = tmp_path / "anahv2_prompt.py"
    prompt_file.write_text(AUTHORS_SHAPE, encoding="utf-8")
    samples = write_jsonl(tmp_path / "s.jsonl", [Q_EN, Q_ZH])
    out = tmp_path / "out.jsonl"
    with JudgeServer() as server:
        result = cli("annotate", str(samples), "--judge-url", server.url, "--prompts", str(prompt_file), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "EXECUTED").exists()
    assert [labels_of(r) for r in read_records(out, "annotated")] == [EN_LABELS, ZH_LABELS]
    paris = next(c for c in server.conversations if len(c) == 5 and "The capital is Paris." in c[0]["content"])
    assert paris[0]["content"] == f"\n    Facts? Q: {Q_EN['question']}\n    S: The capital is Paris. {{literal braces}}\n    "
    assert paris[2]["content"] == f"Extract from: {Q_EN['document']} for Q: {Q_EN['question']} S: The capital is Paris."
    assert paris[4]["content"] == f"Type? The capital is Paris. points: {paris[3]['content']}"
    zh = next(c for c in server.conversations if len(c) == 5 and "首都是巴黎。" in c[0]["content"])
    assert zh[0]["content"].startswith("\n    事实？问题：") and zh[2]["content"].startswith(f"参考：{Q_ZH['document']}")
    assert zh[4]["content"] == f"类型？首都是巴黎。 要点：{zh[3]['content']}"
    assert all(c[0]["role"] == "user" for c in server.conversations)  # the authors' protocol has no system turn


def test_a_prompt_file_that_does_more_than_build_strings_is_refused(tmp_path):
    prompt_file = tmp_path / "anahv2_prompt.py"
    prompt_file.write_text(AUTHORS_SHAPE.replace('    return cn_user_prompt if language == "zh" else en_user_prompt\n\n\n'
                                                 'def reference_check_prompt',
                                                 '    return translate(en_user_prompt)\n\n\ndef reference_check_prompt', 1))
    with pytest.raises(InputError, match=r"anahv2_prompt.py:16: fact_check_prompt\(\): unsupported expression Call"):
        load_prompts(prompt_file)
    prompt_file.write_text("def fact_check_prompt(question, annotation, language):\n    return ''\n")
    with pytest.raises(InputError, match=r"no function reference_check_prompt\(\)"):
        load_prompts(prompt_file)
    assert not (tmp_path / "EXECUTED").exists()


def test_an_in_process_judge_batches_concurrent_turns_off_the_event_loop(tiny_llama_path):
    import asyncio

    from maskdpo_cli.annotators.judges import BackendJudge

    judge = BackendJudge("transformers", str(tiny_llama_path), max_new_tokens=4)
    batches: list[int] = []
    chat = judge._chat
    judge._chat = lambda conversations: batches.append(len(conversations)) or chat(conversations)  # a spy

    async def run() -> tuple[list[str], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        beat = asyncio.ensure_future(ticker())
        replies = await asyncio.gather(*(judge.reply([{"role": "user", "content": f"Question {i}?"}])
                                         for i in range(5)))
        beat.cancel()
        return replies, ticks

    replies, ticks = asyncio.run(run())
    assert len(replies) == 5 and all(isinstance(r, str) for r in replies)
    assert batches == [5]  # the five turns asked together ran as one batch
    assert ticks > 0  # the event loop kept running while the model loaded and generated


def test_a_pipe_is_read_once_as_it_streams(tmp_path):
    """`annotate <(...)` cannot be read twice: it is validated as it streams, like stdin."""
    samples = write_jsonl(tmp_path / "s.jsonl", [Q_EN, Q_ZH])
    out = tmp_path / "out.jsonl"
    with JudgeServer() as server:
        command = f"{sys.executable} -m maskdpo_cli.cli annotate <(cat {samples}) --judge-url {server.url} -o {out}"
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert [labels_of(r) for r in read_records(out, "annotated")] == [EN_LABELS, ZH_LABELS]


# --------------------------------------------------------------------------- the judgment cache

def test_the_judgment_cache_indexes_earlier_judgments_and_looks_them_up_on_disk(tmp_path):
    from maskdpo_cli.annotators.judging import JudgmentCache

    path = tmp_path / "out.jsonl.judgments.jsonl"
    first = JudgmentCache(path)
    first.put("a", "ok", sentence="A.", replies=["<Facts Present>", "ref", "<No Hallucination>"])
    first.put("b", "unverifiable", facts=[{"text": "B is C.", "supported": False, "quote": "B"}])
    assert first.get("a") is None  # judgments of this run are written, not looked up
    first.close()
    assert not (tmp_path / "out.jsonl.judgments.sqlite").exists()  # nothing to index until a run resumes

    # A kill -9 mid-line leaves a torn last line: cut, and what came before it is indexed.
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"key": "c", "label": "nofact"}\n{"key": "d", "lab')
    second = JudgmentCache(path)
    assert second.record("a") == {"key": "a", "label": "ok"}  # replies are for people, not kept in the index
    assert second.record("b") == {"key": "b", "label": "unverifiable",
                                  "facts": [{"text": "B is C.", "supported": False, "quote": "B"}]}
    assert (second.get("c"), second.get("d")) == ("nofact", None)
    assert path.read_text(encoding="utf-8").endswith('"nofact"}\n')
    second.put("e", "contradictory", sentence="E.")
    second.close()
    assert (tmp_path / "out.jsonl.judgments.sqlite").exists()

    third = JudgmentCache(path)  # only the lines written since are read into the index
    assert [third.get(k) for k in "abce"] == ["ok", "unverifiable", "nofact", "contradictory"]
    third.close()

    # The index is derived from the file: deleted, it is rebuilt; a file replaced, it is rebuilt for it.
    (tmp_path / "out.jsonl.judgments.sqlite").unlink()
    assert JudgmentCache(path).get("e") == "contradictory"
    path.write_text('{"key": "z", "label": "ok"}\n', encoding="utf-8")
    replaced = JudgmentCache(path)
    assert (replaced.get("a"), replaced.get("z")) == (None, "ok")
    replaced.close()
    path.unlink()  # a new run starts a new file: the old index goes with the old file
    fresh = JudgmentCache(path)
    fresh.put("y", "ok")
    fresh.close()
    assert (JudgmentCache(path).get("z"), JudgmentCache(path).get("y")) == (None, "ok")


def test_a_judgment_file_with_a_bad_line_is_refused_with_its_line(tmp_path):
    from maskdpo_cli.annotators.judging import JudgmentCache

    path = tmp_path / "j.jsonl"
    path.write_text('{"key": "a", "label": "ok"}\n\n{"key": "b", "label": "maybe"}\n{"key": "c", "label": "ok"}\n')
    with pytest.raises(InputError, match=r"j\.jsonl:3: not a judgment record"):
        JudgmentCache(path).get("a")
    path.write_text('{"key": "a", "label": "ok"}\nnot json\n{"key": "c", "label": "ok"}\n')
    with pytest.raises(InputError, match=r"j\.jsonl:2: not a judgment record"):
        JudgmentCache(path).get("a")
