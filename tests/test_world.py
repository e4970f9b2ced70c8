"""The embedded world: a deterministic generator, a grammar that round-trips, an exact oracle, a loadable policy."""

from __future__ import annotations

import asyncio
import json
import random
import re
from pathlib import Path

import pytest

from maskdpo_cli.annotators.world import WorldAnnotator
from maskdpo_cli.jsonl import read_jsonl
from maskdpo_cli.records import LABELS, read_records
from maskdpo_cli.world import grammar, make_world
from maskdpo_cli.world.generator import CITIES_PER_REGION, YEAR_SPAN, render_biography

SIZE = {"n_topics": 4, "entities_per_topic": 4, "bios_per_entity": 3}


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    make_world(11, str(out), **SIZE)
    return out


@pytest.fixture(scope="module")
def world(world_dir) -> dict:
    return json.loads((world_dir / "world.json").read_text())


@pytest.fixture(scope="module")
def oracle(world_dir) -> WorldAnnotator:
    return WorldAnnotator(world_dir)


def full_entity(world: dict) -> dict:
    return next(e for e in world["entities"] if set(e["facts"]) == set(grammar.ATTRIBUTES))


def test_make_world_is_deterministic(tmp_path, world_dir):
    make_world(11, str(tmp_path), **SIZE)
    for name in ("world.json", "corpus.jsonl", "train_questions.jsonl", "test_questions.jsonl"):
        assert (tmp_path / name).read_bytes() == (world_dir / name).read_bytes(), name
    make_world(12, str(tmp_path / "other"), **SIZE)
    assert (tmp_path / "other" / "world.json").read_bytes() != (world_dir / "world.json").read_bytes()


def test_questions_split_by_topic_and_follow_the_contract(world_dir, world):
    train = read_records(world_dir / "train_questions.jsonl", "questions")
    test = read_records(world_dir / "test_questions.jsonl", "questions")
    assert train and test
    assert not {q["topic"] for q in train} & {q["topic"] for q in test}
    assert len(train) + len(test) == len(world["entities"])
    for q in train + test:
        assert q["language"] == "en" and grammar.parse_question(q["question"]) == q["entity"]
    # Held-out topics are held out from alignment, not from pretraining: everyone is in the corpus.
    in_corpus = {ex["entity"] for _, ex in read_jsonl(world_dir / "corpus.jsonl")}
    assert in_corpus == {e["name"] for e in world["entities"]}


def test_every_document_parses_back_to_the_true_facts(world_dir, world):
    truth = {e["name"]: e["facts"] for e in world["entities"]}
    for part in ("train", "test"):
        for _, q in read_jsonl(world_dir / f"{part}_questions.jsonl"):
            parsed = {}
            for sentence in q["document"].split(". "):
                facts = grammar.parse(sentence if sentence.endswith(".") else sentence + ".")
                assert facts, sentence
                for f in facts:
                    assert f.name == q["entity"]
                    parsed[f.attribute] = f.value
            assert parsed == truth[q["entity"]]


def test_topics_share_attributes(world):
    by_topic: dict[str, list[dict]] = {}
    for e in world["entities"]:
        by_topic.setdefault(e["topic"], []).append(e["facts"])
    for members in by_topic.values():
        assert len({f["occupation"] for f in members}) <= 2
        assert len({f["birthplace"] for f in members}) <= CITIES_PER_REGION
        years = [int(f["birth_year"]) for f in members]
        assert max(years) - min(years) <= YEAR_SPAN


@pytest.mark.parametrize("index", range(len(grammar.FACT_TEMPLATES)))
@pytest.mark.parametrize("use_name", [True, False])
def test_every_template_round_trips_and_is_ok(world, oracle, index, use_name):
    attrs, template = grammar.FACT_TEMPLATES[index]
    e = full_entity(world)
    sentence = grammar.render(template, e["name"], e["gender"], e["facts"], use_name=use_name)
    facts = grammar.parse(sentence)
    assert [(f.name, f.attribute, f.value) for f in facts] == [
        (e["name"] if use_name else None, a, e["facts"][a]) for a in attrs]
    assert oracle.label({"question": f"Who is {e['name']}?"}, [sentence]) == ["ok"]


