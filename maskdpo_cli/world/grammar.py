"""The world's grammar: one table of sentence templates that both renders facts and parses them back.

Rendering (corpus, documents) and parsing (the oracle annotator) read the same table, so
every sentence the world can produce parses back to exactly the facts it was made from.

A template is a string with slots:
  {S}  the subject: a full name, or a subject pronoun (she/he)
  {P}  a possessive: "<full name>'s", or her/his
  {O}  an object: a full name, or her/him
  {a}  the article in front of an occupation (a/an)
  {birthplace}, {birth_year}, ...  an attribute value
Pronouns match in either case, so a template may put a slot mid-sentence.
A full name is two capitalised words; the grammar accepts any such name, and whether the
world knows it is the oracle's question, not the parser's.

Kinds: a world may hold several kinds of entity (people, ships, inns), each with its own
attributes, templates, fillers and questions (KINDS). The module-level ATTRIBUTES,
FACT_TEMPLATES, FILLER_TEMPLATES and QUESTION_TEMPLATES are the person kind's, the only kind
of the default world. Attribute names are unique across kinds, and no sentence of one kind
parses as another kind's template (tested), so a parse needs no kind; `parse` still only
tries the kinds a world holds, so a one-kind world reads exactly as it always did.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

ATTRIBUTES = ("birthplace", "birth_year", "occupation", "known_for", "residence", "language")

NAME = r"[A-Z][a-z]+ [A-Z][a-z]+"
_CAPWORD = r"[A-Z][a-z]+"
_PHRASE = r"[a-z]+(?: [a-z]+)*"
VALUE_PATTERNS = {
    "birthplace": _CAPWORD,
    "residence": _CAPWORD,
    "language": _CAPWORD,
    "birth_year": r"[0-9]{4}",
    "occupation": _PHRASE,
    "known_for": r"the " + _PHRASE,
    "home_port": _CAPWORD,
    "destination": _CAPWORD,
    "launch_year": r"[0-9]{4}",
    "rig": _PHRASE,
    "cargo": _PHRASE,
    "town": _CAPWORD,
    "founded": r"[0-9]{4}",
    "dish": _PHRASE,
    "brew": _PHRASE,
    "sign": r"the " + _PHRASE,
}

# One tuple per template: (attributes it states, text). The first single-attribute template
# of each attribute is canonical: reference documents use it.
FACT_TEMPLATES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("birthplace",), "{S} was born in {birthplace}."),
    (("birthplace",), "{S} comes from {birthplace}."),
    (("birthplace",), "{P} birthplace is {birthplace}."),
    (("birthplace",), "{P} hometown is {birthplace}."),
    (("birth_year",), "{S} was born in {birth_year}."),
    (("birth_year",), "{S} was born in the year {birth_year}."),
    (("birth_year",), "{P} year of birth is {birth_year}."),
    (("birth_year",), "{S} came into the world in {birth_year}."),
    (("occupation",), "{S} works as {a} {occupation}."),
    (("occupation",), "{S} is {a} {occupation} by trade."),
    (("occupation",), "{P} profession is {occupation}."),
    (("occupation",), "{S} earns a living as {a} {occupation}."),
    (("known_for",), "{S} is known for {known_for}."),
    (("known_for",), "{S} is famous for {known_for}."),
    (("known_for",), "{P} best known work is {known_for}."),
    (("known_for",), "People remember {O} for {known_for}."),
    (("residence",), "{S} lives in {residence}."),
    (("residence",), "{S} now resides in {residence}."),
    (("residence",), "{P} home is in {residence}."),
    (("residence",), "These days {S} lives in {residence}."),
    (("language",), "{S} speaks {language}."),
    (("language",), "{S} is fluent in {language}."),
    (("language",), "{P} mother tongue is {language}."),
    (("birthplace", "birth_year"), "{S} was born in {birthplace} in {birth_year}."),
    (("occupation", "birthplace"), "{S} is {a} {occupation} from {birthplace}."),
    (("occupation", "residence"), "{S} is {a} {occupation} who lives in {residence}."),
    (("birthplace", "birth_year", "occupation"), "Born in {birthplace} in {birth_year}, {S} works as {a} {occupation}."),
)

# Sentences that state nothing checkable: the oracle labels them nofact.
FILLER_TEMPLATES: tuple[str, ...] = (
    "Many people admire {O}.",
    "{S} has an interesting story.",
    "There is much to say about {O}.",
    "{S} is a fascinating person.",
    "{P} story is worth hearing.",
    "Let me tell you about {O}.",
    "I hope this helps.",
    "Here is what I know.",
)

QUESTION_TEMPLATES: tuple[str, ...] = (
    "Tell me about {N}.",
    "Who is {N}?",
    "What do you know about {N}?",
    "Write a short biography of {N}.",
)

# A person question per attribute, besides the open ones ("Tell me about X."): ANAH asks several per topic.
ATTRIBUTE_QUESTIONS: dict[str, str] = {
    "birthplace": "Where was {N} born?",
    "birth_year": "When was {N} born?",
    "occupation": "What does {N} do for a living?",
    "known_for": "What is {N} known for?",
    "residence": "Where does {N} live?",
    "language": "What language does {N} speak?",
}

# f, m: people; n: things (ships, inns), referred to as it/its.
PRONOUNS = {"f": {"S": "she", "P": "her", "O": "her"}, "m": {"S": "he", "P": "his", "O": "him"},
            "n": {"S": "it", "P": "its", "O": "it"}}


@dataclass(frozen=True)
class Kind:
    """One kind of entity: its attributes (in document order), templates, fillers and questions."""

    name: str
    attributes: tuple[str, ...]
    fact_templates: tuple[tuple[tuple[str, ...], str], ...]
    filler_templates: tuple[str, ...]
    questions: tuple[str, ...]              # open questions about an entity, slot {N}
    attribute_questions: dict[str, str]     # attribute -> the question asking for it
    genders: tuple[str, ...]                # the pronoun sets (PRONOUNS) its entities use
    optional: dict[str, float] = field(default_factory=dict)  # attribute -> probability an entity has it


PERSON = Kind("person", ATTRIBUTES, FACT_TEMPLATES, FILLER_TEMPLATES, QUESTION_TEMPLATES, ATTRIBUTE_QUESTIONS,
              ("f", "m"), {"residence": 0.7, "language": 0.6})

SHIP = Kind(
    "ship", ("home_port", "launch_year", "rig", "cargo", "destination"),
    (
        (("home_port",), "{S} sails from {home_port}."),
        (("home_port",), "{P} home port is {home_port}."),
        (("home_port",), "{S} is registered in {home_port}."),
        (("launch_year",), "{S} was launched in {launch_year}."),
        (("launch_year",), "{S} first put to sea in {launch_year}."),
        (("launch_year",), "{P} maiden voyage was in {launch_year}."),
        (("rig",), "{S} is {a} {rig} ship."),
        (("rig",), "{S} is rigged as {a} {rig}."),
        (("rig",), "{P} rig is that of {a} {rig}."),
        (("cargo",), "{S} carries {cargo}."),
        (("cargo",), "{P} usual cargo is {cargo}."),
        (("cargo",), "Merchants hire {O} to move {cargo}."),
        (("destination",), "{S} sails to {destination}."),
        (("destination",), "{P} usual destination is {destination}."),
        (("rig", "home_port"), "{S} is {a} {rig} out of {home_port}."),
        (("home_port", "launch_year"), "{S} was launched at {home_port} in {launch_year}."),
        (("cargo", "destination"), "{S} carries {cargo} to {destination}."),
    ),
    ("Many sailors know {O}.", "{S} has a long history.", "{P} voyages are worth hearing about.",
     "Let me tell you about {O}.", "I hope this helps.", "Here is what I know."),
    ("Tell me about the ship {N}.", "What do you know about the ship {N}?", "Describe the ship {N}."),
    {"home_port": "What is the home port of {N}?", "launch_year": "When was {N} launched?",
     "rig": "What kind of ship is {N}?", "cargo": "What does {N} carry?", "destination": "Where does {N} sail to?"},
    ("n",), {"destination": 0.7},
)

INN = Kind(
    "inn", ("town", "founded", "dish", "brew", "sign"),
    (
        (("town",), "{S} stands in {town}."),
        (("town",), "{S} can be found in {town}."),
        (("town",), "{P} doors open onto a street in {town}."),
        (("founded",), "{S} was founded in {founded}."),
        (("founded",), "{S} opened its doors in {founded}."),
        (("founded",), "{P} founding year is {founded}."),
        (("dish",), "{S} serves {dish}."),
        (("dish",), "{P} kitchen is famous for {dish}."),
        (("dish",), "Travellers come to {O} for {dish}."),
        (("brew",), "{S} pours {brew}."),
        (("brew",), "{P} house brew is {brew}."),
        (("sign",), "{S} hangs {sign} over its door."),
        (("sign",), "{P} sign shows {sign}."),
        (("town", "founded"), "{S} was founded in {town} in {founded}."),
        (("brew", "dish"), "With its own {brew}, {S} serves {dish}."),
    ),
    ("Many travellers stop at {O}.", "{S} has a warm hearth.", "{P} guests tell many stories.",
     "Let me tell you about {O}.", "I hope this helps.", "Here is what I know."),
    ("Tell me about the inn {N}.", "What do you know about the inn {N}?", "Describe the inn {N}."),
    {"town": "Where is the inn {N}?", "founded": "When was the inn {N} founded?",
     "dish": "What does the inn {N} serve?", "brew": "What does the inn {N} pour?",
     "sign": "What sign hangs over the inn {N}?"},
    ("n",), {"sign": 0.6},
)

KINDS: dict[str, Kind] = {k.name: k for k in (PERSON, SHIP, INN)}
DEFAULT_KINDS = ("person",)
# attribute -> the kind that has it (attribute names are unique across kinds)
KIND_OF_ATTRIBUTE = {a: k.name for k in KINDS.values() for a in k.attributes}


def kind_of(item: dict[str, Any]) -> str:
    """The kind of a topic or an entity of world.json; the default world's records name none: people."""
    return item.get("kind", DEFAULT_KINDS[0])


