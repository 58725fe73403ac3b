"""pass@k, maj@k and bootstrap intervals against hand-computed cases and brute-force enumeration."""

import itertools
import random
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from reasondistill.evaluate.metrics import (
    bootstrap_ci,
    k_values,
    majority_at_k,
    pass_at_k,
    seed_problem_bootstrap,
)


def brute_pass_at_k(correct: list[bool], k: int) -> Fraction:
    subsets = list(itertools.combinations(correct, k))
    return Fraction(sum(any(subset) for subset in subsets), len(subsets))


def brute_majority_at_k(votes: list, correct, k: int) -> Fraction:
    """Every k-subset's vote, ties between the correct class and t others earning 1/(t+1)."""
    total, subsets = Fraction(0), list(itertools.combinations(votes, k))
    for subset in subsets:
        counts = Counter(vote for vote in subset if vote is not None)
        if counts.get(correct, 0) == 0:
            continue
        top = max(counts.values())
        if counts[correct] == top:
            total += Fraction(1, sum(count == top for count in counts.values()))
    return total / len(subsets)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
        (4, 1, 1, 0.25),
        (4, 1, 2, 0.5),  # 3 of the 6 pairs hold the correct sample
        (4, 2, 2, 5 / 6),  # only the pair of two wrong ones fails
        (4, 3, 2, 1.0),  # n - c < k: every pair holds a correct sample
        (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
        (10, 0, 5, 0.0),
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_enumeration():
    rng = random.Random(0)
    for _ in range(60):
        n = rng.randint(1, 9)
        correct = [rng.random() < 0.4 for _ in range(n)]
        for k in range(1, n + 1):
            expected = float(brute_pass_at_k(correct, k))
            assert pass_at_k(n, sum(correct), k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_finite_for_many_samples():
    assert pass_at_k(2000, 3, 1000) == pytest.approx(1 - (1000 * 999 * 998) / (2000 * 1999 * 1998))


@pytest.mark.parametrize("bad", [(4, 5, 1), (4, 2, 0), (4, 2, 5), (3, -1, 1)])
def test_pass_at_k_refuses_impossible_counts(bad):
    with pytest.raises(ValueError, match="pass@k"):
        pass_at_k(*bad)


@pytest.mark.parametrize(
    ("votes", "k", "expected"),
    [
        (["A", "A", "B"], 3, 1.0),  # plain majority
        (["A", "B", "B"], 3, 0.0),
        (["A", "B"], 2, 0.5),  # a tie between two classes: a coin flip
        (["A", "B", "C"], 3, 1 / 3),
        (["A", None, None], 3, 1.0),  # abstainers do not vote
        ([None, None], 2, 0.0),  # nobody answered
        (["A", "B", "B", None], 1, 0.25),  # maj@1 = pass@1
        # k=2 from {A, B, B, None}: AB tie 1/2, AB tie 1/2, A- wins 1, BB 0, B- 0, B- 0 -> 2/6
        (["A", "B", "B", None], 2, 1 / 3),
    ],
)
def test_majority_at_k_hand_computed(votes, k, expected):
    assert majority_at_k(votes, "A", k) == pytest.approx(expected, abs=1e-12)


def test_majority_at_k_matches_enumeration():
    rng = random.Random(1)
    for _ in range(80):
        n = rng.randint(1, 9)
        votes = [rng.choice(["A", "A", "B", "C", "D", None]) for _ in range(n)]
        for k in range(1, n + 1):
            expected = float(brute_majority_at_k(votes, "A", k))
            assert majority_at_k(votes, "A", k) == pytest.approx(expected, abs=1e-12), (votes, k)


def test_majority_at_k_handles_many_samples():
    votes = ["A"] * 30 + ["B"] * 20 + ["C"] * 10 + [None] * 4
    score = majority_at_k(votes, "A", 64)
    assert score == 1.0
    assert 0.5 < majority_at_k(votes, "A", 16) < 1.0


def test_majority_at_k_refuses_k_above_n():
    with pytest.raises(ValueError, match="maj@k"):
        majority_at_k(["A"], "A", 2)


def test_bootstrap_ci_is_reproducible_with_a_seed_and_brackets_the_mean():
    scores = np.random.default_rng(0).random(300) < 0.6
    first = bootstrap_ci(scores, seed=7)
    assert first == bootstrap_ci(scores, seed=7)
    fractions = np.random.default_rng(0).random(300)  # continuous scores: another seed moves the ends
    assert bootstrap_ci(fractions, seed=7) != bootstrap_ci(fractions, seed=8)
    low, high = first
    assert low < scores.mean() < high
    # The normal approximation's half-width 1.96 * sd / sqrt(n) for a proportion near 0.6.
    half_width = 1.96 * np.sqrt(scores.mean() * (1 - scores.mean()) / scores.size)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)


def test_bootstrap_ci_of_constant_scores_is_a_point():
    assert bootstrap_ci([1.0] * 50, seed=0, resamples=200) == (1.0, 1.0)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci([], seed=0)


def test_k_values():
    assert k_values(1) == [1]
    assert k_values(4) == [1, 2, 4]
    assert k_values(6) == [1, 2, 4, 6]


def test_seed_problem_bootstrap_matches_the_enumerated_distribution():
    """2 seeds x 3 problems: all 2^2 x 3^3 equally likely (seed draw, problem draw) pairs enumerated; the
    bootstrap's percentiles must sit on the exact distribution's."""
    scores = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    exact = sorted(
        scores[np.ix_(runs, problems)].mean()
        for runs in itertools.product(range(2), repeat=2)
        for problems in itertools.product(range(3), repeat=3)
    )
    mean, low, high = seed_problem_bootstrap(scores, seed=0, resamples=40_000)
    assert mean == pytest.approx(0.5)
    assert low == pytest.approx(np.percentile(exact, 2.5), abs=0.02)
    assert high == pytest.approx(np.percentile(exact, 97.5), abs=0.02)


def test_seed_problem_bootstrap_counts_seed_spread_and_pairs_differences():
    rng = np.random.default_rng(0)
    problems = rng.random(200) < 0.5
    steady = np.tile(problems, (3, 1)).astype(float)  # three seeds that agree
    shifted = steady + np.array([[0.0], [0.3], [-0.3]])  # the same test set, seeds that disagree
    _, low, high = seed_problem_bootstrap(steady, seed=1, resamples=2000)
    _, low_shifted, high_shifted = seed_problem_bootstrap(shifted, seed=1, resamples=2000)
    assert high_shifted - low_shifted > high - low  # seed spread widens the interval
    # paired: a method that is exactly 0.1 better on every problem of every seed differs by 0.1, no spread
    assert seed_problem_bootstrap(shifted + 0.1 - shifted, seed=1, resamples=500) == pytest.approx((0.1,) * 3)
    with pytest.raises(ValueError, match="seeds, problems"):
        seed_problem_bootstrap([1.0, 0.0], seed=0)
