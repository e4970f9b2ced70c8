"""`MaskDPO`: the model a recipe names as `model = dict(type=MaskDPO, llm=..., beta=...)`.

It is an XTuner `SupervisedFinetune` (so XTuner builds, dispatches and checkpoints the
policy as usual) whose loss is Mask-DPO instead of cross-entropy. It differs from
XTuner's own `DPO` where that one is slow or wrong for us:

- no reference model: the reference log-probabilities are computed once, before the
  first step, by `ReferenceLogpHook` with the initial policy weights, cached in the work
  dir and handed to the model as a (num_pairs, 2) table looked up by pair index;
- the loss mask is an explicit boolean tensor from the collate function, never derived
  from label values (XTuner's DPO treats label 0 as "ignore", i.e. token id 0);
- no labels go into the HF forward (that would compute an unused cross-entropy over the
  vocabulary), and the vocabulary projection runs only at the positions in the loss
  (on the CPU, a chunk of positions at a time: the full logits never exist).

With `lora=dict(type="peft.LoraConfig", ...)` (`--lora R`) the LLM is a peft model: a
frozen base and a trainable adapter (`xtuner_ext.lora`); XTuner's state_dict then holds
the adapter only, so checkpoints do too.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.integrations import is_deepspeed_zero3_enabled
from xtuner.model.sft import SupervisedFinetune

from maskdpo_cli.xtuner_ext.compat import apply_cpu_shims, tune_cpu_training
from maskdpo_cli.xtuner_ext.loss import (chunked_label_logps, dpo_sigmoid_loss, label_logps, loss_positions,
                                        sum_by_sequence)

# Causal LMs whose logits are exactly `lm_head(last hidden state)`: for these the head runs
# on the loss positions only. Others (logit soft-capping, logit scales) take the full path.
_PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen2_moe", "qwen3", "internlm2",
                                     "internlm3", "phi3", "gemma", "mixtral", "starcoder2"})


def _resolve_llm_path(llm: Any) -> Any:
    """Let recipes name the embedded alias: XTuner reads the llm config from a real path
    (and by attribute, so a plain dict becomes a ConfigDict)."""
    if isinstance(llm, dict) and "pretrained_model_name_or_path" in llm:
        from mmengine.config import ConfigDict

        from maskdpo_cli.models import ALIASES, resolve_model

        llm = llm if isinstance(llm, ConfigDict) else ConfigDict(llm)
        if llm["pretrained_model_name_or_path"] in ALIASES:
            llm["pretrained_model_name_or_path"] = str(resolve_model(llm["pretrained_model_name_or_path"]))
    return llm


class MaskDPO(SupervisedFinetune):
    """Mask-DPO (sigmoid loss) over an explicit per-token loss mask and cached reference log-probs."""

    def __init__(self, llm: Any, beta: float = 0.1, label_smoothing: float = 0.0,
                 use_activation_checkpointing: bool = False, head_chunk_rows: int | None = None,
                 **kwargs: Any) -> None:
        apply_cpu_shims()
        tune_cpu_training()
        if kwargs.get("use_varlen_attn"):
            raise ValueError("MaskDPO does not support use_varlen_attn (packed sequences)")
        super().__init__(_resolve_llm_path(llm), use_activation_checkpointing=use_activation_checkpointing,
                         **kwargs)
        self.beta = beta
        self.label_smoothing = label_smoothing
        # Loss positions per chunk of the vocabulary projection on the CPU; None: as many as
        # fit 32 MiB of fp32 logits (reusable heap memory, see compat.keep_large_buffers);
        # 0: the whole projection at once.
        self.head_chunk_rows = head_chunk_rows
        # A plain attribute, not a buffer: it is data, rebuilt from the cache on resume,
        # and must stay out of checkpoints and the exported model.
        self.reference_logps: torch.Tensor | None = None

    def _prepare_for_lora(self, peft_model: Any = None, use_activation_checkpointing: bool = True) -> None:
        """XTuner's LoRA wrapping, without casting a bf16 base to fp32 and without
        bitsandbytes unless the base is quantized (see `xtuner_ext.lora.wrap_in_lora`)."""
        from mmengine.runner import load_checkpoint

        from maskdpo_cli.xtuner_ext.lora import wrap_in_lora

        self.llm = wrap_in_lora(self.llm, self.lora, use_activation_checkpointing)
        if peft_model is not None:
            load_checkpoint(self, peft_model)

    def set_reference_logps(self, table: torch.Tensor) -> None:
        """(num_pairs, 2) reference log-prob sums, [chosen, rejected], indexed by dataset index."""
        self.reference_logps = table.detach().to("cpu", torch.float64)

    # -- log-probabilities -------------------------------------------------------------

    def _plain_head(self) -> bool:
        config = getattr(self.llm, "config", None)
        return (getattr(config, "model_type", None) in _PLAIN_HEAD_MODEL_TYPES
                and getattr(config, "final_logit_softcapping", None) is None
                and hasattr(self.llm, "get_decoder") and self.llm.get_output_embeddings() is not None)

    def sequence_logps(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed log-probs of the loss tokens of every sequence in the batch, shape (N,)."""
        input_ids, attention_mask, loss_mask = data["input_ids"], data["attention_mask"], data["loss_mask"]
        rows, cols = loss_positions(loss_mask)
        labels = input_ids[rows, cols + 1]
        if not self._plain_head():
            logits = self.llm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[rows, cols]
            return sum_by_sequence(label_logps(logits, labels), rows, input_ids.shape[0])
        hidden = self.llm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                        use_cache=False).last_hidden_state[rows, cols]
        head = self.llm.get_output_embeddings()
        if self._chunked_head(hidden, head):
            rows_per_chunk = self.head_chunk_rows or max(16, (32 << 20) // (4 * head.weight.shape[0]))
            token_logps = chunked_label_logps(hidden, head.weight, labels, rows_per_chunk)
        else:
            token_logps = label_logps(head(hidden), labels)
        return sum_by_sequence(token_logps, rows, input_ids.shape[0])

    def _chunked_head(self, hidden: torch.Tensor, head: torch.nn.Module) -> bool:
        """The chunked head computes what the head module would, from its weight directly:
        only where nothing hooks that module (DeepSpeed ZeRO-3 gathers the weight on call)
        and nothing casts it (autocast): a plain fp32 linear layer on the CPU."""
        return (self.head_chunk_rows != 0 and hidden.device.type == "cpu" and not is_deepspeed_zero3_enabled()
                and type(head) is torch.nn.Linear and head.bias is None
                and head.weight.dtype == hidden.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu"))

    @torch.no_grad()
    def reference_pass(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 2) [chosen, rejected] log-prob sums with the current weights, without gradients."""
        logps = self.sequence_logps(data)
        half = logps.shape[0] // 2
        return torch.stack([logps[:half], logps[half:]], dim=1)

    # -- the loss ------------------------------------------------------------------------

    def compute_loss(self, data: dict[str, torch.Tensor], data_samples: Any = None) -> dict[str, torch.Tensor]:
        if self.reference_logps is None:
            raise RuntimeError("MaskDPO has no reference log-probabilities: the recipe must list "
                               "ReferenceLogpHook in custom_hooks")
        # One policy forward over chosen and rejected together: the collate function puts
        # the B chosen sequences first and the B rejected after them.
        logps = self.sequence_logps(data)
        half = logps.shape[0] // 2
        ref = self.reference_logps[data["pair_index"].cpu()].to(logps.device, logps.dtype)
        out = dpo_sigmoid_loss(logps[:half], logps[half:], ref[:, 0], ref[:, 1],
                               beta=self.beta, label_smoothing=self.label_smoothing)
        return out.metrics()

    def predict(self, data: dict[str, torch.Tensor], data_samples: Any = None) -> list[dict[str, torch.Tensor]]:
        outputs = self.llm(input_ids=data["input_ids"], attention_mask=data["attention_mask"])
        return [{"logits": logits} for logits in outputs.logits]
