"""A client's reply: its layout (soft_labels.decode_reply) and its contents against the round's request
(validation.check_reply); every malformation is refused with a reason."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from reasondistill.core.traces import NEG_INF_CODE, encode_logprobs
from reasondistill.federate.soft_labels import (
    MalformedReply,
    SoftLabels,
    decode_reply,
    prompt_rows,
    prompt_set_digest,
)
from reasondistill.federate.validation import RejectedReply, RoundRequest, check_reply

PROMPTS, COUNTS, K, VOCAB = ("L1-3+4", "L2-9-2*3"), (3, 5), 4, 64


def valid_labels() -> SoftLabels:
    rng = np.random.default_rng(0)
    rows = sum(COUNTS)
    ids = np.stack([rng.choice(VOCAB, K, replace=False) for _ in range(rows)]).astype(np.int32)
    logprobs = np.sort(np.log(rng.dirichlet(np.ones(K + 2), size=rows)[:, :K]), axis=1)[:, ::-1]
    return SoftLabels(
        client="client-0",
        round=2,
        prompt_set_digest=prompt_set_digest(PROMPTS),
        k=K,
        vocab_size=VOCAB,
        tokenizer_fingerprint="abc123",
        topk_ids=ids,
        topk_logprob_codes=encode_logprobs(logprobs),
        sampled_logprob=np.full(rows, -1.5, dtype=np.float32),
        token_counts=np.asarray(COUNTS, dtype=np.int32),
    )


REQUEST = RoundRequest(2, PROMPTS, prompt_set_digest(PROMPTS), COUNTS, K, VOCAB, "abc123")


def test_a_valid_reply_survives_the_message_layout_and_passes():
    labels = valid_labels()
    decoded = decode_reply(labels.to_content())
    for field in dataclasses.fields(SoftLabels):
        np.testing.assert_array_equal(getattr(decoded, field.name), getattr(labels, field.name))
    check_reply(decoded, REQUEST)
    assert prompt_rows(decoded.token_counts, 1) == slice(3, 8)


def altered(**changes) -> SoftLabels:
    return dataclasses.replace(valid_labels(), **changes)


def with_array(name: str, edit) -> SoftLabels:
    array = getattr(valid_labels(), name).copy()
    edit(array)
    return altered(**{name: array})


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        (with_array("sampled_logprob", lambda a: a.__setitem__(2, np.nan)), "NaN, inf"),
        (with_array("sampled_logprob", lambda a: a.__setitem__(0, np.inf)), "NaN, inf"),
        (with_array("topk_ids", lambda a: a.__setitem__((1, 0), VOCAB)), "outside \\[0, vocab_size=64\\)"),
        (with_array("topk_ids", lambda a: a.__setitem__((1, 0), -1)), "outside"),
        (with_array("topk_ids", lambda a: a.__setitem__((1, 1), a[1, 0])), "repeat an id"),
        (with_array("topk_logprob_codes", lambda a: a.__setitem__((0, 0), NEG_INF_CODE)), "invalid logprob"),
        (altered(k=3, topk_ids=valid_labels().topk_ids[:, :3]), "not top-4"),
        (altered(token_counts=np.asarray([8], dtype=np.int32)), "labels for 1 prompts, not 2"),
        (altered(token_counts=np.asarray([4, 4], dtype=np.int32)), "'L1-3\\+4' has 4 rows, but its public"),
        (altered(prompt_set_digest=prompt_set_digest(PROMPTS[::-1])), "answers round 2 / prompt set"),
        (altered(round=1), "answers round 1"),
        (altered(vocab_size=128), "vocab_size 128"),
        (altered(client="../../etc"), "client name"),
    ],
)
def test_malformed_labels_are_rejected_with_the_reason(labels, reason):
    with pytest.raises(RejectedReply, match=reason):
        check_reply(labels, REQUEST)


def test_anything_but_the_soft_label_layout_is_refused():
    content = valid_labels().to_content()
    content["weights"] = ArrayRecord({"w": Array(np.zeros((4, 4), dtype=np.float32))})
    with pytest.raises(MalformedReply, match="records"):
        decode_reply(content)
    content = valid_labels().to_content()
    content["soft_labels"]["hidden_state"] = Array(np.zeros((8, 16), dtype=np.float32))
    with pytest.raises(MalformedReply, match="arrays"):
        decode_reply(content)
    content = valid_labels().to_content()
    content["meta"]["question"] = "Mia has 47 marbles."
    with pytest.raises(MalformedReply, match="metadata"):
        decode_reply(content)
    content = valid_labels().to_content()
    content["soft_labels"]["topk_ids"] = Array(valid_labels().topk_ids.astype(np.float32))
    with pytest.raises(MalformedReply, match="'topk_ids' is float32"):
        decode_reply(content)
    arrays = valid_labels().to_content()["soft_labels"]
    meta = ConfigRecord({**valid_labels().to_content()["meta"], "round": True})
    with pytest.raises(MalformedReply, match="'round' is bool"):
        decode_reply(RecordDict({"soft_labels": arrays, "meta": meta}))


def test_message_bytes_are_counted_as_flower_counts_them_and_empty_settings_are_zero():
    """content_bytes equals Flower's own count_bytes on every kind of record, and counts the requests'
    empty settings (instruction, public_id_field unset) as 0 bytes where flwr 1.32's count raises."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

    from reasondistill.federate.server_app import content_bytes

    settings = {"name": "abc", "n": 3, "f": 1.5, "flag": True, "ids": ["ab", "c"], "levels": [1, 2, 3]}
    content = RecordDict(
        {
            "config": ConfigRecord(settings),
            "arrays": ArrayRecord({"t": Array(np.zeros((4, 2), dtype=np.float32))}),
        }
    )
    assert content_bytes(content) == sum(record.count_bytes() for record in content.values())
    with_empty = RecordDict({"config": ConfigRecord(settings | {"instruction": ""})})
    assert content_bytes(with_empty) == ConfigRecord(settings).count_bytes() + len("instruction")