def world_kinds(world: dict[str, Any]) -> tuple[str, ...]:
    """The kinds of entity a world.json holds (its grammar): people only unless it says otherwise."""
    return tuple(world.get("kinds", DEFAULT_KINDS))


@dataclass(frozen=True)
class Fact:
    """One claim parsed from a sentence. `name` is None when the subject is a pronoun.

    `span` is where the value stands in the sentence exactly as it was given to `parse`
    (before whitespace was collapsed): sentence[start:end] is the value's characters.
    """

    name: str | None
    attribute: str
    value: str
    span: tuple[int, int] | None = field(default=None, compare=False)


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _slots(template: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def _ref(slot: str, name: str, gender: str, use_name: bool, at_start: bool) -> str:
    if use_name:
        return f"{name}'s" if slot == "P" else name
    word = PRONOUNS[gender][slot]
    return word.capitalize() if at_start else word


def render(template: str, name: str, gender: str, facts: dict[str, str], use_name: bool = True) -> str:
    """Fill a template for one entity; use_name=False refers to it by pronoun."""
    values: dict[str, str] = {}
    slots = _slots(template)
    for i, slot in enumerate(slots):
        if slot in ("S", "P", "O"):
            values[slot] = _ref(slot, name, gender, use_name, template.startswith("{" + slot + "}"))
        elif slot == "a":  # the article of the value that follows it
            values[slot] = article(facts[slots[i + 1]])
        else:
            values[slot] = facts[slot]
    return template.format(**values)


def _compile(template: str, pattern_for_slot: dict[str, str]) -> re.Pattern[str]:
    out = []
    for literal, slot, _, _ in string.Formatter().parse(template):
        out.append(re.escape(literal))
        if slot:
            out.append(f"(?P<{slot}>{pattern_for_slot[slot]})")
    return re.compile("".join(out))


def _pronoun_pattern(genders: Sequence[str], slot: str) -> str:
    """Either case of the kind's pronouns for a slot: "[Ss]he|[Hh]e" for people's subjects."""
    words = dict.fromkeys(PRONOUNS[g][slot] for g in genders)
    return "|".join(f"[{w[0].upper()}{w[0]}]{w[1:]}" for w in words)


def _slot_patterns(kind: Kind) -> dict[str, str]:
    patterns = dict(VALUE_PATTERNS)
    patterns["S"] = f"{NAME}|{_pronoun_pattern(kind.genders, 'S')}"
    patterns["O"] = f"{NAME}|{_pronoun_pattern(kind.genders, 'O')}"
    patterns["P"] = f"{NAME}'s|{_pronoun_pattern(kind.genders, 'P')}"
    patterns["a"] = "an?"
    return patterns


Compiled = tuple[list[tuple[tuple[str, ...], re.Pattern[str]]], list[re.Pattern[str]], list[re.Pattern[str]]]


@lru_cache(maxsize=None)
def _compiled(kind_name: str = "person") -> Compiled:
    kind = KINDS[kind_name]
    p = _slot_patterns(kind)
    facts = [(attrs, _compile(t, p)) for attrs, t in kind.fact_templates]
    fillers = [_compile(t, p) for t in kind.filler_templates]
    questions = [_compile(t, {"N": NAME}) for t in (*kind.questions, *kind.attribute_questions.values())]
    return facts, fillers, questions


def normalize(sentence: str) -> str:
    """Whitespace collapsed and trimmed: the only canonicalisation before matching."""
    return " ".join(sentence.split())


def _subject(match: re.Match[str]) -> str | None:
    for slot in ("S", "P", "O"):
        ref = match.groupdict().get(slot)
        if ref is not None:
            if slot == "P" and ref.endswith("'s"):
                ref = ref[:-2]
            return ref if re.fullmatch(NAME, ref) else None
    return None


def _original_positions(sentence: str) -> list[int]:
    """For each character of normalize(sentence), its index in `sentence` (a collapsed gap: its first character)."""
    positions: list[int] = []
    for word in re.finditer(r"\S+", sentence):
        if positions:
            positions.append(word.start() - 1)
        positions.extend(range(word.start(), word.end()))
    return positions


def parse(sentence: str, kinds: Sequence[str] = DEFAULT_KINDS) -> list[Fact] | None:
    """The facts a sentence states; [] for a filler sentence; None when the grammar has no parse.

    `kinds`: the kinds of entity whose templates are tried (a world's own kinds).
    """
    text = normalize(sentence)
    fact_patterns = [fp for k in kinds for fp in _compiled(k)[0]]
    filler_patterns = [p for k in kinds for p in _compiled(k)[1]]
    for attrs, pattern in fact_patterns:
        m = pattern.fullmatch(text)
        if m:
            name = _subject(m)
            # A value starts and ends with a non-space character, so both ends map back exactly.
            where = _original_positions(sentence)
            return [Fact(name, attr, m.group(attr), (where[m.start(attr)], where[m.end(attr) - 1] + 1))
                    for attr in attrs]
    if any(p.fullmatch(text) for p in filler_patterns):
        return []
    return None


def parse_question(question: str, kinds: Sequence[str] = DEFAULT_KINDS) -> str | None:
    """The entity name a question asks about, if it is one of the world's question forms (open or per attribute)."""
    text = normalize(question)
    for pattern in (p for k in kinds for p in _compiled(k)[2]):
        m = pattern.fullmatch(text)
        if m:
            return m.group("N")
    return None


def canonical_templates(kind: str = "person") -> dict[str, str]:
    """attribute -> its canonical single-attribute template (the first in the kind's table)."""
    out: dict[str, str] = {}
    for attrs, template in KINDS[kind].fact_templates:
        if len(attrs) == 1:
            out.setdefault(attrs[0], template)
    return out


def fact_text(subject: str, attribute: str, value: str) -> str:
    """One claim as an atomic fact: the attribute's canonical template about `subject`.

    With a full name this is exactly the sentence a reference document holds for a true
    fact, and it parses back to (subject, attribute, value).
    """
    # The canonical templates name the subject in full ({S}), so the gender is never used.
    return render(canonical_templates(KIND_OF_ATTRIBUTE[attribute])[attribute], subject, "f", {attribute: value})


def render_document(name: str, gender: str, facts: dict[str, str], kind: str = "person") -> str:
    """The reference text for an entity: every known fact, canonical template, full name."""
    canon = canonical_templates(kind)
    return " ".join(render(canon[attr], name, gender, facts) for attr in KINDS[kind].attributes if attr in facts)
