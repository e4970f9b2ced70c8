"""How near two topics of the world are, and which wrong values are *blurred*.

The world shares its value pools at three levels (generator.py): a region's cities are the
places of every kind in it, a kind's pools (the rigs of ships, the brews of inns, the
templates of everyone) are shared by its topics in every region, and a topic's trades,
works, cargoes, dishes and signs are its own. So the affinity of two topics is graded:

  3  the same topic
  2  the same kind in the same region: they share the region's places and the kind's pools
  1  the same kind elsewhere, or another kind in the same region: one level shared
  0  nothing shared

Near topics are those at NEAR or above (a topic is near itself). The paper's hypothesis
(Sec. 4.2) is that a model blurs facts between similar entities: a wrong value that is
the true value of an entity of a near topic is *blurred*, a wrong value found nowhere
near is invented (or blurred from farther away). The default world (people only, two
topics per region) has affinity 2 within a region and 1 across regions.
"""

from __future__ import annotations

from typing import Any

from maskdpo_cli.world.grammar import kind_of

NEAR = 2


def affinity(a: dict[str, Any], b: dict[str, Any]) -> int:
    """The graded affinity of two topics of world.json (see the module docstring)."""
    if a["id"] == b["id"]:
        return 3
    same_kind, same_region = kind_of(a) == kind_of(b), a["region"] == b["region"]
    return 2 if same_kind and same_region else int(same_kind or same_region)


def affinity_matrix(topics: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """topic id -> topic id -> affinity, for every pair (world.json's "affinity")."""
    return {a["id"]: {b["id"]: affinity(a, b) for b in topics} for a in topics}


def near_topics(world: dict[str, Any], topic_id: str) -> list[str]:
    """The ids of the topics near `topic_id` (affinity >= NEAR), itself included, in world order."""
    topic = next((t for t in world["topics"] if t["id"] == topic_id), None)
    if topic is None:
        raise KeyError(f"no topic {topic_id!r} in this world")
    return [t["id"] for t in world["topics"] if affinity(topic, t) >= NEAR]


def near_values(world: dict[str, Any]) -> dict[str, set[str]]:
    """topic id -> every true value of every entity of its near topics: what a blurred answer says."""
    values: dict[str, set[str]] = {t["id"]: set() for t in world["topics"]}
    for e in world["entities"]:
        values[e["topic_id"]].update(e["facts"].values())
    return {t["id"]: set().union(*(values[n] for n in near_topics(world, t["id"]))) for t in world["topics"]}
