"""The preference dataset a recipe builds with `dict(type=build_mask_dpo_dataset, ...)`.

Every pair is validated by `records` and tokenized by `masking.tokenize_pair`, the one
implementation of the brief's masking semantics (offset-mapping alignment over the exact
chat-templated text). Each item carries its token ids, an explicit boolean loss mask per
side, its index (row of the reference log-prob table) and a key that changes whenever
the tokens or the mask change (so a cached reference value is never reused for a
different mask).

`maskdpo train` tokenizes every pair once, to check it before anything is trained, and
saves the result in W (`save_tokenized`); the recipe's dataset then loads that file
instead of tokenizing again, in every rank. A file made from other pairs or settings
(a hand-edited W/config.py) is not used: the pairs are tokenized afresh.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from maskdpo_cli import masking
from maskdpo_cli.records import read_records


def build_tokenizer(pretrained_model_name_or_path: str) -> Any:
    """The fast tokenizer of a model directory or embedded alias (recipes use this, not AutoTokenizer)."""
    from maskdpo_cli.models import load_tokenizer, resolve_model

    return load_tokenizer(str(resolve_model(pretrained_model_name_or_path)))


def pair_key(pair: masking.TokenizedPair) -> str:
    """`id:hash` where the hash covers both sides' token ids and loss masks."""
    digest = hashlib.sha256()
    for side in (pair.chosen, pair.rejected):
        digest.update(repr((side.input_ids, [int(m) for m in side.loss_mask])).encode())
    return f"{pair.id}:{digest.hexdigest()[:16]}"


def encode_pair(tokenized: masking.TokenizedPair, index: int) -> dict[str, Any]:
    return {
        "index": index,
        "key": pair_key(tokenized),
        "chosen_ids": list(tokenized.chosen.input_ids),
        "chosen_mask": [bool(m) for m in tokenized.chosen.loss_mask],
        "rejected_ids": list(tokenized.rejected.input_ids),
        "rejected_mask": [bool(m) for m in tokenized.rejected.loss_mask],
        "truncated": bool(tokenized.chosen.truncated or tokenized.rejected.truncated),
    }


class MaskDPODataset(Dataset):
    """Tokenized pairs in file order; item i is pair i of the file."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]

    @property
    def keys(self) -> list[str]:
        return [item["key"] for item in self.items]

    @property
    def num_truncated(self) -> int:
        return sum(item["truncated"] for item in self.items)


def tokenize_pairs(tokenizer: Any, pairs: list[dict[str, Any]], *, max_length: int | None,
                   use_mask: bool) -> MaskDPODataset:
    """Tokenize validated pair records; an unalignable pair raises InputError naming it."""
    items = [encode_pair(masking.tokenize_pair(tokenizer, pair, max_length=max_length, use_mask=use_mask), i)
             for i, pair in enumerate(pairs)]
    return MaskDPODataset(items)


def tokenization(pairs_sha256: str, tokenizer: str, max_length: int | None, use_mask: bool) -> dict[str, Any]:
    """What a tokenized pairs file was made from: the pairs file's digest, the tokenizer's model, the settings."""
    return {"pairs_sha256": pairs_sha256, "tokenizer": tokenizer, "max_length": max_length, "use_mask": use_mask}


def save_tokenized(path: Path, dataset: MaskDPODataset, made_from: dict[str, Any]) -> None:
    import torch

    from maskdpo_cli.jsonl import write_bytes_atomic

    buffer = io.BytesIO()
    torch.save({"made_from": made_from, "items": dataset.items}, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def load_tokenized(path: Path, made_from: dict[str, Any]) -> MaskDPODataset | None:
    """The dataset saved in `path`, or None when the file is absent or made from anything else."""
    import torch

    if not path.is_file():
        return None
    saved = torch.load(path, weights_only=True)
    return MaskDPODataset(saved["items"]) if saved.get("made_from") == made_from else None


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_mask_dpo_dataset(pairs: str, tokenizer: Any, max_length: int | None = None,
                           use_mask: bool = True, tokenized: str | None = None) -> MaskDPODataset:
    """Read a pairs JSONL (our format or the authors') and tokenize it with its loss masks.

    `tokenized`: the file `maskdpo train` saved after tokenizing these pairs; used (and
    the tokenizer never built) when it was made from this file with these settings.
    """
    if tokenized is not None:
        name = (tokenizer.get("pretrained_model_name_or_path") if isinstance(tokenizer, dict)
                else getattr(tokenizer, "name_or_path", None))
        made_from = tokenization(file_sha256(pairs), str(name), max_length, use_mask)
        dataset = load_tokenized(Path(tokenized), made_from)
        if dataset is not None:
            return dataset
    if isinstance(tokenizer, dict):
        from xtuner.registry import BUILDER

        tokenizer = BUILDER.build(tokenizer)
    return tokenize_pairs(tokenizer, read_records(pairs, "pairs"), max_length=max_length, use_mask=use_mask)
