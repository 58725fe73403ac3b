"""benchmarks/compare_students.py on two hand-made study files: only shared (method, seed) pairs, and the
paired difference against a hand computation."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compare_students.py"
spec = importlib.util.spec_from_file_location("compare_students", SCRIPT)
compare_students = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_students)


def student(method: str, seed: int, correct: list[float]) -> dict:
    return {
        "method": method,
        "seed": seed,
        "accuracy": sum(correct) / len(correct),
        "problem_correct": correct,
        "problem_steps": [1.0] * len(correct),
    }


def write(path: Path, students: list[dict]) -> str:
    path.write_text(json.dumps({"teacher": [0.9, 0.9], "students": students}))
    return str(path)


def test_b_minus_a_over_the_shared_seeds(tmp_path):
    a = write(
        tmp_path / "a.json",
        [student("sft", 0, [1, 0, 0, 0]), student("sft", 1, [1, 1, 0, 0]), student("kd", 0, [0, 0, 0, 0])],
    )
    # seed 2 of sft is in B only, kd is in A only: neither can be paired
    b = write(
        tmp_path / "b.json",
        [student("sft", 0, [1, 1, 1, 0]), student("sft", 1, [1, 1, 1, 1]), student("sft", 2, [0, 0, 0, 0])],
    )
    rows = compare_students.comparison_rows(
        compare_students.by_method_and_seed(a), compare_students.by_method_and_seed(b)
    )
    (row,) = rows
    assert row[:4] == ["sft", "0 1", "37.5% (25.0, 50.0)", "87.5% (75.0, 100.0)"]
    # per-problem differences: seed 0 [0, 1, 1, 0], seed 1 [0, 0, 1, 1]; mean 0.5
    assert row[4].startswith("+50.0 pts [") and row[5] == "+0.0 pts [+0.0, +0.0]"
    run = subprocess.run([sys.executable, str(SCRIPT), a, b], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "| sft | 0 1 |" in run.stdout


def test_runs_scored_on_other_problems_are_refused(tmp_path):
    a = compare_students.by_method_and_seed(write(tmp_path / "a.json", [student("sft", 0, [1, 0])]))
    b = compare_students.by_method_and_seed(write(tmp_path / "b.json", [student("sft", 0, [1, 0, 1])]))
    with pytest.raises(ValueError, match="different numbers of problems"):
        compare_students.comparison_rows(a, b)
