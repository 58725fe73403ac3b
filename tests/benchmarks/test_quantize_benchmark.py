"""benchmarks/quantize.py runs end to end at tiny settings and prints its three tables."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "quantize.py"


def test_quantize_benchmark_prints_its_tables(tiny_model_dir, tmp_path):
    """NF4 only (GGUF rows would run in llama.cpp when installed), one random layer, two short answers."""
    command = [sys.executable, str(SCRIPT), "--model", str(tiny_model_dir), "--output-dir", str(tmp_path)]
    command += ["--profiles", "nf4", "--num-problems", "2", "--speed-tokens", "4", "--large-layers", "1"]
    command += ["--max-tokens", "16", "--calibration-tokens", "8", "--threads", "1"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert out.count("| artifact | runtime | size MB | % of bf16 |") == 2
    assert out.count("| reference | transformers |") == 2 and out.count("| nf4 | transformers |") == 2
    assert "| model | layers | MLP width | parameters | size MB | pass@1 |" in out
    assert "| original | 4 | 384 |" in out and "| pruned | 3 | 256 |" in out  # one layer, a third of the MLP
    assert "gemm_4bit_forward" not in run.stdout + run.stderr  # bitsandbytes' start-up noise stays down
    assert (tmp_path / "results.json").exists()
