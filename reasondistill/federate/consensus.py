"""A round's accepted soft labels -> the consensus trace dataset the trainer distils the student on.

One record per named public prompt (sample_index 0), in the trace schema (docs/trace_schema.md): the
public prompt and completion, the consensus top-k of every completion token (aggregation.aggregate_topk)
and the consensus probability of the completion token itself (aggregation.mix_logprobs). The dataset is
written by `core.traces` like `generate`'s, so `reasondistill train` reads it as it reads teacher traces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from reasondistill.core.grading import grade
from reasondistill.core.traces import TOKENIZER_DIR, TraceInfo, decode_logprobs, write_card, write_shard
from reasondistill.federate.aggregation import aggregate_topk, mix_logprobs
from reasondistill.federate.public_set import PublicExample
from reasondistill.federate.soft_labels import SoftLabels, prompt_rows


def consensus_records(
    examples: Sequence[PublicExample],
    contributions: Mapping[str, SoftLabels],
    weights: Mapping[str, float],
    k: int,
    tokenizer: PreTrainedTokenizerBase,
) -> list[dict]:
    """Trace records of the consensus of `contributions` (client -> its validated soft labels for
    `examples`, in order), weighted by `weights` (client -> weight)."""
    clients = list(contributions)
    w = [weights[c] for c in clients]
    ids, logprobs = aggregate_topk(
        [contributions[c].topk_ids for c in clients],
        [decode_logprobs(contributions[c].topk_logprob_codes) for c in clients],
        w,
        k,
    )  # [N, k] over the round's N completion tokens
    sampled = mix_logprobs([contributions[c].sampled_logprob for c in clients], w)  # [N]
    # validated: every client's rows line up with the same token counts
    return trace_records(examples, ids, logprobs, sampled, contributions[clients[0]].token_counts, tokenizer)


def trace_records(
    examples: Sequence[PublicExample],
    topk_ids: np.ndarray,
    topk_logprobs: np.ndarray,
    sampled_logprob: np.ndarray,
    token_counts: np.ndarray,
    tokenizer: PreTrainedTokenizerBase,
) -> list[dict]:
    """Trace records of labels [N, k] / [N] over the completion tokens of `examples` (token_counts[p] rows
    each, in order): the public prompt and completion, graded, beside its rows of the labels."""
    records = []
    for p, example in enumerate(examples):
        rows = prompt_rows(token_counts, p)
        completion = tokenizer.decode(example.completion_token_ids, skip_special_tokens=True)
        verdict = grade(completion, example.gold_answer, "number")
        records.append(
            {
                "prompt_id": example.prompt_id,
                "sample_index": 0,
                "question": example.question,
                "prompt": example.prompt,
                "prompt_token_ids": np.asarray(example.prompt_token_ids),
                "completion": completion,
                "completion_token_ids": np.asarray(example.completion_token_ids),
                "topk_ids": topk_ids[rows],
                "topk_logprobs": topk_logprobs[rows],
                "sampled_logprob": sampled_logprob[rows],
                "finish_reason": "stop",
                "extracted_answer": verdict.extracted,
                "gold_answer": example.gold_answer,
                "correct": verdict.correct,
            }
        )
    return records


def write_consensus(
    out: Path, records: Sequence[dict], info: TraceInfo, tokenizer: PreTrainedTokenizerBase, clients: int
) -> Path:
    """Publish the records as a one-shard trace dataset in `out` (card and tokenizer included)."""
    write_shard(out, 0, 1, records, info, {"clients_aggregated": clients})
    tokenizer.save_pretrained(out / TOKENIZER_DIR)
    write_card(out, info)
    return out
