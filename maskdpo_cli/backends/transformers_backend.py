"""The default backend: a transformers causal LM driven by our own batched decode loop.

Why not `model.generate`: it keeps finished rows in the batch, prefills every one of the
K copies of a prompt, concatenates the whole KV cache at every step, and (transformers
4.48) repeats every key/value head once per query group before attention. On a CPU those
copies cost more than the model itself once a batch holds a few thousand cached tokens.
This loop:

- prefills each distinct prompt once and copies its cache into its K rows;
- writes the KV cache in place into buffers sized for the whole batch up front;
- attends with grouped-query SDPA (`enable_gqa`), without repeating key/value heads;
- drops a row the step it finishes by moving the last live row into its slot, so the
  live rows are always a prefix of the buffers and nothing is recomputed or recopied;
- samples row (i, j) with its own random stream seeded from (seeds[i], j), so a row's
  text does not depend on which other rows share its batch.
"""

from __future__ import annotations

import inspect
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers.cache_utils import Cache

from maskdpo_cli.backends.base import GenerationParams, Messages, Progress, derive_seed
from maskdpo_cli.backends.options import TransformersOptions
from maskdpo_cli.models import chat_prompt_text, load_causal_lm, load_tokenizer

GQA_ATTENTION = "maskdpo_gqa_sdpa"
CPU_BATCH_SIZE = 64
CUDA_BATCH_SIZE = 256


def _gqa_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
              is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, minus the copy of every key/value head per query group."""
    mask = None if attention_mask is None else attention_mask[:, :, :, : key.shape[-2]]
    if mask is not None and query.shape[2] > 1 and query.device.type == "cuda":
        # Left-padding rows attend to nothing; SDPA's CUDA kernels may turn them into NaN.
        from transformers.modeling_attn_mask_utils import AttentionMaskConverter

        mask = AttentionMaskConverter._unmask_unattended(mask, torch.finfo(mask.dtype).min)
    if is_causal is None:
        is_causal = mask is None and query.shape[2] > 1
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling, is_causal=is_causal,
        enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


def _use_gqa_attention(model: Any) -> None:
    """Switch a model that uses transformers' SDPA attention to `_gqa_sdpa` (others are left alone)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    ALL_ATTENTION_FUNCTIONS[GQA_ATTENTION] = _gqa_sdpa
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        model.config._attn_implementation = GQA_ATTENTION


class SlotCache(Cache):
    """A KV cache in preallocated buffers [rows, heads, capacity, dim], written in place.

    Live rows are the first `size` slots; columns before `start` are padding that no live
    row attends to, so attention skips them.
    """

    def __init__(self, capacity: int, keys: list[torch.Tensor] | None = None,
                 values: list[torch.Tensor] | None = None, length: int = 0) -> None:
        super().__init__()
        self.capacity, self.keys, self.values = capacity, keys or [], values or []
        self.lengths = [length] * len(self.keys)  # per layer: layers are written one after another
        self.size = self.keys[0].shape[0] if self.keys else 0
        self.start = 0

    @property
    def length(self) -> int:
        """Columns written (between forward passes every layer has the same)."""
        return self.lengths[0] if self.lengths else 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               cache_kwargs: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx == len(self.keys):  # the prefill's first call for this layer
            rows, heads, _, dim = key_states.shape
            self.keys.append(key_states.new_empty((rows, heads, self.capacity, dim)))
            self.values.append(value_states.new_empty((rows, heads, self.capacity, dim)))
            self.lengths.append(0)
            self.size = rows
        begin = self.lengths[layer_idx]
        end = self.lengths[layer_idx] = begin + key_states.shape[-2]
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[: self.size, :, begin:end] = key_states
        values[: self.size, :, begin:end] = value_states
        return keys[: self.size, :, self.start:end], values[: self.size, :, self.start:end]

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return self.length - self.start

    def get_max_cache_shape(self) -> int | None:
        return None

    def expand(self, rows: torch.Tensor, capacity: int) -> SlotCache:
        """A cache whose slot s holds row rows[s] of this one, with room for `capacity` columns."""
        def grown(buf: torch.Tensor) -> torch.Tensor:
            new = buf.new_empty((len(rows), buf.shape[1], capacity, buf.shape[3]))
            new[:, :, : self.length] = buf[rows, :, : self.length]
            return new

        return SlotCache(capacity, [grown(k) for k in self.keys], [grown(v) for v in self.values], self.length)

    def move(self, src: int, dst: int) -> None:
        """Copy slot `src` over slot `dst` (only the columns anyone still attends to)."""
        for buf in (*self.keys, *self.values):
            buf[dst, :, self.start:self.length] = buf[src, :, self.start:self.length]


