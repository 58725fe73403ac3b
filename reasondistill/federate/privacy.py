"""Differential privacy for the soft labels a client sends: clipping and Gaussian noise on the client, before
anything leaves it, and the privacy budget (epsilon, delta) from dp-accounting's PLD accountant.

**What a client releases in a round** is a function of its private data (through its model) with a fixed
shape: for each of the round's N public completion tokens t, the probability vector x_t of length V + 1
over the V token ids and one tail bucket,

    x_t[i] = P_c(i)                            for i in S_t u {y_t}: its top-k ids and the completion token
    x_t[V] = 1 - sum_{i in S_t u {y_t}} P_c(i) the tail: the mass of every other id
    x_t[i] = 0                                 elsewhere

so X = (x_1 .. x_N) is an N x (V + 1) matrix whose rows are probability vectors. N and the completion
tokens y_t are public (the public set's); which ids are in S_t is not, and is noised like the rest.

**Mechanism** (one Gaussian mechanism per client and round):

1. Clip each row to L2 norm C (`clip_norm`): x~_t = x_t min(1, C / |x_t|_2). A probability vector has
   |x_t|_2 <= 1, so C >= 1 never binds; C < 1 shrinks the confident rows (the noise shrinks with C).
2. Sensitivity. For the contributions X~, X~' of any two private data sets of the client (its whole data
   replaced by anything), both non-negative, |x~_t - x~'_t|^2 = |x~_t|^2 + |x~'_t|^2 - 2 <x~_t, x~'_t>
   <= 2 C^2, so |X~ - X~'|_F <= Delta = C sqrt(2 N).
3. Noise. Y = X~ + Z with Z i.i.d. N(0, (z Delta)^2) on all N (V + 1) coordinates, the zeros included:
   the Gaussian mechanism with noise multiplier z (`noise_multiplier`, std / L2 sensitivity). Drawn from
   the operating system's entropy, never from a seed the server could know.
4. Post-processing, which costs no privacy: each row y_t is projected onto the probability simplex
   (Euclidean projection, Duchi et al. 2008: p_t = max(y_t - tau_t, 0) with sum 1); the k ids of largest
   p_t (ties: smaller id) and log p_t are sent, ranks of zero probability masked, and the rest of the mass
   (the tail bucket's included) stays implicit in the trace encoding's tail; the completion token's
   logprob is log p_t[y_t], floored at the trace encoding's floor (the reply needs a finite number).

**Accounting.** A client that answers R rounds has run R Gaussian mechanisms of multiplier z on its data:
epsilon(delta) of `SelfComposedDpEvent(GaussianDpEvent(z), R)` from `dp_accounting.pld.PLDAccountant`.

**Guarantee.** (epsilon, delta)-DP for each client with respect to replacing its whole contribution (its
private data set, so its model, so every label it sent in the rounds counted), against the server and
anyone who reads the messages; it covers one private example, and any group of them, within the client.
It does not cover: a client that does not add the noise (the settings come in the server's request and the
server cannot check), which rounds a client answered and when, its reply's metadata (tokenizer
fingerprint, vocabulary size), nor the public set. The price: the noise per coordinate, z C sqrt(2 N),
grows with the tokens labelled per round, against a signal of at most C per coordinate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from dp_accounting import GaussianDpEvent, SelfComposedDpEvent
from dp_accounting.pld import PLDAccountant

from reasondistill.core.traces import LOGPROB_FLOOR

ROWS_ELEMENTS = 1 << 22  # rows noised at once: N x (V + 1) float64 would not fit for a 150k vocabulary


@dataclass(frozen=True)
class LabelNoise:
    """The Gaussian mechanism's settings: noise multiplier z and per-token clip norm C (module docstring)."""

    noise_multiplier: float
    clip_norm: float

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0 or not self.clip_norm > 0:
            raise ValueError(
                f"noise_multiplier and clip_norm must be > 0, got {self.noise_multiplier}, {self.clip_norm}"
            )

    def sensitivity(self, num_tokens: int) -> float:
        """Delta = C sqrt(2 N): the L2 distance between any two clipped contributions of N tokens."""
        return self.clip_norm * math.sqrt(2 * num_tokens)

    def noise_std(self, num_tokens: int) -> float:
        """z Delta: the standard deviation of the noise on every coordinate of a round of N tokens."""
        return self.noise_multiplier * self.sensitivity(num_tokens)


def epsilon_spent(noise_multiplier: float, rounds: int, delta: float) -> float:
    """epsilon at `delta` of `rounds` Gaussian mechanisms of `noise_multiplier` (PLD accountant)."""
    accountant = PLDAccountant()
    accountant.compose(SelfComposedDpEvent(GaussianDpEvent(noise_multiplier), rounds))
    return float(accountant.get_epsilon(delta))


