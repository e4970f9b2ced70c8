"""The memory plan against real models built from the same config, and against DeepSpeed's own estimator."""

from __future__ import annotations

import contextlib
import io
import re

import pytest
import torch

from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.memory_plan import (LlamaShape, activation_bytes, count_parameters, lora_parameters, plan_memory,
                                     render_plan)

# Llama-3.1-8B-Instruct's config.json (the 8B recipe's model), sizes only.
LLAMA_8B = {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False,
            "architectures": ["LlamaForCausalLM"], "torch_dtype": "bfloat16"}
TINY = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2}


def tiny_llama(config: dict, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**config, attn_implementation="sdpa")).to(dtype)


@pytest.mark.parametrize("extra", [{"tie_word_embeddings": False}, {"tie_word_embeddings": True},
                                   {"attention_bias": True, "mlp_bias": True, "head_dim": 24},
                                   {"num_key_value_heads": None}])
def test_the_parameter_count_is_that_of_the_model_built_from_the_config(extra):
    config = {**TINY, **extra}
    model = tiny_llama(config)
    count = count_parameters(LlamaShape.from_config(config))
    assert count.total == sum(p.numel() for p in model.parameters())  # tied weights count once
    # ZeRO-3 gathers one module at a time: the most parameters a module holds itself.
    assert count.largest_module == max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())


def test_the_8b_count_and_its_lora_adapters():
    shape = LlamaShape.from_config(LLAMA_8B)
    assert count_parameters(shape).total == 8_030_261_248
    assert count_parameters(shape).largest_module == 128256 * 4096  # the embedding (and the untied head)
    # rank 16 on q, k, v, o, gate, up and down of 32 layers: 16 x (in + out) each
    assert lora_parameters(shape, 16) == 41_943_040


def test_lora_adapters_count_as_peft_builds_them():
    import peft

    from maskdpo_cli.xtuner_ext.lora import without_bitsandbytes

    model = tiny_llama(TINY)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    with without_bitsandbytes():  # as training wraps a base that is not quantized (no CUDA build here)
        adapted = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=targets))
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    assert trainable == lora_parameters(LlamaShape.from_config(TINY), 4)


# ---------------------------------------------------------------- DeepSpeed's estimator

def zero3_estimate_transcribed(total_params: int, largest_layer_params: int, gpus: int, offload: bool) -> int:
    """GPU bytes per device from DeepSpeed's `estimate_zero3_model_states_mem_needs` (deepspeed 0.16.9,
    runtime/zero/stage3.py), as `estimate_zero3_model_states_mem_needs_all_cold` prints it, one node,
    zero_init on.

    Without offload: 4 bytes per parameter of the largest layer (its 16-bit weights and gradients,
    gathered whole) plus 18 bytes per parameter over the GPUs (16-bit weights 2, gradients 4,
    fp32 master weights 4, Adam moments 8). With parameters and optimizer offloaded to the CPU:
    only the largest layer's 4 bytes per parameter stay on the GPU.
    """
    largest_layer_memory = 4 * largest_layer_params
    return largest_layer_memory if offload else largest_layer_memory + int(18 * total_params / gpus)


def zero3_estimate(total_params: int, largest_layer_params: int, gpus: int, offload: bool) -> int:
    """DeepSpeed's own printed figure where deepspeed imports, else the transcription above."""
    try:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold
    except ImportError:
        return zero3_estimate_transcribed(total_params, largest_layer_params, gpus, offload)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        estimate_zero3_model_states_mem_needs_all_cold(total_params=total_params,
                                                       largest_layer_params=largest_layer_params,
                                                       num_gpus_per_node=gpus, num_nodes=1)
    rows = re.findall(r"([\d.]+)GB \|\s*([\d.]+)GB \| offload_param=(\S+), offload_optimizer=(\S+), zero_init=1",
                      printed.getvalue())
    (gib,) = [gpu for _, gpu, param, optimizer in rows
              if (param != "none") == offload and (optimizer != "none") == offload]
    return int(float(gib) * 2**30)


