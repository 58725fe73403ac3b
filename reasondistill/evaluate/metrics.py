"""Benchmark metrics: pass@k, maj@k and bootstrap confidence intervals, as pure functions.

Every metric is a mean over problems of a per-problem score, so one bootstrap routine gives every
confidence interval. Per-problem scores:

- pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1): with n samples
  of which c are correct, the probability that a uniformly random k-subset holds at least one correct
  sample, 1 - C(n-c, k) / C(n, k). Unbiased for the pass@k of a model that draws k samples; pass@1 is c/n.
- maj@k: the probability that a majority vote over a uniformly random k-subset of the n samples picks
  a correct answer. Samples vote for their answer class (equivalent answers form one class, samples
  with no answer abstain); a tie between the correct class and t others earns 1/(t+1), the expected
  score of breaking the tie at random. maj@n is the plain majority vote over all samples.

Comparing training methods over several seeds, `seed_problem_bootstrap` resamples both seeds and
problems; given the per-problem differences of two methods (same seeds, same problems) it is the paired
interval of their difference.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from math import comb

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with c correct samples out of n (needs 1 <= k <= n)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # 1 - C(n-c, k) / C(n, k) as a product, which stays finite for large n (Chen et al.'s code).
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def majority_at_k(votes: Sequence[Hashable | None], correct: Hashable, k: int) -> float:
    """maj@k of one problem: `votes` holds each sample's answer class (None: no answer), `correct` the
    class of the gold answer. Exact, without enumerating the C(n, k) subsets.

    A subset takes v samples of the correct class and x_j of each other class j; it wins when every
    x_j <= v, earning 1/(1 + #{j: x_j = v}). A dynamic programme over the other classes counts the
    subsets by (samples drawn, classes tied at v): ways[s, t] [k+1, classes+1].
    """
    n = len(votes)
    if not 1 <= k <= n:
        raise ValueError(f"maj@k needs 1 <= k <= n = {n} samples, got k={k}")
    counts = Counter(vote for vote in votes if vote is not None)
    right = counts.pop(correct, 0)
    others = list(counts.values())
    abstain = n - right - sum(others)
    winning = 0.0
    for v in range(1, min(right, k) + 1):
        ways = np.zeros((k + 1, len(others) + 1))
        ways[0, 0] = 1.0
        for size in others:
            drawn = np.zeros_like(ways)
            for x in range(min(size, v) + 1):
                tie = int(x == v)
                drawn[x:, tie:] += comb(size, x) * ways[: k + 1 - x, : ways.shape[1] - tie]
            ways = drawn
        # The abstainers fill the rest of the subset: C(abstain, k - v - s) ways for s other votes.
        fill = np.array([comb(abstain, k - v - s) if s <= k - v else 0 for s in range(k + 1)])
        credit = 1.0 / np.arange(1, len(others) + 2)
        winning += comb(right, v) * float(fill @ ways @ credit)
    return winning / comb(n, k)


def bootstrap_ci(
    scores: Sequence[float], seed: int, resamples: int = 10_000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-problem scores (problems resampled with
    replacement); the same seed gives the same interval."""
    values = np.asarray(scores, dtype=np.float64)
    if values.size == 0:
        raise ValueError("bootstrap_ci needs at least one score")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // values.size)  # bounds the [chunk, problems] index array's memory
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        means[start : start + rows] = values[rng.integers(0, values.size, size=(rows, values.size))].mean(1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def seed_problem_bootstrap(
    scores: np.ndarray | Sequence[Sequence[float]], seed: int, resamples: int = 10_000, level: float = 0.95
) -> tuple[float, float, float]:
    """(mean, low, high) of per-problem scores [seeds, problems]: a percentile bootstrap that draws
    seeds with replacement and, independently, problems with replacement, and averages the [drawn seeds x
    drawn problems] block. Both sources of spread count: a run's luck (seed) and the test set's (problems).

    For a paired comparison pass `a - b`, the per-problem differences of two methods trained with the same
    seeds and scored on the same problems: every resample keeps each pair together.
    """
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(
            f"seed_problem_bootstrap needs a non-empty [seeds, problems] array, got {values.shape}"
        )
    runs, problems = values.shape
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for i in range(resamples):  # [runs, problems] per draw: small next to one training run
        drawn_runs = rng.integers(0, runs, size=runs)
        drawn_problems = rng.integers(0, problems, size=problems)
        means[i] = values[np.ix_(drawn_runs, drawn_problems)].mean()
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(values.mean()), float(low), float(high)


def k_values(n: int) -> list[int]:
    """The k reported for n samples per problem: 1, the powers of two below n, and n."""
    return sorted({1, n} | {2**i for i in range(n.bit_length()) if 2**i <= n})
