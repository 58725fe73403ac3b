"""Distillation loss on given logits: w_ce * CE(trace tokens) + w_kd * T^2 * divergence(top-k buckets).

The plain version, for clarity and tests; `chunked.distillation_loss` computes the same from hidden
states without materialising [N, V] logits. Derivation, masks and denominators: docs/losses.md.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .divergences import DivergenceKind, check_divergence_args, divergence
from .topk_targets import DEFAULT_TAIL_FLOOR, student_buckets, teacher_buckets

IGNORE_INDEX = -100


class DistillLoss(NamedTuple):
    """The total (to backpropagate) and its two unweighted terms (for logging; they carry gradients)."""

    total: torch.Tensor  # ce_weight * ce + kd_weight * kd
    ce: torch.Tensor  # sum of per-token CE / CE denominator
    kd: torch.Tensor  # T^2 * sum of per-token divergences / KD denominator


def check_loss_args(
    *,
    divergence_kind: str,
    beta: float,
    alpha: float,
    temperature: float,
    gen_temperature: float,
    tail_floor: float,
    ce_weight: float,
    kd_weight: float,
    num_items_in_batch,
    num_kd_items_in_batch,
) -> None:
    """Refuse settings the math does not support, with the reason."""
    check_divergence_args(divergence_kind, beta, alpha)
    if temperature <= 0 or gen_temperature <= 0:
        raise ValueError(f"temperatures must be > 0, got {temperature=}, {gen_temperature=}")
    if not 0.0 < tail_floor < 1.0:
        raise ValueError(f"tail_floor must be in (0, 1), got {tail_floor}")
    if ce_weight < 0 or kd_weight < 0 or ce_weight + kd_weight == 0:
        raise ValueError(f"loss weights must be >= 0 and not both 0, got {ce_weight=}, {kd_weight=}")
    if num_items_in_batch is not None and num_kd_items_in_batch is None and kd_weight != 0:
        raise ValueError(
            "num_items_in_batch (loss tokens in the accumulated batch) is given but num_kd_items_in_batch "
            "is not: the KD term is normalised by the tokens WITH teacher targets in the whole accumulated "
            "batch, which transformers does not count; pass it (sum over the micro-batches of "
            "(labels != -100) & target_mask) so gradient accumulation stays exact"
        )


SETTING_NAMES = (
    "divergence_kind", "beta", "alpha", "temperature", "gen_temperature", "tail", "tail_floor",
    "ce_weight", "kd_weight",
)  # fmt: skip
COUNT_NAMES = ("num_items_in_batch", "num_kd_items_in_batch")


def checked_settings(arguments: dict) -> tuple[dict, dict]:
    """(loss settings, global counts) picked from a loss function's arguments (its `locals()`), checked."""
    settings = {name: arguments[name] for name in SETTING_NAMES}
    counts = {name: arguments[name] for name in COUNT_NAMES}
    check_loss_args(**{k: v for k, v in settings.items() if k != "tail"}, **counts)
    return settings, counts


def token_masks(
    labels: torch.Tensor, topk_logprobs: torch.Tensor, target_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss_mask, kd_mask), both [N] bool, from labels [N], topk_logprobs [N, K], target_mask [N].

    A token carries CE when its label is not -100, and KD when it also has stored targets: target_mask
    True and a finite rank-0 logprob (a row of all -inf is padding, not a target).
    """
    loss_mask = labels != IGNORE_INDEX
    kd_mask = loss_mask & torch.isfinite(topk_logprobs[:, 0])
    if target_mask is not None:
        kd_mask = kd_mask & target_mask.bool()
    return loss_mask, kd_mask


def denominator(given, local_count: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Global count `given` (int or tensor, as transformers passes it) if not None, else the local one.

    Clamped at 1, so an empty batch gives 0 / 1 = 0 with zero gradients instead of NaN. No host sync.
    """
    d = local_count if given is None else torch.as_tensor(given, device=like.device)
    if d.ndim:  # DataParallel replicas receive a [1] slice
        d = d.reshape(-1)[0]
    return d.to(like.dtype).clamp_min(1)


def denominators(
    loss_mask: torch.Tensor,
    kd_mask: torch.Tensor,
    like: torch.Tensor,
    *,
    num_items_in_batch,
    num_kd_items_in_batch,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE denominator, KD denominator): the global token counts if given, else this call's."""
    return (
        denominator(num_items_in_batch, loss_mask.sum(), like),
        denominator(num_kd_items_in_batch, kd_mask.sum(), like),
    )


