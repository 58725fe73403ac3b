"""benchmarks/teacher_certainty.py: the per-token certainty against a hand computation, and the script on
traces of the tiny model."""

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import generate_config

from reasondistill.core.traces import load_traces
from reasondistill.generate.generate import generate

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "teacher_certainty.py"
spec = importlib.util.spec_from_file_location("teacher_certainty", SCRIPT)
teacher_certainty = importlib.util.module_from_spec(spec)
spec.loader.exec_module(teacher_certainty)


def test_certainty_counts_the_tail_as_one_bucket():
    logprobs = np.log(np.array([[0.5, 0.25, 0.0], [1.0, 0.0, 0.0]]))  # log 0 = -inf: masked ranks
    p1, entropy = teacher_certainty.token_certainty(logprobs)
    assert p1.tolist() == [0.5, 1.0]
    expected = -(0.5 * math.log(0.5) + 0.25 * math.log(0.25) + 0.25 * math.log(0.25))  # tail = 0.25
    assert entropy[0] == pytest.approx(expected) and entropy[1] == pytest.approx(0.0)


def test_script_prints_a_row_per_kind_that_adds_up(tiny_model_dir, tmp_path):
    traces = generate(generate_config(tiny_model_dir, tmp_path / "traces", backend="transformers"))
    command = [sys.executable, str(SCRIPT), str(traces), "--all-traces", "--tokenizer", str(tiny_model_dir)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [
        line.split("|") for line in run.stdout.splitlines() if line.startswith("| ") and "---" not in line
    ]
    counts = {row[1].strip(): int(row[2].replace(",", "")) for row in rows[1:]}
    tokens = sum(len(ids) for ids in load_traces(traces)["completion_token_ids"])
    assert counts["all"] == sum(v for k, v in counts.items() if k != "all") == tokens > 0