class _Batch:
    """The live rows of one decode: KV cache, attention mask, positions and what each row generated."""

    def __init__(self, cache: SlotCache, mask: torch.Tensor, positions: torch.Tensor,
                 rows: list[int], rngs: list[random.Random | None]) -> None:
        self.cache, self.mask, self.positions = cache, mask, positions
        self.rows, self.rngs = rows, rngs
        self.tokens: list[list[int]] = [[] for _ in rows]
        self.first_real = mask.argmax(dim=1)  # each slot's first non-padding column

    @property
    def size(self) -> int:
        return len(self.rows)

    def drop(self, slot: int) -> tuple[int, list[int]]:
        """Remove a finished slot by moving the last live slot into it; returns (row, tokens)."""
        last = self.size - 1
        done = (self.rows[slot], self.tokens[slot])
        if slot != last:
            self.cache.move(last, slot)
            for tensor in (self.mask, self.positions, self.first_real):
                tensor[slot] = tensor[last]
            for items in (self.rows, self.rngs, self.tokens):
                items[slot] = items[last]
        for items in (self.rows, self.rngs, self.tokens):
            items.pop()
        self.cache.size = self.size
        if self.size:
            self.cache.start = int(self.first_real[: self.size].min())
        return done


def _sample(logits: torch.Tensor, params: GenerationParams, rngs: Sequence[random.Random | None]) -> torch.Tensor:
    """One token per row: greedy at temperature 0, else temperature + top-k + top-p by inverse CDF."""
    if params.greedy:
        return logits.argmax(dim=-1)
    k = params.top_k if 0 < params.top_k < logits.shape[-1] else logits.shape[-1]
    values, ids = logits.topk(k, dim=-1)  # sorted, most likely first; temperature keeps the order
    probs = (values.float() / params.temperature).softmax(dim=-1)
    if params.top_p < 1.0:
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        probs = probs.masked_fill(probs.cumsum(dim=-1) - probs >= params.top_p, 0.0)
    cdf = probs.cumsum(dim=-1)
    # One uniform per row from the row's own stream: the draw never depends on the batch.
    u = torch.tensor([rng.random() for rng in rngs], dtype=cdf.dtype, device=cdf.device)
    pick = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1)).clamp_(max=k - 1)
    return ids.gather(-1, pick).squeeze(-1)


