"""What travels in a round: the server's request (public prompt ids) and a client's reply (top-k soft
labels in the trace encoding), as Flower `RecordDict`s.

A reply holds exactly two records and nothing else:

    "soft_labels"  ArrayRecord   topk_ids            int32   [N, k]   N = completion tokens of the round
                                 topk_logprob_codes  uint16  [N, k]   core.traces.encode_logprobs codes
                                 sampled_logprob     float32 [N]      logprob of each public completion token
                                 token_counts        int32   [P]      tokens of each named prompt, in order
    "meta"         ConfigRecord  client (name), round, prompt_set_digest (sha256 of the request's ids),
                                 k, vocab_size, tokenizer_fingerprint

6 bytes per (token, rank) plus 4 per token: no text, no weights, no gradients. `decode_reply` refuses any
other layout; `validation.check_reply` then checks the contents against the round's request.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

REQUEST, SOFT_LABELS, META = "request", "soft_labels", "meta"
# name -> (dtype, number of dimensions) of each array a reply holds
REPLY_ARRAYS = {
    "topk_ids": (np.dtype(np.int32), 2),
    "topk_logprob_codes": (np.dtype(np.uint16), 2),
    "sampled_logprob": (np.dtype(np.float32), 1),
    "token_counts": (np.dtype(np.int32), 1),
}
REPLY_META = {"client": str, "round": int, "prompt_set_digest": str, "k": int, "vocab_size": int}
REPLY_META |= {"tokenizer_fingerprint": str}


class MalformedReply(ValueError):
    """A reply whose records are not the soft-label layout; the message says what is wrong."""


def prompt_set_digest(prompt_ids: Sequence[str]) -> str:
    """sha256 of the round's prompt ids in order: a reply echoes it, tying its rows to the request."""
    return hashlib.sha256("\n".join(prompt_ids).encode()).hexdigest()


@dataclass(frozen=True)
class SoftLabels:
    """One client's reply for one round, decoded (shapes as in the module docstring)."""

    client: str
    round: int
    prompt_set_digest: str
    k: int
    vocab_size: int
    tokenizer_fingerprint: str
    topk_ids: np.ndarray
    topk_logprob_codes: np.ndarray
    sampled_logprob: np.ndarray
    token_counts: np.ndarray

    def to_content(self) -> RecordDict:
        arrays = ArrayRecord(
            {name: Array(np.ascontiguousarray(getattr(self, name))) for name in REPLY_ARRAYS}
        )
        meta = ConfigRecord({name: getattr(self, name) for name in REPLY_META})
        return RecordDict({SOFT_LABELS: arrays, META: meta})


def prompt_rows(token_counts: np.ndarray, prompt: int) -> slice:
    """The rows [N] of the `prompt`-th prompt among labels of token_counts[p] rows each, in order."""
    ends = np.cumsum(token_counts)
    return slice(int(ends[prompt] - token_counts[prompt]), int(ends[prompt]))


def decode_reply(content: RecordDict) -> SoftLabels:
    """A reply's content as SoftLabels; MalformedReply if it holds anything but the two records above."""
    if set(content.keys()) != {SOFT_LABELS, META}:
        raise MalformedReply(f"records {sorted(content.keys())}, expected exactly {[META, SOFT_LABELS]}")
    arrays, meta = content[SOFT_LABELS], content[META]
    if not isinstance(arrays, ArrayRecord) or not isinstance(meta, ConfigRecord):
        raise MalformedReply(f"{SOFT_LABELS!r} must be an ArrayRecord and {META!r} a ConfigRecord")
    if set(arrays.keys()) != set(REPLY_ARRAYS):
        raise MalformedReply(f"arrays {sorted(arrays.keys())}, expected exactly {sorted(REPLY_ARRAYS)}")
    if set(meta.keys()) != set(REPLY_META):
        raise MalformedReply(f"metadata {sorted(meta.keys())}, expected exactly {sorted(REPLY_META)}")
    values = {}
    for name, (dtype, ndim) in REPLY_ARRAYS.items():
        try:
            array = arrays[name].numpy()
        except (ValueError, TypeError) as e:
            raise MalformedReply(f"array {name!r} cannot be read ({e})") from e
        if array.dtype != dtype or array.ndim != ndim:
            raise MalformedReply(
                f"array {name!r} is {array.dtype} with {array.ndim} dims, expected {dtype} {ndim}"
            )
        values[name] = array
    for name, kind in REPLY_META.items():
        if type(meta[name]) is not kind:  # bool is an int subclass: refused too
            raise MalformedReply(
                f"metadata {name!r} is {type(meta[name]).__name__}, expected {kind.__name__}"
            )
        values[name] = meta[name]
    return SoftLabels(**values)


def request_content(round_number: int, prompt_ids: Sequence[str], settings: dict) -> RecordDict:
    """The server's request: the round, the public prompt ids to label and the public set's settings."""
    record = ConfigRecord({"round": round_number, "prompt-ids": list(prompt_ids), **settings})
    return RecordDict({REQUEST: record})
