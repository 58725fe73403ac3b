"""The demo's student comparison table: mean ± sd over seeds and a seed x problem interval per method, the
teacher first, then each method against the first, paired."""

import numpy as np
import pytest

from reasondistill.demo.students import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, StudentResult, summary_table
from reasondistill.evaluate.metrics import seed_problem_bootstrap


def student(method: str, seed: int, correct: list[float], steps: list[float], ce: float, kd: float):
    return StudentResult(
        method,
        seed,
        f"{method}-seed{seed}",
        float(np.mean(correct)),
        float(np.mean(steps)),
        ce,
        kd,
        1.0,
        problem_correct=correct,
        problem_steps=steps,
    )


def test_summary_table_gives_spread_intervals_and_the_paired_difference():
    results = [
        student("sft", 0, [1.0, 0.0, 0.0, 1.0], [1.0, 0.5, 0.5, 1.0], 1.25, 0.5),
        student("sft", 1, [0.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.0, 1.0], 1.5, 0.25),
        student("kd", 0, [1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.5, 1.0], 1.0, 0.125),
        student("kd", 1, [1.0, 0.0, 0.0, 1.0], [1.0, 0.5, 0.5, 1.0], 1.0, 0.125),
    ]
    table = summary_table(results, teacher_accuracy=0.9, teacher_steps=0.95).splitlines()
    assert table[0] == (
        "| model | seeds | exact match ± sd [95% CI] | step accuracy ± sd [95% CI] | held-out CE "
        "| held-out KD |"
    )
    assert table[2] == "| teacher | - | 90.0% | 95.0% | - | - |"
    _, low, high = seed_problem_bootstrap([[1, 0, 0, 1], [0, 0, 0, 1]], BOOTSTRAP_SEED, BOOTSTRAP_RESAMPLES)
    assert table[3].startswith(f"| sft | 2 | 37.5% ± 17.7% [{low:.1%}, {high:.1%}] | 62.5% ± 17.7% [")
    assert table[3].endswith("| 1.3750 ± 0.1768 | 0.3750 ± 0.1768 |")
    assert table[4].startswith("| kd | 2 | 62.5% ± 17.7% [")
    # kd - sft, paired by seed and problem: +1 on two of the eight (seed, problem) cells
    mean, low, high = seed_problem_bootstrap(
        [[0, 1, 0, 0], [1, 0, 0, 0]], BOOTSTRAP_SEED, BOOTSTRAP_RESAMPLES
    )
    assert mean == pytest.approx(0.25)
    assert table[5].startswith(f"| kd − sft (paired) | 2 | +25.0 pts [{100 * low:+.1f}, {100 * high:+.1f}] |")
    assert table[5].endswith("| - | - |")
