"""How sure a teacher is on its own traces, by kind of token: what the stored top-k can carry beyond
the sampled token.

    .venv/bin/python benchmarks/teacher_certainty.py TRACES_DIR [TRACES_DIR ...] [--max-records 2000] \
        [--tokenizer DIR]      # default: the teacher path the traces record (relative to where they ran)

For every completion token of the verified traces (trace schema: docs/trace_schema.md): the teacher's
top-1 probability p1, and the entropy of its stored distribution collapsed onto the top-k + one tail
bucket, H = -sum_b p_b log p_b (nats; the tail bucket holds 1 - sum of the top-k). Tokens are grouped by
kind as the evaluation report's divergence picture groups them (evaluate/token_divergence.py: digit,
operator, answer, format, other). A token whose p1 is near 1 gives a target that the sampled token
already says; the entropy share shows where the rest of the teacher's signal sits.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict

import numpy as np
from transformers import AutoTokenizer

from reasondistill.core.logs import setup_logging
from reasondistill.core.markdown_table import markdown_table
from reasondistill.core.traces import decode_logprobs, load_traces, read_info
from reasondistill.evaluate.token_divergence import classify

HEADER = ("kind", "tokens", "share", "mean p1", "p1 > 0.99", "mean entropy (nats)", "share of entropy")
SURE = 0.99


def token_certainty(logprobs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(p1 [C], entropy [C]) from stored top-k logprobs [C, K] (-inf = masked rank), tail as one bucket."""
    probs = np.exp(logprobs.astype(np.float64))  # exp(-inf) = 0
    tail = np.clip(1.0 - probs.sum(axis=1), 0.0, None)
    buckets = np.concatenate([probs, tail[:, None]], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(buckets > 0, buckets * np.log(buckets), 0.0).sum(axis=1)
    return probs[:, 0], entropy


def certainty_table(
    trace_dir: str, max_records: int, tokenizer_dir: str | None, all_traces: bool = False
) -> tuple[str, str]:
    """(title, Markdown table) for one trace directory: its verified traces, or all with `all_traces`."""
    info = read_info(trace_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or info.teacher)
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    dataset = load_traces(trace_dir)
    if not all_traces:
        dataset = dataset.filter(lambda correct: correct, input_columns="correct")
    dataset = dataset.select(range(min(max_records, len(dataset))))
    p1_by_kind: dict[str, list[float]] = defaultdict(list)
    entropy_by_kind: dict[str, list[float]] = defaultdict(list)
    for record in dataset:
        ids = list(record["completion_token_ids"])
        codes = np.asarray(record["topk_logprob_codes"], dtype=np.int64).reshape(len(ids), info.k)
        p1, entropy = token_certainty(decode_logprobs(codes))
        kinds = classify([tokenizer.decode([i]) for i in ids], [i in special for i in ids])
        for kind, sure, spread in zip(kinds, p1, entropy, strict=True):
            p1_by_kind[kind].append(float(sure))
            entropy_by_kind[kind].append(float(spread))
    total_tokens = sum(len(v) for v in p1_by_kind.values())
    total_entropy = sum(sum(v) for v in entropy_by_kind.values()) or math.inf
    rows = []
    for kind in sorted(p1_by_kind, key=lambda k: -len(p1_by_kind[k])) + ["all"]:
        p1 = np.array(sum(p1_by_kind.values(), []) if kind == "all" else p1_by_kind[kind])
        entropy = np.array(sum(entropy_by_kind.values(), []) if kind == "all" else entropy_by_kind[kind])
        rows.append(
            [
                kind,
                f"{len(p1):,}",
                f"{len(p1) / total_tokens:.1%}",
                f"{p1.mean():.4f}",
                f"{(p1 > SURE).mean():.1%}",
                f"{entropy.mean():.4f}",
                f"{entropy.sum() / total_entropy:.1%}",
            ]
        )
    which = "" if all_traces else "verified "
    title = f"{trace_dir}: teacher {info.teacher}, top-{info.k}, {len(dataset):,} {which}traces"
    return title, markdown_table(HEADER, rows, numeric=range(1, len(HEADER)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("traces", nargs="+", help="trace dataset directories (`reasondistill generate`)")
    parser.add_argument("--max-records", type=int, default=2000, help="verified traces read per dataset")
    parser.add_argument("--all-traces", action="store_true", help="read unverified traces too")
    parser.add_argument("--tokenizer", help="the teachers' tokenizer directory, if not where the traces say")
    args = parser.parse_args(argv)
    setup_logging("warning")  # the table only
    for trace_dir in args.traces:
        title, table = certainty_table(trace_dir, args.max_records, args.tokenizer, args.all_traces)
        print(f"{title}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
