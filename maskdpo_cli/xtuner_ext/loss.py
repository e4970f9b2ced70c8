"""The Mask-DPO objective (paper Eq. 5-6) as plain torch functions.

DPO compares, for the chosen response y_w and the rejected y_l of one prompt x,

    loss = -log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))])

Mask-DPO keeps the formula and changes only which tokens enter each log-probability sum:
the `loss_mask` of a response (built by `maskdpo_cli.masking`) leaves out the hallucinated
sentences of the chosen response and the hallucination-free sentences of the rejected one.
With a mask that holds every response token this is exactly vanilla DPO, so `--no-mask`
runs through the very same functions.

Everything here works on the positions that are in the loss only: the label's logit minus
the logsumexp of its row, gathered at the selected positions. No log-softmax over the full
(batch, length, vocabulary) tensor is ever materialised, and masked tokens never reach the
arithmetic, so their gradient is exactly zero rather than "multiplied by zero".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


def loss_positions(loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the logits that predict a token in the loss.

    `loss_mask[n, t]` says token t of sequence n is in the loss; the logits at position
    t - 1 predict it, so the mask is shifted left by one.
    """
    return loss_mask[:, 1:].nonzero(as_tuple=True)


def label_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) for each row of `logits` (M, V): label logit - logsumexp(row), at least in fp32."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # a half-precision logsumexp over 50k+ entries loses the signal
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def sum_by_sequence(token_logps: torch.Tensor, rows: torch.Tensor, num_sequences: int) -> torch.Tensor:
    """Per-sequence sums of token log-probs scattered by their row index."""
    out = torch.zeros(num_sequences, dtype=token_logps.dtype, device=token_logps.device)
    return out.index_add(0, rows, token_logps)


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Sum over the tokens in the loss of log p(token | prefix), one value per sequence.

    logits: (N, T, V), position t predicting token t + 1; input_ids, loss_mask: (N, T).
    """
    rows, cols = loss_positions(loss_mask)
    token_logps = label_logps(logits[rows, cols], input_ids[rows, cols + 1])
    return sum_by_sequence(token_logps, rows, input_ids.shape[0])


@dataclass
class DPOOutput:
    """Per-pair loss and the quantities the progress line shows (rewards are beta * log-ratios)."""

    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards

    def metrics(self) -> dict[str, torch.Tensor]:
        """Batch means. Names without 'loss' in them: mmengine sums every key containing 'loss'."""
        return {
            "loss": self.loss.mean(),
            "reward_acc": (self.chosen_rewards > self.rejected_rewards).float().mean().detach(),
            "reward_margin": self.margins.mean().detach(),
            "chosen_rewards": self.chosen_rewards.mean().detach(),
            "rejected_rewards": self.rejected_rewards.mean().detach(),
        }


def dpo_sigmoid_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                     ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
                     beta: float = 0.1, label_smoothing: float = 0.0) -> DPOOutput:
    """The sigmoid DPO loss of each pair from its four summed log-probabilities (Eq. 6).

    `label_smoothing` > 0 gives the conservative DPO variant (as in TRL and XTuner); 0 is
    the paper's loss.
    """
    chosen_logratio = policy_chosen - ref_chosen.to(policy_chosen)
    rejected_logratio = policy_rejected - ref_rejected.to(policy_rejected)
    logits = beta * (chosen_logratio - rejected_logratio)
    loss = -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing
    return DPOOutput(loss=loss,
                     chosen_rewards=beta * chosen_logratio.detach(),
                     rejected_rewards=beta * rejected_logratio.detach())


class ChunkedLabelLogps(torch.autograd.Function):
    """log p(label) from hidden states and the output embedding, `chunk` rows at a time.

    Equal to `label_logps(hidden @ weight.T, labels)`, but the (rows, vocabulary) logits
    exist one chunk at a time, in forward and again (recomputed) in backward, instead of
    as a full tensor plus its softmax and gradient (three 300 MB buffers for a batch of
    eight pairs and a 49k vocabulary). Costs one extra head matmul; saves most of the
    peak memory of a step. For fp32 weights on the CPU; other devices use the plain path.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                chunk: int) -> torch.Tensor:
        out = torch.empty(hidden.shape[0], dtype=torch.promote_types(hidden.dtype, torch.float32),
                          device=hidden.device)
        lse = torch.empty_like(out)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = hidden[rows] @ weight.t()
            lse[rows] = torch.logsumexp(logits, dim=-1)
            out[rows] = logits.gather(1, labels[rows, None]).squeeze(1) - lse[rows]
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, labels, lse = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            g = grad_out[rows].to(lse.dtype)
            # d(logit_label - logsumexp)/d logits = onehot(label) - softmax, scaled by g.
            grad_logits = (hidden[rows] @ weight.t()).sub_(lse[rows, None]).exp_().mul_(-g[:, None])
            grad_logits[torch.arange(grad_logits.shape[0], device=g.device), labels[rows]] += g
            if grad_hidden is not None:
                torch.mm(grad_logits, weight, out=grad_hidden[rows])
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.t(), hidden[rows])
        return grad_hidden, grad_weight, None, None


def chunked_label_logps(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                        chunk: int = 128) -> torch.Tensor:
    return ChunkedLabelLogps.apply(hidden, weight, labels, chunk)
