"""Divergences between two distributions given as log-probabilities over the same buckets.

p = teacher, q = student, both [N, B] (B = K or K+1 buckets, topk_targets.py). Every function returns
one value per row [N], summed over the buckets; no temperature scaling and no reduction over rows here.
Definitions (docs/losses.md):

    forward_kl       KL(p || q) = sum_b p_b (log p_b - log q_b)                  mass-covering
    reverse_kl       KL(q || p)                                                  mode-seeking
    jsd              TRL's generalized JSD with beta (GKDTrainer.generalized_jsd_loss):
                     beta = 0 -> KL(p || q), beta = 1 -> KL(q || p), otherwise, with
                     m = beta p + (1 - beta) q:  beta KL(p || m) + (1 - beta) KL(q || m)
    skew_forward_kl  KL(p || alpha p + (1 - alpha) q)       (DistiLLM; alpha = 0 -> forward_kl)
    skew_reverse_kl  KL(q || alpha q + (1 - alpha) p)       (DistiLLM; alpha = 0 -> reverse_kl)

Note the jsd endpoints are TRL's special cases: as beta -> 0 the mixture formula itself tends to 0,
not to KL(p || q); only beta exactly 0 (or 1) switches to the plain KL.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch

DivergenceKind = Literal["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl"]
DIVERGENCE_KINDS: tuple[str, ...] = get_args(DivergenceKind)


def _kl_terms(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """Elementwise a (log a - log b) [N, B]; callers pass finite values only (masked entries are 0)."""
    return log_a.exp() * (log_a - log_b)


def _log_mix(log_a: torch.Tensor, log_b: torch.Tensor, w: float) -> torch.Tensor:
    """log(w a + (1 - w) b) in log space (logaddexp), exact at w = 0 and w = 1."""
    if w == 0.0:
        return log_b
    if w == 1.0:
        return log_a
    return torch.logaddexp(log_a + math.log(w), log_b + math.log1p(-w))


def check_divergence_args(kind: str, beta: float, alpha: float) -> None:
    """Refuse an unknown kind or a beta / alpha outside [0, 1]."""
    if kind not in DIVERGENCE_KINDS:
        raise ValueError(f"unknown divergence {kind!r}; choose one of {', '.join(DIVERGENCE_KINDS)}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd beta must be in [0, 1] (0 = forward KL, 1 = reverse KL), got {beta}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"skew alpha must be in [0, 1] (0 = plain KL), got {alpha}")


def divergence(
    teacher_logp: torch.Tensor,
    student_logp: torch.Tensor,
    kind: DivergenceKind = "forward_kl",
    *,
    beta: float = 0.5,
    alpha: float = 0.1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Divergence `kind` between teacher p and student q per row: [N, B] log-probs -> [N].

    `mask` [N, B] marks the buckets that exist (default: where the teacher's log-prob is finite); the
    others contribute exactly 0 and get a zero, not NaN, gradient (they are replaced by 0 before any
    arithmetic). `beta` is used by "jsd" only, `alpha` by the skew kinds; see the module docstring.
    """
    check_divergence_args(kind, beta, alpha)
    if mask is None:
        mask = torch.isfinite(teacher_logp)
    lp = torch.where(mask, teacher_logp, 0.0)  # [N, B]
    lq = torch.where(mask, student_logp, 0.0)  # [N, B]
    if kind == "jsd" and beta in (0.0, 1.0):
        kind = "forward_kl" if beta == 0.0 else "reverse_kl"
    if kind == "forward_kl":
        terms = _kl_terms(lp, lq)
    elif kind == "reverse_kl":
        terms = _kl_terms(lq, lp)
    elif kind == "jsd":
        lm = _log_mix(lp, lq, beta)  # log(beta p + (1 - beta) q)
        terms = beta * _kl_terms(lp, lm) + (1.0 - beta) * _kl_terms(lq, lm)
    elif kind == "skew_forward_kl":
        terms = _kl_terms(lp, _log_mix(lp, lq, alpha))
    else:  # skew_reverse_kl
        terms = _kl_terms(lq, _log_mix(lq, lp, alpha))
    return torch.where(mask, terms, 0.0).sum(dim=-1)
