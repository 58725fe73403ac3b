"""The distillation loss from final hidden states, chunked over tokens so [N, V] logits never exist.

logits = hidden @ lm_head_weight.T (+ bias) is computed one chunk of rows at a time, and so are its
gradients: when gradients are wanted, the forward pass differentiates each chunk's loss with respect to
its logits at once (dz [C, V]) and turns them into the chunk's share of the gradients of the hidden
rows (dz @ W), of the weight (dz^T @ h, accumulated in float32) and of the bias, then drops the
chunk. The backward only scales those by the incoming gradient. So the lm_head runs 3 matmuls per
token, as plain cross-entropy does (2 for a frozen head, as under LoRA), not 4 as a recomputing
checkpoint would, and peak memory is a few [chunk_size, V] float32 tensors whatever N is (the "fused
linear cross-entropy" idea of Liger-Kernel and Cut Cross-Entropy, applied to CE + top-k divergence).

The price: only `total` carries gradients; `ce` and `kd` are detached values (for logging), and the
loss cannot be differentiated twice. Same value and gradients as `distill.distillation_loss_from_logits`
on the full logits (tests/train/test_losses.py).
"""

from __future__ import annotations

import torch

from .distill import (
    FORWARD_KL_ONLY,
    DistillLoss,
    LossSettings,
    check_counts,
    denominators,
    token_loss_sums,
    token_masks,
)


class _FusedChunkedLoss(torch.autograd.Function):
    """total = ce_scale * sum_t CE_t + kd_scale * T^2 sum_t D_t over the rows, with its gradients
    computed chunk by chunk in the forward pass.

    Inputs: hidden rows h [n, H], weight [V, H], bias [V] | None, targets (labels [n], topk ids and
    logprobs [n, K], kd_mask [n]), scales (ce_scale, kd_scale: 0-dim tensors), chunk_size, the
    LossSettings and whether gradients are wanted at all. Returns (total, ce_sum, kd_sum); only
    total is differentiable.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, targets, scales, chunk_size, settings, grads):
        wants = [grads and need for need in ctx.needs_input_grad[:3]]
        ce_scale, kd_scale = scales
        acc = torch.promote_types(weight.dtype, torch.float32)  # bf16 models accumulate in float32
        grad_h = torch.zeros_like(h) if wants[0] else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if wants[1] else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if wants[2] else None
        ce_sum = kd_sum = torch.zeros((), dtype=acc, device=h.device)
        for start in range(0, h.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            with torch.set_grad_enabled(any(wants)):
                z = torch.nn.functional.linear(h[rows], weight, bias).detach().requires_grad_(any(wants))
                ce, kd = token_loss_sums(z, *(t[rows] for t in targets), settings)
                if any(wants):
                    (dz,) = torch.autograd.grad(ce_scale * ce + kd_scale * kd, z)  # [C, V]
                    dz = dz.to(weight.dtype)
            if wants[0]:
                grad_h[rows] = dz @ weight
            if wants[1]:
                grad_w.addmm_(dz.t().to(acc), h[rows].to(acc))
            if wants[2]:
                grad_b += dz.to(acc).sum(0)
            ce_sum, kd_sum = ce_sum + ce.detach(), kd_sum + kd.detach()
        ctx.save_for_backward(*(g for g in (grad_h, grad_w, grad_b) if g is not None))
        ctx.wants, ctx.dtypes = wants, (h.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(ce_sum, kd_sum)
        return ce_scale * ce_sum + kd_scale * kd_sum, ce_sum, kd_sum

    @staticmethod
    def backward(ctx, grad_total, _grad_ce_sum, _grad_kd_sum):
        saved = iter(ctx.saved_tensors)
        # in place: the forward's gradient buffers serve once, and a copy would double the [V, H] one
        grads = [
            next(saved).mul_(grad_total).to(dtype) if want else None
            for want, dtype in zip(ctx.wants, ctx.dtypes, strict=True)
        ]
        return *grads, *([None] * 5)


def distillation_loss(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    target_mask: torch.Tensor | None = None,
    *,
    lm_head_bias: torch.Tensor | None = None,
    settings: LossSettings = FORWARD_KL_ONLY,
    num_items_in_batch: int | torch.Tensor | None = None,
    num_kd_items_in_batch: int | torch.Tensor | None = None,
    chunk_size: int = 512,
) -> DistillLoss:
    """Distillation loss from the student's final hidden states; returns DistillLoss(total, ce, kd).

    Shapes: `hidden` [B, T, H] or [N, H] (after the final norm: what the lm_head sees),
    `lm_head_weight` [V, H], `lm_head_bias` [V] or None, `labels` [B, T] / [N], `topk_ids` and
    `topk_logprobs` [B, T, K] / [N, K], `target_mask` [B, T] / [N] bool or None (all tokens have
    targets). Already aligned: `hidden[t]` predicts `labels[t]`, whose teacher top-k is `topk_*[t]`.
    Models that post-process logits (soft-capping, logit scaling) need `distillation_loss_from_logits`.

    The math, weights and denominators are those of `distillation_loss_from_logits` (docs/losses.md):
    ce = sum CE_t / (num_items_in_batch or #loss tokens here), kd = T^2 sum D_t /
    (num_kd_items_in_batch or #tokens with targets here), total = ce_weight * ce + kd_weight * kd.

    Rows without loss (prompt, padding: labels == -100) are dropped before the lm_head, which costs one
    host sync (the row count) per call instead of their share of the [N, V] matmul and softmaxes.
    `chunk_size` rows per chunk: peak ~ 7 [chunk_size, V] float32 (0.3 GB each at 512 x 152k) plus a
    float32 [V, H] gradient accumulator for the weight.
    """
    check_counts(settings, num_items_in_batch, num_kd_items_in_batch)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    k = topk_ids.shape[-1]
    hidden, labels = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)  # [N, H], [N]
    topk_ids, topk_logprobs = topk_ids.reshape(-1, k), topk_logprobs.reshape(-1, k)  # [N, K]
    mask = None if target_mask is None else target_mask.reshape(-1)
    loss_mask, kd_mask = token_masks(labels, topk_logprobs, mask)  # [N], [N]

    rows = loss_mask.nonzero().squeeze(-1)  # [n] (host sync)
    picked = (x.index_select(0, rows) for x in (hidden, labels, topk_ids, topk_logprobs, kd_mask))
    h, lab, ids, lp, kdm = picked  # [n, H], [n], [n, K], [n, K], [n]
    # The denominators are known before the first chunk, so each chunk's gradient is final at once.
    like = torch.zeros((), dtype=torch.promote_types(lm_head_weight.dtype, torch.float32), device=h.device)
    ce_denominator, kd_denominator = denominators(
        loss_mask, kd_mask, like, num_items_in_batch, num_kd_items_in_batch
    )
    leaves = (hidden, lm_head_weight, lm_head_bias)
    grads = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in leaves)
    scales = (settings.ce_weight / ce_denominator, settings.kd_weight / kd_denominator)
    total, ce_sum, kd_sum = _FusedChunkedLoss.apply(
        h, lm_head_weight, lm_head_bias, (lab, ids, lp, kdm), scales, chunk_size, settings, grads
    )
    return DistillLoss(total, ce_sum / ce_denominator, kd_sum / kd_denominator)