def test_wrong_values_are_contradictory(world, oracle):
    e = full_entity(world)
    other = next(x for x in world["entities"]
                 if all(x["facts"].get(a) != e["facts"][a] for a in ("birthplace", "occupation", "known_for")))
    rec = {"entity": e["name"], "question": f"Tell me about {e['name']}."}
    wrong = dict(e["facts"], birthplace=other["facts"]["birthplace"], occupation=other["facts"]["occupation"],
                 known_for=other["facts"]["known_for"], birth_year=str(int(e["facts"]["birth_year"]) + 100))
    for attrs, template in grammar.FACT_TEMPLATES:
        if set(attrs) & {"birthplace", "birth_year", "occupation", "known_for"}:
            sentence = grammar.render(template, e["name"], e["gender"], wrong, use_name=False)
            assert oracle.label(rec, [sentence]) == ["contradictory"], sentence
    # One wrong fact makes a two-fact sentence contradictory.
    mixed = dict(e["facts"], birth_year=str(int(e["facts"]["birth_year"]) + 1))
    sentence = grammar.render("{S} was born in {birthplace} in {birth_year}.", e["name"], e["gender"], mixed)
    assert oracle.label(rec, [sentence]) == ["contradictory"]
    assert oracle.label(rec, [f"{e['name']} speaks Nonexistish."]) == ["contradictory"]


def test_unknown_entities_missing_attributes_and_garble_are_unverifiable(world, oracle):
    e = full_entity(world)
    rec = {"question": f"Who is {e['name']}?"}  # no "entity" key: resolved from the question
    sentences = ["Zorbo Quaxley was born in 1700.", "Zorbo Quaxley's hometown is Nowhere.",
                 f"{e['name']} was born in in {e['facts']['birth_year']}.", "She was a friend of kings.",
                 f"{e['name']} was born"]
    assert oracle.label(rec, sentences) == ["unverifiable"] * len(sentences)
    missing = next((x for x in world["entities"] if "language" not in x["facts"]), None)
    if missing is not None:
        assert oracle.label({"entity": missing["name"]}, ["She speaks Orvish."]) == ["unverifiable"]
    # A pronoun with nobody to refer to cannot be checked.
    assert oracle.label({"question": "What is the weather like?"}, ["She lives in Vale."]) == ["unverifiable"]


def test_sentences_without_facts_are_nofact(world, oracle):
    e = full_entity(world)
    rec = {"entity": e["name"], "question": f"Who is {e['name']}?"}
    fillers = [grammar.render(t, e["name"], e["gender"], e["facts"], use_name=u)
               for t in grammar.FILLER_TEMPLATES for u in (True, False)]
    assert oracle.label(rec, fillers + ["", "  ", "...", "Many people admire Zorbo Quaxley."]) == ["nofact"] * (len(fillers) + 4)


def test_pronouns_resolve_to_the_question_entity_and_names_to_themselves(world, oracle):
    a, b = world["entities"][0], world["entities"][1]
    rec = {"entity": a["name"], "question": f"Who is {a['name']}?"}
    assert oracle.label(rec, [f"She was born in {a['facts']['birth_year']}.",
                              f"{b['name']} was born in {b['facts']['birth_year']}."]) == ["ok", "ok"]


def test_biographies_label_only_ok_or_nofact(world, oracle):
    rng = random.Random(0)
    for e in world["entities"]:
        bio = render_biography(rng, e)
        sentences = [s if s.endswith(".") else s + "." for s in bio.split(". ")]
        labels = oracle.label({"entity": e["name"]}, sentences)
        assert set(labels) <= {"ok", "nofact"} and set(labels) <= set(LABELS), (bio, labels)
    assert oracle.describe()["name"] == "world"


def test_max_fillers_bounds_the_filler_sentences_of_the_corpus(tmp_path):
    def fillers_per_bio(max_fillers: int) -> list[int]:
        out = tmp_path / f"fillers{max_fillers}"
        make_world(11, str(out), **SIZE, max_fillers=max_fillers)
        oracle = WorldAnnotator(out)
        counts = []
        for _, ex in read_jsonl(out / "corpus.jsonl"):
            sentences = [s if s.endswith(".") else s + "." for s in ex["text"].split(". ")]
            counts.append(oracle.label({"entity": ex["entity"]}, sentences).count("nofact"))
        return counts

    assert max(fillers_per_bio(2)) == 2  # the default: up to two per biography
    assert max(fillers_per_bio(1)) == 1
    assert set(fillers_per_bio(0)) == {0}


