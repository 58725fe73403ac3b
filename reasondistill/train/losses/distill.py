"""Distillation loss on given logits: w_ce * CE(trace tokens) + w_kd * T^2 * divergence(top-k buckets).

The plain version, for clarity and tests; `chunked.distillation_loss` computes the same from hidden
states without materialising [N, V] logits. Derivation, masks and denominators: docs/losses.md.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class LossSettings:
    """What the loss computes (docs/losses.md), checked once when built; the defaults are pure forward KL.

    total = ce_weight * ce + kd_weight * kd, with kd = T^2 * mean divergence_kind(teacher || student)
    on the top-k (+ tail) buckets at temperature T.
    """

    divergence_kind: DivergenceKind = "forward_kl"
    beta: float = 0.5  # jsd only, TRL's direction: 0 = KL(teacher || student), 1 = KL(student || teacher)
    alpha: float = 0.1  # skew kinds only (DistiLLM): 0 = the plain KL
    temperature: float = 1.0  # T, the distillation temperature (the divergence is scaled by T^2)
    gen_temperature: float = 1.0  # T_gen, what the stored logprobs reflect (1 for raw logprobs)
    tail: bool = True  # the teacher's mass outside the top-k as one bucket (else renormalised over it)
    tail_floor: float = DEFAULT_TAIL_FLOOR  # smallest tail-bucket probability, on both sides
    ce_weight: float = 0.0
    kd_weight: float = 1.0
    # CE against (1 - eps) one-hot + eps uniform over V (Szegedy et al.); a baseline that regularises
    # like soft targets but carries nothing from the teacher
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        check_divergence_args(self.divergence_kind, self.beta, self.alpha)
        if self.temperature <= 0 or self.gen_temperature <= 0:
            raise ValueError(
                f"temperatures must be > 0, got temperature={self.temperature}, "
                f"gen_temperature={self.gen_temperature}"
            )
        if not 0.0 < self.tail_floor < 1.0:
            raise ValueError(f"tail_floor must be in (0, 1), got {self.tail_floor}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.ce_weight < 0 or self.kd_weight < 0 or self.ce_weight + self.kd_weight == 0:
            raise ValueError(
                f"loss weights must be >= 0 and not both 0, got ce_weight={self.ce_weight}, "
                f"kd_weight={self.kd_weight}"
            )


FORWARD_KL_ONLY = LossSettings()  # the loss functions' default


def check_counts(settings: LossSettings, num_items_in_batch, num_kd_items_in_batch) -> None:
    """Refuse a CE count without a KD count: gradient accumulation would be wrong for the KD term."""
    if num_items_in_batch is not None and num_kd_items_in_batch is None and settings.kd_weight != 0:
        raise ValueError(
            "num_items_in_batch (loss tokens in the accumulated batch) is given but num_kd_items_in_batch "
            "is not: the KD term is normalised by the tokens WITH teacher targets in the whole accumulated "
            "batch, which transformers does not count; pass it (sum over the micro-batches of "
            "(labels != -100) & target_mask) so gradient accumulation stays exact"
        )


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
    num_items_in_batch: int | torch.Tensor | None,
    num_kd_items_in_batch: int | torch.Tensor | None,
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
    settings: LossSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Un-normalised sums over rows: (sum_t CE_t, T^2 sum_{t in kd_mask} D_t), both scalars.

    `logits` [N, V] (any float dtype; half is upcast to float32), `labels` [N] (-100 = no loss),
    `topk_ids` [N, K], `topk_logprobs` [N, K], `kd_mask` [N] bool. CE is at temperature 1: the student's
    own distribution on the teacher's sampled token; with label smoothing eps it is
    (1 - eps) (-log q_label) + eps mean_v (-log q_v). D_t is `settings.divergence_kind` between the
    teacher's and the student's (K+1)- or K-bucket distributions at temperature T. A term whose weight is
    0 is not computed and returned as 0.
    """
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits  # [N, V]
    zero = z.new_zeros(())
    # At T = 1 CE and the student's buckets share one log-softmax over V (one [N, V] pass, not two).
    shared = bool(settings.ce_weight and settings.kd_weight) and settings.temperature == 1.0
    log_probs = F.log_softmax(z, dim=-1) if settings.ce_weight else None  # [N, V]
    ce_sum = zero
    if settings.ce_weight:
        ce_sum = F.nll_loss(log_probs, labels, ignore_index=IGNORE_INDEX, reduction="sum")
        if settings.label_smoothing:
            eps, kept = settings.label_smoothing, labels != IGNORE_INDEX
            # sum_t mean_v (-log q_v) over labelled rows; a mask, not log_probs[kept] (an [N, V] copy)
            uniform_sum = torch.where(kept, -log_probs.mean(dim=-1), 0.0).sum()
            ce_sum = (1 - eps) * ce_sum + eps * uniform_sum
    if not settings.kd_weight:
        return ce_sum, zero
    valid = torch.isfinite(topk_logprobs)  # [N, K], trailing -inf ranks masked
    p = teacher_buckets(
        topk_logprobs.to(z.dtype),
        gen_temperature=settings.gen_temperature,
        temperature=settings.temperature,
        tail=settings.tail,
        tail_floor=settings.tail_floor,
    )  # [N, K(+1)]
    q = student_buckets(
        log_probs if shared else z,
        topk_ids,
        temperature=settings.temperature,
        tail=settings.tail,
        valid=valid,
        tail_floor=settings.tail_floor,
        log_normalized=shared,
    )
    d = divergence(
        p, q, settings.divergence_kind, beta=settings.beta, alpha=settings.alpha, mask=torch.isfinite(p)
    )  # [N]
    return ce_sum, settings.temperature**2 * torch.where(kd_mask, d, 0.0).sum()


