"""Students of two study runs set side by side: per method, run B minus run A, paired by seed and problem.

    .venv/bin/python benchmarks/compare_students.py A.json B.json

A.json and B.json are the STUDY.json files `distill_study.py` writes (every student with its per-problem
scores). Two runs of one study that differ in one setting (how the start was pruned, the teacher, the
machine) are compared where they can be paired: the same method and seed in both, scored on the same
problems. For each such method: exact match and step accuracy in A and in B (mean over the shared seeds,
with each seed's value) and B - A with a 95% interval over seeds and problems
(`students.paired_difference`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from reasondistill.core.markdown_table import markdown_table
from reasondistill.demo.students import paired_difference

HEADER = (
    "method",
    "seeds",
    "A: exact match (per seed)",
    "B: exact match (per seed)",
    "B − A exact match",
    "B − A step accuracy",
)


def by_method_and_seed(path: str) -> dict[tuple[str, int], dict]:
    return {(s["method"], s["seed"]): s for s in json.loads(open(path, encoding="utf-8").read())["students"]}


def exact_match(students: list[dict]) -> str:
    per_seed = ", ".join(f"{100 * s['accuracy']:.1f}" for s in students)
    return f"{100 * statistics.fmean(s['accuracy'] for s in students):.1f}% ({per_seed})"


def comparison_rows(a: dict[tuple[str, int], dict], b: dict[tuple[str, int], dict]) -> list[list[str]]:
    rows = []
    for method in dict.fromkeys(m for m, _ in a):
        seeds = sorted(seed for m, seed in a if m == method and (m, seed) in b)
        if not seeds:
            continue
        runs_a, runs_b = [a[method, s] for s in seeds], [b[method, s] for s in seeds]
        if any(
            len(x["problem_correct"]) != len(y["problem_correct"])
            for x, y in zip(runs_a, runs_b, strict=True)
        ):
            raise ValueError(f"{method}: the two runs were scored on different numbers of problems")
        rows.append(
            [
                method,
                " ".join(map(str, seeds)),
                exact_match(runs_a),
                exact_match(runs_b),
                paired_difference(
                    [y["problem_correct"] for y in runs_b], [x["problem_correct"] for x in runs_a]
                ),
                paired_difference([y["problem_steps"] for y in runs_b], [x["problem_steps"] for x in runs_a]),
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("a", help="STUDY.json of run A")
    parser.add_argument("b", help="STUDY.json of run B")
    args = parser.parse_args(argv)
    rows = comparison_rows(by_method_and_seed(args.a), by_method_and_seed(args.b))
    if not rows:
        print("no method and seed is in both runs", file=sys.stderr)
        return 1
    print(f"A: {args.a}\nB: {args.b}\n")
    print(markdown_table(HEADER, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
