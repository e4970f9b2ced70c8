"""The world's knowledge probe: unambiguous prefixes, exact scoring, and `eval --probe` on a real policy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.world import grammar, make_world, pretrain
from maskdpo_cli.world.grammar import kind_of
from maskdpo_cli.world.probe import ProbeItem, first_sentence, is_correct, probe_items, probe_templates

MASKDPO = [sys.executable, "-m", "maskdpo_cli.cli"]


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("probe") / "world"
    make_world(5, str(out), quick=True)
    return out


@pytest.fixture(scope="module")
def kinds_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("probe-kinds") / "world"
    make_world(5, str(out), quick=True, kinds=3, questions_per_entity=3)
    return out


def _true_continuation(item) -> str:
    article = f" {grammar.article(item.value)}" if item.attribute == "occupation" else ""
    return f"{article} {item.value}."


def test_every_attribute_has_a_prefix_that_only_its_value_can_complete():
    prefixes = probe_templates()
    assert set(prefixes) == set(grammar.ATTRIBUTES)
    # "{S} was born in" could go on with a place or a year: the probe never asks it.
    assert prefixes["birthplace"] == "{S} comes from" and prefixes["birth_year"] == "{S} was born in the year"
    assert all("{a}" not in p and not p.endswith(" ") for p in prefixes.values())  # the article would tell


def test_items_cover_every_known_attribute_of_every_test_entity(world_dir):
    world = json.loads((world_dir / "world.json").read_text())
    test = {t["id"] for t in world["topics"] if t["split"] == "test"}
    expected = [(e["name"], a) for e in world["entities"] if e["topic_id"] in test
                for a in grammar.ATTRIBUTES if a in e["facts"]]
    items = probe_items(world_dir)
    assert [(i.entity, i.attribute) for i in items] == expected
    assert all(i.prefix.startswith(i.entity) and i.question == f"Tell me about {i.entity}." for i in items)


def test_train_split_probes_the_training_topics_entities_and_a_bad_split_is_refused(world_dir):
    world = json.loads((world_dir / "world.json").read_text())
    train = {t["id"] for t in world["topics"] if t["split"] == "train"}
    items = probe_items(world_dir, "train")
    assert {i.entity for i in items} == {e["name"] for e in world["entities"] if e["topic_id"] in train}
    assert not {i.entity for i in items} & {i.entity for i in probe_items(world_dir)}
    with pytest.raises(MaskDPOError, match="probe split"):
        probe_items(world_dir, "dev")


def test_scoring_is_exact_on_the_value_and_stops_at_the_first_full_stop(world_dir):
    items = probe_items(world_dir)
    for item in items[:12]:
        assert is_correct(item, first_sentence(item.prefix, _true_continuation(item) + " She lives in Nowhere."))
        wrong = next(i.value for i in items if i.attribute == item.attribute and i.value != item.value)
        assert not is_correct(item, first_sentence(item.prefix, _true_continuation(
            type(item)(item.entity, item.attribute, wrong, item.question, item.prefix))))
        assert not is_correct(item, first_sentence(item.prefix, " I hope this helps."))  # not a parse: wrong
        assert not is_correct(item, first_sentence(item.prefix, _true_continuation(item)[:-1]))  # truncated


@pytest.mark.parametrize("kind", sorted(grammar.KINDS))
def test_every_kind_has_a_probe_prefix_for_each_attribute_that_no_other_template_shares(kind):
    prefixes = probe_templates(kind)
    assert set(prefixes) == set(grammar.KINDS[kind].attributes)
    for attribute, prefix in prefixes.items():
        assert "{a}" not in prefix and not prefix.endswith(" ")
        starting = [attrs for attrs, t in grammar.KINDS[kind].fact_templates if t.startswith(prefix + " ")]
        assert starting and all(attrs == (attribute,) for attrs in starting), (kind, prefix)


def test_a_kinds_world_probes_every_kind_with_its_own_attributes_and_question(kinds_dir):
    world = json.loads((kinds_dir / "world.json").read_text())
    test = {t["id"] for t in world["topics"] if t["split"] == "test"}
    entities = [e for e in world["entities"] if e["topic_id"] in test]
    expected = [(e["name"], a) for e in entities for a in grammar.KINDS[kind_of(e)].attributes if a in e["facts"]]
    items = probe_items(kinds_dir)
    assert [(i.entity, i.attribute) for i in items] == expected
    assert {i.kind for i in items} == {kind_of(e) for e in entities}
    every_kind = items + probe_items(kinds_dir, "train")
    assert {i.kind for i in every_kind} == set(grammar.KINDS)
    for item in every_kind:
        assert item.question == grammar.KINDS[item.kind].questions[0].format(N=item.entity)
        assert item.prefix.startswith(item.entity)
        assert grammar.parse_question(item.question, (item.kind,)) == item.entity


def _probe_sentence(item: ProbeItem, value: str) -> str:
    """The whole probe sentence of an item, stating `value`: the template its prefix comes from."""
    prefix = probe_templates(item.kind)[item.attribute]
    template = next(t for attrs, t in grammar.KINDS[item.kind].fact_templates
                    if attrs == (item.attribute,) and t.startswith(prefix))
    return grammar.render(template, item.entity, "n", {item.attribute: value})


def test_every_kinds_probe_is_scored_exactly_on_the_value(kinds_dir):
    items = probe_items(kinds_dir) + probe_items(kinds_dir, "train")
    for item in items:
        right = _probe_sentence(item, item.value)
        assert right.startswith(item.prefix)
        assert is_correct(item, first_sentence(item.prefix, right[len(item.prefix):] + " It has a long history."))
        wrong = next(i.value for i in items if i.attribute == item.attribute and i.value != item.value)
        assert not is_correct(item, first_sentence(item.prefix, _probe_sentence(item, wrong)[len(item.prefix):]))
        assert not is_correct(item, first_sentence(item.prefix, right[len(item.prefix):-1]))  # truncated
        other = next(i for i in items if i.entity != item.entity and i.attribute == item.attribute)
        assert not is_correct(item, _probe_sentence(other, item.value))  # the value, said of another entity


def _eval(world_dir: Path, policy: Path, out: Path, probe: str) -> subprocess.CompletedProcess:
    return subprocess.run(MASKDPO + ["eval", str(world_dir / "test_questions.jsonl"), "--model", f"base={policy}",
                                     "--annotator", f"world:{world_dir}", "--replications", "1",
                                     "--max-new-tokens", "24", "--seed", "3", "--probe", probe, "-o", str(out)],
                          capture_output=True, text=True)


@pytest.mark.slow  # pretrains a world policy, then two evals with the probe (about 20 s)
def test_eval_probe_on_a_pretrained_world_policy_is_in_range_and_repeatable(world_dir, tmp_path):
    policy = tmp_path / "policy"
    pretrain(str(world_dir), str(policy), steps=40, seed=5, quick=True)
    summaries = []
    for run in ("a", "b"):
        proc = _eval(world_dir, policy, tmp_path / run, f"world:{world_dir}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        summaries.append(json.loads((tmp_path / run / "base" / "summary.json").read_text()))
    first, second = summaries
    assert first["probe_count"] == len(probe_items(world_dir)) > 0
    assert 0.0 <= first["probe_accuracy"] <= 1.0
    assert first["probe_accuracy"] == pytest.approx(first["probe_correct"] / first["probe_count"])
    assert (first["probe_accuracy"], first["probe_correct"]) == (second["probe_accuracy"], second["probe_correct"])
    details = json.loads((tmp_path / "a" / "base" / "probe.json").read_text())
    assert sum(d["correct"] for d in details["items"]) == first["probe_correct"]
    assert all(d["answer"].startswith(d["prefix"]) for d in details["items"])
    assert "% probe" in (tmp_path / "a" / "results.md").read_text()


def test_a_probe_that_is_not_a_world_exits_2_in_one_line(world_dir, tmp_path):
    proc = _eval(world_dir, tmp_path / "nowhere", tmp_path / "out", "anah-v2")
    assert proc.returncode == 2 and "--probe anah-v2" in proc.stderr and "Traceback" not in proc.stderr
