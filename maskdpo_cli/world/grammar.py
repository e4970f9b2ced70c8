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
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from functools import lru_cache

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

PRONOUNS = {"f": {"S": "she", "P": "her", "O": "her"}, "m": {"S": "he", "P": "his", "O": "him"}}
_PRONOUN_PATTERNS = {"S": r"[Ss]he|[Hh]e", "P": r"[Hh]er|[Hh]is", "O": r"[Hh]er|[Hh]im"}


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
    for slot in _slots(template):
        if slot in ("S", "P", "O"):
            values[slot] = _ref(slot, name, gender, use_name, template.startswith("{" + slot + "}"))
        elif slot == "a":
            values[slot] = article(facts["occupation"])
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


def _slot_patterns() -> dict[str, str]:
    patterns = dict(VALUE_PATTERNS)
    patterns["S"] = f"{NAME}|{_PRONOUN_PATTERNS['S']}"
    patterns["O"] = f"{NAME}|{_PRONOUN_PATTERNS['O']}"
    patterns["P"] = f"{NAME}'s|{_PRONOUN_PATTERNS['P']}"
    patterns["a"] = "an?"
    return patterns


@lru_cache(maxsize=1)
def _compiled() -> tuple[list[tuple[tuple[str, ...], re.Pattern[str]]], list[re.Pattern[str]], list[re.Pattern[str]]]:
    p = _slot_patterns()
    facts = [(attrs, _compile(t, p)) for attrs, t in FACT_TEMPLATES]
    fillers = [_compile(t, p) for t in FILLER_TEMPLATES]
    questions = [_compile(t, {"N": NAME}) for t in QUESTION_TEMPLATES]
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


def parse(sentence: str) -> list[Fact] | None:
    """The facts a sentence states; [] for a filler sentence; None when the grammar has no parse."""
    text = normalize(sentence)
    fact_patterns, filler_patterns, _ = _compiled()
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


def parse_question(question: str) -> str | None:
    """The entity name a question asks about, if it is one of the world's question forms."""
    text = normalize(question)
    for pattern in _compiled()[2]:
        m = pattern.fullmatch(text)
        if m:
            return m.group("N")
    return None


def canonical_templates() -> dict[str, str]:
    """attribute -> its canonical single-attribute template (the first in the table)."""
    out: dict[str, str] = {}
    for attrs, template in FACT_TEMPLATES:
        if len(attrs) == 1:
            out.setdefault(attrs[0], template)
    return out


def fact_text(subject: str, attribute: str, value: str) -> str:
    """One claim as an atomic fact: the attribute's canonical template about `subject`.

    With a full name this is exactly the sentence a reference document holds for a true
    fact, and it parses back to (subject, attribute, value).
    """
    # The canonical templates name the subject in full ({S}), so the gender is never used.
    return render(canonical_templates()[attribute], subject, "f", {attribute: value})


def render_document(name: str, gender: str, facts: dict[str, str]) -> str:
    """The reference text for an entity: every known fact, canonical template, full name."""
    canon = canonical_templates()
    return " ".join(render(canon[attr], name, gender, facts) for attr in ATTRIBUTES if attr in facts)
