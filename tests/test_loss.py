"""The Mask-DPO loss: exact zero gradients on masked tokens, vanilla DPO without masks, and
agreement with an independent, deliberately naive implementation of the paper's Eq. 5-6.
"""

from __future__ import annotations

import math

import pytest
import torch

from maskdpo_cli.xtuner_ext.collate import mask_dpo_collate_fn
from maskdpo_cli.xtuner_ext.loss import dpo_sigmoid_loss, sequence_logps

BETA = 0.1


# ----------------------------------------------------------------------------- the reference

def naive_logp_sum(logits: torch.Tensor, ids: list[int], mask: list[bool]) -> torch.Tensor:
    """Eq. 5: sum over kept tokens t of log pi(y_t | x, y_<t), one full log-softmax per position."""
    total = torch.zeros((), dtype=torch.float64)
    for t in range(1, len(ids)):
        if mask[t]:
            total = total + torch.log_softmax(logits[t - 1].double(), dim=-1)[ids[t]]
    return total


def naive_mask_dpo(pol_c, pol_r, ref_c, ref_r, beta: float = BETA) -> torch.Tensor:
    """Eq. 6: -log sigmoid(beta * (chosen log-ratio - rejected log-ratio))."""
    z = beta * ((pol_c - ref_c) - (pol_r - ref_r))
    return -torch.log(torch.sigmoid(z))


# ----------------------------------------------------------------------------- fixtures

def random_batch(seed: int = 0, n_pairs: int = 3, vocab: int = 50, length: int = 12):
    """Pairs with a prompt (never in the loss), kept and masked response tokens, and padding."""
    gen = torch.Generator().manual_seed(seed)
    instances = []
    for i in range(n_pairs):
        item = {"index": i}
        for side in ("chosen", "rejected"):
            n = int(torch.randint(6, length + 1, (1,), generator=gen))
            ids = torch.randint(0, vocab, (n,), generator=gen).tolist()
            ids[2] = 0  # token id 0 in the loss: XTuner's DPO would silently drop it
            mask = [False, False] + (torch.rand(n - 2, generator=gen) > 0.35).tolist()
            mask[2] = True
            item[f"{side}_ids"], item[f"{side}_mask"] = ids, mask
        instances.append(item)
    return instances, mask_dpo_collate_fn(instances)["data"]


def batch_loss(logits, data, ref_logps):
    logps = sequence_logps(logits, data["input_ids"], data["loss_mask"])
    half = logps.shape[0] // 2
    return dpo_sigmoid_loss(logps[:half], logps[half:], ref_logps[:, 0], ref_logps[:, 1], beta=BETA)


# ----------------------------------------------------------------------------- tests

