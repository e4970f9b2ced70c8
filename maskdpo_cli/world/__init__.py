"""The embedded world: fictional people, a biography corpus, a tiny policy, an exact oracle."""

from maskdpo_cli.world.generator import load_world, make_world

__all__ = ["make_world", "load_world", "pretrain"]


def pretrain(*args, **kwargs):  # imported lazily: torch is slow to import
    from maskdpo_cli.world.pretrain import pretrain as _pretrain

    return _pretrain(*args, **kwargs)
