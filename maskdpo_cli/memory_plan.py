"""How much memory one device needs to train a Llama-family model with DPO, from config.json alone.

No weights are loaded: the figures come from the shapes in the model's config, so a plan for 8
GPUs can be made on a laptop before a job waits in a queue.

What is counted, per device (bytes):

- **Model states.** Parameters, gradients and AdamW's optimizer states. Under DeepSpeed with
  bf16/fp16, mixed precision is counted as DeepSpeed's own estimators count it, per parameter:
  2 bytes of 16-bit weights, 2 of 16-bit gradients plus 4 of fp32 gradients, 4 of fp32 master
  weights plus 8 of Adam moments (momentum, variance). ZeRO partitions them over the N devices:
  stage 1 the optimizer states and fp32 gradients, stage 2 also the 16-bit gradients (its
  estimator: 2 + 18/N bytes per parameter), stage 3 also the 16-bit weights, and a stage-3
  partition's gradient is counted once, in fp32 (its estimator: 18/N bytes per parameter); a
  stage-3 device also holds its largest module gathered whole (16-bit weights and gradients)
  while that module runs (the estimator's 4 bytes per parameter of the largest layer).
  `*_offload` moves the optimizer states and fp32 gradients (stage 3: the 16-bit weights
  too) to host memory, reported apart.
  Without DeepSpeed (DDP) training is torch autocast over fp32 weights: 4 bytes of weights, 4 of
  gradients and 8 of Adam moments, all replicated. In fp32 there are no 16-bit copies at all.
- **LoRA.** Only the adapters train: rank r on every linear layer of the decoder (q, k, v, o,
  gate, up, down), r x (in + out) parameters each; gradients and optimizer states are theirs
  alone. The frozen base stays in the 16-bit dtype, or with QLoRA its decoder linears in 4-bit
  NF4 (half a byte per weight plus a 32-bit scale per block of 64).
- **Activations** for one micro-batch of pairs: DPO runs chosen and rejected, 2 sequences of
  max length per pair, through the policy only (the reference log-probs are computed once
  and cached). Saved for backward, per token and decoder layer, with memory-efficient
  attention (no seq x seq scores): the two RMSNorms' inputs (in fp32: the norm computes in
  fp32) and outputs (2 x hidden each); q, k, v and q, k after RoPE and the attention output
  (3 x q width + 3 x kv width); the MLP's gate, up, activation and product (4 x
  intermediate). With gradient checkpointing each layer keeps only its input (hidden) and one
  layer at a time is recomputed whole. The logits add one value in the compute dtype plus one
  fp32 log-probability per vocabulary entry and token. On a tiny Llama this is within 10% of
  the bytes autograd saves (tests/test_memory_plan.py); allocator slack, communication
  buckets and temporaries come on top.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from maskdpo_cli.errors import MaskDPOError

# --deepspeed names (None: no DeepSpeed, plain DDP) -> (stage, offload to host).
ZERO_STAGES: dict[str | None, tuple[int, bool]] = {
    None: (0, False), "zero1": (1, False), "zero2": (2, False), "zero2_offload": (2, True),
    "zero3": (3, False), "zero3_offload": (3, True),
}
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NF4_BYTES = 0.5 + 4 / 64  # 4-bit weights, one fp32 scale per block of 64
GIB = 2**30


@dataclass(frozen=True)
class LlamaShape:
    """The shapes config.json gives a Llama-family model (Llama, Mistral, Qwen2 without biases, SmolLM2)."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    attention_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any], source: str = "config.json") -> LlamaShape:
        """Read the shapes; a missing or non-positive size is an error naming the key."""
        def size(key: str, default: int | None = None) -> int:
            value = config.get(key)
            value = default if value is None else value  # absent or null: transformers' default
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MaskDPOError(f"{source}: '{key}' must be a positive integer, not {value!r}")
            return value

        hidden, heads = size("hidden_size"), size("num_attention_heads")
        return cls(vocab=size("vocab_size"), hidden=hidden, intermediate=size("intermediate_size"),
                   layers=size("num_hidden_layers"), heads=heads,
                   kv_heads=size("num_key_value_heads", heads), head_dim=size("head_dim", hidden // heads),
                   tied=bool(config.get("tie_word_embeddings", False)),
                   attention_bias=bool(config.get("attention_bias", False)),
                   mlp_bias=bool(config.get("mlp_bias", False)))

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer."""
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, self.q_width), "k_proj": (h, self.kv_width), "v_proj": (h, self.kv_width),
                "o_proj": (self.q_width, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def linear_params(self) -> dict[str, int]:
        """Weights and biases of each linear layer of one decoder layer."""
        sizes = {}
        for name, (fan_in, fan_out) in self.linears().items():
            biased = self.mlp_bias if name in ("gate_proj", "up_proj", "down_proj") else self.attention_bias
            sizes[name] = fan_in * fan_out + (fan_out if biased else 0)
        return sizes


@dataclass(frozen=True)
class ParameterCount:
    total: int  # as sum(p.numel() for p in model.parameters()): tied embeddings count once
    largest_module: int  # the most parameters any one module holds itself (what ZeRO-3 gathers at once)
    decoder_linears: int  # the weights QLoRA quantizes and LoRA adapts


def count_parameters(shape: LlamaShape) -> ParameterCount:
    """Parameters of LlamaForCausalLM with these shapes, without building it."""
    embedding = shape.vocab * shape.hidden
    linears = shape.linear_params()
    decoder_linears = shape.layers * sum(linears.values())
    norms = shape.layers * 2 * shape.hidden + shape.hidden  # two per layer, one final
    head = 0 if shape.tied else embedding
    return ParameterCount(total=embedding + decoder_linears + norms + head,
                          largest_module=max(embedding, *linears.values()), decoder_linears=decoder_linears)


def lora_parameters(shape: LlamaShape, rank: int) -> int:
    """Adapter parameters of rank `rank` on every decoder linear (LORA_TARGETS)."""
    return shape.layers * sum(rank * (fan_in + fan_out) for name, (fan_in, fan_out) in shape.linears().items()
                              if name in LORA_TARGETS)


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device (module docstring: what each figure counts)."""

    devices: int
    deepspeed: str | None
    dtype: str
    micro_batch: int
    max_length: int
    checkpointing: bool
    lora_rank: int | None
    qlora: bool
    parameters_total: int
    parameters_trained: int
    largest_module: int
    parameters: int
    gradients: int
    optimizer: int
    activations: int
    host: int  # what offload keeps in host memory, per device

    @property
    def model_states(self) -> int:
        return self.parameters + self.gradients + self.optimizer

    @property
    def total(self) -> int:
        return self.model_states + self.activations


def plan_memory(config: Mapping[str, Any], *, devices: int = 1, deepspeed: str | None = None,
                dtype: str = "bf16", micro_batch: int = 1, max_length: int = 2048, checkpointing: bool = True,
                lora_rank: int | None = None, qlora: bool = False, source: str = "config.json") -> MemoryPlan:
    """Memory per device to train the model of `config` (a config.json dict) with DPO.

    `deepspeed`: None (DDP), zero1, zero2, zero2_offload, zero3 or zero3_offload; `micro_batch`:
    pairs per device per forward; `lora_rank`: train rank-r adapters only; `qlora`: with a
    4-bit frozen base.
    """
    if deepspeed not in ZERO_STAGES:
        raise MaskDPOError(f"--deepspeed {deepspeed}: expected one of "
                           f"{', '.join(k for k in ZERO_STAGES if k)} (or none for DDP)")
    if dtype not in DTYPE_BYTES:
        raise MaskDPOError(f"dtype {dtype}: expected one of {', '.join(DTYPE_BYTES)}")
    for name, value in (("devices", devices), ("micro-batch", micro_batch), ("max length", max_length)):
        if value < 1:
            raise MaskDPOError(f"{name} {value}: must be at least 1")
    if lora_rank is not None and lora_rank < 1:
        raise MaskDPOError(f"LoRA rank {lora_rank}: must be at least 1")
    if qlora and lora_rank is None:
        raise MaskDPOError("QLoRA trains adapters on a 4-bit base: give a LoRA rank")
    shape = LlamaShape.from_config(config, source)
    count = count_parameters(shape)
    stage, offload = ZERO_STAGES[deepspeed]
    word = DTYPE_BYTES[dtype]
    trained = count.total if lora_rank is None else lora_parameters(shape, lora_rank)
    # LoRA: the adapters are tiny, no module of theirs is worth gathering whole.
    parameters, gradients, optimizer, host = _model_states(
        trained, count.largest_module if lora_rank is None else 0, devices, stage, offload,
        mixed=word == 2 and stage > 0)
    if lora_rank is not None:
        frozen, frozen_host = _frozen_base(count, word, qlora, devices, stage, offload)
        parameters, host = parameters + frozen, host + frozen_host
    return MemoryPlan(devices=devices, deepspeed=deepspeed, dtype=dtype, micro_batch=micro_batch,
                      max_length=max_length, checkpointing=checkpointing, lora_rank=lora_rank, qlora=qlora,
                      parameters_total=count.total, parameters_trained=trained, largest_module=count.largest_module,
                      parameters=parameters, gradients=gradients, optimizer=optimizer,
                      activations=activation_bytes(shape, 2 * micro_batch, max_length, word, checkpointing),
                      host=host)


def _model_states(n: int, largest: int, devices: int, stage: int, offload: bool,
                  mixed: bool) -> tuple[int, int, int, int]:
    """(parameters, gradients, optimizer, host) bytes per device for `n` trained parameters."""
    if mixed:  # DeepSpeed's mixed precision: 16-bit weights and gradients, fp32 gradients, master, moments
        weights, grads16, grads32, optim = 2, 2, 4, 12
    else:  # fp32 weights and gradients (DDP under autocast, or fp32 throughout), Adam's two moments
        weights, grads16, grads32, optim = 4, 4, 0, 8
    if stage == 0:
        return weights * n, (grads16 + grads32) * n, optim * n, 0
    shard = lambda per_param: per_param * n // devices  # noqa: E731 - bytes of a 1/devices share
    if offload:  # the optimizer steps on the host, on fp32 gradients copied there
        host = shard(4 + optim) + (shard(weights) if stage == 3 else 0)
        if stage == 3:
            return weights * largest, grads16 * largest, 0, host
        return weights * n, 0, 0, host
    if stage == 1:
        return weights * n, grads16 * n + shard(grads32), shard(optim), 0
    if stage == 2:
        return weights * n, shard(grads16 + grads32), shard(optim), 0
    # Stage 3: the gradient partition once (fp32 when mixed), the gathered module's 16-bit gradient.
    return shard(weights) + weights * largest, shard(grads32 or grads16) + grads16 * largest, shard(optim), 0


def _frozen_base(count: ParameterCount, word: int, qlora: bool, devices: int, stage: int,
                 offload: bool) -> tuple[int, int]:
    """(device, host) bytes of LoRA's frozen base: 16-bit, or QLoRA's decoder linears in 4-bit. ZeRO-3
    shards it and gathers one module at a time; with offload the shards wait on the host."""
    size = word * count.total
    if qlora:
        size = int(NF4_BYTES * count.decoder_linears) + word * (count.total - count.decoder_linears)
    if stage < 3:
        return size, 0
    gathered = word * count.largest_module
    return (gathered, size // devices) if offload else (gathered + size // devices, 0)


def activation_bytes(shape: LlamaShape, sequences: int, length: int, word: int, checkpointing: bool) -> int:
    """Activations saved for backward over `sequences` x `length` tokens (module docstring)."""
    tokens = sequences * length
    norms = 2 * shape.hidden * (4 + word)  # two RMSNorms: fp32 input, output in the compute dtype
    per_layer = norms + (3 * shape.q_width + 3 * shape.kv_width + 4 * shape.intermediate) * word
    layers = (shape.layers * shape.hidden * word + per_layer) if checkpointing else shape.layers * per_layer
    logits = shape.vocab * (word + 4)
    return tokens * (layers + logits)


def render_plan(plan: MemoryPlan) -> str:
    """The plan as a short plain-text table (GiB = 2**30 bytes, as DeepSpeed's estimators print)."""
    setup = [f"{plan.devices} device{'s' if plan.devices > 1 else ''}", plan.deepspeed or "DDP", plan.dtype,
             f"micro-batch {plan.micro_batch} pair{'s' if plan.micro_batch > 1 else ''} "
             f"({2 * plan.micro_batch} sequences) x {plan.max_length} tokens",
             f"checkpointing {'on' if plan.checkpointing else 'off'}"]
    if plan.lora_rank is not None:
        setup.append(f"{'QLoRA' if plan.qlora else 'LoRA'} rank {plan.lora_rank}")
    rows = [("parameters", plan.parameters), ("gradients", plan.gradients), ("optimizer states", plan.optimizer),
            ("model states", plan.model_states), ("activations", plan.activations), ("total", plan.total)]
    lines = ["memory plan per device: " + ", ".join(setup),
             f"  {plan.parameters_total:,} parameters ({plan.parameters_trained:,} trained), "
             f"largest module {plan.largest_module:,}"]
    lines += [f"  {name:<17}{size / GIB:>9.2f} GiB" for name, size in rows]
    if plan.host:
        lines.append(f"  {'host (offload)':<17}{plan.host / GIB:>9.2f} GiB per device")
    return "\n".join(lines)


__all__ = ["LlamaShape", "ParameterCount", "MemoryPlan", "count_parameters", "lora_parameters", "plan_memory",
           "activation_bytes", "render_plan", "ZERO_STAGES"]