def test_gradient_of_masked_tokens_is_exactly_zero():
    instances, data = random_batch()
    n, t = data["input_ids"].shape
    logits = torch.randn(n, t, 50, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(len(instances), 2, dtype=torch.float64)
    batch_loss(logits, data, ref).loss.sum().backward()

    predicts_loss_token = torch.zeros(n, t, dtype=torch.bool)
    predicts_loss_token[:, :-1] = data["loss_mask"][:, 1:]
    grad_norm = logits.grad.abs().sum(-1)
    # Positions predicting masked tokens, prompt tokens or padding: exactly zero, not tiny.
    assert torch.equal(grad_norm[~predicts_loss_token], torch.zeros_like(grad_norm[~predicts_loss_token]))
    assert (grad_norm[predicts_loss_token] > 0).all()


def test_loss_equals_naive_eq5_eq6():
    instances, data = random_batch(seed=1)
    n, t = data["input_ids"].shape
    logits = torch.randn(n, t, 50, dtype=torch.float64)
    ref = torch.randn(len(instances), 2, dtype=torch.float64)
    got = batch_loss(logits, data, ref)

    b = len(instances)
    for i, ins in enumerate(instances):
        pol_c = naive_logp_sum(logits[i], ins["chosen_ids"], ins["chosen_mask"])
        pol_r = naive_logp_sum(logits[b + i], ins["rejected_ids"], ins["rejected_mask"])
        want = naive_mask_dpo(pol_c, pol_r, ref[i, 0], ref[i, 1])
        assert got.loss[i].item() == pytest.approx(want.item(), abs=1e-10)
        assert got.chosen_rewards[i].item() == pytest.approx(BETA * (pol_c - ref[i, 0]).item(), abs=1e-10)


def test_fp32_logits_are_upcast_and_match():
    instances, data = random_batch(seed=2)
    n, t = data["input_ids"].shape
    logits = torch.randn(n, t, 50) * 5
    ref = torch.zeros(len(instances), 2)
    got = batch_loss(logits, data, ref).loss
    want = batch_loss(logits.double(), data, ref.double()).loss
    assert torch.allclose(got.double(), want, atol=1e-5)


def test_without_masked_sentences_it_is_vanilla_dpo():
    """A mask holding every response token is DPO: same numbers as the naive DPO over the response."""
    instances, data = random_batch(seed=3)
    for ins in instances:  # keep the prompt out, everything else in: "no masked sentence"
        for side in ("chosen", "rejected"):
            ins[f"{side}_mask"] = [False, False] + [True] * (len(ins[f"{side}_ids"]) - 2)
    data = mask_dpo_collate_fn(instances)["data"]
    n, t = data["input_ids"].shape
    logits = torch.randn(n, t, 50, dtype=torch.float64)
    ref = torch.randn(len(instances), 2, dtype=torch.float64)
    got = batch_loss(logits, data, ref).loss

    b = len(instances)
    for i, ins in enumerate(instances):
        lp = torch.log_softmax(logits, -1)
        ids_c, ids_r = ins["chosen_ids"], ins["rejected_ids"]
        pol_c = sum(lp[i, k - 1, ids_c[k]] for k in range(2, len(ids_c)))
        pol_r = sum(lp[b + i, k - 1, ids_r[k]] for k in range(2, len(ids_r)))
        vanilla = -torch.nn.functional.logsigmoid(BETA * ((pol_c - ref[i, 0]) - (pol_r - ref[i, 1])))
        assert got[i].item() == pytest.approx(vanilla.item(), abs=1e-10)


def test_at_the_reference_the_loss_is_log2():
    instances, data = random_batch(seed=4)
    n, t = data["input_ids"].shape
    logits = torch.randn(n, t, 50, dtype=torch.float64)
    logps = sequence_logps(logits, data["input_ids"], data["loss_mask"])
    ref = torch.stack([logps[:len(instances)], logps[len(instances):]], dim=1)
    out = batch_loss(logits, data, ref)
    assert torch.allclose(out.loss, torch.full_like(out.loss, math.log(2)))
    assert out.metrics()["reward_acc"].item() == 0.0


# ----------------------------------------------------------------------------- the XTuner model

@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def test_maskdpo_model_matches_full_logits_and_naive_loss(tiny_llama):
    """MaskDPO's fast path (decoder + head at the loss positions only, no labels in the
    forward) gives the naive Eq. 5-6 loss computed from the model's full logits."""
    from maskdpo_cli.xtuner_ext.model import MaskDPO
    from transformers import AutoModelForCausalLM

    model = MaskDPO(llm=dict(type=AutoModelForCausalLM.from_pretrained,
                             pretrained_model_name_or_path=str(tiny_llama), torch_dtype=torch.float32),
                    beta=BETA)
    assert model._plain_head()
    model.eval()  # no dropout either way; eval keeps the comparison deterministic
    instances, data = random_batch(seed=5, vocab=300)
    ref = torch.randn(len(instances), 2, dtype=torch.float64)
    model.set_reference_logps(ref)
    got = model.compute_loss(dict(data))

    with torch.no_grad():
        logits = model.llm(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    b = len(instances)
    want = []
    for i, ins in enumerate(instances):
        pol_c = naive_logp_sum(logits[i], ins["chosen_ids"], ins["chosen_mask"])
        pol_r = naive_logp_sum(logits[b + i], ins["rejected_ids"], ins["rejected_mask"])
        want.append(naive_mask_dpo(pol_c, pol_r, ref[i, 0], ref[i, 1]))
    assert got["loss"].item() == pytest.approx(torch.stack(want).mean().item(), abs=1e-5)

    # The reference pass with the same weights gives a log-ratio of 0, i.e. loss log 2.
    model.set_reference_logps(model.reference_pass(dict(data)))
    assert model.compute_loss(dict(data))["loss"].item() == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.slow  # gradcheck over 1,016 inputs, 35 s of CPU alone (the chunked head's step stays fast)
def test_chunked_head_gradients_are_exact():
    from maskdpo_cli.xtuner_ext.loss import chunked_label_logps, label_logps

    gen = torch.Generator().manual_seed(6)
    hidden = torch.randn(37, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(90, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    labels = torch.randint(0, 90, (37,), generator=gen)
    assert torch.autograd.gradcheck(lambda h, w: chunked_label_logps(h, w, labels, 5), (hidden, weight))
    upstream = torch.randn(37, dtype=torch.float64, generator=gen)
    plain = torch.autograd.grad((label_logps(hidden @ weight.t(), labels) * upstream).sum(), (hidden, weight))
    chunked = torch.autograd.grad((chunked_label_logps(hidden, weight, labels, 5) * upstream).sum(), (hidden, weight))
    for a, b in zip(plain, chunked):
        assert torch.allclose(a, b, atol=1e-12)


def test_maskdpo_chunked_and_plain_head_give_the_same_step(tiny_llama):
    from transformers import AutoModelForCausalLM

    from maskdpo_cli.xtuner_ext.model import MaskDPO

    instances, data = random_batch(seed=7, vocab=300)
    ref = torch.randn(len(instances), 2, dtype=torch.float64)
    grads = []
    for chunk in (0, 7):
        model = MaskDPO(llm=dict(type=AutoModelForCausalLM.from_pretrained,
                                 pretrained_model_name_or_path=str(tiny_llama)), beta=BETA, head_chunk_rows=chunk)
        model.set_reference_logps(ref)
        head = model.llm.get_output_embeddings()
        assert model._chunked_head(torch.zeros(1, 32), head) == bool(chunk)
        model.compute_loss(dict(data))["loss"].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
