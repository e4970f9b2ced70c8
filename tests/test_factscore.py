"""The factscore annotator against a real local judge with scripted replies, the world oracle's
facts reproduced by a perfect fact splitter, and `eval` with two annotators over the same responses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import write_jsonl
from judge_server import JudgeServer, between, factscore_script, first_turn
from maskdpo_cli.annotation import run_annotate
from maskdpo_cli.annotators.judging import REASK_TEMPERATURE, JudgeConfig
from maskdpo_cli.annotators.factscore import SplitFact, parse_facts, parse_verdict, place_quotes
from maskdpo_cli.errors import JudgeError
from maskdpo_cli.evaluation import length_penalty
from maskdpo_cli.records import read_records
from maskdpo_cli.world import grammar, make_world

MASKDPO = [sys.executable, "-m", "maskdpo_cli.cli"]

# Seven passages; BM25 must bring the right one to the verify prompt (5 of 7 get there).
DOCUMENT = "\n\n".join([
    "Ada Lovelace was born in London in 1815.",
    "The Analytical Engine was a machine designed by Charles Babbage; Ada wrote programs for it.",
    "Rivers in Brazil flood every year.",
    "Volcanoes erupt lava and ash.",
    "Penguins live near the South Pole and eat fish.",
    "Tea grows on the hills of Assam.",
    "Jazz began in New Orleans.",
])
Q = {"id": "q1", "question": "Who was Ada Lovelace?", "document": DOCUMENT, "language": "en",
     "responses": [{"index": 0, "text": "Hello there! Ada Lovelace was born in London and wrote programs."},
                   {"index": 1, "text": "Ada Lovelace was born in Paris. Hello there!"},
                   {"index": 2, "text": "Ada Lovelace was born in London and wrote programs. She was born in 1815."}]}
SPLITS = {  # each fact with the words of its sentence that state it
    "Hello there!": [],
    "Ada Lovelace was born in London and wrote programs.": [
        ("Ada Lovelace was born in London.", "born in London"),
        ("Ada Lovelace wrote programs for the Analytical Engine.", "wrote programs")],
    "Ada Lovelace was born in Paris.": [("Ada Lovelace was born in Paris.", "born in Paris")],
    "She was born in 1815.": [("Ada Lovelace was born in 1815.", "born in 1815")],
}
scripted = factscore_script(SPLITS)


def config(server: JudgeServer, **overrides) -> JudgeConfig:
    return JudgeConfig(urls=(server.url,), **{"max_retries": 2, "concurrency": 4, "backoff": 0.01, **overrides})


def verify_prompts(server: JudgeServer) -> dict[str, str]:
    """The verify prompt sent for each claim."""
    return {between(c[-1]["content"], "Claim:", "\n\n"): c[-1]["content"]
            for c in server.conversations if "Claim:" in c[-1]["content"]}


def test_split_retrieve_verify_and_the_record_fields(tmp_path):
    samples = write_jsonl(tmp_path / "s.jsonl", [Q])
    with JudgeServer(scripted) as server:
        run_annotate(str(samples), str(tmp_path / "out.jsonl"), annotator="factscore", judge=config(server))
    (record,) = read_records(tmp_path / "out.jsonl", "annotated")
    first, second, third = record["responses"]
    assert first["facts"] == [
        {"text": "Ada Lovelace was born in London.", "sentence": 1, "label": "supported"},
        {"text": "Ada Lovelace wrote programs for the Analytical Engine.", "sentence": 1, "label": "supported"}]
    assert [s["label"] for s in first["sentences"]] == ["nofact", "ok"]
    assert (first["n_facts_supported"], first["n_facts_unsupported"]) == (2, 0)
    assert second["facts"] == [{"text": "Ada Lovelace was born in Paris.", "sentence": 0, "label": "unsupported"}]
    assert [s["label"] for s in second["sentences"]] == ["unverifiable", "nofact"]
    assert (second["n_facts_supported"], second["n_facts_unsupported"], second["fact_score"]) == (0, 1, 0.0)
    assert [f["sentence"] for f in third["facts"]] == [0, 0, 1] and third["n_facts_supported"] == 3
    # Retrieval: the passage that holds the claim comes first; 5 of the 7 come, and two that share
    # no word with the claim (ties keep document order) do not.
    prompts = verify_prompts(server)
    london = prompts["Ada Lovelace was born in London."]
    assert "Passage 1:\nAda Lovelace was born in London in 1815." in london
    assert "Penguins" not in london and "Tea grows" not in london
    engine = prompts["Ada Lovelace wrote programs for the Analytical Engine."]
    assert "Passage 1:\nThe Analytical Engine was a machine designed by Charles Babbage" in engine
    assert "Jazz" not in engine
    assert all(p.count("\nPassage ") == 5 for p in prompts.values())
    # Each distinct sentence is split once, each of its facts verified once, all greedily.
    assert server.chat_requests == len(SPLITS) + 4
    assert {r["temperature"] for r in server.requests} == {0.0}
    assert record["annotator"]["name"] == "factscore"
    assert record["annotator"]["retrieval"] == {"method": "bm25", "package": "bm25s", "top_k": 5, "passage_words": 256}


def test_malformed_replies_are_asked_again_then_reported_and_the_cache_keeps_the_rest(tmp_path):
    samples = write_jsonl(tmp_path / "s.jsonl", [Q])
    with JudgeServer(scripted) as server:
        server.malformed_first = 2  # the first two replies say nothing usable: asked again, sampled
        run_annotate(str(samples), str(tmp_path / "a.jsonl"), annotator="factscore", judge=config(server))
    assert server.chat_requests == len(SPLITS) + 4 + 2
    assert sorted({r["temperature"] for r in server.requests}) == [0.0, REASK_TEMPERATURE]

    bad = {**Q, "id": "q2", "responses": [{"index": 0, "text": "Ada Lovelace was born in Paris. Pure gibberish here."}]}
    samples = write_jsonl(tmp_path / "s2.jsonl", [Q, bad])
    out = tmp_path / "b.jsonl"
    with JudgeServer(scripted) as server, pytest.raises(JudgeError) as err:
        run_annotate(str(samples), str(out), annotator="factscore", judge=config(server))
    assert "'Pure gibberish here.' after 3 attempts" in str(err.value) and "rerun to resume" in str(err.value)
    # The rerun, after the judge learns to answer, pays only for the sentence that failed.
    def fixed(messages: list[dict[str, str]]) -> str:
        prompt = messages[-1]["content"]
        return "- It is gibberish." if "Sentence:\nPure gibberish" in prompt else scripted(messages)

    with JudgeServer(fixed) as server:
        run_annotate(str(samples), str(out), annotator="factscore", judge=config(server))
    assert server.chat_requests == 2  # its split and its one fact's verification
    assert [r["id"] for r in read_records(out, "annotated")] == ["q1", "q2"]


def spans_of(response: dict) -> list[list[tuple[str, str]]]:
    """Per sentence, its spans as (quoted text, label); None for a sentence without spans."""
    return [None if "spans" not in s else [(response["text"][x["start"]:x["end"]], x["label"]) for x in s["spans"]]
            for s in response["sentences"]]


def test_quotes_found_become_spans_in_the_response_text_and_come_back_from_the_cache(tmp_path):
    samples = write_jsonl(tmp_path / "s.jsonl", [Q])
    out = tmp_path / "out.jsonl"
    with JudgeServer(scripted) as server:
        summary = run_annotate(str(samples), str(out), annotator="factscore", judge=config(server))
    assert "fell back" not in summary
    (record,) = read_records(out, "annotated")
    first, second, third = record["responses"]
    assert spans_of(first) == [None, [("born in London", "ok"), ("wrote programs", "ok")]]
    assert first["sentences"][1]["spans"] == [{"start": 30, "end": 44, "label": "ok"},
                                              {"start": 49, "end": 63, "label": "ok"}]
    assert spans_of(second) == [[("born in Paris", "unverifiable")], None]  # not supported by the document
    assert spans_of(third) == [[("born in London", "ok"), ("wrote programs", "ok")], [("born in 1815", "ok")]]
    for resp in record["responses"]:
        for sentence in resp["sentences"]:
            assert all(sentence["start"] <= x["start"] < x["end"] <= sentence["end"] for x in sentence.get("spans", []))
    # The quotes are kept with the judgments: annotating again from the cache asks nothing and writes the same.
    out.unlink()
    with JudgeServer(scripted) as server:
        run_annotate(str(samples), str(out), annotator="factscore", judge=config(server))
    assert server.chat_requests == 0
    assert read_records(out, "annotated")[0]["responses"] == record["responses"]


def test_a_fact_whose_quote_is_not_found_sends_its_sentence_back_to_sentence_level_and_is_counted(tmp_path):
    splits = {**SPLITS,
              "Ada Lovelace was born in London and wrote programs.": [
                  ("Ada Lovelace was born in London.", "born in London"),
                  ("Ada Lovelace wrote programs for the Analytical Engine.", "wrote many programs")],  # not verbatim
              "She was born in 1815.": [("Ada Lovelace was born in 1815.", None)]}  # no quote at all
    samples = write_jsonl(tmp_path / "s.jsonl", [Q])
    out = tmp_path / "out.jsonl"
    with JudgeServer(factscore_script(splits)) as server:
        result = subprocess.run([*MASKDPO, "annotate", str(samples), "--annotator", "factscore", "--judge-url",
                                 server.url, "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # The London sentence is in two responses (one fact unplaced in each), the 1815 one in one.
    report = " ".join(result.stderr.split())  # the terminal width may wrap it
    assert "3 facts not found in their sentence, so 3 sentences fell back to sentence level" in report
    (record,) = read_records(out, "annotated")
    first, second, third = record["responses"]
    assert spans_of(first) == [None, None] and spans_of(third) == [None, None]
    assert spans_of(second) == [[("born in Paris", "unverifiable")], None]  # other sentences keep theirs
    assert [s["label"] for s in third["sentences"]] == ["ok", "ok"] and third["n_facts_supported"] == 3


def test_a_quote_that_occurs_twice_goes_to_the_first_occurrence_no_earlier_fact_holds(tmp_path):
    sentence = "Ada Lovelace was born in London and died in London."
    splits = {sentence: [("Ada Lovelace was born in London.", "London"), ("Ada Lovelace died in London.", "London"),
                         ("Ada Lovelace lived in London.", "London"), ("Ada Lovelace was born.", "Ada Lovelace")]}
    samples = write_jsonl(tmp_path / "s.jsonl", [{**Q, "responses": [{"index": 0, "text": "Hi. " + sentence}]}])
    with JudgeServer(factscore_script({**splits, "Hi.": []})) as server:
        run_annotate(str(samples), str(tmp_path / "out.jsonl"), annotator="factscore", judge=config(server))
    (record,) = read_records(tmp_path / "out.jsonl", "annotated")
    london = [4 + sentence.index("London"), 4 + sentence.rindex("London")]
    assert [(x["start"], x["end"]) for x in record["responses"][0]["sentences"][1]["spans"]] == [
        (london[0], london[0] + 6), (london[1], london[1] + 6),  # the second fact takes the second London
        (london[0], london[0] + 6),  # every occurrence held: the first one again
        (4, 16)]
    # The rule on its own, Chinese included: overlapping occurrences count, a missing quote places nothing.
    assert place_quotes("巴黎和巴黎", ["巴黎", "巴黎", "柏林", None]) == [(0, 2), (3, 5), None, None]
    assert place_quotes("aaa", ["aa", "aa", "aa"]) == [(0, 2), (1, 3), (0, 2)]


def test_the_original_factscore_prompts_from_a_file(tmp_path):
    prompts = tmp_path / "factscore_prompts.json"
    prompts.write_text(json.dumps({"en": {
        "split": "Please breakdown the following sentence into independent facts: {sentence}\n",
        "verify": "Answer the question about {topic} based on the given context.\n\n{passages}\n\n"
                  "Input: {fact} True or False?\nOutput:"}}), encoding="utf-8")

    def original(messages: list[dict[str, str]]) -> str:
        prompt = messages[-1]["content"]
        if prompt.startswith("Answer the question about"):
            return "True" if "Input: Ada Lovelace was born in London. True" in prompt else "False"
        return scripted([{"role": "user", "content": "Sentence:\n" + prompt.split(": ", 1)[1].strip() + "\n\n"}])

    samples = write_jsonl(tmp_path / "s.jsonl", [{**Q, "topic": "Ada Lovelace"}])
    with JudgeServer(original) as server:
        run_annotate(str(samples), str(tmp_path / "out.jsonl"), annotator="factscore",
                     judge=config(server, prompts_file=prompts))
    (record,) = read_records(tmp_path / "out.jsonl", "annotated")
    assert [f["label"] for f in record["responses"][0]["facts"]] == ["supported", "unsupported"]
    assert any(c[-1]["content"].startswith("Answer the question about Ada Lovelace based on") for c in server.conversations)
    assert record["annotator"]["prompts"]["file"] == str(prompts)


def test_reply_parsing_and_length_penalty():
    assert parse_facts("- A.\n- B.\n* C.\n1. D.") == tuple(map(SplitFact, ("A.", "B.", "C.", "D.")))
    assert parse_facts('- A. | a\n- B. |"b c"\n- C.|“c”\n- D. | x | y\n- A. | again') == (
        SplitFact("A.", "a"), SplitFact("B.", "b c"), SplitFact("C.", "c"), SplitFact("D.", "x | y"))
    assert parse_facts("- A. | \n- | b") == (SplitFact("A."),)  # an empty quote is no quote, no fact no line
    assert parse_facts("<No Facts>") == () and parse_facts("<无事实>") == ()
    assert parse_facts("I cannot tell.") is None and parse_facts("- A.\n<No Facts>") is None
    assert parse_verdict("True") is True and parse_verdict("False. It is not true.") is False
    assert parse_verdict("The answer is true.") is True and parse_verdict("It is true, or false.") is None
    assert parse_verdict("I don't know.") is None
    assert length_penalty(3, None) == 1.0 and length_penalty(11, 10) == 1.0
    assert length_penalty(5, 10) == pytest.approx(2.718281828 ** (1 - 10 / 5))


# ---------------------------------------------------------------- the embedded world


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    make_world(3, str(out), quick=True)
    return out


def perfect_splitter(messages: list[dict[str, str]]) -> str:
    """A judge that splits world sentences as the grammar does and finds a true claim verbatim
    among the passages (a world document states each true fact in its canonical sentence)."""
    prompt = messages[-1]["content"]
    if "Claim:" in prompt:
        return "True" if between(prompt, "Claim:", "\n\n") in prompt.split("Claim:")[0] else "False"
    entity = grammar.parse_question(between(prompt, "Question:\n", "\n\n"))
    sentence = between(prompt, "Sentence:\n", "\n\n")
    facts = grammar.parse(sentence)
    if facts is None:  # the oracle reads an off-grammar sentence as one claim, the sentence itself
        return f"- {grammar.normalize(sentence)}"
    if not facts:
        return "<No Facts>"
    return "\n".join(f"- {grammar.fact_text(f.name or entity, f.attribute, f.value)}" for f in facts)


def test_a_perfect_fact_splitter_reproduces_the_oracles_fact_counts(world_dir, tmp_path):
    world = json.loads((world_dir / "world.json").read_text())
    by_name = {e["name"]: e for e in world["entities"]}
    questions = read_records(world_dir / "test_questions.jsonl", "questions")[:6]
    samples = []
    for i, q in enumerate(questions):
        e, other = by_name[q["entity"]], world["entities"][(i + 5) % len(world["entities"])]
        wrong = {**other["facts"], "occupation": e["facts"]["occupation"]}  # some true, some false
        answers = [grammar.render_document(e["name"], e["gender"], e["facts"]),
                   " ".join(grammar.render(t, e["name"], e["gender"], wrong, use_name=False)
                            for attrs, t in grammar.FACT_TEMPLATES[::3] if set(attrs) <= set(wrong))
                   + " Many people admire her. Garbled words here."]
        samples.append({**q, "responses": [{"index": j, "text": t} for j, t in enumerate(answers)]})
    write_jsonl(tmp_path / "s.jsonl", samples)
    run_annotate(str(tmp_path / "s.jsonl"), str(tmp_path / "oracle.jsonl"), annotator=f"world:{world_dir}",
                 judge=JudgeConfig())
    with JudgeServer(perfect_splitter) as server:
        run_annotate(str(tmp_path / "s.jsonl"), str(tmp_path / "fs.jsonl"), annotator="factscore", judge=config(server))
    oracle, factscore = (read_records(tmp_path / n, "annotated") for n in ("oracle.jsonl", "fs.jsonl"))
    counts = lambda recs: [(r["n_facts_supported"], r["n_facts_unsupported"], r["facts"])  # noqa: E731
                           for rec in recs for r in rec["responses"]]
    assert counts(oracle) == counts(factscore)
    totals = [sum(x) for x in zip(*[(s, u) for s, u, _ in counts(oracle)])]
    assert totals[0] > 0 and totals[1] > 0  # both kinds of fact were exercised


def test_fact_level_annotators_give_fact_fields_to_a_question_whose_responses_are_all_empty(world_dir, tmp_path):
    empty = {**Q, "responses": [{"index": 0, "text": ""}, {"index": 1, "text": "  "}]}
    samples = write_jsonl(tmp_path / "s.jsonl", [empty])
    run_annotate(str(samples), str(tmp_path / "oracle.jsonl"), annotator=f"world:{world_dir}", judge=JudgeConfig())
    with JudgeServer(scripted) as server:
        run_annotate(str(samples), str(tmp_path / "fs.jsonl"), annotator="factscore", judge=config(server))
    for name in ("oracle.jsonl", "fs.jsonl"):
        (record,) = read_records(tmp_path / name, "annotated")
        assert [(r["facts"], r["n_facts_supported"], r["n_facts_unsupported"]) for r in record["responses"]] == \
            [([], 0, 0)] * 2


# ---------------------------------------------------------------- eval with two annotators


def two_protocols(messages: list[dict[str, str]]) -> str:
    """Either protocol, with verdicts that vary with the text: anah-v2's three turns (no
    hallucination for a conversation of even length), or FactScore's split (a fact per word,
    up to 4) and verify (True for a fact of even length)."""
    prompt = messages[-1]["content"]
    if "Claim:" in prompt:
        return "True" if len(between(prompt, "Claim:", "\n\n")) % 2 == 0 else "False"
    if "Break a sentence" in prompt:
        words = between(prompt, "Sentence:\n", "\n\n").split()[:4]
        return "\n".join(f"- {w}" for w in words) or "<No Facts>"
    turn = sum(m["role"] == "user" for m in messages)
    if turn < 3:
        return "<Facts Present>" if turn == 1 else "Paris is the capital of France."
    return "<No Hallucination>" if len(first_turn(messages)) % 2 == 0 else "<Contradictory>"


@pytest.mark.slow  # a `maskdpo eval` process: two replications sampled, then two judge protocols each
def test_eval_with_two_annotators_reports_both_from_the_annotated_files(tmp_path, tiny_llama_path):
    questions = write_jsonl(tmp_path / "q.jsonl", [
        {"id": f"q{i}", "question": f"Who was person {i}?", "document": "Paris is the capital of France.",
         "topic": "ab"[i % 2]} for i in range(3)])
    out = tmp_path / "eval"
    with JudgeServer(two_protocols) as anah, JudgeServer(two_protocols) as facts:
        proc = subprocess.run([*MASKDPO, "eval", str(questions), "--model", f"tiny={tiny_llama_path}",
                               "--annotator", f"anah-v2@{anah.url}", "--annotator", f"factscore@{facts.url}",
                               "--replications", "2", "--max-new-tokens", "12", "--temperature", "0.8",
                               "--fact-length-penalty", "10", "--max-retries", "1", "-o", str(out)],
                              capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # Each annotator asked only its own served judge.
    assert anah.chat_requests and facts.chat_requests
    assert not any("Claim:" in c[-1]["content"] for c in anah.conversations)
    assert all(len(c) == 1 and ("Break a sentence" in c[0]["content"] or "Claim:" in c[0]["content"])
               for c in facts.conversations)

    summary = json.loads((out / "tiny" / "summary.json").read_text())
    assert (summary["annotator"], summary["fact_annotator"]) == (f"anah-v2@{anah.url}", f"factscore@{facts.url}")
    correct, incorrect, fact_scores, supported, unsupported = [], [], [], [], []
    for r in range(2):
        sentences = read_records(out / "tiny" / f"annotated.r{r}.jsonl", "annotated")
        atomic = read_records(out / "tiny" / f"annotated.factscore.r{r}.jsonl", "annotated")
        firsts = [rec["responses"][0] for rec in sentences]
        same = [rec["responses"][0] for rec in atomic]
        assert [x["text"] for x in firsts] == [x["text"] for x in same]  # the very same responses
        correct.append(sum(x["n_correct"] for x in firsts))
        incorrect.append(sum(x["n_incorrect"] for x in firsts))
        supported.append(sum(x["n_facts_supported"] for x in same))
        unsupported.append(sum(x["n_facts_unsupported"] for x in same))
        scored = [(x["n_facts_supported"], x["n_facts_supported"] + x["n_facts_unsupported"]) for x in same]
        fact_scores.append(sum(100 * s / n * length_penalty(n, 10) for s, n in scored if n)
                           / sum(1 for _, n in scored if n))
    assert summary["correct"] == pytest.approx(sum(correct) / 2)
    assert summary["incorrect"] == pytest.approx(sum(incorrect) / 2)
    assert summary["facts_correct"] == pytest.approx(sum(supported) / 2)
    assert summary["facts_incorrect"] == pytest.approx(sum(unsupported) / 2)
    assert summary["fact_score"] == pytest.approx(sum(fact_scores) / 2)
    assert summary["fact_score_sd"] == pytest.approx(abs(fact_scores[0] - fact_scores[1]) / 2 ** 0.5)
    assert summary["fact_length_penalty"] == 10 and set(summary["per_topic"]) == {"a", "b"}
    assert all("fact_score" in t for t in summary["per_topic"].values())
    results = (out / "results.md").read_text()
    header, _, row = results.splitlines()[:3]
    assert "| # correct |" in header and "| # correct facts | # incorrect facts | % fact score |" in header
    assert f"| {summary['correct']:.1f} | {summary['incorrect']:.1f} |" in row
    assert f"| {summary['facts_correct']:.1f} | {summary['facts_incorrect']:.1f} | {summary['fact_score']:.2f} |" in row


def test_bad_input_is_refused_before_anything_is_judged(tmp_path):
    from maskdpo_cli.errors import InputError, MaskDPOError
    from maskdpo_cli.evaluation import run_eval

    samples = write_jsonl(tmp_path / "s.jsonl", [Q, {**Q, "id": "q2", "document": " "}])
    with JudgeServer(scripted) as server:
        with pytest.raises(InputError, match=r"s\.jsonl:2: field 'document': missing or empty: factscore"):
            run_annotate(str(samples), str(tmp_path / "out.jsonl"), annotator="factscore", judge=config(server))
        with pytest.raises(MaskDPOError, match="factscore@x: given twice"):
            run_eval(str(samples), ["m"], str(tmp_path / "e"), annotator=["factscore", "factscore@x"],
                     judge=config(server))
    assert server.chat_requests == 0 and not (tmp_path / "e").exists()
