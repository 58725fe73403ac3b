"""The privacy option's pieces against independent references: the accountant against dp_accounting called
directly and the analytic Gaussian mechanism, the simplex projection against bisection, the sensitivity
bound at its extremes, the noise's scale, and released labels that pass the server's checks."""

import math

import numpy as np
import pytest
from dp_accounting import GaussianDpEvent
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from scipy.optimize import brentq
from scipy.stats import norm

from reasondistill.core.traces import encode_logprobs
from reasondistill.federate.privacy import (
    LabelNoise,
    clip_rows,
    contribution_rows,
    epsilon_spent,
    gaussian_mechanism,
    noised_labels,
    post_process,
    project_to_simplex,
)
from reasondistill.federate.soft_labels import SoftLabels, prompt_set_digest
from reasondistill.federate.validation import RoundRequest, check_reply


def analytic_gaussian_epsilon(mu: float, delta: float) -> float:
    """The exact epsilon of a Gaussian mechanism of sensitivity / std = mu (Balle and Wang 2018):
    delta(eps) = Phi(-eps / mu + mu / 2) - e^eps Phi(-eps / mu - mu / 2), solved for eps."""

    def excess(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta

    return brentq(excess, 0.0, 500.0)


@pytest.mark.parametrize(("z", "rounds", "delta"), [(1.0, 1, 1e-5), (2.0, 4, 1e-5), (0.8, 10, 1e-6)])
def test_epsilon_is_dp_accountings_and_the_exact_gaussian_composition(z, rounds, delta):
    eps = epsilon_spent(z, rounds, delta)
    # dp_accounting called directly, the rounds composed one at a time
    accountant = PLDAccountant()
    for _ in range(rounds):
        accountant.compose(GaussianDpEvent(z))
    assert eps == pytest.approx(accountant.get_epsilon(delta), rel=1e-3)
    # R Gaussian mechanisms of multiplier z compose exactly to one of multiplier z / sqrt(R): PLD's
    # pessimistic discretisation lies just above the exact value; RDP's bound is looser
    exact = analytic_gaussian_epsilon(math.sqrt(rounds) / z, delta)
    assert exact - 1e-6 <= eps <= exact * 1.01 + 1e-3
    rdp = RdpAccountant()
    rdp.compose(GaussianDpEvent(z), rounds)
    assert eps <= rdp.get_epsilon(delta)
    assert epsilon_spent(z, rounds + 1, delta) > eps  # every round released costs


def test_projection_onto_the_simplex_against_bisection():
    rng = np.random.default_rng(0)
    y = np.concatenate([rng.normal(0, 3, (50, 9)), rng.normal(0.1, 0.01, (5, 9)), np.eye(9)[:3] * 5])
    projected = project_to_simplex(y)
    for row, p in zip(y, projected, strict=True):
        low, high = row.min() - 1, row.max()  # sum(max(row - tau, 0)) falls from >= 1 to 0 over [low, high]
        for _ in range(200):
            tau = (low + high) / 2
            low, high = (tau, high) if np.maximum(row - tau, 0).sum() > 1 else (low, tau)
        np.testing.assert_allclose(p, np.maximum(row - low, 0), atol=1e-9)
    assert (projected >= 0).all() and np.allclose(projected.sum(axis=1), 1)
    distribution = rng.dirichlet(np.ones(9), size=4)
    np.testing.assert_allclose(project_to_simplex(distribution), distribution, atol=1e-12)  # already there


def test_contribution_rows_clipping_and_the_sensitivity_bound():
    # token 0: top-3 with the completion token (id 5) outside it; token 1: a masked rank, completion in top
    topk_ids = np.array([[2, 7, 1], [5, 3, 0]])
    topk_logprobs = np.log(np.array([[0.5, 0.2, 0.1], [0.9, 0.05, 1.0]]))
    topk_logprobs[1, 2] = -np.inf
    x = contribution_rows(topk_ids, topk_logprobs, np.array([5, 5]), np.log(np.array([0.15, 0.9])), 8)
    np.testing.assert_allclose(x[0], [0, 0.1, 0.5, 0, 0, 0.15, 0, 0.2, 0.05])  # tail 1 - 0.95
    np.testing.assert_allclose(x[1], [0, 0, 0, 0.05, 0, 0.9, 0, 0, 0.05])
    assert np.array_equal(clip_rows(x, 1.0), x)  # a probability vector's norm is at most 1
    clipped = clip_rows(x, 0.3)
    np.testing.assert_allclose(np.linalg.norm(clipped, axis=1), 0.3)
    np.testing.assert_allclose(
        clipped / np.linalg.norm(clipped, axis=1, keepdims=True), x / np.linalg.norm(x, axis=1, keepdims=True)
    )
    # Delta = C sqrt(2 N) bounds any two clipped contributions and is reached by disjoint one-hot rows
    noise = LabelNoise(noise_multiplier=1.5, clip_norm=0.3)
    rng = np.random.default_rng(1)
    for _ in range(200):
        a, b = (clip_rows(rng.dirichlet(np.full(9, 0.05), size=4), 0.3) for _ in range(2))
        assert np.linalg.norm(a - b) <= noise.sensitivity(4) + 1e-12
    one_hot = clip_rows(np.eye(9)[[0, 1, 2, 3]], 0.3), clip_rows(np.eye(9)[[4, 5, 6, 7]], 0.3)
    assert np.linalg.norm(one_hot[0] - one_hot[1]) == pytest.approx(noise.sensitivity(4))
    assert noise.noise_std(4) == pytest.approx(1.5 * 0.3 * math.sqrt(8))


def test_released_labels_are_the_post_processed_noise_and_pass_the_servers_checks():
    rng = np.random.default_rng(2)
    vocab, n, k = 64, 300, 8
    logits = rng.normal(0, 3, (n, vocab))
    logprobs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    topk_ids = np.argsort(-logprobs, axis=1)[:, :k]
    topk_logprobs = np.take_along_axis(logprobs, topk_ids, axis=1)
    completion = rng.integers(0, vocab, n)
    sampled = logprobs[np.arange(n), completion]
    noise = LabelNoise(noise_multiplier=0.002, clip_norm=1.0)
    x = contribution_rows(topk_ids, topk_logprobs, completion, sampled, vocab)

    # the noise on every coordinate, zeros included, has std z * C * sqrt(2 N)
    y = gaussian_mechanism(x, noise, n, np.random.default_rng(3))
    assert np.std(y - x) == pytest.approx(noise.noise_std(n), rel=0.02) and abs(np.mean(y - x)) < 1e-3
    # what is released is exactly that, post-processed (chunked rows draw the same numbers in order)
    released = noised_labels(
        topk_ids, topk_logprobs, completion, sampled, vocab, noise, np.random.default_rng(3)
    )
    for got, expected in zip(released, post_process(y, completion, k), strict=True):
        np.testing.assert_array_equal(got, expected)
    ids, lp, sampled_out = released
    # small noise (std 0.05): the labels stay near the model's, but are not its
    assert not np.array_equal(ids, topk_ids)
    clear = np.exp(topk_logprobs[:, 0]) - np.exp(topk_logprobs[:, 1]) > 0.3  # a lead of 6 noise std
    assert clear.sum() > 100 and (ids[clear, 0] == topk_ids[clear, 0]).all()
    assert np.abs(np.exp(lp[:, 0]) - np.exp(topk_logprobs[:, 0])).mean() < 0.1
    # a valid reply: distinct in-range ids, descending logprobs, finite completion logprobs
    labels = SoftLabels(
        client="client-0",
        round=1,
        prompt_set_digest=prompt_set_digest(["p"]),
        k=k,
        vocab_size=vocab,
        tokenizer_fingerprint="f" * 16,
        topk_ids=ids,
        topk_logprob_codes=encode_logprobs(lp),
        sampled_logprob=sampled_out,
        token_counts=np.array([n], dtype=np.int32),
    )
    check_reply(labels, RoundRequest(1, ("p",), prompt_set_digest(["p"]), (n,), k, vocab, "f" * 16))
    assert (lp == -np.inf).any()  # the projection zeroes small noisy entries: masked ranks, still valid