def token_loss_sums(
    logits: torch.Tensor,
    labels: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    kd_mask: torch.Tensor,
    *,
    divergence_kind: DivergenceKind,
    beta: float,
    alpha: float,
    temperature: float,
    gen_temperature: float,
    tail: bool,
    tail_floor: float,
    ce_weight: float,
    kd_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Un-normalised sums over rows: (sum_t CE_t, T^2 sum_{t in kd_mask} D_t), both scalars.

    `logits` [N, V] (any float dtype; half is upcast to float32), `labels` [N] (-100 = no loss),
    `topk_ids` [N, K], `topk_logprobs` [N, K], `kd_mask` [N] bool. CE is at temperature 1: the student's
    own distribution on the teacher's sampled token. D_t is `divergence_kind` between the teacher's and
    the student's (K+1)- or K-bucket distributions at temperature T. A term whose weight is 0 is not
    computed and returned as 0.
    """
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits  # [N, V]
    zero = z.new_zeros(())
    # At T = 1 CE and the student's buckets share one log-softmax over V (one [N, V] pass, not two).
    shared = bool(ce_weight and kd_weight) and temperature == 1.0
    log_probs = F.log_softmax(z, dim=-1) if ce_weight else None  # [N, V]
    ce_sum = F.nll_loss(log_probs, labels, ignore_index=IGNORE_INDEX, reduction="sum") if ce_weight else zero
    if not kd_weight:
        return ce_sum, zero
    valid = torch.isfinite(topk_logprobs)  # [N, K], trailing -inf ranks masked
    p = teacher_buckets(
        topk_logprobs.to(z.dtype),
        gen_temperature=gen_temperature,
        temperature=temperature,
        tail=tail,
        tail_floor=tail_floor,
    )  # [N, K(+1)]
    q = student_buckets(
        log_probs if shared else z,
        topk_ids,
        temperature=temperature,
        tail=tail,
        valid=valid,
        tail_floor=tail_floor,
        log_normalized=shared,
    )
    d = divergence(p, q, divergence_kind, beta=beta, alpha=alpha, mask=torch.isfinite(p))  # [N]
    return ce_sum, temperature**2 * torch.where(kd_mask, d, 0.0).sum()


def combine(
    ce_sum: torch.Tensor,
    kd_sum: torch.Tensor,
    loss_mask: torch.Tensor,
    kd_mask: torch.Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    **counts,
) -> DistillLoss:
    """Normalise the sums (CE by loss tokens, KD by tokens with targets) and weight them."""
    ce_denominator, kd_denominator = denominators(loss_mask, kd_mask, ce_sum, **counts)
    ce, kd = ce_sum / ce_denominator, kd_sum / kd_denominator
    return DistillLoss(ce_weight * ce + kd_weight * kd, ce, kd)


def distillation_loss_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    target_mask: torch.Tensor | None = None,
    *,
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
) -> DistillLoss:
    """Loss from full student logits; shapes [B, T, V] / [B, T] / [B, T, K] (or flat [N, ...]).

    Inputs are already aligned: `logits[b, t]` predicts `labels[b, t]`, and `topk_*[b, t]` is the
    teacher's top-k for that same token (the caller shifts). `target_mask` [B, T] bool: token has stored
    targets (None: all). Returns DistillLoss(total, ce, kd) with

        ce = sum_{labels != -100} CE_t / (num_items_in_batch or #loss tokens here)
        kd = T^2 sum_{t with targets} D_t / (num_kd_items_in_batch or #tokens with targets here)
        total = ce_weight * ce + kd_weight * kd

    Pass both global counts under gradient accumulation (transformers' `num_items_in_batch` counts loss
    tokens; tokens with targets are counted by the caller), so that summing micro-batch losses gives
    the whole batch's loss. See module and docs/losses.md for the buckets and divergences.
    """
    settings, counts = checked_settings(locals())
    k = topk_ids.shape[-1]
    logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)  # [N, V], [N]
    topk_ids, topk_logprobs = topk_ids.reshape(-1, k), topk_logprobs.reshape(-1, k)  # [N, K]
    mask = None if target_mask is None else target_mask.reshape(-1)
    loss_mask, kd_mask = token_masks(labels, topk_logprobs, mask)
    ce_sum, kd_sum = token_loss_sums(logits, labels, topk_ids, topk_logprobs, kd_mask, **settings)
    return combine(ce_sum, kd_sum, loss_mask, kd_mask, ce_weight=ce_weight, kd_weight=kd_weight, **counts)
