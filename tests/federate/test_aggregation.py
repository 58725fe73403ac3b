"""Consensus of clients' top-k soft labels: a hand-computed example and a dense-vocabulary brute force."""

from __future__ import annotations

import numpy as np
import pytest

from reasondistill.federate.aggregation import aggregate_topk, mix_logprobs


def test_hand_computed_two_clients():
    # token 0: A ranks 3 (0.6), 7 (0.3), tail 0.1; B ranks 7 (0.5), 5 (0.4), tail 0.1
    a_ids, a_lp = np.array([[3, 7]]), np.log([[0.6, 0.3]])
    b_ids, b_lp = np.array([[7, 5]]), np.log([[0.5, 0.4]])
    # equal weights: 7 = (0.3 + 0.5) / 2 = 0.4, 3 = 0.6 / 2 = 0.3, 5 = 0.2 (dropped: joins the tail)
    ids, lp = aggregate_topk([a_ids, b_ids], [a_lp, b_lp], [1, 1], k=2)
    assert ids.tolist() == [[7, 3]]
    np.testing.assert_allclose(np.exp(lp), [[0.4, 0.3]], rtol=1e-6)
    # weights 3 : 1 -> 3 = 0.75 * 0.6 = 0.45, 7 = 0.75 * 0.3 + 0.25 * 0.5 = 0.35, 5 = 0.1
    ids, lp = aggregate_topk([a_ids, b_ids], [a_lp, b_lp], [3, 1], k=3)
    assert ids.tolist() == [[3, 7, 5]]
    np.testing.assert_allclose(np.exp(lp), [[0.45, 0.35, 0.1]], rtol=1e-6)


def dense_reference(client_ids, client_lp, weights, k, vocab):
    """Each client's top-k scattered into a dense [T, V] vector (0 outside its top-k: its tail is one
    bucket), averaged with the weights, the top-k taken by (probability desc, id asc)."""
    w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    num_tokens = client_ids[0].shape[0]
    dense = np.zeros((num_tokens, vocab))
    for c, (ids, lp) in enumerate(zip(client_ids, client_lp, strict=True)):
        p = np.exp(lp.astype(np.float64))
        p = p / np.maximum(p.sum(axis=1, keepdims=True), 1.0)
        for t in range(num_tokens):
            for i, pi in zip(ids[t], p[t], strict=True):
                dense[t, i] += w[c] * pi
    ref_ids = np.zeros((num_tokens, k), dtype=np.int64)
    ref_p = np.zeros((num_tokens, k))
    for t in range(num_tokens):
        order = sorted(range(vocab), key=lambda i: (-dense[t, i], i))[:k]
        ref_ids[t], ref_p[t] = order, dense[t, order]
    return ref_ids, ref_p


def random_topk(rng, num_tokens, vocab, k, masked_rows=()):
    """A client's top-k of random distributions over the vocabulary; `masked_rows` lose their last 2 ranks."""
    logits = rng.normal(scale=2.0, size=(num_tokens, vocab))
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    ids = np.argsort(-logp, axis=1, kind="stable")[:, :k]
    lp = np.take_along_axis(logp, ids, axis=1)
    for t in masked_rows:
        lp[t, -2:] = -np.inf
    return ids, lp.astype(np.float32)


def test_matches_dense_vocabulary_reference():
    rng = np.random.default_rng(0)
    vocab, num_tokens = 40, 25
    clients = [random_topk(rng, num_tokens, vocab, kc, masked_rows=(3, 7)) for kc in (5, 8, 3)]
    weights = [0.5, 1.5, 1.0]
    for k in (1, 4, 6, 12):
        ids, lp = aggregate_topk([c[0] for c in clients], [c[1] for c in clients], weights, k)
        ref_ids, ref_p = dense_reference([c[0] for c in clients], [c[1] for c in clients], weights, k, vocab)
        nonzero = ref_p > 0
        np.testing.assert_array_equal(ids[nonzero], ref_ids[nonzero])
        np.testing.assert_allclose(np.exp(lp)[nonzero], ref_p[nonzero], rtol=1e-5)
        assert np.isneginf(lp[~nonzero]).all()


def test_full_vocabulary_clients_give_the_top_k_of_the_mixture():
    rng = np.random.default_rng(1)
    vocab = 16
    clients = [random_topk(rng, 6, vocab, vocab) for _ in range(3)]
    full = np.zeros((6, vocab))
    for ids, lp in clients:
        dense = np.zeros((6, vocab))
        np.put_along_axis(dense, ids, np.exp(lp.astype(np.float64)), axis=1)
        full += dense / 3
    ids, lp = aggregate_topk([c[0] for c in clients], [c[1] for c in clients], [1, 1, 1], k=vocab)
    np.testing.assert_allclose(np.exp(lp), np.sort(full, axis=1)[:, ::-1], rtol=1e-5)
    np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1.0, rtol=1e-5)  # no tail: the whole vocabulary


def test_one_client_is_returned_unchanged():
    rng = np.random.default_rng(2)
    ids, lp = random_topk(rng, 10, 30, 5)
    out_ids, out_lp = aggregate_topk([ids], [lp], [2.0], k=5)
    np.testing.assert_array_equal(out_ids, ids)
    np.testing.assert_allclose(out_lp, lp, atol=1e-6)


def test_masked_ranks_get_distinct_unused_ids():
    # the union has 2 tokens of mass: ranks 3-4 are masked, with the smallest ids not used (0, 2)
    ids, lp = aggregate_topk([np.array([[1, 3]])], [np.log([[0.7, 0.2]])], [1], k=4)
    assert ids.tolist() == [[1, 3, 0, 2]]
    assert np.isneginf(lp[0, 2:]).all()


def test_quantised_sums_above_one_are_scaled_down():
    # decoded codes can sum slightly above 1; such a client counts with exactly its weight, tail 0
    ids, lp = aggregate_topk(
        [np.array([[0, 1]]), np.array([[2, 3]])], [np.log([[0.7, 0.31]]), np.log([[0.5, 0.5]])], [1, 1], k=4
    )
    p = np.exp(lp[0])
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p[ids[0] == 0], 0.5 * 0.7 / 1.01, rtol=1e-6)


def test_mixture_of_completion_token_logprobs():
    lps = [np.log([0.5, 0.1]), np.log([0.1, 0.3])]
    np.testing.assert_allclose(np.exp(mix_logprobs(lps, [1, 3])), [0.2, 0.25], rtol=1e-6)


@pytest.mark.parametrize("weights", [[], [1, -1], [0, 0], [1, float("nan")]])
def test_bad_weights_are_refused(weights):
    arrays = [np.zeros((1, 1), dtype=np.int64)] * len(weights)
    with pytest.raises(ValueError, match="client weights"):
        aggregate_topk(arrays, [np.zeros((1, 1))] * len(weights), weights, k=1)
