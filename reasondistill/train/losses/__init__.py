"""Distillation losses on a stored teacher top-k (derivation: docs/losses.md).

- `topk_targets`: teacher target and student distribution on the k (+1 tail) buckets.
- `divergences`: forward / reverse KL, TRL's generalized JSD, DistiLLM's skew KLs, per token.
- `distill`: `LossSettings` (what the loss computes, one frozen object) and CE + T^2 * divergence from
  full logits, normalised per loss token (plain version).
- `chunked`: the same from final hidden states and the lm_head weight, chunked over tokens.
"""

from .chunked import distillation_loss
from .distill import DistillLoss, LossSettings, distillation_loss_from_logits, token_masks
from .divergences import DIVERGENCE_KINDS, DivergenceKind, divergence
from .topk_targets import DEFAULT_TAIL_FLOOR, student_buckets, teacher_buckets

__all__ = [
    "DEFAULT_TAIL_FLOOR",
    "DIVERGENCE_KINDS",
    "DistillLoss",
    "LossSettings",
    "DivergenceKind",
    "distillation_loss",
    "distillation_loss_from_logits",
    "divergence",
    "student_buckets",
    "teacher_buckets",
    "token_masks",
]
