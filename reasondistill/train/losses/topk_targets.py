"""Teacher and student distributions collapsed onto the k (+1 tail) buckets of a stored top-k.

Derivation and the tail approximation: docs/losses.md. Shapes: N flattened tokens, K = top-k width,
V = vocabulary. A bucket's log-probability is -inf where the teacher's rank is masked (trailing -inf in
the stored logprobs, docs/trace_schema.md); the tail bucket, when present, is the last column.
"""

from __future__ import annotations

import math

import torch

# Smallest probability a tail bucket may hold, on both sides (docs/losses.md, "Tail floor").
DEFAULT_TAIL_FLOOR = 1e-6


def _float(x: torch.Tensor) -> torch.Tensor:
    """Half-precision inputs are upcast to float32; float32 / float64 are kept."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def teacher_buckets(
    topk_logprobs: torch.Tensor,
    *,
    gen_temperature: float = 1.0,
    temperature: float = 1.0,
    tail: bool = True,
    tail_floor: float = DEFAULT_TAIL_FLOOR,
) -> torch.Tensor:
    """Teacher target on the top-k set S (+ tail), re-tempered from `gen_temperature` to `temperature`.

    Input `topk_logprobs` [N, K]: log P_i of the teacher at generation temperature T_gen (the value the
    stored logprobs reflect: 1 for raw logprobs), sorted descending, -inf allowed only as trailing ranks
    (masked). With a = T_gen / T:

    - `tail=True` -> [N, K+1]: buckets S + {tail} with P_tail = max(0, 1 - sum_S P_i); the tail is treated
      as one pseudo-token and every bucket is re-tempered alike:
      log p_b = a log P_b - logsumexp_b'(a log P_b'). Exact for T = T_gen; for T != T_gen the tail's
      share is approximate (docs/losses.md). A tail mass below `tail_floor` (unresolvable: quantisation,
      rounding) is taken as 0 before re-tempering; after it the tail is floored at `tail_floor` and the
      k+1 buckets renormalised, so the result is always a proper distribution.
    - `tail=False` -> [N, K]: log p_i = a log P_i - logsumexp_{j in S}(a log P_j) (exact on S for any T).

    Masked ranks stay -inf. A row with no finite logprob has all its mass in the tail (log p_tail = 0),
    or is all -inf without a tail. The teacher carries no gradient.
    """
    if gen_temperature <= 0 or temperature <= 0:
        raise ValueError(f"temperatures must be > 0, got gen_temperature={gen_temperature}, {temperature=}")
    a = gen_temperature / temperature
    logp = _float(topk_logprobs)
    valid = torch.isfinite(logp)  # [N, K]
    logp = torch.where(valid, logp, -math.inf)  # NaN / +inf (never written) are masked, not propagated
    if not tail:
        x = a * logp  # [N, K]
        lse = torch.logsumexp(x, dim=-1, keepdim=True)  # [N, 1], -inf for an empty row
        return torch.where(valid, x - torch.where(torch.isfinite(lse), lse, 0.0), -math.inf)
    # Tail mass 1 - sum_S P_i = -expm1(logsumexp_S log P): exact near 0 and near 1 (no 1 - sum in float).
    # Quantised probabilities may sum above 1 (docs/trace_schema.md): the mass is clamped at 0, then floored.
    lse_s = torch.logsumexp(logp, dim=-1)  # [N], -inf for an empty row -> tail = log 1 = 0
    log_tail = torch.log((-torch.expm1(lse_s)).clamp_min(0.0))  # [N], -inf when sum_S P >= 1
    # A tail below the floor is taken as 0 *before* re-tempering: x ** a (a < 1) would magnify rounding
    # noise (1e-16 -> 1e-8 at a = 1/2, 5e-6 at a = 1/3) into a spurious tail. It ends at the floor below.
    log_tail = torch.where(log_tail < math.log(tail_floor), -math.inf, log_tail)
    x = a * torch.cat([logp, log_tail[:, None]], dim=-1)  # [N, K+1], pseudo-token re-tempering
    x = x - torch.logsumexp(x, dim=-1, keepdim=True)  # at least one finite bucket per row
    x = torch.cat([x[:, :-1], x[:, -1:].clamp_min(math.log(tail_floor))], dim=-1)
    return x - torch.logsumexp(x, dim=-1, keepdim=True)  # no-op unless the floor was hit


def student_buckets(
    logits: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    temperature: float = 1.0,
    tail: bool = True,
    valid: torch.Tensor | None = None,
    tail_floor: float = DEFAULT_TAIL_FLOOR,
    log_normalized: bool = False,
) -> torch.Tensor:
    """Student distribution softmax(z / T) [N, V] collapsed onto the teacher's buckets.

    `logits` [N, V] (raw logits z, not yet divided by T; a log-softmax works too, softmax being
    shift-invariant), `topk_ids` [N, K] (int), `valid` [N, K] bool (ranks in S; default all). Ids at
    invalid ranks may be anything, even out of range; ids at valid ranks must be < V (teacher and student
    vocabularies checked by the caller: ids are clamped, not checked, to avoid a host sync). With
    lse = logsumexp_v(z_v / T):

    - `tail=True` -> [N, K+1]: log q_i = z_i / T - lse for i in S, and the tail bucket
      log q_tail = logsumexp_{v not in S}(z_v / T) - lse, exact: a masked logsumexp, not
      log(1 - sum_S q_i), which cancels catastrophically when S holds almost all the mass. The tail is
      clamped below at log(tail_floor) (no gradient there): with k = V it is empty (log 0).
    - `tail=False` -> [N, K]: renormalised over S, log q_i = z_i / T - logsumexp_{j in S}(z_j / T).

    Invalid ranks are -inf (their ids' mass is in the tail). A row with no valid rank has log q_tail = 0.
    Never builds an [N, V] distribution beyond the scaled logits and one masked copy (per call: call it
    per chunk of rows, see chunked.py). `log_normalized=True` says `logits` already are log softmax(z)
    at T = 1 (the trainer shares cross-entropy's log-softmax): lse = 0 is then not recomputed.
    """
    if log_normalized and temperature != 1.0:
        raise ValueError("log_normalized logits are log softmax(z) at temperature 1")
    z = _float(logits)
    if temperature != 1.0:
        z = z / temperature  # [N, V]
    ids = topk_ids.long()
    if valid is None:
        valid = torch.ones_like(ids, dtype=torch.bool)
    empty = ~valid.any(dim=-1)  # [N]
    # Masked ranks repeat rank 0's id, so every scatter below writes the same value to a duplicated id.
    ids = torch.where(valid, ids, ids[:, :1]).clamp(0, z.shape[-1] - 1)  # [N, K]
    picked = z.gather(-1, ids)  # [N, K]
    if not tail:
        x = torch.where(valid | empty[:, None], picked, -math.inf)  # an empty row keeps a finite dummy
        return torch.where(valid, x - torch.logsumexp(x, dim=-1, keepdim=True), -math.inf)
    lse = z.new_zeros(z.shape[:-1]) if log_normalized else torch.logsumexp(z, dim=-1)  # [N]
    # finfo.min rather than -inf: a row whose every id is in S then has a finite logsumexp and gradient.
    rest = z.scatter(-1, ids, torch.finfo(z.dtype).min)  # [N, V], S removed
    log_tail = torch.logsumexp(rest, dim=-1) - lse  # [N]
    log_tail = torch.where(empty, 0.0, log_tail).clamp_min(math.log(tail_floor))
    top = torch.where(valid, picked - lse[:, None], -math.inf)  # [N, K]
    return torch.cat([top, log_tail[:, None]], dim=-1)
