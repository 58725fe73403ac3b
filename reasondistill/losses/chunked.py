"""The distillation loss from final hidden states, chunked over tokens so [N, V] logits never exist.

logits = hidden @ lm_head_weight.T (+ bias) is recomputed per chunk of rows inside
`torch.utils.checkpoint`: the forward keeps only each chunk's inputs (hidden rows, ids, logprobs), and
the backward recomputes one chunk's logits at a time, so peak memory is a few [chunk_size, V] float32
tensors (the logits, their 1/T copy, the tail's masked copy and cross-entropy's log-softmax) whatever N
is. Same value and gradients as `distill.distillation_loss_from_logits` on the full logits.
"""

from __future__ import annotations

from functools import partial

import torch
from torch.utils.checkpoint import checkpoint

from .distill import DistillLoss, checked_settings, combine, token_loss_sums, token_masks
from .divergences import DivergenceKind
from .topk_targets import DEFAULT_TAIL_FLOOR


def _chunk_sums(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    kd_mask: torch.Tensor,
    **settings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE sum, KD sum) of one chunk: hidden [C, H], weight [V, H], bias [V] | None, the rest [C] / [C, K]."""
    logits = torch.nn.functional.linear(hidden, weight, bias)  # [C, V] in the model's dtype
    return token_loss_sums(logits, labels, topk_ids, topk_logprobs, kd_mask, **settings)


def distillation_loss(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    target_mask: torch.Tensor | None = None,
    *,
    lm_head_bias: torch.Tensor | None = None,
    divergence_kind: DivergenceKind = "forward_kl",
    beta: float = 0.5,
    alpha: float = 0.1,
    temperature: float = 1.0,
    gen_temperature: float = 1.0,
    tail: bool = True,
    tail_floor: float = DEFAULT_TAIL_FLOOR,
    ce_weight: float = 0.0,
    kd_weight: float = 1.0,
    num_items_in_batch: int | torch.Tensor | None = None,
    num_kd_items_in_batch: int | torch.Tensor | None = None,
    chunk_size: int = 1024,
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
    `chunk_size` rows per chunk: peak ~ several [chunk_size, V] float32 (0.6 GB each at 1024 x 152k).
    """
    settings, counts = checked_settings(locals())
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
    # An empty selection still yields a 0 connected to the inputs: zero gradients rather than no graph.
    ce_sum = kd_sum = hidden[:0].sum() + lm_head_weight[:0].sum()
    fn = partial(_chunk_sums, **settings)
    recompute = torch.is_grad_enabled() and (hidden.requires_grad or lm_head_weight.requires_grad)
    for start in range(0, h.shape[0], chunk_size):
        piece = slice(start, start + chunk_size)
        args = (h[piece], lm_head_weight, lm_head_bias, lab[piece], ids[piece], lp[piece], kdm[piece])
        if recompute:  # keep only the chunk's inputs; its logits are recomputed in the backward
            ce_c, kd_c = checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)
        else:
            ce_c, kd_c = fn(*args)
        ce_sum, kd_sum = ce_sum + ce_c, kd_sum + kd_c
    return combine(ce_sum, kd_sum, loss_mask, kd_mask, ce_weight=ce_weight, kd_weight=kd_weight, **counts)
