"""Distillation losses (reasondistill/train/losses/) against float64 brute force over the full vocabulary.

The references below build the full teacher and student distributions, collapse them onto the buckets
by summing probabilities outside the top-k, and count tokens with Python loops: none of them goes
through the implementation's bucket, divergence or denominator code.
"""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reasondistill.core.traces import decode_logprobs, encode_logprobs
from reasondistill.train.losses import (
    DIVERGENCE_KINDS,
    LossSettings,
    distillation_loss,
    distillation_loss_from_logits,
    divergence,
    student_buckets,
    teacher_buckets,
)

REPO = Path(__file__).resolve().parents[2]
D = torch.float64
SMALL_FLOOR = 1e-12  # where k = V (empty tail), so the floor's share stays below the tolerances


def case(n=9, v=50, k=5, seed=0, gen_temperature=1.0, teacher_scale=3.0):
    """Teacher logits [n, v], student logits [n, v] (leaf, float64), stored top-k ids / logprobs [n, k]."""
    g = torch.Generator().manual_seed(seed)
    teacher = teacher_scale * torch.randn(n, v, generator=g, dtype=D)
    student = (2.0 * torch.randn(n, v, generator=g, dtype=D)).requires_grad_()
    logprobs, ids = torch.log_softmax(teacher / gen_temperature, dim=-1).topk(k, dim=-1)  # sorted descending
    return teacher, student, ids, logprobs


def ref_kl(a, b):
    """KL(a || b) of probability vectors."""
    return (a * (a.log() - b.log())).sum()


def ref_divergence(p, q, kind, beta=0.5, alpha=0.1):
    """The documented definitions on probability vectors p (teacher), q (student)."""
    if kind == "forward_kl" or (kind == "jsd" and beta == 0):
        return ref_kl(p, q)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1):
        return ref_kl(q, p)
    if kind == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * ref_kl(p, m) + (1 - beta) * ref_kl(q, m)
    if kind == "skew_forward_kl":
        return ref_kl(p, alpha * p + (1 - alpha) * q)
    return ref_kl(q, alpha * q + (1 - alpha) * p)


def collapse(probs, ids, tail):
    """Full distribution [V] -> buckets: probs[ids] (+ brute-force sum over the others), or renormalised."""
    outside = torch.ones_like(probs, dtype=torch.bool)
    outside[ids] = False
    top = probs[ids]
    return torch.cat([top, probs[outside].sum()[None]]) if tail else top / top.sum()


# ---------------------------------------------------------------- k = V: the exact full-vocabulary KL


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl"])
@pytest.mark.parametrize("tail", [True, False])
@pytest.mark.parametrize(("gen_temperature", "temperature"), [(1.0, 1.0), (1.0, 2.0), (0.5, 1.5)])
def test_k_equals_vocab_is_the_full_kl(kind, tail, gen_temperature, temperature):
    teacher, student, ids, logprobs = case(v=30, k=30, gen_temperature=gen_temperature)
    loss = distillation_loss_from_logits(
        student,
        torch.zeros(len(ids), dtype=torch.long),
        ids,
        logprobs,
        settings=LossSettings(
            divergence_kind=kind,
            temperature=temperature,
            gen_temperature=gen_temperature,
            tail=tail,
            tail_floor=SMALL_FLOOR,
        ),
    )
    log_p = torch.log_softmax(teacher / temperature, dim=-1)  # re-tempering is exact with the whole vocab
    log_q = torch.log_softmax(student / temperature, dim=-1)
    pair = (log_q, log_p) if kind == "forward_kl" else (log_p, log_q)  # F.kl_div(x, y) = KL(y || x)
    per_token = F.kl_div(*pair, reduction="none", log_target=True).sum(-1)
    expected = temperature**2 * per_token.sum() / 9
    torch.testing.assert_close(loss.kd, expected, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(loss.total, loss.kd)
    (grad,) = torch.autograd.grad(loss.total, student)
    (expected_grad,) = torch.autograd.grad(expected, student)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-10)


