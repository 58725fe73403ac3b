"""Where students of different tokenizers lose: held-out cross-entropy per byte of text, by kind of text.

    .venv/bin/python benchmarks/heldout_by_kind.py STUDY.json [STUDY.json ...] --heldout DIR [--records 200]

Per-token losses do not compare across tokenizers (a 3-digit token carries what three 1-digit tokens
do), per-byte ones do. Each student of the studies (benchmarks/distill_study.py writes STUDY.json)
reads the first `--records` held-out teacher traces, prompt and completion in its own tokens (the
completion's text re-tokenized, the prompt rendered with its chat template, as training did), and every
completion token's negative log-likelihood is attributed to the token's kind of text
(evaluate.token_divergence.classify: digit, operator, answer, format, other). A kind's score is

    nats per byte = sum of its tokens' -log q(token | before) / number of UTF-8 bytes they spell,

so the whole completion's score (all kinds) is the same quantity for every tokenizer: the
log-likelihood of the same text, per byte (the end-of-turn token spells none; its nats count). Prints,
per method, the mean ± sd over seeds of each kind and of the whole, and each kind's share of the bytes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from reasondistill.core.markdown_table import markdown_table
from reasondistill.evaluate.token_divergence import KINDS, classify
from reasondistill.train.distill_data import load_trace_dataset
from reasondistill.train.token_alignment import token_bytes

ALL = "all"


def completion_nats_by_kind(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, heldout: str, records: int
) -> dict[str, tuple[float, int]]:
    """{kind: (summed nats, bytes)} of the first `records` held-out completions, and {ALL: ...}."""
    dataset, _, _ = load_trace_dataset(
        heldout, only_correct=False, max_length=None, student_tokenizer=tokenizer, retokenize=True
    )
    added = set(tokenizer.added_tokens_decoder)
    spelled = token_bytes(tokenizer)
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    model.eval()
    for record in dataset.select(range(min(records, len(dataset)))):
        prompt, completion = list(record["prompt_token_ids"]), list(record["completion_token_ids"])
        with torch.no_grad():
            logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1]
        nats = -torch.log_softmax(logits.float(), dim=-1)[torch.arange(len(completion)), completion]
        pieces = [tokenizer.decode([token]) for token in completion]
        kinds = classify(pieces, [token in added for token in completion])
        for token, kind, value in zip(completion, kinds, nats.tolist(), strict=True):
            for key in (kind, ALL):
                sums[key][0] += value
                sums[key][1] += len(spelled[token]) if token < len(spelled) else 0  # padding rows
    return {kind: (total, size) for kind, (total, size) in sums.items()}


def study_students(paths: list[str]) -> list[tuple[str, int, str]]:
    """(method, seed, directory) of every student in the studies' JSON files."""
    students = []
    for path in paths:
        summary = json.loads(Path(path).read_text())
        students += [(s["method"], s["seed"], s["directory"]) for s in summary["students"]]
    return students


def kind_table(scores: dict[str, list[dict[str, tuple[float, int]]]]) -> str:
    """Markdown: per method, nats per byte of each kind (mean ± sd over seeds) and the bytes' shares."""
    kinds = [kind for kind in (*KINDS, ALL) if any(kind in run for runs in scores.values() for run in runs)]
    rows = []
    for method, runs in scores.items():
        cells = [method, str(len(runs))]
        for kind in kinds:
            values = [run[kind][0] / run[kind][1] for run in runs if run.get(kind, (0, 0))[1]]
            sd = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
            cells.append(f"{statistics.fmean(values):.4f}{sd}" if values else "-")
        rows.append(cells)
    first = next(iter(scores.values()))[0]
    shares = ["share of bytes", "-"] + [f"{first[k][1] / first[ALL][1]:.1%}" for k in kinds]
    return markdown_table(["method", "seeds", *kinds], [*rows, shares], numeric=range(1, len(kinds) + 2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="+", help="STUDY.json files of benchmarks/distill_study.py")
    parser.add_argument("--heldout", required=True, help="held-out trace directory (the teacher's)")
    parser.add_argument("--records", type=int, default=200, help="first N held-out traces")
    parser.add_argument("--output", help="also write the table and every student's sums here (JSON)")
    args = parser.parse_args(argv)
    scores: dict[str, list[dict[str, tuple[float, int]]]] = defaultdict(list)
    per_student = []
    for method, seed, directory in study_students(args.studies):
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        sums = completion_nats_by_kind(model, tokenizer, args.heldout, args.records)
        scores[method].append(sums)
        per_student.append({"method": method, "seed": seed, "directory": directory, "sums": sums})
        print(f"{method} seed {seed}: {sums[ALL][0] / sums[ALL][1]:.4f} nats per byte", file=sys.stderr)
    table = kind_table(scores)
    print(table)
    if args.output:
        command = " ".join(["benchmarks/heldout_by_kind.py", *(argv if argv is not None else sys.argv[1:])])
        Path(args.output).write_text(
            json.dumps({"command": command, "table": table, "students": per_student})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