def contribution_rows(
    topk_ids: np.ndarray,
    topk_logprobs: np.ndarray,
    completion_ids: np.ndarray,
    sampled_logprobs: np.ndarray,
    vocab_size: int,
) -> np.ndarray:
    """The client's contribution X [T, V + 1] for T tokens: probabilities at its top-k ids [T, k] (logprobs,
    -inf masked) and at the completion tokens [T], the rest of the mass in column V (the tail)."""
    rows = np.arange(len(completion_ids))
    x = np.zeros((len(completion_ids), vocab_size + 1))
    x[rows[:, None], topk_ids] = np.exp(topk_logprobs)
    x[rows, completion_ids] = np.exp(sampled_logprobs)  # the same value where y_t is in the top-k
    x[:, vocab_size] = np.maximum(1.0 - x[:, :vocab_size].sum(axis=1), 0.0)
    return x


def clip_rows(x: np.ndarray, clip_norm: float) -> np.ndarray:
    """Each row [T, D] scaled to L2 norm <= clip_norm."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x * np.minimum(1.0, clip_norm / np.maximum(norms, np.finfo(np.float64).tiny))


def project_to_simplex(y: np.ndarray) -> np.ndarray:
    """The Euclidean projection of each row [T, D] onto the probability simplex: max(y - tau, 0), tau such
    that the row sums to 1 (Duchi et al. 2008, sort-based)."""
    ranked = -np.sort(-y, axis=1)  # descending
    excess = np.cumsum(ranked, axis=1) - 1.0
    counts = np.arange(1, y.shape[1] + 1)
    support = ranked - excess / counts > 0  # true on a prefix; always at rank 0
    last = support.shape[1] - 1 - np.argmax(support[:, ::-1], axis=1)  # the prefix's last rank
    tau = excess[np.arange(len(y)), last] / (last + 1)
    return np.maximum(y - tau[:, None], 0.0)


def gaussian_mechanism(
    x: np.ndarray, noise: LabelNoise, num_tokens: int, rng: np.random.Generator
) -> np.ndarray:
    """Steps 1-3 on rows [T, V + 1] of a round of `num_tokens` tokens (T of them, or all): clip, add noise."""
    return clip_rows(x, noise.clip_norm) + rng.normal(0.0, noise.noise_std(num_tokens), size=x.shape)


def post_process(y: np.ndarray, completion_ids: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Step 4: noised rows [T, V + 1] -> top-k ids [T, k] int32, their logprobs [T, k] (descending, -inf at
    zero probability) and the completion tokens' logprobs [T] float32; uses nothing but y and public ids."""
    p = project_to_simplex(y)[:, :-1]  # the tail bucket stays implicit
    ids = np.argsort(-p, axis=1, kind="stable")[:, :k]  # stable: ties keep the smaller id first
    with np.errstate(divide="ignore"):  # log 0 = -inf: a masked rank
        logprobs = np.log(np.take_along_axis(p, ids, axis=1))
        sampled = np.maximum(np.log(p[np.arange(len(p)), completion_ids]), LOGPROB_FLOOR)
    return ids.astype(np.int32), logprobs, sampled.astype(np.float32)


def noised_labels(
    topk_ids: np.ndarray,
    topk_logprobs: np.ndarray,
    completion_ids: np.ndarray,
    sampled_logprobs: np.ndarray,
    vocab_size: int,
    noise: LabelNoise,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A round's N tokens of soft labels through the mechanism of the module docstring.

    topk_ids [N, k] int, topk_logprobs [N, k] (-inf masked), completion_ids [N], sampled_logprobs [N]:
    what the client's model says. Returns what it may send: ids [N, k] int32 (distinct per token),
    logprobs [N, k] descending (-inf at ranks of zero probability), sampled logprobs [N] float32.
    """
    num_tokens, k = topk_ids.shape
    step = max(1, ROWS_ELEMENTS // (vocab_size + 1))
    parts = []
    for start in range(0, num_tokens, step):
        rows = slice(start, start + step)
        x = contribution_rows(
            topk_ids[rows], topk_logprobs[rows], completion_ids[rows], sampled_logprobs[rows], vocab_size
        )
        parts.append(post_process(gaussian_mechanism(x, noise, num_tokens, rng), completion_ids[rows], k))
    ids, logprobs, sampled = zip(*parts, strict=True)
    return np.concatenate(ids), np.concatenate(logprobs), np.concatenate(sampled)
