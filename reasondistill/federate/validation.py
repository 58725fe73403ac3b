"""Checks of a client's soft labels against the round's request, before anything is aggregated.

A reply that fails one is rejected whole (the server logs the reason with the client's name and the round
goes on without it): a client cannot skew the consensus with NaN, foreign ids, another k, another prompt
set or rows that do not line up with the public completions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from reasondistill.core.traces import POSITIVE_TOLERANCE, invalid_logprob_codes
from reasondistill.federate.soft_labels import SoftLabels

CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # names the client's files on the server


class RejectedReply(ValueError):
    """Soft labels that do not answer the round's request; the message is the reason."""


@dataclass(frozen=True)
class RoundRequest:
    """What the server asked for in a round and what a valid answer must therefore look like."""

    round: int
    prompt_ids: tuple[str, ...]
    prompt_set_digest: str
    token_counts: tuple[int, ...]  # completion tokens of each named prompt, as the server tokenized them
    k: int
    vocab_size: int
    tokenizer_fingerprint: str


def check_reply(labels: SoftLabels, request: RoundRequest) -> None:
    """Raise RejectedReply naming the first problem of `labels` as an answer to `request`."""
    if not CLIENT_NAME.fullmatch(labels.client):
        raise RejectedReply(f"client name {labels.client!r} is not letters, digits, '.', '_', '-'")
    if labels.round != request.round or labels.prompt_set_digest != request.prompt_set_digest:
        raise RejectedReply(
            f"answers round {labels.round} / prompt set {labels.prompt_set_digest[:12]}, not round "
            f"{request.round} / {request.prompt_set_digest[:12]}"
        )
    if (
        labels.tokenizer_fingerprint != request.tokenizer_fingerprint
        or labels.vocab_size != request.vocab_size
    ):
        raise RejectedReply(
            f"tokenizer {labels.tokenizer_fingerprint} with vocab_size {labels.vocab_size}, not the public "
            f"set's {request.tokenizer_fingerprint} with {request.vocab_size}"
        )
    if labels.k != request.k or labels.topk_ids.shape[1:] != (request.k,):
        raise RejectedReply(f"top-{labels.k} with {labels.topk_ids.shape[1:]} columns, not top-{request.k}")
    if len(labels.token_counts) != len(request.prompt_ids):
        raise RejectedReply(f"labels for {len(labels.token_counts)} prompts, not {len(request.prompt_ids)}")
    if tuple(labels.token_counts.tolist()) != request.token_counts:
        bad = next(
            i
            for i, (a, b) in enumerate(zip(labels.token_counts, request.token_counts, strict=True))
            if a != b
        )
        raise RejectedReply(
            f"prompt {request.prompt_ids[bad]!r} has {labels.token_counts[bad]} rows, but its public "
            f"completion has {request.token_counts[bad]} tokens"
        )
    rows = sum(request.token_counts)
    shapes = (labels.topk_ids.shape, labels.topk_logprob_codes.shape, labels.sampled_logprob.shape)
    if shapes != ((rows, request.k), (rows, request.k), (rows,)):
        raise RejectedReply(f"arrays of shapes {shapes} for {rows} tokens x top-{request.k}")
    ids = labels.topk_ids
    if ids.size and (ids.min() < 0 or ids.max() >= request.vocab_size):
        raise RejectedReply(
            f"token ids outside [0, vocab_size={request.vocab_size}): {ids.min()}..{ids.max()}"
        )
    if (np.diff(np.sort(ids, axis=1), axis=1) == 0).any():
        raise RejectedReply("a token's top-k ids repeat an id")
    if invalid_logprob_codes(labels.topk_logprob_codes):
        raise RejectedReply("invalid logprob codes (a masked rank before an unmasked one, or past the floor)")
    sampled = labels.sampled_logprob
    if not np.isfinite(sampled).all() or (sampled > POSITIVE_TOLERANCE).any():
        raise RejectedReply("sampled_logprob holds NaN, inf or a positive logprob")
