"""benchmarks/prune_choices.py: token groups by hand, the subset loss against a model with the layers
physically removed, and the script on traces of the tiny model."""

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import generate_config
from transformers import AutoModelForCausalLM

from reasondistill.compress.prune import keep_layers
from reasondistill.core.traces import load_traces
from reasondistill.generate.generate import generate

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "prune_choices.py"
spec = importlib.util.spec_from_file_location("prune_choices", SCRIPT)
prune_choices = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prune_choices)


def test_first_step_operands_are_the_digits_before_the_first_equals():
    pieces = ["Step", " 1", ":", " 8", "8", "-", "8", "0", "=", "8", "\n", "Step", " 2"]
    groups = prune_choices.token_groups(pieces, [False] * len(pieces))
    first = [i for i, names in enumerate(groups) if prune_choices.FIRST_STEP in names]
    assert first == [1, 3, 4, 6, 7]  # the "1" of "Step 1" is a digit before "=" too; the result is not
    assert all(names[0] == "all" for names in groups) and groups[5][1] == "operator"


@pytest.fixture(scope="module")
def traces(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("traces")
    return generate(generate_config(tiny_model_dir, out, backend="transformers"))


def test_subset_loss_equals_the_model_without_the_other_layers(tiny_model_dir, traces):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    records = list(load_traces(traces))[:3]
    groups = [[["all"]] * len(r["completion_token_ids"]) for r in records]
    measured = prune_choices.subset_losses(model, records, (0, 3), groups)["all"]
    smaller = copy.deepcopy(model)
    keep_layers(smaller, [0, 3])
    total, count = 0.0, 0
    for r in records:
        ids = r["prompt_token_ids"] + r["completion_token_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(smaller(torch.tensor([ids])).logits[0].double(), -1)
        for t in range(len(r["prompt_token_ids"]), len(ids)):
            total -= logprobs[t - 1, ids[t]].item()
            count += 1
    assert count > 0 and measured == pytest.approx(total / count, rel=1e-5)


def test_script_prints_every_subset_and_what_each_criterion_picks(tiny_model_dir, traces):
    command = [sys.executable, str(SCRIPT), str(tiny_model_dir), str(traces), "--keep", "3", "--all-traces"]
    run = subprocess.run([*command, "--num-calibration", "4"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [
        line.split("|") for line in run.stdout.splitlines() if line.startswith("| ") and "---" not in line
    ]
    kept = [row[1].strip() for row in rows[1:]]
    assert kept == ["0 1 2 3", "0 1 2", "0 1 3", "0 2 3", "1 2 3"]  # the whole model, then each subset of 3
    picks = [row[2].strip() for row in rows[1:]]
    assert picks[0] == "-"
    assert sum("kl" in p for p in picks) == 1 and sum("cosine" in p for p in picks) == 1
