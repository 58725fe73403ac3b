"""`benchmarks/train.py`, every table, at tiny settings: the documented commands keep running.

The numbers mean nothing here (4 steps of the tiny model); what is checked is that each table is
printed with all its rows. vLLM rows are left out (`--no-vllm`): starting its engines takes minutes on
2 cores, and tests/train covers those samplers.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import generate_config

from reasondistill.generate.generate import generate

REPO = Path(__file__).resolve().parents[2]
BENCHMARK = REPO / "benchmarks" / "train.py"


def benchmark_module():
    spec = importlib.util.spec_from_file_location("train_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_every_table_runs_at_tiny_settings(tmp_path, tiny_model_dir):
    traces = generate(
        generate_config(tiny_model_dir, tmp_path / "traces", backend="transformers", num_prompts=4)
    )
    tiny = ["--steps", "4", "--batch", "4", "--new-tokens", "4"]  # 4 steps: 3 warm-up, 1 measured
    tiny += ["--tokens", "64", "--vocab", "512", "--hidden", "32", "--k", "8"]
    tiny += ["--teacher", str(tiny_model_dir), "--traces", str(traces), "--no-vllm"]
    # one thread per case: on a busy machine 2 threads spin against each other (2x slower here)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(BENCHMARK), *tiny]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-4000:]

    # every table row: a case name, then its step time
    rows = re.findall(r"^\| (.+?) \| \d+\.\d+ \|", done.stdout, flags=re.MULTILINE)
    cases = benchmark_module().ON_POLICY_CASES.values()
    on_policy_rows = [name for name, backend, *_ in cases if backend != "vllm"]
    trainer_rows = ["CE only (ours, kd_weight 0)", "CE + top-k KL (ours)", "TRL GKDTrainer (teacher live)"]
    trainer_rows += [
        "CE + top-k KL, 2 micro-batches drawn at random",
        "CE + top-k KL, 2 micro-batches split by length (batch_rebalance)",
    ]
    loss_rows = ["plain_ce", "naive_dense", "ours_full_logits", "chunked"]
    assert rows == trainer_rows + on_policy_rows + loss_rows
    assert done.stdout.count("\n| case |") == 4  # four tables
