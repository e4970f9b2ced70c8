"""Batches of pairs for `MaskDPO`: chosen and rejected in one right-padded tensor.

The loss mask travels as its own boolean tensor. It is never folded into the labels:
XTuner's preference collate marks ignored positions with a label value, and its DPO then
treats every label 0 as ignored, which silently drops token id 0 (`<|endoftext|>` for
SmolLM2, the pad token of many others).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def mask_dpo_collate_fn(instances: Sequence[dict[str, Any]], pad_index: int = 0) -> dict[str, Any]:
    """{'data': {input_ids, attention_mask, loss_mask, pair_index}, 'data_samples': None}.

    Rows 0..B-1 are the chosen responses of the B pairs, rows B..2B-1 their rejected
    ones, so one forward pass covers both sides. `pad_index` only fills padding, which
    both masks exclude, so its value does not matter.
    """
    sequences = [ins["chosen_ids"] for ins in instances] + [ins["rejected_ids"] for ins in instances]
    masks = [ins["chosen_mask"] for ins in instances] + [ins["rejected_mask"] for ins in instances]
    length = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(sequences), length), pad_index, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    loss_mask = torch.zeros((len(sequences), length), dtype=torch.bool)
    for row, (seq, mask) in enumerate(zip(sequences, masks)):
        input_ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, :len(seq)] = 1
        loss_mask[row, :len(mask)] = torch.tensor(mask, dtype=torch.bool)
    pair_index = torch.tensor([ins["index"] for ins in instances], dtype=torch.long)
    return {"data": {"input_ids": input_ids, "attention_mask": attention_mask,
                     "loss_mask": loss_mask, "pair_index": pair_index},
            "data_samples": None}