def _left_pad(sequences: list[list[int]], pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[i, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


def stop_token_ids(tokenizer: Any, generation_config: Any) -> set[int]:
    """End of a reply: the tokenizer's eos, the generation config's eos ids and ChatML's <|im_end|>."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    if "<|im_end|>" in tokenizer.get_vocab():
        ids.add(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return {i for i in ids if i is not None}


def _set_threads() -> None:
    """All cores this process may use, unless the user chose (OMP_NUM_THREADS)."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, cores or 1))


def _chunks(items: list, size: int) -> Iterator[list]:
    for begin in range(0, len(items), size):
        yield items[begin:begin + size]


class TransformersBackend:
    """Batched sampling on CPU or CUDA with a transformers causal LM from a local HF directory."""

    name = "transformers"

    def __init__(self, path: str | Path, options: TransformersOptions = TransformersOptions()) -> None:
        self.device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cpu":
            _set_threads()
        self.tokenizer = load_tokenizer(str(path))
        self.model = load_causal_lm(path, dtype=options.dtype, device=self.device)
        _use_gqa_attention(self.model)
        self.batch_size = options.batch_size or (CUDA_BATCH_SIZE if self.device.startswith("cuda")
                                                 else CPU_BATCH_SIZE)
        self.eos_ids = stop_token_ids(self.tokenizer, self.model.generation_config)
        self.generated_tokens = 0  # real generated tokens, eos included, over this backend's life
        self._last_logits_only = "num_logits_to_keep" in inspect.signature(self.model.forward).parameters

    def encode(self, messages: Messages) -> list[int]:
        """The prompt tokens: the chat template's text, no special tokens added on top."""
        return self.tokenizer(chat_prompt_text(self.tokenizer, messages), add_special_tokens=False)["input_ids"]

    def generate(self, prompts: list[Messages], params: GenerationParams, seeds: list[int],
                 on_progress: Progress | None = None) -> list[list[str]]:
        """`params.n` responses per prompt; `on_progress(new tokens, finished responses)` after each step."""
        token_ids = self.generate_ids([self.encode(p) for p in prompts], params, seeds, on_progress)
        return [[self._text(tokens) for tokens in per_prompt] for per_prompt in token_ids]

    def chat(self, conversations: list[Messages], max_new_tokens: int) -> list[str]:
        """One greedy reply per conversation."""
        params = GenerationParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
        return [replies[0] for replies in self.generate(conversations, params, [0] * len(conversations))]

    def generate_ids(self, prompt_ids: list[list[int]], params: GenerationParams, seeds: list[int],
                     on_progress: Progress | None = None) -> list[list[list[int]]]:
        """Generated token ids (eos included when reached) for each prompt and sample."""
        rows = [(i, j) for i in range(len(prompt_ids)) for j in range(params.n)]
        out: list[list[list[int]]] = [[[] for _ in range(params.n)] for _ in prompt_ids]
        with torch.inference_mode():
            for chunk in _chunks(rows, self.batch_size):
                rngs = [None if params.greedy else random.Random(derive_seed(seeds[i], j)) for i, j in chunk]
                for (i, j), tokens in zip(chunk, self._decode(prompt_ids, [i for i, _ in chunk], rngs,
                                                              params, on_progress)):
                    out[i][j] = tokens
        return out

    def _text(self, tokens: list[int]) -> str:
        if tokens and tokens[-1] in self.eos_ids:
            tokens = tokens[:-1]
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _decode(self, prompt_ids: list[list[int]], row_prompts: list[int], rngs: list[random.Random | None],
                params: GenerationParams, on_progress: Progress | None) -> list[list[int]]:
        """Decode one batch of rows (row r continues prompt row_prompts[r]); tokens per row."""
        batch, logits = self._prefill(prompt_ids, row_prompts, rngs, params.max_new_tokens)
        results: list[list[int]] = [[] for _ in row_prompts]
        while True:
            next_ids = _sample(logits, params, batch.rngs)
            self.generated_tokens += batch.size
            finished = []
            for slot, token in enumerate(next_ids.tolist()):
                batch.tokens[slot].append(token)
                if token in self.eos_ids or len(batch.tokens[slot]) >= params.max_new_tokens:
                    finished.append(slot)
            for slot in reversed(finished):  # highest first: the slot moved in is always a live one
                next_ids[slot] = next_ids[batch.size - 1]
                row, tokens = batch.drop(slot)
                results[row] = tokens
            if on_progress:
                on_progress(len(next_ids), len(finished))
            if not batch.size:
                return results
            logits = self._step(batch, next_ids[: batch.size])

    def _prefill(self, prompt_ids: list[list[int]], row_prompts: list[int], rngs: list[random.Random | None],
                 max_new_tokens: int) -> tuple[_Batch, torch.Tensor]:
        """Run each distinct prompt once, then give every row a copy of its prompt's cache."""
        distinct = list(dict.fromkeys(row_prompts))
        ids, mask = _left_pad([prompt_ids[p] for p in distinct], self.tokenizer.pad_token_id, self.device)
        width = ids.shape[1]
        cache = SlotCache(width)
        extra = {"num_logits_to_keep": 1} if self._last_logits_only else {}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                         past_key_values=cache, use_cache=True, **extra)
        index = torch.tensor([distinct.index(p) for p in row_prompts], device=self.device)
        full_mask = torch.zeros((len(row_prompts), width + max_new_tokens), dtype=torch.long, device=self.device)
        full_mask[:, :width] = mask[index]
        batch = _Batch(cache.expand(index, width + max_new_tokens), full_mask,
                       mask.sum(dim=1)[index] - 1, list(range(len(row_prompts))), list(rngs))
        return batch, out.logits[index, -1]

    def _step(self, batch: _Batch, next_ids: torch.Tensor) -> torch.Tensor:
        """Feed one token per live row; the logits of the next one."""
        cache, size = batch.cache, batch.size
        batch.mask[:size, cache.length] = 1
        batch.positions[:size] += 1
        out = self.model(input_ids=next_ids.unsqueeze(-1), attention_mask=batch.mask[:size, cache.start:cache.length + 1],
                         position_ids=batch.positions[:size].unsqueeze(-1), past_key_values=cache, use_cache=True)
        return out.logits[:, -1]