def test_k_equals_vocab_default_floor_costs_at_most_the_floor():
    teacher, student, ids, logprobs = case(v=30, k=30)
    loss = distillation_loss_from_logits(student, torch.zeros(9, dtype=torch.long), ids, logprobs)
    log_p, log_q = torch.log_softmax(teacher, -1), torch.log_softmax(student, -1)
    expected = F.kl_div(log_q, log_p, reduction="sum", log_target=True) / 9
    assert abs(loss.kd.item() - expected.item()) < 1e-5 * (1 + expected.item())


# ------------------------------------------------------- k < V: the exact (k+1)-bucket divergences


@pytest.mark.parametrize("kind", DIVERGENCE_KINDS)
@pytest.mark.parametrize("tail", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_topk_buckets_match_brute_force(kind, tail, temperature):
    # Stored logprobs at T_gen = T, so the teacher's buckets are exact: only the pieces are under test.
    teacher, student, ids, logprobs = case(gen_temperature=temperature)
    labels = torch.tensor([3, -100, 1, 4, 4, -100, 0, 2, 7])
    beta, alpha = 0.3, 0.2
    loss = distillation_loss_from_logits(
        student,
        labels,
        ids,
        logprobs,
        settings=LossSettings(
            divergence_kind=kind,
            beta=beta,
            alpha=alpha,
            temperature=temperature,
            gen_temperature=temperature,
            tail=tail,
        ),
    )
    big_p = torch.softmax(teacher / temperature, dim=-1)
    big_q = torch.softmax(student / temperature, dim=-1)
    terms, count = [], 0
    for t in range(len(labels)):
        if labels[t] != -100:
            count += 1
            p, q = collapse(big_p[t], ids[t], tail), collapse(big_q[t], ids[t], tail)
            terms.append(ref_divergence(p, q, kind, beta, alpha))
    expected = temperature**2 * sum(terms) / count
    torch.testing.assert_close(loss.kd, expected, rtol=1e-9, atol=1e-12)
    (grad,) = torch.autograd.grad(loss.total, student)
    (expected_grad,) = torch.autograd.grad(expected, student)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-12)


