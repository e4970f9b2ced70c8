"""The interface every inference backend implements (transformers on CPU, LMDeploy on GPU)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

Messages = list[dict[str, str]]


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


class Backend(Protocol):
    name: str

    def generate(self, prompts: list[Messages], params: GenerationParams,
                 seeds: list[int]) -> list[list[str]]:
        """`params.n` responses per chat prompt; `seeds[i]` makes prompt i's responses reproducible."""
        ...

    def chat(self, conversations: list[Messages], max_new_tokens: int) -> list[str]:
        """One greedy reply per conversation (used by judges)."""
        ...
