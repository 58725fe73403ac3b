"""benchmarks/sample_correctness.py end to end on a tiny model: greedy traces of the model itself, so its
greedy samples on the traces' prompts are those traces word for word, and on new questions no trace's."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import generate_config

from reasondistill.generate.generate import generate

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sample_correctness.py"


def test_greedy_student_reproduces_its_own_traces_and_no_others(tiny_model_dir, tmp_path):
    traces = generate(
        generate_config(
            tiny_model_dir, tmp_path / "traces", backend="transformers", temperature=0.0, num_samples=1
        )
    )
    recipe = tmp_path / "train.yaml"
    recipe.write_text(
        "only_correct: false\nmax_length: 1024\non_policy_temperature: 0.0\non_policy_max_new_tokens: 24\n"
        "traces: unset\noutput_dir: unset\n"
    )
    command = [sys.executable, str(SCRIPT), "--traces", str(traces), "--num-traces", "4", "--prompts", "3"]
    command += ["--students", str(tiny_model_dir), "--recipe", str(recipe), "--pool", "32"]
    process = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    table = process.stdout.split("\n\n")[-1].strip().splitlines()[2:]
    # | student | prompts | n | correct | identical to a teacher trace | tokens |
    rows = {cells[1]: cells for cells in (line.split(" | ") for line in table)}
    assert set(rows) == {"traces", "new"}
    assert rows["traces"][2] == "3" and rows["new"][2] == "3"
    assert rows["traces"][4] == "100.0% [100.0%, 100.0%]"
    assert rows["new"][4] == "0.0% [0.0%, 0.0%]"