def test_quick_pretrain_gives_a_loadable_chat_model(world_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from maskdpo_cli.world import pretrain

    summary = pretrain(str(world_dir), str(tmp_path / "policy"), steps=4, quick=True)
    assert summary["steps"] == 4
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "policy")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    assert tokenizer.is_fast and tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id == 0
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Who is Ada Lovelace?"}],
                                         tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nWho is Ada Lovelace?<|im_end|>\n<|im_start|>assistant\n"
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    assert enc["input_ids"][0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    for (start, end), token in zip(enc["offset_mapping"], enc["input_ids"]):
        assert tokenizer.decode([token]) == text[start:end]
    out = model.generate(**tokenizer(text, return_tensors="pt", add_special_tokens=False), max_new_tokens=3,
                         do_sample=False)
    assert out.shape[1] <= len(enc["input_ids"]) + 3


def test_the_oracle_labels_every_claim_as_an_atomic_fact(world, oracle):
    import asyncio

    from maskdpo_cli.annotators.base import Fact

    e = full_entity(world)
    name, facts = e["name"], e["facts"]
    wrong_year = str(int(facts["birth_year"]) + 3)
    rec = {"entity": name, "question": f"Who is {name}?"}
    sentences = [
        "Many people admire her.",                                     # filler: no claim
        "Garbled words, not the grammar's.",                           # unparsable: no fact it can read
        f"She speaks {facts['language']}.",                            # one true claim, pronoun resolved
        f"Born in {facts['birthplace']} in {wrong_year}, she works as {grammar.article(facts['occupation'])} "
        f"{facts['occupation']}.",                                     # three claims, one false
        f"Zorbo Quaxley lives in {facts['residence']}.",               # a claim about nobody the world knows
    ]
    verdicts = asyncio.run(oracle.judge(rec, sentences))
    assert [v.label for v in verdicts] == ["nofact", "unverifiable", "ok", "contradictory", "unverifiable"]
    assert [v.facts for v in verdicts] == [
        (), (Fact("Garbled words, not the grammar's.", False),),
        (Fact(f"{name} speaks {facts['language']}.", True),),
        (Fact(f"{name} was born in {facts['birthplace']}.", True), Fact(f"{name} was born in {wrong_year}.", False),
         Fact(f"{name} works as {grammar.article(facts['occupation'])} {facts['occupation']}.", True)),
        (Fact(f"Zorbo Quaxley lives in {facts['residence']}.", False),),
    ]
    # Each fact's text is the canonical sentence a reference document states, and parses back.
    for fact in verdicts[3].facts:
        (parsed,) = grammar.parse(fact.text)
        assert parsed.name == name


# ------------------------------------------------------------------ fact spans

def marked_render(template: str, e: dict, facts: dict, use_name: bool) -> tuple[str, list[tuple[int, int]]]:
    """The sentence and where its values stand, found by rendering the values between markers (not by parsing)."""
    marked = grammar.render(template, e["name"], e["gender"], {k: f"\x01{v}\x02" for k, v in facts.items()},
                            use_name=use_name)
    # The article is chosen from the value's first letter, which the marker hides.
    marked = re.sub(r"\ba (\x01[aeiou])", r"an \1", marked)
    spans, plain = [], ""
    for piece in re.split(r"(\x01[^\x02]*\x02)", marked):
        if piece.startswith("\x01"):
            spans.append((len(plain), len(plain) + len(piece) - 2))
            piece = piece[1:-1]
        plain += piece
    return plain, spans


def other_values(world: dict, e: dict) -> dict[str, str]:
    """A wrong value per attribute: another entity's, or the year plus 100."""
    out = {"birth_year": str(int(e["facts"]["birth_year"]) + 100)}
    for attr in set(e["facts"]) - set(out):
        out[attr] = next(x["facts"][attr] for x in world["entities"]
                         if x["facts"].get(attr, e["facts"][attr]) != e["facts"][attr])
    return out


@pytest.mark.parametrize("use_name", [True, False])
def test_oracle_spans_are_exactly_the_stated_values(world, oracle, use_name):
    e = full_entity(world)
    wrong = other_values(world, e)
    for attrs, template in grammar.FACT_TEMPLATES:
        # The true sentence, then each of its values corrupted in turn.
        for corrupt in (None, *attrs):
            facts = dict(e["facts"], **({corrupt: wrong[corrupt]} if corrupt else {}))
            sentence, expected = marked_render(template, e, facts, use_name)
            verdict = oracle.judge_sentence(sentence, e["name"])
            got = [(s.start, s.end) for s in verdict.spans]
            assert got == expected, sentence
            assert [sentence[a:b] for a, b in got] == [facts[a] for a in attrs]
            assert [s.label for s in verdict.spans] == ["contradictory" if a == corrupt else "ok" for a in attrs]


def test_spans_stay_exact_when_whitespace_is_irregular(world, oracle):
    e = full_entity(world)
    f = e["facts"]
    sentence = f"She  was born in\n {f['birthplace']}   in {f['birth_year']}."
    verdict = oracle.judge_sentence(sentence, e["name"])
    assert verdict.label == "ok"
    assert [sentence[s.start:s.end] for s in verdict.spans] == [f["birthplace"], f["birth_year"]]


def test_a_sentence_outside_the_grammar_is_one_unsupported_fact_spanning_it(world, oracle):
    e = full_entity(world)
    sentence = f"{e['name']}'s best known work is not {e['facts']['known_for']}."
    verdict = oracle.judge_sentence(sentence, e["name"])
    assert verdict.label == "unverifiable"
    assert [(f.text, f.supported) for f in verdict.facts] == [(sentence, False)]
    assert [(s.start, s.end, s.label) for s in verdict.spans] == [(0, len(sentence), "unverifiable")]
    filler = grammar.render(grammar.FILLER_TEMPLATES[0], e["name"], e["gender"], e["facts"])
    assert oracle.judge_sentence(filler, e["name"]).spans is None


def annotate_texts(oracle, entity: str, texts: list[str]) -> list[dict]:
    from maskdpo_cli.annotation import annotate_record
    from maskdpo_cli.records import validate_annotated

    record = {"id": "q", "entity": entity, "question": f"Who is {entity}?",
              "responses": [{"index": i, "text": t} for i, t in enumerate(texts)]}
    return validate_annotated(asyncio.run(annotate_record(record, oracle)))["responses"]


def test_annotated_corpus_answers_carry_exact_spans_and_a_corrupted_value_is_the_one_wrong_span(
        world_dir, world, oracle):
    entities = {e["name"]: e for e in world["entities"]}
    examples = [ex for _, ex in read_jsonl(world_dir / "corpus.jsonl")][:24]
    n_spans = n_corrupted = 0
    for ex in examples:
        e = entities[ex["entity"]]
        (resp,) = annotate_texts(oracle, e["name"], [ex["text"]])
        spans = []
        for i, sent in enumerate(resp["sentences"]):
            n_facts = sum(f["sentence"] == i for f in resp["facts"])
            assert len(sent.get("spans", [])) == n_facts
            assert sent["label"] in ("ok", "nofact")
            for span in sent.get("spans", []):
                assert span["label"] == "ok" and ex["text"][span["start"]:span["end"]] in e["facts"].values()
                spans.append(span)
        n_spans += len(spans)
        # Corrupt the first stated value the world can contradict (another entity's city, or the year + 100).
        first = next((s for s in spans if ex["text"][s["start"]:s["end"]] in
                      (e["facts"]["birthplace"], e["facts"]["birth_year"])), None)
        if first is None:
            continue
        value = ex["text"][first["start"]:first["end"]]
        attr = "birthplace" if value == e["facts"]["birthplace"] else "birth_year"
        new = other_values(world, e)[attr]
        text = ex["text"][:first["start"]] + new + ex["text"][first["end"]:]
        (bad,) = annotate_texts(oracle, e["name"], [text])
        got = [s for sent in bad["sentences"] for s in sent.get("spans", [])]
        shift = len(new) - len(value)
        expected = [dict(s, end=s["end"] + shift, label="contradictory") if s is first else
                    dict(s, start=s["start"] + shift * (s["start"] > first["start"]),
                         end=s["end"] + shift * (s["start"] > first["start"])) for s in spans]
        assert got == expected
        assert text[got[spans.index(first)]["start"]:got[spans.index(first)]["end"]] == new
        n_corrupted += 1
    assert n_spans > 50 and n_corrupted > 10
