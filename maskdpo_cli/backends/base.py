"""The interface every inference backend implements (transformers on CPU, LMDeploy on GPU)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Protocol

Messages = list[dict[str, str]]
# Told (new tokens, newly finished responses) as generation goes, for progress bars.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings; the defaults are the paper's (K=32, top-k 40, temperature 0.8)."""

    n: int = 32
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from parts (a seed, a question id, a sample index); stable across runs and
    machines, unlike hash()."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class Backend(Protocol):
    name: str
    batch_size: int  # sequences decoded together; `sample` sizes its waves by it

    def generate(self, prompts: list[Messages], params: GenerationParams,
                 seeds: list[int], on_progress: Optional[Progress] = None) -> list[list[str]]:
        """`params.n` responses per chat prompt; `seeds[i]` makes prompt i's responses reproducible."""
        ...

    def chat(self, conversations: list[Messages], max_new_tokens: int) -> list[str]:
        """One greedy reply per conversation (used by judges)."""
        ...
