"""Decontamination check: word n-gram overlap between training prompts and a benchmark's problems.

As open-r1's `scripts/decontaminate.py` (after s1): a training prompt is flagged when it shares any
word n-gram (default 8) with a benchmark problem. Text is lower-cased and split into runs of letters and
digits, so punctuation and LaTeX markup ("$", "\\frac{") do not hide a copied problem. Prompts shorter
than n words cannot be flagged. Run it on a trace dataset before training:

    python -m reasondistill.evaluate.decontaminate outputs/demo/traces/demo-teacher-<hash> \
        --benchmark gsm8k math500

It exits with status 1 when any prompt overlaps, so it can gate a training script.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from reasondistill.evaluate.benchmark_specs import BenchmarkSpec, load_benchmark, load_problems

_WORD = re.compile(r"[^\W_]+")
MAX_LISTED = 20  # overlapping prompts listed in a report; the count covers them all


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass
class Contamination:
    """Result of one check. `examples` lists up to MAX_LISTED overlaps: the training prompt's index,
    the benchmark problem's id and one shared n-gram."""

    benchmark: str
    ngram_size: int
    num_prompts: int
    num_problems: int
    num_contaminated: int
    examples: list[dict] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.num_contaminated / max(self.num_prompts, 1)


def check_contamination(
    prompts: Sequence[str], benchmark: str | BenchmarkSpec, ngram_size: int = 8
) -> Contamination:
    """Flag every prompt that shares a word n-gram with one of the benchmark's problems."""
    spec = benchmark if isinstance(benchmark, BenchmarkSpec) else load_benchmark(benchmark)
    problems = load_problems(spec)
    owner: dict[tuple[str, ...], str] = {}  # n-gram -> id of a benchmark problem holding it
    for problem in problems:
        for gram in ngrams(problem.question, ngram_size):
            owner.setdefault(gram, problem.prompt_id)
    result = Contamination(spec.name, ngram_size, len(prompts), len(problems), 0)
    for index, prompt in enumerate(prompts):
        shared = sorted(ngrams(prompt, ngram_size) & owner.keys())
        if shared:
            result.num_contaminated += 1
            if len(result.examples) < MAX_LISTED:
                result.examples.append(
                    {"prompt_index": index, "problem_id": owner[shared[0]], "ngram": " ".join(shared[0])}
                )
    return result


def trace_questions(traces_dir: str) -> list[str]:
    """The distinct questions of a trace dataset, in order of first appearance."""
    from reasondistill.core.traces import load_traces

    return list(dict.fromkeys(load_traces(traces_dir)["question"]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reasondistill.evaluate.decontaminate",
        description="Word n-gram overlap between a trace dataset's questions and benchmark problems.",
    )
    parser.add_argument("traces", help="trace dataset directory (written by `reasondistill generate`)")
    parser.add_argument("--benchmark", nargs="+", required=True, help="benchmark names or YAML paths")
    parser.add_argument("--ngram_size", type=int, default=8, help="words per n-gram (default 8)")
    args = parser.parse_args(argv)
    questions = trace_questions(args.traces)
    flagged = 0
    for benchmark in args.benchmark:
        result = check_contamination(questions, benchmark, args.ngram_size)
        flagged += result.num_contaminated
        print(
            f"{result.benchmark}: {result.num_contaminated} of {result.num_prompts} prompts share a "
            f"{args.ngram_size}-gram with its {result.num_problems} problems ({result.rate:.1%})"
        )
        for example in result.examples:
            print(f'  prompt {example["prompt_index"]} ~ {example["problem_id"]}: "{example["ngram"]}"')
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())
