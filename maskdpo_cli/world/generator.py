"""A seeded generator of fictional people, grouped into topics of look-alike neighbours.

Design (why it looks like this): the paper's hypothesis is that a model blurs facts
between similar entities. So a topic is a guild in a region: its members draw their
birthplace and residence from the region's few cities, their occupation from the guild's
two trades, their famous work from the guild's three works, their birth year from one
span of a dozen years. Two topics share each region, so knowledge also blurs across
topics, and test topics have train-topic neighbours. Names are composed of syllables and
members of a topic share a surname ending. `residence` and `language` are known for only
some entities: a model that states them for the others is unverifiable, as in ANAH.

How well the pretrained model knows a person is set by popularity, as for real LLMs: each
person gets between 1/8x and 2x `bios_per_entity` biographies in the corpus, so the head
is known, the long tail blurs into its topic's look-alikes. A large population (512 people
by default) lets the grammar be learned from the whole corpus while each person is seen
only a few dozen times; questions ask about a sample of each topic (`questions_per_topic`).

Outputs (world make): world.json (every fact, plus each person's `corpus_bios`),
corpus.jsonl (chat examples: a question and a biography rendered with random templates,
the pretraining data; every person, test topics included, is in it), train_questions.jsonl
and test_questions.jsonl (split by topic: no topic in both).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.jsonl import atomic_output, output_dir
from maskdpo_cli.world import grammar

WORLD_VERSION = 1
# 24 questions per topic: 288 training pairs and 96 test questions, enough that seeds agree
# (RESULTS.md; with 8, the eval noise was as large as the effect).
FULL = {"n_topics": 16, "entities_per_topic": 32, "bios_per_entity": 18, "questions_per_topic": 24, "max_fillers": 2}
QUICK = {"n_topics": 8, "entities_per_topic": 32, "bios_per_entity": 18, "questions_per_topic": 6, "max_fillers": 2}
# Filler sentences (no checkable fact) per biography, drawn from these counts up to max_fillers.
FILLER_COUNTS = (0, 0, 1, 1, 2)
CITIES_PER_REGION, WORKS_PER_TOPIC, YEAR_SPAN = 4, 4, 20
# Popularity: an entity gets bios_per_entity x 2**u biographies, u uniform in [-3, 1], so
# the corpus has a head of well-covered people and a long tail seen a handful of times.
POPULARITY_OCTAVES = (-3.0, 1.0)
TEST_FRACTION = 0.25
OPTIONAL = {"residence": 0.7, "language": 0.6}  # probability that an entity has the attribute

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "br", "dr", "kr", "tr", "sh"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "io", "ea"]
_CODAS = ["", "", "", "n", "r", "l", "s", "th"]
_SURNAME_ENDS = ["ith", "ova", "ander", "ek", "oril", "usk", "ane", "eth", "imor", "aska", "oth", "elle", "und", "ira"]
_CITY_ENDS = ["mora", "vale", "holm", "dor", "wick", "garde", "port", "mere", "stead", "fall"]
_LANGUAGE_ENDS = ["ish", "ic", "ese", "ian"]
# Words the templates use capitalised: a name made of them would read as grammar.
_RESERVED = {"The", "He", "She", "Her", "His", "Him", "Born", "People", "These", "Many", "There", "Let", "Here", "In", "I", "This", "That", "Who", "What"}
OCCUPATIONS = [
    "glassblower", "cartographer", "beekeeper", "clockmaker", "lighthouse keeper", "herbalist", "stonemason",
    "weaver", "astronomer", "potter", "archivist", "shipwright", "falconer", "bookbinder", "brewer", "locksmith",
    "violinist", "fresco painter", "salt trader", "river guide", "bell founder", "tea merchant", "lute maker",
    "apothecary",
]
_ADJECTIVES = ["silver", "crooked", "northern", "hollow", "amber", "iron", "painted", "silent", "golden",
               "drowned", "winter", "copper", "scarlet", "wandering", "broken", "velvet"]
_NOUNS = ["lantern", "bridge", "orchard", "compass", "tapestry", "bell", "harp", "atlas", "garden", "tower",
          "clock", "ledger", "mirror", "chapel", "fountain", "map"]


def _word(rng: random.Random, syllables: int, end: str = "") -> str:
    core = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + (rng.choice(_CODAS) if i == syllables - 1 and not end else "")
                   for i in range(syllables))
    return (core + end).capitalize()


def _unique(rng: random.Random, used: set[str], make) -> str:
    for _ in range(1000):
        word = make(rng)
        if word not in used and word not in _RESERVED and len(word) <= 14:
            used.add(word)
            return word
    raise MaskDPOError("world generator ran out of names; use fewer topics or entities")


def _regions(rng: random.Random, n: int, used: set[str]) -> list[dict[str, Any]]:
    regions = []
    for _ in range(n):
        cities = [_unique(rng, used, lambda r: _word(r, r.randint(1, 2), r.choice(_CITY_ENDS)))
                  for _ in range(CITIES_PER_REGION)]
        languages = [_unique(rng, used, lambda r: _word(r, 2, r.choice(_LANGUAGE_ENDS))) for _ in range(2)]
        regions.append({"cities": cities, "languages": languages})
    return regions


def _span(rng: random.Random) -> list[int]:
    start = rng.randrange(1450, 1900, 5)
    return [start, start + YEAR_SPAN]


def _topics(rng: random.Random, n_topics: int, used: set[str]) -> list[dict[str, Any]]:
    regions = _regions(rng, (n_topics + 1) // 2, used)
    trades = rng.sample(OCCUPATIONS, len(OCCUPATIONS))
    works = [f"the {a} {n}" for a in _ADJECTIVES for n in _NOUNS]
    rng.shuffle(works)
    ends = rng.sample(_SURNAME_ENDS, len(_SURNAME_ENDS))
    topics = []
    for i in range(n_topics):
        region = regions[i // 2]
        occupations = [trades[(2 * i) % len(trades)], trades[(2 * i + 1) % len(trades)]]
        topics.append({
            "id": f"t{i:02d}",
            "name": f"{occupations[0]}s of {region['cities'][0]}",
            "region": region,
            "occupations": occupations,
            "works": works[WORKS_PER_TOPIC * i:WORKS_PER_TOPIC * (i + 1)],
            "years": _span(rng),
            "surname_end": ends[i % len(ends)],
        })
    return topics


def _entity(rng: random.Random, topic: dict[str, Any], used: set[str]) -> dict[str, Any]:
    first = _unique(rng, used, lambda r: _word(r, r.randint(1, 2)))
    surname = _unique(rng, used, lambda r: _word(r, 1, topic["surname_end"]))
    region = topic["region"]
    facts = {
        "birthplace": rng.choice(region["cities"]),
        "birth_year": str(rng.randint(*topic["years"])),
        "occupation": rng.choice(topic["occupations"]),
        "known_for": rng.choice(topic["works"]),
        "residence": rng.choice(region["cities"]),
        "language": rng.choice(region["languages"]),
    }
    for attr, p in OPTIONAL.items():
        if rng.random() >= p:
            del facts[attr]
    return {"name": f"{first} {surname}", "gender": rng.choice("fm"), "topic": topic["name"],
            "topic_id": topic["id"], "facts": facts}


def render_biography(rng: random.Random, entity: dict[str, Any], keep: float = 0.85, max_fillers: int = 2) -> str:
    """A biography: a random subset of the facts, random templates, pronouns, filler sentences."""
    facts = entity["facts"]
    chosen = [a for a in facts if rng.random() < keep] or rng.sample(list(facts), 2)
    remaining = set(chosen)
    sentences = []
    while remaining:
        options = [(attrs, t) for attrs, t in grammar.FACT_TEMPLATES if set(attrs) <= remaining]
        attrs, template = rng.choice(options)
        remaining -= set(attrs)
        # The first sentence names the entity, later ones mostly use a pronoun.
        sentences.append(grammar.render(template, entity["name"], entity["gender"], facts,
                                        use_name=not sentences or rng.random() < 0.25))
    for _ in range(min(rng.choice(FILLER_COUNTS), max_fillers)):
        filler = rng.choice(grammar.FILLER_TEMPLATES)
        sentences.insert(rng.randint(0, len(sentences)),
                         grammar.render(filler, entity["name"], entity["gender"], facts, use_name=rng.random() < 0.5))
    return " ".join(sentences)


def make_question(rng: random.Random, name: str) -> str:
    return rng.choice(grammar.QUESTION_TEMPLATES).format(N=name)


def make_world(seed: int, out_dir: str, *, n_topics: int | None = None, entities_per_topic: int | None = None,
               bios_per_entity: int | None = None, questions_per_topic: int | None = None,
               max_fillers: int | None = None, quick: bool = False) -> dict[str, Any]:
    """Generate a world into out_dir; the same seed and sizes always give the same files."""
    size = dict(QUICK if quick else FULL)
    for key, value in (("n_topics", n_topics), ("entities_per_topic", entities_per_topic),
                       ("bios_per_entity", bios_per_entity), ("questions_per_topic", questions_per_topic),
                       ("max_fillers", max_fillers)):
        if value is not None:
            size[key] = value
    if size["n_topics"] < 2 or size["entities_per_topic"] < 1:
        raise MaskDPOError("a world needs at least 2 topics (train and test) and 1 entity per topic")
    rng = random.Random(seed)
    used: set[str] = set()
    topics = _topics(rng, size["n_topics"], used)
    entities = [_entity(rng, t, used) for t in topics for _ in range(size["entities_per_topic"])]
    n_test = max(1, round(TEST_FRACTION * len(topics)))
    test_ids = set(rng.sample([t["id"] for t in topics], n_test))
    pop_rng = random.Random(seed + 3)
    for e in entities:
        e["corpus_bios"] = max(1, round(size["bios_per_entity"] * 2 ** pop_rng.uniform(*POPULARITY_OCTAVES)))
    for t in topics:
        t["split"] = "test" if t["id"] in test_ids else "train"

    out = output_dir(out_dir)
    world = {"version": WORLD_VERSION, "seed": seed, "size": size, "attributes": list(grammar.ATTRIBUTES),
             "topics": topics, "entities": entities}
    with atomic_output(out / "world.json") as w:  # one JSON object: a one-line JSONL file is valid JSON
        w.write(world)
    n_corpus = _write_corpus(random.Random(seed + 1), entities, out / "corpus.jsonl", size["max_fillers"])
    counts = _write_questions(random.Random(seed + 2), entities, topics, size["questions_per_topic"], out, seed)
    return {"dir": str(out), "seed": seed, "topics": len(topics), "entities": len(entities),
            "train_topics": len(topics) - n_test, "test_topics": n_test,
            "corpus_examples": n_corpus, **counts}


def _write_corpus(rng: random.Random, entities: list[dict[str, Any]], path: Path, max_fillers: int) -> int:
    examples = [{"entity": e["name"], "question": make_question(rng, e["name"]),
                 "text": render_biography(rng, e, max_fillers=max_fillers)}
                for e in entities for _ in range(e["corpus_bios"])]
    rng.shuffle(examples)
    with atomic_output(path) as w:
        w.write_all(examples)
    return len(examples)


def _write_questions(rng: random.Random, entities: list[dict[str, Any]], topics: list[dict[str, Any]],
                     per_topic: int, out: Path, seed: int) -> dict[str, int]:
    # Questions ask about people spread evenly over each topic's popularity ranking, so every
    # question file mixes head and tail alike and scores vary less from seed to seed; the
    # rest of the population is still in the corpus and known to the oracle.
    asked = []
    for t in topics:
        members = [e for e in entities if e["topic"] == t["name"]]
        ranked = sorted(members, key=lambda e: e["corpus_bios"])
        k = min(per_topic, len(members))
        picked = {id(ranked[int((i + 0.5) * len(ranked) / k)]) for i in range(k)}
        asked += [e for e in members if id(e) in picked]
    split = {t["name"]: t["split"] for t in topics}
    counts = {}
    for part in ("train", "test"):
        records = []
        for e in asked:
            if split[e["topic"]] != part:
                continue
            slug = e["name"].lower().replace(" ", "-")
            records.append({"id": f"world{seed}-{slug}", "question": make_question(rng, e["name"]),
                            "topic": e["topic"], "language": "en", "entity": e["name"],
                            "document": grammar.render_document(e["name"], e["gender"], e["facts"])})
        with atomic_output(out / f"{part}_questions.jsonl") as w:
            w.write_all(records)
        counts[f"{part}_questions"] = len(records)
    return counts


def load_world(world_dir: str | Path) -> dict[str, Any]:
    """world.json of a world directory, with a clear error when it is not one."""
    path = Path(world_dir) / "world.json"
    try:
        world = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MaskDPOError(f"{world_dir}: not a world directory (no world.json); run `maskdpo world make`") from None
    except (OSError, json.JSONDecodeError) as err:
        raise MaskDPOError(f"{path}: cannot read ({err})") from None
    if world.get("version") != WORLD_VERSION:
        raise MaskDPOError(f"{path}: world version {world.get('version')}, expected {WORLD_VERSION}")
    return world
