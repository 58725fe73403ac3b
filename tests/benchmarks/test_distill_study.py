"""benchmarks/distill_study.py's data-efficiency study end to end on a handful of traces of a tiny model:
its table, plot and results file; the numbers mean nothing at 2 steps."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import generate_config

from reasondistill.generate.generate import generate

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "distill_study.py"


def test_data_efficiency_study_trains_each_count_and_plots(tiny_model_dir, tmp_path):
    traces = generate(generate_config(tiny_model_dir, tmp_path / "traces", backend="transformers"))
    heldout = generate(
        generate_config(
            tiny_model_dir, tmp_path / "heldout", backend="transformers", prompt_split="test", num_prompts=2
        )
    )
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "train.yaml").write_text(
        "use_peft: false\ndtype: float32\nonly_correct: false\nper_device_train_batch_size: 2\n"
        "learning_rate: 1.0e-3\nreport_to: none\nsave_strategy: 'no'\nlogging_steps: 1\n"
        "traces: unset\noutput_dir: unset\n"
    )
    command = [sys.executable, str(SCRIPT), "data", "--teacher", str(tiny_model_dir), "--traces", str(traces)]
    command += ["--heldout", str(heldout), "--recipes", str(recipes), "--seeds", "0", "1"]
    command += ["--max-steps", "2", "--trace-counts", "4", "8", "--test-problems", "2"]
    command += ["--output-dir", str(tmp_path / "study")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    for row in (
        "| sft-4 | 2 |",
        "| kd-4 | 2 |",
        "| sft-8 | 2 |",
        "| kd-8 | 2 |",
        "| kd-4 − sft-4 (paired) | 2 |",
    ):
        assert row in run.stdout
    assert (tmp_path / "study" / "data_efficiency.png").stat().st_size > 1000
    students = json.loads((tmp_path / "study" / "data.json").read_text())["students"]
    assert len(students) == 8 and {s["compute"]["student_tokens"] > 0 for s in students} == {True}
    assert (
        "Command: `.venv/bin/python benchmarks/distill_study.py data"
        in (tmp_path / "study" / "data.md").read_text()
    )