@pytest.mark.parametrize("deepspeed", ["zero3", "zero3_offload"])
def test_8b_on_8_gpus_model_states_agree_with_deepspeeds_estimator(deepspeed):
    plan = plan_memory(LLAMA_8B, devices=8, deepspeed=deepspeed, dtype="bf16", micro_batch=1, max_length=2048)
    expected = zero3_estimate(plan.parameters_total, plan.largest_module, 8, offload=deepspeed == "zero3_offload")
    assert abs(plan.model_states - expected) <= 0.10 * expected, (plan.model_states, expected)
    if deepspeed == "zero3":
        assert round(plan.model_states / 2**30, 2) == 18.78  # what DeepSpeed 0.16.9 prints for this model


def test_the_transcription_is_deepspeeds_formula():
    stage3 = pytest.importorskip("deepspeed.runtime.zero.stage3")
    for total, largest, gpus in [(8_030_261_248, 525_336_576, 8), (134_515_008, 28_311_552, 2), (10**6, 10**5, 1)]:
        for offload in (False, True):
            _, gpu, _ = stage3.estimate_zero3_model_states_mem_needs(
                total_params=total, largest_layer_params=largest, num_gpus_per_node=gpus, num_nodes=1,
                cpu_offload=offload, cpu_offload_params=offload, zero_init=True)
            assert gpu == zero3_estimate_transcribed(total, largest, gpus, offload)


def test_zero2_model_states_are_deepspeeds_stage_2_count():
    """DeepSpeed's estimate_zero2_model_states_mem_needs: 2 bytes per parameter plus 18 over the GPUs."""
    plan = plan_memory(LLAMA_8B, devices=8, deepspeed="zero2")
    total = plan.parameters_total
    assert plan.model_states == 2 * total + 18 * total // 8
    offloaded = plan_memory(LLAMA_8B, devices=8, deepspeed="zero2_offload")
    assert offloaded.model_states == 2 * total and offloaded.host == 16 * total // 8


def test_stages_shrink_the_model_states_and_offload_moves_them_to_the_host():
    states = [plan_memory(LLAMA_8B, devices=8, deepspeed=ds).model_states
              for ds in (None, "zero1", "zero2", "zero3", "zero3_offload")]
    assert states == sorted(states, reverse=True) and len(set(states)) == len(states)
    ddp = plan_memory(LLAMA_8B, devices=8)
    assert ddp.model_states == 16 * ddp.parameters_total and ddp.host == 0  # fp32 weights, grads, Adam
    assert plan_memory(LLAMA_8B, devices=8, deepspeed="zero3_offload").host == 18 * ddp.parameters_total // 8


def test_lora_trains_only_the_adapters_and_qlora_shrinks_the_frozen_base():
    full = plan_memory(LLAMA_8B, devices=1, deepspeed="zero2")
    lora = plan_memory(LLAMA_8B, devices=1, deepspeed="zero2", lora_rank=16)
    qlora = plan_memory(LLAMA_8B, devices=1, deepspeed="zero2", lora_rank=16, qlora=True)
    adapters = lora_parameters(LlamaShape.from_config(LLAMA_8B), 16)
    assert lora.parameters_trained == qlora.parameters_trained == adapters
    assert lora.gradients == 6 * adapters and lora.optimizer == 12 * adapters
    assert lora.parameters == 2 * lora.parameters_total + 2 * adapters  # 16-bit frozen base + adapters
    assert qlora.parameters < lora.parameters / 2 < full.parameters
    assert lora.activations == full.activations  # backward still runs through every layer


# ---------------------------------------------------------------- activations

