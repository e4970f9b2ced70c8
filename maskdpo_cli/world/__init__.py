"""The embedded world: fictional people, a biography corpus, a tiny policy, an exact oracle.

generator.py makes the world, grammar.py renders and parses its sentences, pretraining.py
trains its policy (not pretrain.py: importing a submodule of that name would replace the
`pretrain` function below on the package); the oracle is maskdpo_cli.annotators.world.WorldAnnotator. affinity.py
says how near two topics are and which wrong values are blurred; blur.py totals the
oracle's blur marks for `eval`.
"""

from __future__ import annotations

from typing import Any

from maskdpo_cli.world.generator import load_world, make_world

__all__ = ["make_world", "load_world", "pretrain"]


def pretrain(world_dir: str, out_dir: str, *, steps: int | None = None, seed: int = 0,
             quick: bool = False) -> dict[str, Any]:
    """See maskdpo_cli.world.pretraining.pretrain; imported on call because torch is slow to import."""
    from maskdpo_cli.world.pretraining import pretrain as _pretrain

    return _pretrain(world_dir, out_dir, steps=steps, seed=seed, quick=quick)