def distillation_loss_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    target_mask: torch.Tensor | None = None,
    *,
    settings: LossSettings = FORWARD_KL_ONLY,
    num_items_in_batch: int | torch.Tensor | None = None,
    num_kd_items_in_batch: int | torch.Tensor | None = None,
) -> DistillLoss:
    """Loss from full student logits; shapes [B, T, V] / [B, T] / [B, T, K] (or flat [N, ...]).

    Inputs are already aligned: `logits[b, t]` predicts `labels[b, t]`, and `topk_*[b, t]` is the
    teacher's top-k for that same token (the caller shifts). `target_mask` [B, T] bool: token has stored
    targets (None: all). `settings` say what is computed (divergence, temperatures, tail, weights).
    Returns DistillLoss(total, ce, kd) with

        ce = sum_{labels != -100} CE_t / (num_items_in_batch or #loss tokens here)
        kd = T^2 sum_{t with targets} D_t / (num_kd_items_in_batch or #tokens with targets here)
        total = ce_weight * ce + kd_weight * kd

    Pass both global counts under gradient accumulation (transformers' `num_items_in_batch` counts loss
    tokens; tokens with targets are counted by the caller), so that summing micro-batch losses gives
    the whole batch's loss. See module and docs/losses.md for the buckets and divergences.
    """
    check_counts(settings, num_items_in_batch, num_kd_items_in_batch)
    k = topk_ids.shape[-1]
    logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)  # [N, V], [N]
    topk_ids, topk_logprobs = topk_ids.reshape(-1, k), topk_logprobs.reshape(-1, k)  # [N, K]
    mask = None if target_mask is None else target_mask.reshape(-1)
    loss_mask, kd_mask = token_masks(labels, topk_logprobs, mask)
    ce_sum, kd_sum = token_loss_sums(logits, labels, topk_ids, topk_logprobs, kd_mask, settings)
    ce_denominator, kd_denominator = denominators(
        loss_mask, kd_mask, ce_sum, num_items_in_batch, num_kd_items_in_batch
    )
    ce, kd = ce_sum / ce_denominator, kd_sum / kd_denominator
    return DistillLoss(settings.ce_weight * ce + settings.kd_weight * kd, ce, kd)
