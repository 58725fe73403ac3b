"""Which layers a depth-pruned start should keep: the teacher with only some of its layers (the others
bypassed, no training), scored on its own verified traces, for every subset of the kept size; and the
subset each depth criterion of `reasondistill prune` picks.

    .venv/bin/python benchmarks/prune_choices.py TEACHER TRACES_DIR [--keep 2] [--max-records 128] \
        [--all-traces] [--num-calibration 64]

Per subset: the next-token cross-entropy (nats per token) over the completion tokens of the first
`--max-records` verified traces (any trace with `--all-traces`), overall and by kind of token
(evaluate/token_divergence.py: digit, operator, answer, format), and on the operands of the first step:
the digits before the completion's first "=", which the demo task's solutions copy from the question. A
start that has lost its copying shows there first. The criteria (`PruneConfig.depth_criterion`,
compress/prune.py) are run as `prune` runs them, on the calibration sequences of the demo's prune recipe
(reasondistill/recipes/demo/prune.yaml; `--num-calibration` overrides its count).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections import defaultdict

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reasondistill.compress.prune import bypassed, calibration_batches, choose_layers_to_drop
from reasondistill.compress.prune_config import DepthCriterion, PruneConfig
from reasondistill.core.logs import setup_logging
from reasondistill.core.markdown_table import markdown_table
from reasondistill.core.recipe import PACKAGE_DIR, parse_recipe
from reasondistill.core.traces import load_traces
from reasondistill.evaluate.token_divergence import classify

KINDS = ("digit", "operator", "answer", "format")
FIRST_STEP = "first-step operands"


def token_groups(pieces: list[str], markers: list[bool]) -> list[list[str]]:
    """Per completion token, the groups it counts in: "all", its kind, and FIRST_STEP for a digit before
    the first "="."""
    groups, seen_equals = [], False
    for piece, kind in zip(pieces, classify(pieces, markers), strict=True):
        names = ["all", kind] + ([FIRST_STEP] if kind == "digit" and not seen_equals else [])
        groups.append(names)
        seen_equals = seen_equals or "=" in piece
    return groups


@torch.no_grad()
def subset_losses(model, records: list[dict], keep: tuple[int, ...], groups: list[list[list[str]]]) -> dict:
    """Mean cross-entropy per token group with only the layers `keep` (the others bypassed)."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    skip = [i for i in range(model.config.num_hidden_layers) if i not in keep]
    with bypassed(model, skip):
        for record, record_groups in zip(records, groups, strict=True):
            prompt, completion = record["prompt_token_ids"], record["completion_token_ids"]
            logits = model(input_ids=torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1]
            nll = -torch.log_softmax(logits.float(), -1)[torch.arange(len(completion)), completion]
            for loss, names in zip(nll.tolist(), record_groups, strict=True):
                for name in names:
                    sums[name][0] += loss
                    sums[name][1] += 1
    return {name: total / count for name, (total, count) in sums.items()}


def criterion_choice(
    model, tokenizer, teacher: str, keep: int, criterion: DepthCriterion, num_calibration: int | None
) -> list[int]:
    """The layers `reasondistill prune` keeps with the demo's prune recipe and this criterion."""
    overrides = ["--model", teacher, "--num_layers", str(keep), "--depth_criterion", criterion]
    overrides += ["--num_calibration", str(num_calibration)] if num_calibration else []
    (config,) = parse_recipe(PACKAGE_DIR / "recipes" / "demo" / "prune.yaml", (PruneConfig,), overrides)
    batches = calibration_batches(model, tokenizer, config)
    rounds = choose_layers_to_drop(model, batches, model.config.num_hidden_layers - keep, criterion)
    dropped = {r["dropped"] for r in rounds}
    return [i for i in range(model.config.num_hidden_layers) if i not in dropped]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("teacher")
    parser.add_argument("traces")
    parser.add_argument("--keep", type=int, default=2, help="layers kept")
    parser.add_argument("--max-records", type=int, default=128)
    parser.add_argument("--all-traces", action="store_true", help="not only the verified traces")
    parser.add_argument("--num-calibration", type=int, help="calibration sequences (default: the recipe's)")
    args = parser.parse_args(argv)
    setup_logging("warning")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.teacher, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    dataset = load_traces(args.traces)
    if not args.all_traces:
        dataset = dataset.filter(lambda correct: correct, input_columns="correct")
    records = list(dataset.select(range(min(args.max_records, len(dataset)))))
    groups = [
        token_groups(
            [tokenizer.decode([i]) for i in r["completion_token_ids"]],
            [i in special for i in r["completion_token_ids"]],
        )
        for r in records
    ]
    picks = {
        c: criterion_choice(model, tokenizer, args.teacher, args.keep, c, args.num_calibration)
        for c in ("kl", "cosine")
    }
    layers = model.config.num_hidden_layers
    subsets = [tuple(range(layers))] + list(itertools.combinations(range(layers), args.keep))
    header = ("layers kept", "picked by", "CE all", *(f"CE {k}" for k in KINDS), f"CE {FIRST_STEP}")
    rows = []
    for keep in subsets:
        losses = subset_losses(model, records, keep, groups)
        picked = ", ".join(c for c, chosen in picks.items() if tuple(chosen) == keep)
        cells = [losses.get(name, float("nan")) for name in ("all", *KINDS, FIRST_STEP)]
        rows.append([" ".join(map(str, keep)), picked or "-", *(f"{c:.3f}" for c in cells)])
    kind = "traces" if args.all_traces else "verified traces"
    print(f"{args.teacher}, {len(records)} {kind} of {args.traces}\n")
    print(markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