def saved_bytes(model: torch.nn.Module, sequences: int, length: int) -> int:
    """Bytes autograd keeps for backward in one policy forward and log-prob gather, weights excluded."""
    weights = {p.data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.data_ptr() not in weights:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    ids = torch.randint(0, model.config.vocab_size, (sequences, length))
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        logits = model(input_ids=ids, use_cache=False).logits
        logits.float().log_softmax(-1).gather(-1, ids.unsqueeze(-1))
    return sum(saved.values())


@pytest.mark.parametrize("dtype,word", [(torch.float32, 4), (torch.bfloat16, 2)])
def test_activations_are_what_autograd_saves_in_a_real_forward(dtype, word):
    shape = LlamaShape.from_config(TINY)
    measured = saved_bytes(tiny_llama(TINY, dtype), 4, 48)
    assert abs(activation_bytes(shape, 4, 48, word, checkpointing=False) - measured) <= 0.10 * measured
    # Checkpointing: the forward keeps each layer's input; backward recomputes one layer at a time.
    model = tiny_llama(TINY, dtype)
    model.gradient_checkpointing_enable()
    one_layer = (saved_bytes(tiny_llama({**TINY, "num_hidden_layers": 2}, dtype), 4, 48)
                 - saved_bytes(tiny_llama({**TINY, "num_hidden_layers": 1}, dtype), 4, 48))
    peak = saved_bytes(model, 4, 48) + one_layer
    assert abs(activation_bytes(shape, 4, 48, word, checkpointing=True) - peak) <= 0.10 * peak


def test_dpo_runs_two_sequences_per_pair_and_activations_scale_with_tokens():
    one = plan_memory(LLAMA_8B, micro_batch=1, max_length=1024, deepspeed="zero3", devices=8)
    assert one.activations == activation_bytes(LlamaShape.from_config(LLAMA_8B), 2, 1024, 2, True)
    assert plan_memory(LLAMA_8B, micro_batch=2, max_length=1024, deepspeed="zero3", devices=8).activations \
        == 2 * one.activations == plan_memory(LLAMA_8B, micro_batch=1, max_length=2048, deepspeed="zero3",
                                              devices=8).activations
    off = plan_memory(LLAMA_8B, micro_batch=1, max_length=1024, deepspeed="zero3", devices=8, checkpointing=False)
    assert off.activations > 3 * one.activations and off.model_states == one.model_states


# ---------------------------------------------------------------- table and bad input

def test_the_table_names_every_figure_in_gib():
    text = render_plan(plan_memory(LLAMA_8B, devices=8, deepspeed="zero3_offload", lora_rank=8))
    lines = text.splitlines()
    assert lines[0].startswith("memory plan per device: 8 devices, zero3_offload, bf16, micro-batch 1 pair "
                               "(2 sequences) x 2048 tokens, checkpointing on, LoRA rank 8")
    for name in ("parameters", "gradients", "optimizer states", "model states", "activations", "total",
                 "host (offload)"):
        assert any(line.strip().startswith(name) and "GiB" in line for line in lines), name
    assert "8,030,261,248 parameters" in text and len(lines) <= 10


@pytest.mark.parametrize("change,needle", [
    ({"config": {**TINY, "hidden_size": 0}}, "config.json: 'hidden_size' must be a positive integer, not 0"),
    ({"config": {k: v for k, v in TINY.items() if k != "vocab_size"}}, "'vocab_size' must be a positive integer"),
    ({"deepspeed": "zero4"}, "--deepspeed zero4: expected one of zero1, zero2, zero2_offload, zero3, zero3_offload"),
    ({"dtype": "int8"}, "dtype int8: expected one of bf16, fp16, fp32"),
    ({"devices": 0}, "devices 0: must be at least 1"),
    ({"qlora": True}, "QLoRA trains adapters on a 4-bit base: give a LoRA rank"),
])
def test_bad_settings_are_one_clear_error(change, needle):
    settings = {"config": TINY, **change}
    with pytest.raises(MaskDPOError, match=re.escape(needle)):
        plan_memory(settings.pop("config"), **settings)
