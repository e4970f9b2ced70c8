"""The embedded world's oracle: `--annotator world:DIR` labels sentences exactly.

Each sentence is parsed with the world's own grammar (maskdpo_cli.world.grammar, the
module that also rendered the corpus) into (entity, attribute, value) facts, and the
facts are checked against world.json. Decisions, all of them:

- Empty text, text without a letter or digit, and the grammar's filler sentences
  ("Many people admire her.", "I hope this helps.") state no fact: `nofact`, whoever
  they name.
- Every parsed fact true for its entity: `ok`.
- Any parsed fact whose value differs from the entity's value: `contradictory` (this wins
  over unverifiable in a sentence with several facts: one false claim makes it false).
- A fact about a name the world does not know, a fact about an attribute the world has no
  value for (entities without a known residence or language), or a pronoun with no entity
  to resolve to: `unverifiable`.
- Text the grammar cannot parse (garbled, truncated mid-template, off-grammar: "X's best
  known work is not the fountain.") looks like an attempt at a fact that cannot be
  checked: `unverifiable`. No other heuristics.
- Pronouns (she/he/her/his/him) resolve to the entity the question asks about: the
  record's "entity" key when present (world questions carry it), else the name parsed
  from the question with the world's question templates. The pronoun's gender is not
  checked: gender is not one of the world's attributes.
- A fact about another known entity, named in full, is checked against that entity.
Values compare exactly (after collapsing whitespace); the article before an occupation
is grammar, not part of the value.

Atomic facts, exactly: every parsed (entity, attribute, value) claim is one fact,
supported when it is true of its entity (unknown names, missing attributes and
unresolved pronouns are not supported). A fact's text is the attribute's canonical
template about the entity named in full (pronouns resolved; "This person" when nobody
resolves), i.e. the very sentence a reference document holds when the fact is true. A
sentence that states no fact (filler, empty) has no facts. A sentence the grammar cannot
parse is one unsupported fact, the sentence itself: the oracle cannot split what it
cannot read, but it must not let an unreadable claim vanish from the fact scores.

Spans, exactly: every fact has one, the characters of its value in the sentence as
given ("Vale", "1901", "stone carver" without its article, "the fountain" with its
own), labelled ok, contradictory or unverifiable as the fact checks. The unparsable
sentence's one fact spans the whole sentence, unverifiable. Filler has no span.

Blur (world/affinity.py): every wrong span (contradictory or unverifiable) carries
`blurred`, true when its value is the true value of some entity of a topic near its
entity's topic (the paper's hypothesis: the model said a look-alike's fact). A value about
an unknown name, or an unparsable sentence, cannot be placed: not blurred. A wrong
sentence is blurred when one of its spans is. Correct sentences and spans carry no flag.
The oracle parses with the templates of the kinds the world holds (people, ships, inns).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from maskdpo_cli.annotators.base import Fact, Span, Verdict
from maskdpo_cli.world import grammar
from maskdpo_cli.world.affinity import near_values
from maskdpo_cli.world.generator import load_world
from maskdpo_cli.world.grammar import world_kinds

_HAS_CONTENT = re.compile(r"[A-Za-z0-9]")


class WorldAnnotator:
    """Labels sentences against a world directory's facts (see the module docstring)."""

    name = "world"
    fact_level = True

    def __init__(self, world_dir: str | Path) -> None:
        self.world_dir = str(world_dir)
        world = load_world(world_dir)
        self.seed = world["seed"]
        self.facts: dict[str, dict[str, str]] = {e["name"]: e["facts"] for e in world["entities"]}
        self.kinds = world_kinds(world)
        near = near_values(world)
        # entity name -> the values a blurred answer about it would say (its near topics' values)
        self.near: dict[str, set[str]] = {e["name"]: near[e["topic_id"]] for e in world["entities"]}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "world": self.world_dir, "seed": self.seed, "entities": len(self.facts)}

    def entity_of(self, record: dict[str, Any]) -> str | None:
        """The entity pronouns refer to: the record's "entity", else the one its question names."""
        name = record.get("entity")
        if isinstance(name, str) and name:
            return name
        question = record.get("question")
        return grammar.parse_question(question, self.kinds) if isinstance(question, str) else None

    def label(self, record: dict[str, Any], sentences: list[str]) -> list[str]:
        return [v.label for v in self.verdicts(record, sentences)]

    def verdicts(self, record: dict[str, Any], sentences: list[str]) -> list[Verdict]:
        entity = self.entity_of(record)
        return [self.judge_sentence(s, entity) for s in sentences]

    async def judge(self, record: dict[str, Any], sentences: list[str]) -> list[Verdict]:
        # Pure computation, microseconds per sentence: no reason to leave the event loop.
        return self.verdicts(record, sentences)

    def judge_sentence(self, sentence: str, entity: str | None) -> Verdict:
        if not _HAS_CONTENT.search(sentence):
            return Verdict("nofact", ())
        facts = grammar.parse(sentence, self.kinds)
        if facts is None:
            return Verdict("unverifiable", (Fact(grammar.normalize(sentence), False),),
                           spans=(Span(0, len(sentence), "unverifiable", False),), blurred=False)
        if not facts:
            return Verdict("nofact", ())
        verdicts = [self._check(f, entity) for f in facts]
        atomic = tuple(Fact(grammar.fact_text(f.name or entity or "This person", f.attribute, f.value), v == "ok")
                       for f, v in zip(facts, verdicts))
        spans = tuple(Span(*f.span, v, None if v == "ok" else self.is_blurred(f, entity))
                      for f, v in zip(facts, verdicts))
        blurred = any(s.blurred for s in spans)
        if "contradictory" in verdicts:
            return Verdict("contradictory", atomic, spans=spans, blurred=blurred)
        if "unverifiable" in verdicts:
            return Verdict("unverifiable", atomic, spans=spans, blurred=blurred)
        return Verdict("ok", atomic, spans=spans)

    def is_blurred(self, fact: grammar.Fact, entity: str | None) -> bool:
        """Whether a wrong fact's value is true of an entity of a topic near its entity's (see the docstring)."""
        name = fact.name or entity
        return grammar.normalize(fact.value) in self.near.get(name or "", ())

    def _check(self, fact: grammar.Fact, entity: str | None) -> str:
        name = fact.name or entity
        known = self.facts.get(name) if name else None
        if known is None or fact.attribute not in known:
            return "unverifiable"
        return "ok" if grammar.normalize(fact.value) == known[fact.attribute] else "contradictory"
