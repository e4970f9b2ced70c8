"""The world's knowledge probe: what a policy knows, whatever style it learned.

`maskdpo eval --probe world:DIR` asks, for every entity of the world's test topics and
every attribute the world knows for it, its kind's first open question ("Tell me about
Mara Quell.", "Tell me about the ship Vela Storm.") and prefills the answer with the
attribute's sentence up to its value ("Mara Quell comes from"). The model continues
greedily; the prefix plus the continuation up to the first full stop is parsed by the
grammar of the entity's kind, and the item is correct when it states exactly the entity's
true value for that attribute. A policy that learned to answer with filler still has to
complete the sentence: the probe reads its knowledge, not its style. Every kind of a world
(people, ships, inns) is probed, each entity with its own kind's attributes.

The probe sentence of an attribute is its kind's first single-attribute template whose
words before the value no other template of the kind shares: "{S} was born in" could go on
with a place or a year, "{S} comes from" only with a place. The prefix stops before the
first slot that depends on the value (the article before an occupation gives it away), and
before the space in front of it, which the model writes itself as it did in its corpus.
"""

from __future__ import annotations

import json
import string
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.jsonl import write_json_atomic
from maskdpo_cli.world import grammar
from maskdpo_cli.world.generator import load_world

PROBE_FILE = "probe.json"
MAX_NEW_TOKENS = 16  # the longest value ("the <adjective> <noun>.") is a few tokens
BATCH = 64
SUBJECT_SLOTS = ("S", "P", "O")


@dataclass(frozen=True)
class ProbeItem:
    entity: str
    attribute: str
    value: str     # the world's true value
    question: str  # the user turn
    prefix: str    # the prefilled start of the answer
    kind: str = "person"  # the entity's kind, whose grammar scores the answer


def _prefix_template(template: str) -> str:
    """The template's text before its first value-dependent slot, without the trailing space."""
    slots = [slot for _, slot, _, _ in string.Formatter().parse(template) if slot]
    cut = min(template.index("{" + slot + "}") for slot in slots if slot not in SUBJECT_SLOTS)
    return template[:cut].rstrip()


@lru_cache(maxsize=None)
def probe_templates(kind: str = "person") -> dict[str, str]:
    """attribute -> the prefix template of its probe sentence, for one kind (module docstring)."""
    templates = grammar.KINDS[kind].fact_templates
    out: dict[str, str] = {}
    for attrs, template in templates:
        if len(attrs) != 1 or attrs[0] in out:
            continue
        prefix = _prefix_template(template)
        shared = any(other != template and other.startswith(prefix + " ") and other_attrs != attrs
                     for other_attrs, other in templates)
        if not shared:
            out[attrs[0]] = prefix
    missing = set(grammar.KINDS[kind].attributes) - set(out)
    if missing:  # a grammar change made an attribute unprobeable: say so rather than skip it
        raise MaskDPOError(f"the world's grammar has no unambiguous probe sentence for {kind} {sorted(missing)}")
    return out


def probe_items(world_dir: str | Path, split: str = "test") -> list[ProbeItem]:
    """One item per (entity of the `split` topics, attribute it has), in world order. The test
    topics (the default) are what alignment never saw; the train topics tell whether it
    changed what the model recalls about the entities it was trained on."""
    if split not in ("test", "train"):
        raise MaskDPOError(f"probe split {split!r}: expected test or train")
    world = load_world(world_dir)
    topics = {t["id"] for t in world["topics"] if t.get("split") == split}
    items = []
    for entity in world["entities"]:
        if entity["topic_id"] not in topics:
            continue
        kind = grammar.KINDS[grammar.kind_of(entity)]
        templates = probe_templates(kind.name)
        question = kind.questions[0].format(N=entity["name"])
        for attribute in kind.attributes:
            if attribute in entity["facts"]:
                prefix = grammar.render(templates[attribute], entity["name"], entity["gender"], entity["facts"])
                items.append(ProbeItem(entity["name"], attribute, entity["facts"][attribute], question, prefix,
                                       kind.name))
    return items


def first_sentence(prefix: str, continuation: str) -> str:
    """The probe sentence as the model completed it: up to and including its first full stop."""
    text = prefix + continuation
    stop = text.find(".", len(prefix))
    return text if stop < 0 else text[:stop + 1]


def is_correct(item: ProbeItem, sentence: str) -> bool:
    """The completed sentence states the entity's true value for the probed attribute, exactly."""
    facts = grammar.parse(sentence, (item.kind,)) or []
    return any(f.attribute == item.attribute and f.value == item.value and f.name in (None, item.entity)
               for f in facts)


def complete(model_dir: str | Path, items: list[ProbeItem], batch_size: int = BATCH) -> list[str]:
    """Greedy continuations of each item's prefilled answer (left-padded batches, CPU)."""
    import torch

    from maskdpo_cli.models import chat_prompt_text, load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    model = load_causal_lm(model_dir)
    texts = [chat_prompt_text(tokenizer, [{"role": "user", "content": it.question}]) + it.prefix for it in items]
    out: list[str] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False)
            with torch.no_grad():
                ids = model.generate(**batch, do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new = ids[:, batch["input_ids"].shape[1]:]
            out += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return out


def run_probe(world_dir: str | Path, model_dir: str | Path, out_dir: Path | None = None,
              split: str = "test") -> dict[str, Any]:
    """probe_accuracy (0-1) and probe_count of a model on the `split` topics' entities; with
    out_dir, every item to out_dir/probe.json (probe.train.json for the train topics).

    A file already in out_dir for the same items is read back instead of decoding again.
    """
    items = probe_items(world_dir, split)
    path = None if out_dir is None else Path(out_dir) / (PROBE_FILE if split == "test" else f"probe.{split}.json")
    if path is not None and path.is_file():
        done = json.loads(path.read_text(encoding="utf-8"))
        if [(d["entity"], d["attribute"]) for d in done["items"]] == [(i.entity, i.attribute) for i in items]:
            return {key: done[key] for key in ("probe_accuracy", "probe_count", "probe_correct")}
    sentences = [first_sentence(it.prefix, c) for it, c in zip(items, complete(model_dir, items))]
    marks = [is_correct(it, s) for it, s in zip(items, sentences)]
    result = {"probe_accuracy": sum(marks) / len(marks) if marks else None, "probe_count": len(marks),
              "probe_correct": sum(marks)}
    if path is not None:
        write_json_atomic(path, {**result, "world": str(world_dir), "items": [
            {**asdict(it), "answer": s, "correct": ok} for it, s, ok in zip(items, sentences, marks)]})
    return result


def world_dir_of(spec: str) -> str:
    """`world:DIR` -> DIR; anything else is refused in one line."""
    kind, _, path = spec.partition(":")
    if kind != "world" or not path:
        raise MaskDPOError(f"--probe {spec}: pass world:DIR (the embedded world's directory)")
    load_world(path)  # not a world: the error names it now, before any model runs
    return path


__all__ = ["ProbeItem", "probe_templates", "probe_items", "first_sentence", "is_correct", "complete",
           "run_probe", "world_dir_of", "PROBE_FILE"]
