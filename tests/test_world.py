"""The embedded world: a deterministic generator, a grammar that round-trips, an exact oracle, a loadable policy."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from maskdpo_cli.annotators.world import WorldAnnotator
from maskdpo_cli.jsonl import read_jsonl
from maskdpo_cli.records import LABELS, read_records
from maskdpo_cli.world import grammar, make_world
from maskdpo_cli.world.generator import CITIES_PER_REGION, YEAR_ATTRIBUTES, YEAR_SPAN, render_biography

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
    from maskdpo_cli.annotation import annotate_stream
    from maskdpo_cli.records import validate_annotated

    record = {"id": "q", "entity": entity, "question": f"Who is {entity}?",
              "responses": [{"index": i, "text": t} for i, t in enumerate(texts)]}
    written: list[dict] = []
    asyncio.run(annotate_stream([record], oracle, written.append))
    return validate_annotated(written[0])["responses"]


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
        # The wrong value is blurred when an entity of a topic in the same region holds it
        # (the default world: one kind, two topics per region).
        region = {t["id"]: t["region"] for t in world["topics"]}
        blurred = any(new in x["facts"].values() for x in world["entities"]
                      if region[x["topic_id"]] == region[e["topic_id"]])
        expected = [dict(s, end=s["end"] + shift, label="contradictory", blurred=blurred) if s is first else
                    dict(s, start=s["start"] + shift * (s["start"] > first["start"]),
                         end=s["end"] + shift * (s["start"] > first["start"])) for s in spans]
        assert got == expected
        assert text[got[spans.index(first)]["start"]:got[spans.index(first)]["end"]] == new
        n_corrupted += 1
    assert n_spans > 50 and n_corrupted > 10


# ------------------------------------------------------------------ kinds, questions per topic, affinity, blur

# What the default world wrote before kinds and questions per topic existed (commit e92d949):
# the demo's and the experiments' worlds must not move by a byte.
BASE_WORLD_SHA256 = {
    (11, "small"): {
        "corpus.jsonl": "692577f15bbcb68a519f17ec42738178475fa2c33362e3afb60d155b7bb54db1",
        "test_questions.jsonl": "7abb76dcaf715abd5d54e834d117a3c4d10239aec423d4fed76092b02ea25e09",
        "train_questions.jsonl": "7e8ad1cc13138870d864dd55b02ab918fedbcb3e0fc42fe1fca955cce980ab06",
        "world.json": "5cdd2d73aedfefe840aca19ade795b04ee314aa8178363792ca8fb6017bd3118",
    },
    (7, "quick"): {
        "corpus.jsonl": "30cc364c50b8d8dc751afccd3e29497a17500c8790e91987d23e442182ce21c7",
        "test_questions.jsonl": "7bff45ded744819b2000c02f0c06d87b67b651be80eeaefcca2db0b6d8e5c587",
        "train_questions.jsonl": "5f247d3e06998932f033e6da092207a6e363b3a1e0d35b0d51a7842b44fc978e",
        "world.json": "20039e740805680abf97b493bba5c8bf66740ce5b46e2677ef005911d9aedd3d",
    },
}
KINDS_SIZE = {"n_topics": 6, "entities_per_topic": 4, "bios_per_entity": 2, "questions_per_topic": 3}


@pytest.mark.parametrize("seed,size", [(11, "small"), (7, "quick")])
def test_the_default_world_is_byte_for_byte_what_it_was(tmp_path, seed, size):
    import hashlib

    make_world(seed, str(tmp_path), **({"quick": True} if size == "quick" else SIZE))
    got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    assert got == BASE_WORLD_SHA256[(seed, size)]
    # Naming the defaults is the default.
    make_world(seed, str(tmp_path / "explicit"), kinds=1, questions_per_entity=1,
               **({"quick": True} if size == "quick" else SIZE))
    assert (tmp_path / "explicit" / "world.json").read_bytes() == (tmp_path / "world.json").read_bytes()


@pytest.fixture(scope="module")
def kinds_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kinds")
    make_world(5, str(out), kinds=3, questions_per_entity=3, **KINDS_SIZE)
    return out


@pytest.fixture(scope="module")
def kinds_world(kinds_dir) -> dict:
    return json.loads((kinds_dir / "world.json").read_text())


@pytest.fixture(scope="module")
def kinds_oracle(kinds_dir) -> WorldAnnotator:
    return WorldAnnotator(kinds_dir)


def test_a_kinds_world_is_deterministic_per_seed(tmp_path, kinds_dir):
    make_world(5, str(tmp_path), kinds=3, questions_per_entity=3, **KINDS_SIZE)
    for name in ("world.json", "corpus.jsonl", "train_questions.jsonl", "test_questions.jsonl"):
        assert (tmp_path / name).read_bytes() == (kinds_dir / name).read_bytes(), name
    make_world(6, str(tmp_path / "other"), kinds=3, questions_per_entity=3, **KINDS_SIZE)
    assert (tmp_path / "other" / "world.json").read_bytes() != (kinds_dir / "world.json").read_bytes()


def test_topics_name_their_kind_and_each_kind_has_its_own_attributes(kinds_world):
    assert kinds_world["kinds"] == ["person", "ship", "inn"]
    assert [t["kind"] for t in kinds_world["topics"]] == ["person", "person", "ship", "ship", "inn", "inn"]
    topic_kind = {t["id"]: t["kind"] for t in kinds_world["topics"]}
    for e in kinds_world["entities"]:
        kind = grammar.KINDS[e["kind"]]
        assert e["kind"] == topic_kind[e["topic_id"]]
        assert set(e["facts"]) <= set(kind.attributes)
        assert set(kind.attributes) - set(kind.optional) <= set(e["facts"])
    attributes = [set(k.attributes) for k in grammar.KINDS.values()]
    assert not (attributes[0] & attributes[1] or attributes[0] & attributes[2] or attributes[1] & attributes[2])


def test_a_world_with_options_names_kinds_even_with_one(tmp_path):
    make_world(5, str(tmp_path), questions_per_entity=2, **KINDS_SIZE)
    world = json.loads((tmp_path / "world.json").read_text())
    assert world["kinds"] == ["person"] and {t["kind"] for t in world["topics"]} == {"person"}
    assert world["size"]["questions_per_entity"] == 2 and world["size"]["kinds"] == 1


@pytest.mark.parametrize("q", [1, 2, 5])
def test_questions_per_topic_are_honoured(tmp_path, q):
    make_world(5, str(tmp_path), kinds=3, questions_per_entity=q, **KINDS_SIZE)
    world = json.loads((tmp_path / "world.json").read_text())
    facts = {e["name"]: e["facts"] for e in world["entities"]}
    questions = (read_records(tmp_path / "train_questions.jsonl", "questions")
                 + read_records(tmp_path / "test_questions.jsonl", "questions"))
    by_entity: dict[str, list[dict]] = {}
    for record in questions:
        by_entity.setdefault(record["entity"], []).append(record)
    # 3 asked entities per topic, q questions each: the open one first, then q - 1 distinct attributes.
    assert len(by_entity) == 3 * KINDS_SIZE["n_topics"]
    assert len({r["id"] for r in questions}) == len(questions)
    kinds = tuple(world["kinds"])
    for name, records in by_entity.items():
        assert len(records) == q
        assert "attribute" not in records[0]
        attributes = [r["attribute"] for r in records[1:]]
        assert len(set(attributes)) == q - 1 and set(attributes) <= set(facts[name])
        for r in records:
            assert grammar.parse_question(r["question"], kinds) == name
            assert len({r["topic"] for r in records}) == 1
        kind = grammar.KINDS[next(e["kind"] for e in world["entities"] if e["name"] == name)]
        for r in records[1:]:
            assert r["question"] == kind.attribute_questions[r["attribute"]].format(N=name)


def test_out_of_range_options_are_refused(tmp_path):
    from maskdpo_cli.errors import MaskDPOError

    with pytest.raises(MaskDPOError, match="--kinds 4"):
        make_world(5, str(tmp_path / "a"), kinds=4, **KINDS_SIZE)
    with pytest.raises(MaskDPOError, match="--questions-per-topic 6"):
        make_world(5, str(tmp_path / "b"), questions_per_entity=6, **KINDS_SIZE)
    with pytest.raises(MaskDPOError, match="at least 6 topics"):
        make_world(5, str(tmp_path / "c"), kinds=3, **dict(KINDS_SIZE, n_topics=5))
    assert not any((tmp_path / d).exists() for d in "abc")


ALL_TEMPLATES = [(k.name, i) for k in grammar.KINDS.values() for i in range(len(k.fact_templates))]


def full_entity_of(world: dict, kind: str) -> dict:
    attributes = set(grammar.KINDS[kind].attributes)
    return next(e for e in world["entities"] if e["kind"] == kind and set(e["facts"]) == attributes)


@pytest.mark.parametrize("kind,index", ALL_TEMPLATES)
@pytest.mark.parametrize("use_name", [True, False])
def test_every_kinds_templates_round_trip_with_exact_spans(kinds_world, kinds_oracle, kind, index, use_name):
    attrs, template = grammar.KINDS[kind].fact_templates[index]
    e = full_entity_of(kinds_world, kind)
    # A wrong value: the year plus 100, else another value of the world the attribute's pattern admits.
    wrong = {a: str(int(e["facts"][a]) + 100) if a in YEAR_ATTRIBUTES else
             next(v for x in kinds_world["entities"] for b, v in x["facts"].items()
                  if grammar.VALUE_PATTERNS[b] == grammar.VALUE_PATTERNS[a] and v != e["facts"][a])
             for a in attrs}
    all_kinds = tuple(grammar.KINDS)
    for corrupt in (None, *attrs):
        facts = dict(e["facts"], **({corrupt: wrong[corrupt]} if corrupt else {}))
        sentence, expected = marked_render(template, e, facts, use_name)
        parsed = grammar.parse(sentence, all_kinds)
        assert [(f.name, f.attribute, f.value) for f in parsed] == [
            (e["name"] if use_name else None, a, facts[a]) for a in attrs]
        verdict = kinds_oracle.judge_sentence(sentence, e["name"])
        assert [(s.start, s.end) for s in verdict.spans] == expected, sentence
        assert [s.label for s in verdict.spans] == ["contradictory" if a == corrupt else "ok" for a in attrs]
        assert verdict.label == ("contradictory" if corrupt else "ok")


def test_no_sentence_of_one_kind_parses_as_another_kinds_template(kinds_world):
    for kind in grammar.KINDS.values():
        e = full_entity_of(kinds_world, kind.name)
        for attrs, template in kind.fact_templates:
            for use_name in (True, False):
                sentence = grammar.render(template, e["name"], e["gender"], e["facts"], use_name=use_name)
                readers = [other.name for other in grammar.KINDS.values()
                           if grammar.parse(sentence, (other.name,)) is not None]
                assert readers == [kind.name], sentence
                # and within the kind, only templates stating these attributes read it
                assert [f.attribute for f in grammar.parse(sentence, (kind.name,))] == list(attrs)


def test_every_kinds_fillers_questions_and_documents_parse(kinds_dir, kinds_world, kinds_oracle):
    kinds = tuple(kinds_world["kinds"])
    for kind in grammar.KINDS.values():
        e = full_entity_of(kinds_world, kind.name)
        fillers = [grammar.render(t, e["name"], e["gender"], e["facts"], use_name=u)
                   for t in kind.filler_templates for u in (True, False)]
        assert [kinds_oracle.judge_sentence(f, e["name"]).label for f in fillers] == ["nofact"] * len(fillers)
        for q in (*kind.questions, *kind.attribute_questions.values()):
            assert grammar.parse_question(q.format(N=e["name"]), kinds) == e["name"]
        document = grammar.render_document(e["name"], e["gender"], e["facts"], kind.name)
        parsed = {f.attribute: f.value for s in re.split(r"(?<=\.) ", document) for f in grammar.parse(s, kinds)}
        assert parsed == e["facts"]
        for attribute, value in e["facts"].items():  # an atomic fact's text parses back to it
            (fact,) = grammar.parse(grammar.fact_text(e["name"], attribute, value), kinds)
            assert (fact.name, fact.attribute, fact.value) == (e["name"], attribute, value)


def test_a_kinds_corpus_is_all_true_and_answers_attribute_questions(kinds_dir, kinds_world, kinds_oracle):
    entities = {e["name"]: e for e in kinds_world["entities"]}
    examples = [ex for _, ex in read_jsonl(kinds_dir / "corpus.jsonl")]
    attribute_questions = 0
    for ex in examples:
        e = entities[ex["entity"]]
        kind = grammar.KINDS[e["kind"]]
        labels = [kinds_oracle.judge_sentence(s, e["name"]).label for s in re.split(r"(?<=\.) ", ex["text"])]
        assert set(labels) <= {"ok", "nofact"}, ex
        asked = [a for a, q in kind.attribute_questions.items() if q.format(N=e["name"]) == ex["question"]]
        if asked:  # the answer's first sentence states the asked attribute, truly
            attribute_questions += 1
            first = grammar.parse(re.split(r"(?<=\.) ", ex["text"])[0], (kind.name,))
            assert [(f.name, f.attribute, f.value) for f in first] == [(e["name"], asked[0], e["facts"][asked[0]])]
    assert 0.2 < attribute_questions / len(examples) < 0.5
    assert {e["kind"] for e in kinds_world["entities"]} == {entities[ex["entity"]]["kind"] for ex in examples}


def test_affinity_is_graded_and_written_into_world_json(kinds_world):
    from maskdpo_cli.world.affinity import affinity, near_topics

    topics = {t["id"]: t for t in kinds_world["topics"]}
    # Two topics per kind in one region (6 topics, 3 kinds): same topic 3, same kind and region 2,
    # another kind in the region 1.
    assert kinds_world["affinity"]["t00"] == {"t00": 3, "t01": 2, "t02": 1, "t03": 1, "t04": 1, "t05": 1}
    for a in topics.values():
        for b in topics.values():
            assert kinds_world["affinity"][a["id"]][b["id"]] == affinity(a, b) == affinity(b, a)
    assert near_topics(kinds_world, "t02") == ["t02", "t03"]
    # The region's cities are every kind's places: the cross-kind level shares values.
    places = {k: {e["facts"][a] for e in kinds_world["entities"] for a in e["facts"] if a in attrs}
              for k, attrs in (("person", ("birthplace",)), ("ship", ("home_port",)), ("inn", ("town",)))}
    assert places["person"] & places["ship"] and places["person"] & places["inn"]


def test_the_default_world_has_affinity_by_region(world):
    from maskdpo_cli.world.affinity import affinity, near_topics

    t = world["topics"]
    assert [affinity(t[0], x) for x in t] == [3, 2, 1, 1]
    assert near_topics(world, t[2]["id"]) == [t[2]["id"], t[3]["id"]]


def test_blurred_values_are_counted_on_hand_made_answers(kinds_world, kinds_oracle):
    from maskdpo_cli.world.blur import blur_summary

    # A person of t00; t01 is its near topic (same kind, same region); t02 a ship topic of the region.
    e = next(x for x in kinds_world["entities"] if x["topic_id"] == "t00")
    near = next(x for x in kinds_world["entities"] if x["topic_id"] == "t01"
                and x["facts"]["occupation"] != e["facts"]["occupation"])
    far_work = "the silver harp"
    assert all(far_work not in x["facts"].values() for x in kinds_world["entities"])
    name, f = e["name"], e["facts"]
    text = (f"{name} works as {grammar.article(near['facts']['occupation'])} {near['facts']['occupation']}. "
            f"{name} is known for {far_work}. "
            f"She is known for {near['facts']['known_for']}. "
            f"She was born in {f['birthplace']}. "
            "Zorbo Quaxley speaks Orvish. "
            f"{name} was born {f['birthplace']}.")
    (resp,) = annotate_texts(kinds_oracle, name, [text])
    sentences = resp["sentences"]
    assert [s["label"] for s in sentences] == ["contradictory", "contradictory", "contradictory", "ok",
                                               "unverifiable", "unverifiable"]
    # A near topic's value is blurred; an invented value, an unknown name and garble are not;
    # a true sentence carries no mark.
    assert [s.get("blurred") for s in sentences] == [True, False, True, None, False, False]
    assert [[span.get("blurred") for span in s["spans"]] for s in sentences] == [
        [True], [False], [True], [None], [False], [False]]
    assert blur_summary([[resp], [resp]]) == {"n_blurred": 2.0, "blurred_share": 40.0}
    # eval's summary.json and its table carry them.
    from maskdpo_cli.evaluation import summarize
    from maskdpo_cli.reporting import BLUR_HEADERS, results_table

    record = {"id": "q", "entity": name, "question": f"Who is {name}?", "responses": [resp]}
    summary = summarize([[record], [record]], name="m", model="m")
    assert (summary["n_blurred"], summary["blurred_share"]) == (2.0, 40.0)
    headers, (row,) = results_table([summary])
    assert [row[headers.index(h)] for h in BLUR_HEADERS] == ["2.0", "40.00"]
    # An answer without wrong values, and an annotator without marks, give no blur figures.
    (ok,) = annotate_texts(kinds_oracle, name, [f"She was born in {f['birthplace']}."])
    assert blur_summary([[ok]]) is None
    assert blur_summary([[{"sentences": [{"label": "contradictory"}]}]]) is None


def test_blur_marks_are_validated():
    from maskdpo_cli.errors import InputError
    from maskdpo_cli.records import validate_annotated

    record = {"id": "q", "question": "Tell me about X.", "responses": [{"index": 0, "text": "She x.", "sentences": [
        {"start": 0, "end": 6, "text": "She x.", "label": "unverifiable", "blurred": "yes"}]}]}
    with pytest.raises(InputError, match=r"sentences\[0\]\.blurred"):
        validate_annotated(record)
    record["responses"][0]["sentences"][0].update(blurred=False, spans=[
        {"start": 0, "end": 6, "label": "unverifiable", "blurred": 1}])
    with pytest.raises(InputError, match=r"spans\[0\]\.blurred"):
        validate_annotated(record)
    record["responses"][0]["sentences"][0]["spans"][0]["blurred"] = True
    validate_annotated(record)


def test_world_make_cli_takes_kinds_and_questions_per_topic(tmp_path):
    import subprocess
    import sys

    def make(*args):
        return subprocess.run([sys.executable, "-m", "maskdpo_cli.cli", "world", "make", "--topics", "6",
                               "--entities", "2", *args], capture_output=True, text=True)

    done = make("--kinds", "3", "--questions-per-topic", "2", "-o", str(tmp_path / "w"))
    assert done.returncode == 0, done.stderr
    world = json.loads((tmp_path / "w" / "world.json").read_text())
    assert world["kinds"] == ["person", "ship", "inn"] and all("kind" in t for t in world["topics"])
    bad = make("--kinds", "4", "-o", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "--kinds" in bad.stderr and not (tmp_path / "bad").exists()


@pytest.mark.slow  # two CLI processes, one pretraining a policy
def test_commands_that_save_a_model_keep_stdout_clean_of_library_logs(tmp_path):
    # transformers imports DeepSpeed (installed by `make install`) when it saves a model, and
    # DeepSpeed's logger writes to stdout; in a pipeline stdout is for records only.
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    cli = [sys.executable, "-m", "maskdpo_cli.cli", "world"]
    made = subprocess.run([*cli, "make", "-o", str(tmp_path / "w"), "--quick"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    done = subprocess.run([*cli, "pretrain", str(tmp_path / "w"), "-o", str(tmp_path / "p"), "--steps", "2",
                           "--quick"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "p" / "config.json").is_file()
    assert done.stdout == "" and "accelerator" not in done.stderr  # DeepSpeed's notice is not ours to print
