"""benchmarks/generate.py runs end to end at tiny settings and prints its tables."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "generate.py"


def test_generate_benchmark_prints_its_tables(tiny_model_dir):
    """One eager vLLM engine on the tiny model (not the random ~80M one), 4 prompts x 8 tokens, one run."""
    command = [sys.executable, str(SCRIPT), "--teacher", str(tiny_model_dir), "--models", "teacher"]
    command += ["--prompts", "4", "--max-tokens", "8", "--repeats", "1", "--storage-tokens", "16", "--eager"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "| what | tokens/s | vs raw no-logprobs |" in out
    for row in ("vLLM LLM.generate, no logprobs", "our pipeline: sample + grade", "transformers backend"):
        assert f"| {row}" in out
    assert "| k | all columns | top-k columns |" in out and "| 20 |" in out
    assert "Triton is installed" not in run.stdout + run.stderr  # vLLM's start-up noise stays down