def test_retempered_tail_follows_the_documented_pseudo_token_rule():
    # T_gen = 1, T = 2: teacher buckets p_b proportional to P_b ** (1/2), P_tail the brute-force tail mass.
    teacher, student, ids, logprobs = case()
    loss = distillation_loss_from_logits(
        student,
        torch.zeros(9, dtype=torch.long),
        ids,
        logprobs,
        settings=LossSettings(temperature=2.0, gen_temperature=1.0),
    )
    big_p, big_q = torch.softmax(teacher, -1), torch.softmax(student / 2.0, -1)
    terms = []
    for t in range(9):
        p = collapse(big_p[t], ids[t], tail=True).sqrt()
        terms.append(ref_kl(p / p.sum(), collapse(big_q[t], ids[t], tail=True)))
    torch.testing.assert_close(loss.kd, 4.0 * sum(terms) / 9, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- TRL's generalized JSD


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_jsd_equals_trl_generalized_jsd_loss(beta, temperature):
    gkd_trainer = pytest.importorskip("trl.experimental.gkd.gkd_trainer")
    teacher, student, ids, logprobs = case(n=8, v=24, k=24)
    labels = torch.tensor([[5, 2, -100, 1], [-100, -100, 3, 0]])
    shape = (2, 4)
    trl = gkd_trainer.GKDTrainer.generalized_jsd_loss(
        student.reshape(*shape, -1),
        teacher.reshape(*shape, -1),
        labels=labels,
        beta=beta,
        temperature=temperature,
    )  # sum over unmasked tokens and vocab / #unmasked tokens; temperature divides both logits, no T^2
    ours = distillation_loss_from_logits(
        student.reshape(*shape, -1),
        labels,
        ids.reshape(*shape, -1),
        logprobs.reshape(*shape, -1),
        settings=LossSettings(
            divergence_kind="jsd", beta=beta, temperature=temperature, tail_floor=SMALL_FLOOR
        ),
    )
    torch.testing.assert_close(ours.kd / temperature**2, trl, rtol=1e-9, atol=1e-10)
    (grad,) = torch.autograd.grad(ours.kd / temperature**2, student)
    (trl_grad,) = torch.autograd.grad(trl, student)
    torch.testing.assert_close(grad, trl_grad, rtol=1e-7, atol=1e-10)


def test_jsd_endpoints_follow_trl_beta_direction():
    _, student, ids, logprobs = case()
    p = teacher_buckets(logprobs)
    q = student_buckets(student, ids)
    torch.testing.assert_close(divergence(p, q, "jsd", beta=0.0), divergence(p, q, "forward_kl"))
    torch.testing.assert_close(divergence(p, q, "jsd", beta=1.0), divergence(p, q, "reverse_kl"))
    torch.testing.assert_close(divergence(p, q, "skew_forward_kl", alpha=0.0), divergence(p, q, "forward_kl"))
    torch.testing.assert_close(divergence(p, q, "skew_reverse_kl", alpha=0.0), divergence(p, q, "reverse_kl"))


# -------------------------------------------------------------------------------- re-tempering


@pytest.mark.parametrize("tail", [True, False])
def test_retempering_is_exact_on_the_topk_set(tail):
    teacher, _, ids, logprobs = case()
    p = teacher_buckets(logprobs, gen_temperature=1.0, temperature=2.0, tail=tail)  # [N, K(+1)]
    assert p.shape == (9, 6 if tail else 5)
    torch.testing.assert_close(p.exp().sum(-1), torch.ones(9, dtype=D))
    for i in range(5):
        for j in range(5):
            torch.testing.assert_close(p[:, i] - p[:, j], (logprobs[:, i] - logprobs[:, j]) / 2)


def test_same_temperature_keeps_stored_values_and_exact_tail():
    teacher, _, ids, logprobs = case()
    for temperature in (1.0, 0.7):
        stored = torch.log_softmax(teacher / temperature, -1).gather(-1, ids)
        p = teacher_buckets(stored, gen_temperature=temperature, temperature=temperature)
        big_p = torch.softmax(teacher / temperature, -1)
        exact_tail = torch.stack([collapse(big_p[t], ids[t], tail=True)[-1] for t in range(9)])
        torch.testing.assert_close(p[:, :5], stored, rtol=0, atol=1e-13)
        torch.testing.assert_close(p[:, 5], exact_tail.log(), rtol=0, atol=1e-12)


def test_quantised_logprobs_summing_above_one_give_the_floor_not_nan():
    # A confident teacher row: codes round the top logprob to 0, so the decoded top-k sums above 1.
    lp = np.array([[-1e-5, -12.0, -13.0, -15.0], [-0.6931, -0.6931, -30.0, -np.inf]])
    decoded = torch.from_numpy(decode_logprobs(encode_logprobs(lp)))  # float32, as the trainer reads it
    assert decoded[0].exp().sum() > 1
    p = teacher_buckets(decoded)
    assert torch.isfinite(p[:, -1]).all() and not p.isnan().any()
    torch.testing.assert_close(p.exp().sum(-1), torch.ones(2))
    assert p[0, -1].exp() == pytest.approx(1e-6, rel=1e-3)
    student = torch.randn(2, 40, requires_grad=True)
    ids = torch.tensor([[3, 1, 2, 0], [5, 6, 7, 5]])
    loss = distillation_loss_from_logits(
        student, torch.tensor([1, 5]), ids, decoded, settings=LossSettings(divergence_kind="reverse_kl")
    )
    loss.total.backward()
    assert torch.isfinite(loss.total) and torch.isfinite(student.grad).all()


def test_student_tail_is_accurate_in_float32_when_the_topk_holds_almost_all_mass():
    # Tail ~2e-11: 1 - sum(q_topk) is pure rounding in float32; the masked logsumexp is not.
    logits = torch.zeros(2, 1000)
    logits[:, :5] = torch.tensor([[30.0, 29.0, 28.5, 28.0, 27.0], [12.0, 11.0, 10.0, 9.0, 8.0]])
    ids = torch.arange(5).expand(2, 5)
    q = student_buckets(logits, ids, tail_floor=1e-30)
    exact = torch.stack([collapse(torch.softmax(row.double(), -1), ids[0], tail=True)[-1] for row in logits])
    assert exact[0] < 1e-10
    torch.testing.assert_close(q[:, -1].double(), exact.log(), rtol=1e-6, atol=0)


# ------------------------------------------------------------------------- degenerate inputs


@pytest.mark.parametrize("kind", DIVERGENCE_KINDS)
@pytest.mark.parametrize("tail", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_identical_teacher_and_student_give_zero(kind, tail, temperature):
    _, student, _, _ = case()
    logprobs, ids = torch.log_softmax(student.detach() / temperature, -1).topk(5, dim=-1)
    loss = distillation_loss_from_logits(
        student,
        torch.zeros(9, dtype=torch.long),
        ids,
        logprobs,
        settings=LossSettings(
            divergence_kind=kind, temperature=temperature, gen_temperature=temperature, tail=tail
        ),
    )
    assert abs(loss.kd.item()) < 1e-14
    (grad,) = torch.autograd.grad(loss.kd, student)
    assert grad.abs().max() < 1e-13


@pytest.mark.parametrize("chunked", [False, True])
def test_fully_masked_batch_is_zero_with_zero_gradients(chunked):
    _, student, ids, logprobs = case()
    logprobs = logprobs.clone()
    logprobs[4:] = -math.inf  # padding rows: every rank masked
    ids = ids.clone()
    ids[6:] = -1  # and garbage ids
    labels = torch.full((9,), -100)
    settings = LossSettings(ce_weight=0.5, kd_weight=0.5, divergence_kind="jsd", temperature=2.0)
    if chunked:
        weight = torch.randn(50, 8, dtype=D, requires_grad=True)
        hidden = torch.randn(9, 8, dtype=D, requires_grad=True)
        loss = distillation_loss(hidden, weight, labels, ids, logprobs, settings=settings, chunk_size=4)
        leaves = (hidden, weight)
    else:
        loss = distillation_loss_from_logits(student, labels, ids, logprobs, settings=settings)
        leaves = (student,)
    assert loss.total.item() == 0.0 and loss.ce.item() == 0.0 and loss.kd.item() == 0.0
    for grad in torch.autograd.grad(loss.total, leaves):
        assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("tail", [True, False])
@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_trailing_masked_ranks_count_as_outside_the_topk(tail, kind):
    teacher, student, ids, logprobs = case(k=6)
    n_valid = [6, 4, 1, 6, 3, 5, 2, 6, 4]
    ids, logprobs = ids.clone(), logprobs.clone()
    for t, n in enumerate(n_valid):
        logprobs[t, n:] = -math.inf
        ids[t, n:] = ids[t, 0] if t % 2 else 0  # masked ids: duplicates of a kept id, or anything
    loss = distillation_loss_from_logits(
        student,
        torch.zeros(9, dtype=torch.long),
        ids,
        logprobs,
        settings=LossSettings(divergence_kind=kind, tail=tail),
    )
    big_p, big_q = torch.softmax(teacher, -1), torch.softmax(student, -1)
    terms = []
    for t, n in enumerate(n_valid):
        p, q = collapse(big_p[t], ids[t, :n], tail), collapse(big_q[t], ids[t, :n], tail)
        terms.append(ref_divergence(p, q, kind))
    expected = sum(terms) / 9
    torch.testing.assert_close(loss.kd, expected, rtol=1e-9, atol=1e-12)
    (grad,) = torch.autograd.grad(loss.total, student)
    (expected_grad,) = torch.autograd.grad(expected, student)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-12)


def test_processed_logprobs_top_p_rows_have_no_tail():
    # processed mode: the finite ranks already sum to 1 (top-p renormalised), later ranks are -inf.
    stored = torch.tensor([[math.log(0.75), math.log(0.25), -math.inf]], dtype=D)
    p = teacher_buckets(stored, gen_temperature=0.7, temperature=0.7)
    torch.testing.assert_close(p[0, :2], stored[0, :2], rtol=0, atol=1e-6)
    assert p[0, 2] == -math.inf and p[0, 3].exp() == pytest.approx(1e-6, rel=1e-5)


# ------------------------------------------------------------------------------ chunked version


@pytest.mark.parametrize("temperature", [1.0, 2.0])  # T = 1: CE and KD share the log-softmax
@pytest.mark.parametrize("chunk_size", [1, 4, 7, 64])
def test_chunked_equals_unchunked(chunk_size, temperature):
    g = torch.Generator().manual_seed(3)
    n, h, v, k = 22, 8, 40, 5
    hidden = torch.randn(2, n // 2, h, generator=g, dtype=D, requires_grad=True)
    weight = torch.randn(v, h, generator=g, dtype=D, requires_grad=True)
    bias = torch.randn(v, generator=g, dtype=D, requires_grad=True)
    logprobs, ids = torch.log_softmax(3 * torch.randn(n, v, generator=g, dtype=D), -1).topk(k, dim=-1)
    logprobs[3, 2:] = -math.inf
    labels = torch.randint(0, v, (n,), generator=g)
    labels[[0, 1, 2, 12, 13]] = -100  # prompt tokens
    target_mask = torch.ones(n, dtype=torch.bool)
    target_mask[[5, 17]] = False  # CE only
    batch = dict(
        labels=labels.reshape(2, -1),
        topk_ids=ids.reshape(2, n // 2, k),
        topk_logprobs=logprobs.reshape(2, n // 2, k),
        target_mask=target_mask.reshape(2, -1),
    )
    settings = LossSettings(
        divergence_kind="jsd", beta=0.4, temperature=temperature, ce_weight=0.3, kd_weight=0.7
    )
    plain = distillation_loss_from_logits(F.linear(hidden, weight, bias), **batch, settings=settings)
    chunked = distillation_loss(
        hidden, weight, **batch, lm_head_bias=bias, settings=settings, chunk_size=chunk_size
    )
    for a, b in zip(plain, chunked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    for a, b in zip(
        torch.autograd.grad(plain.total, (hidden, weight, bias)),
        torch.autograd.grad(chunked.total, (hidden, weight, bias)),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    with torch.no_grad():
        again = distillation_loss(
            hidden, weight, **batch, lm_head_bias=bias, settings=settings, chunk_size=chunk_size
        )
    torch.testing.assert_close(again.total, plain.total.detach(), rtol=1e-12, atol=1e-14)


def test_chunked_with_a_frozen_head_gives_the_hidden_gradient_only():
    """Under LoRA the lm_head is frozen (no weight gradient wanted): the hidden gradient is unchanged."""
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(10, 6, generator=g, dtype=D, requires_grad=True)
    weight = torch.randn(30, 6, generator=g, dtype=D)  # requires_grad False
    logprobs, ids = torch.log_softmax(2 * torch.randn(10, 30, generator=g, dtype=D), -1).topk(4, dim=-1)
    labels = torch.randint(0, 30, (10,), generator=g)
    settings = LossSettings(ce_weight=0.5, kd_weight=1.0, temperature=1.0)
    plain = distillation_loss_from_logits(F.linear(hidden, weight), labels, ids, logprobs, settings=settings)
    chunked = distillation_loss(hidden, weight, labels, ids, logprobs, settings=settings, chunk_size=3)
    (expected,) = torch.autograd.grad(plain.total, hidden)
    (got,) = torch.autograd.grad(chunked.total, hidden)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-13)
    assert not chunked.ce.requires_grad and not chunked.kd.requires_grad  # values for logging


def test_chunked_bfloat16_model_is_computed_in_float32():
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(10, 8, generator=g).bfloat16().requires_grad_()
    weight = torch.randn(40, 8, generator=g).bfloat16().requires_grad_()
    logprobs, ids = torch.log_softmax(torch.randn(10, 40, generator=g), -1).topk(4, dim=-1)
    labels = torch.randint(0, 40, (10,), generator=g)
    with_ce = LossSettings(ce_weight=1.0)
    loss = distillation_loss(hidden, weight, labels, ids, logprobs, settings=with_ce, chunk_size=3)
    assert loss.total.dtype == torch.float32
    loss.total.backward()
    assert hidden.grad.dtype == torch.bfloat16 and torch.isfinite(weight.grad.float()).all()
    reference = distillation_loss_from_logits(
        F.linear(hidden, weight).float(), labels, ids, logprobs, settings=with_ce
    )
    torch.testing.assert_close(loss.total, reference.total)


# ------------------------------------------------------------- normalisation and accumulation


def accumulation_batch():
    """4 sequences of 6 tokens, different numbers of loss tokens, some tokens without targets."""
    g = torch.Generator().manual_seed(5)
    b, t, h, v, k = 4, 6, 8, 30, 4
    hidden = torch.randn(b, t, h, generator=g, dtype=D)
    logprobs, ids = torch.log_softmax(2 * torch.randn(b, t, v, generator=g, dtype=D), -1).topk(k, dim=-1)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[0, :5] = -100  # a long prompt: 1 loss token
    labels[2, :2] = -100
    target_mask = torch.ones(b, t, dtype=torch.bool)
    target_mask[1, 3:] = False
    target_mask[3, 0] = False
    weight = torch.randn(v, h, generator=g, dtype=D)
    return hidden, weight, dict(labels=labels, topk_ids=ids, topk_logprobs=logprobs, target_mask=target_mask)


@pytest.mark.parametrize("chunked", [False, True])
def test_gradient_accumulation_sums_to_the_whole_batch(chunked):
    hidden, weight, batch = accumulation_batch()
    settings = LossSettings(divergence_kind="reverse_kl", temperature=1.5, ce_weight=0.4, kd_weight=0.6)
    n_loss = sum(int(x != -100) for x in batch["labels"].flatten())
    n_kd = sum(
        int(x != -100 and m)
        for x, m in zip(batch["labels"].flatten(), batch["target_mask"].flatten(), strict=True)
    )
    assert (n_loss, n_kd) == (17, 13)

    def run(rows, **counts):
        w = weight.clone().requires_grad_()
        h = hidden[rows].clone().requires_grad_()
        part = {key: value[rows] for key, value in batch.items()}
        if chunked:
            loss = distillation_loss(h, w, **part, settings=settings, chunk_size=5, **counts)
        else:
            loss = distillation_loss_from_logits(F.linear(h, w), **part, settings=settings, **counts)
        return loss, torch.autograd.grad(loss.total, (h, w))

    whole, (grad_h, grad_w) = run(slice(0, 4))
    first, (grad_h0, grad_w0) = run(slice(0, 1), num_items_in_batch=n_loss, num_kd_items_in_batch=n_kd)
    second, (grad_h1, grad_w1) = run(
        slice(1, 4), num_items_in_batch=torch.tensor(n_loss), num_kd_items_in_batch=torch.tensor(n_kd)
    )
    for a, b, c in zip(whole, first, second, strict=True):
        torch.testing.assert_close(b + c, a, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(torch.cat([grad_h0, grad_h1]), grad_h, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(grad_w0 + grad_w1, grad_w, rtol=1e-10, atol=1e-14)
    naive_first, _ = run(slice(0, 1))  # each micro-batch averaged alone: not the whole batch's loss
    naive_second, _ = run(slice(1, 4))
    assert abs((naive_first.total + naive_second.total) / 2 - whole.total) > 1e-3


def test_tokens_without_targets_count_in_ce_only():
    hidden, weight, batch = accumulation_batch()
    logits = F.linear(hidden, weight).requires_grad_()  # [B, T, V], a leaf
    loss = distillation_loss_from_logits(logits, **batch, settings=LossSettings(ce_weight=0.4, kd_weight=0.6))
    labels, mask = batch["labels"], batch["target_mask"]
    ce_terms, kd_terms = [], []
    for b in range(4):
        for t in range(6):
            if labels[b, t] == -100:
                continue
            log_q = torch.log_softmax(logits[b, t], -1)
            ce_terms.append(-log_q[labels[b, t]])
            if mask[b, t]:
                top = batch["topk_logprobs"][b, t].exp()  # exact top-k of a full softmax
                p = torch.cat([top, 1 - top.sum()[None]])
                q = collapse(log_q.exp(), batch["topk_ids"][b, t], tail=True)
                kd_terms.append(ref_kl(p, q))
    assert (len(ce_terms), len(kd_terms)) == (17, 13)
    torch.testing.assert_close(loss.ce, sum(ce_terms) / 17, rtol=1e-12, atol=0)
    torch.testing.assert_close(loss.kd, sum(kd_terms) / 13, rtol=1e-9, atol=0)
    (grad,) = torch.autograd.grad(loss.total, logits)
    # at T = 1 CE and KD share one log-softmax: the gradient is still the brute-force one everywhere
    (reference_grad,) = torch.autograd.grad(0.4 * sum(ce_terms) / 17 + 0.6 * sum(kd_terms) / 13, logits)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-9, atol=1e-12)
    # Token (1, 4) has a label but no targets: its gradient is the CE one alone, 0.4 (softmax - onehot) / 17.
    onehot = F.one_hot(labels[1, 4], 30).to(D)
    torch.testing.assert_close(grad[1, 4], 0.4 * (torch.softmax(logits[1, 4], -1) - onehot) / 17)
    assert torch.equal(grad[0, 0], torch.zeros(30, dtype=D))  # prompt token: nothing


def test_bad_settings_are_refused():
    _, student, ids, logprobs = case()
    labels = torch.zeros(9, dtype=torch.long)
    with pytest.raises(ValueError, match="num_kd_items_in_batch"):
        distillation_loss_from_logits(student, labels, ids, logprobs, num_items_in_batch=9)
    for refused, problem in (
        (dict(divergence_kind="kl"), "unknown divergence"),
        (dict(divergence_kind="jsd", beta=1.5), "beta"),
        (dict(alpha=-0.1), "alpha"),
        (dict(temperature=0.0), "temperatures"),
        (dict(gen_temperature=-1.0), "temperatures"),
        (dict(tail_floor=1.0), "tail_floor"),
        (dict(ce_weight=0.0, kd_weight=0.0), "not both 0"),
        (dict(kd_weight=-1.0), "loss weights"),
    ):
        with pytest.raises(ValueError, match=problem):
            LossSettings(**refused)
    # pure CE needs no KD count
    loss = distillation_loss_from_logits(
        student,
        labels,
        ids,
        logprobs,
        settings=LossSettings(ce_weight=1.0, kd_weight=0.0),
        num_items_in_batch=9,
    )
    torch.testing.assert_close(loss.total, F.cross_entropy(student, labels))


def test_docs_name_the_divergences_the_code_accepts():
    """Every divergence docs/train.md and docs/losses.md name (a backticked `..._kl` or `...jsd`) is one
    the loss accepts, and each of them is documented in both."""
    for doc in ("docs/train.md", "docs/losses.md"):
        named = set(re.findall(r"`(\w*(?:_kl|jsd))`", (REPO / doc).read_text()))
        assert named == set(DIVERGENCE_KINDS), doc


@pytest.mark.parametrize("chunked", [False, True])
def test_label_smoothing_matches_brute_force(chunked):
    """CE with label smoothing eps: (1 - eps) (-log q_label) + eps mean_v (-log q_v) per token, summed in
    Python loops; and PyTorch's own label_smoothing gives the same."""
    _, student, ids, logprobs = case(n=6, v=11, k=3, seed=3)
    labels = torch.tensor([2, -100, 5, 7, 0, 10])
    settings = LossSettings(ce_weight=1.0, kd_weight=0.0, label_smoothing=0.2)
    if chunked:
        weight = torch.eye(11, dtype=D)  # logits = hidden @ I: the student logits themselves
        loss = distillation_loss(student, weight, labels, ids, logprobs, settings=settings, chunk_size=4)
    else:
        loss = distillation_loss_from_logits(student, labels, ids, logprobs, settings=settings)
    total, count = 0.0, 0
    for row, label in zip(student.detach().tolist(), labels.tolist(), strict=True):
        if label == -100:
            continue
        log_z = math.log(sum(math.exp(x) for x in row))
        nll = [log_z - x for x in row]
        total += 0.8 * nll[label] + 0.2 * sum(nll) / len(nll)
        count += 1
    assert loss.total.item() == pytest.approx(total / count, rel=1e-12)
    torch_ce = F.cross_entropy(student, labels, label_smoothing=0.2)
    assert loss.total.item() == pytest.approx(torch_ce.item(), rel=1e-12)
    (grad,) = torch.autograd.grad(loss.total, student)
    (torch_grad,) = torch.autograd.grad(torch_ce, student)
    torch.testing.assert_close(grad, torch_grad)
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        LossSettings(ce_weight=1.0, label_smoothing=1.0)
