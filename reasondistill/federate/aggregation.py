"""Clients' top-k soft labels on the same completion tokens -> one consensus top-k (pure functions).

For one completion token t, client c (weight w_c, normalised to sum 1 over the clients aggregated)
stored its top-k_c ids S_c with probabilities P_c(i) = exp(logprob) and, implicitly, the tail bucket
P_c(tail) = 1 - sum_{i in S_c} P_c(i): the mass of every token outside S_c. As in the trainer's loss
(docs/losses.md, one pseudo-token tail), a token outside S_c belongs to c's tail: its probability under c
is not recorded, and none is invented for it. Over the union U = S_1 u ... u S_C:

    P(i)    = sum_c w_c P_c(i)            for i in U, with P_c(i) = 0 where i is not in S_c
    P(tail) = sum_c w_c P_c(tail)         (so sum_{i in U} P(i) + P(tail) = 1)

i.e. the weighted average in probability space of each client's distribution over the buckets
U + {tail}. The consensus keeps the k most probable ids of U (ties: smaller id first); the mass of the
ids it drops joins the tail, which the trace encoding leaves implicit (1 - sum of the kept top-k), so the
result is a top-k in the trace encoding (docs/trace_schema.md) that the trainer reads like a teacher's.
Quantised probabilities can sum slightly above 1 (trace_schema.md); a client's top-k is scaled down to
sum 1 then (its tail is 0), so no client weighs more than its w_c.

Where every client sends the whole vocabulary (k_c = V), this is exactly the top-k of the mixture
sum_c w_c P_c, and with one client it returns that client's top-k unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def normalised_weights(weights: Sequence[float]) -> np.ndarray:
    """Client weights [C] scaled to sum 1; refuses negative, non-finite or all-zero weights."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"client weights must be finite, >= 0 and not all 0, got {list(weights)}")
    return w / w.sum()


def aggregate_topk(
    client_ids: Sequence[np.ndarray],
    client_logprobs: Sequence[np.ndarray],
    weights: Sequence[float],
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Consensus top-k of C clients' top-k on the same T tokens (the module docstring's math).

    client_ids[c] [T, k_c] int and client_logprobs[c] [T, k_c] float: client c's top-k ids and logprobs
    (-inf = a masked rank, ignored; k_c may differ between clients); weights [C].
    Returns ids [T, k] int64 and logprobs [T, k] float32, by probability descending (ties: smaller id
    first). Where the union holds fewer than k tokens of non-zero mass, the last ranks are masked: logprob
    -inf, ids the smallest ids not used at that token (the ids of one token stay distinct).
    """
    w = normalised_weights(weights)
    if len(client_ids) != len(w) or len(client_logprobs) != len(w):
        raise ValueError(
            f"{len(client_ids)} id and {len(client_logprobs)} logprob arrays for {len(w)} weights"
        )
    tokens = {np.shape(ids)[0] for ids in client_ids} | {np.shape(lp)[0] for lp in client_logprobs}
    if len(tokens) != 1:
        raise ValueError(f"clients cover different numbers of tokens: {sorted(tokens)}")
    num_tokens = tokens.pop()
    rows, ids, mass = [], [], []
    for c, (c_ids, c_lp) in enumerate(zip(client_ids, client_logprobs, strict=True)):
        c_ids, c_lp = np.asarray(c_ids, dtype=np.int64), np.asarray(c_lp, dtype=np.float64)
        p = np.exp(c_lp)  # [T, k_c], 0 at masked ranks
        p = p / np.maximum(p.sum(axis=1, keepdims=True), 1.0)  # quantised sums above 1 -> scaled to 1
        keep = p > 0
        rows.append(np.broadcast_to(np.arange(num_tokens)[:, None], c_ids.shape)[keep])
        ids.append(c_ids[keep])
        mass.append(w[c] * p[keep])
    rows, ids, mass = np.concatenate(rows), np.concatenate(ids), np.concatenate(mass)
    # sum each (token, id)'s mass over the clients that ranked it
    pairs, where = np.unique(np.stack([rows, ids], axis=1), axis=0, return_inverse=True)
    summed = np.bincount(where.reshape(-1), weights=mass, minlength=len(pairs))
    u_rows, u_ids = pairs[:, 0], pairs[:, 1]
    # per token: mass descending, then id ascending; rank = position within the token's run
    order = np.lexsort((u_ids, -summed, u_rows))
    u_rows, u_ids, summed = u_rows[order], u_ids[order], summed[order]
    starts = np.searchsorted(u_rows, np.arange(num_tokens))
    rank = np.arange(len(u_rows)) - starts[u_rows]
    kept = rank < k
    out_ids = np.full((num_tokens, k), -1, dtype=np.int64)
    out_lp = np.full((num_tokens, k), -np.inf, dtype=np.float64)
    out_ids[u_rows[kept], rank[kept]] = u_ids[kept]
    out_lp[u_rows[kept], rank[kept]] = np.log(summed[kept])
    _fill_masked_ids(out_ids)
    return out_ids, out_lp.astype(np.float32)


def _fill_masked_ids(ids: np.ndarray) -> None:
    """Give masked ranks (id -1) the smallest ids unused at their token, in place."""
    for row in np.flatnonzero((ids < 0).any(axis=1)):
        used = set(ids[row][ids[row] >= 0].tolist())
        free = (i for i in range(ids.shape[1] * 2) if i not in used)  # k free ids exist below 2k
        ids[row][ids[row] < 0] = [next(free) for _ in range(int((ids[row] < 0).sum()))]


def mix_logprobs(client_logprobs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """log sum_c w_c exp(logprob_c): the consensus probability of each completion token, [T] float32.

    client_logprobs[c] [T]: client c's logprob of the token actually in the completion (exact, whether or
    not it is in c's top-k), so the mixture is exact too.
    """
    w = normalised_weights(weights)
    lp = np.stack([np.asarray(x, dtype=np.float64) for x in client_logprobs])  # [C, T]
    with np.errstate(divide="ignore"):  # a zero weight is log 0 = -inf, which logaddexp handles
        return np.logaddexp.reduce(lp + np.log(w)[:, None], axis=0).astype(np.float32)
