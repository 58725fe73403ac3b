"""Missing and unusable model paths, and sampling settings, are refused by every stage in one line
naming the setting, the path and the fix, before any model or engine loads; local paths never go to the
hub. Through the command line, on real directories copied from the tiny model."""

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from reasondistill.cli import main

MISSING = ["teacher-missing", "outputs/demo/teacher-missing"]  # a bare name; a path that looks relative


def run_cli(capsys, *argv: str) -> str:
    """The stage's one-line error (exit code 2), within seconds: nothing loaded, nothing sent to a hub."""
    started = time.time()
    assert main(list(argv)) == 2
    assert time.time() - started < 20
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 2 and error[0].startswith("usage:"), error  # usage line, then the error
    return error[1]


def recipe(tmp_path: Path, stage: str, **settings) -> str:
    path = tmp_path / f"{stage}.yaml"
    path.write_text(json.dumps(settings))  # JSON is YAML
    return str(path)


@pytest.mark.parametrize("missing", MISSING)
def test_every_stage_names_a_missing_model_path(tmp_path, capsys, missing):
    out = str(tmp_path / "out")
    stages = {
        "teacher": ["generate", recipe(tmp_path, "generate", teacher=missing, output_dir=out)],
        "model_name_or_path": [
            "train",
            recipe(tmp_path, "train", model_name_or_path=missing, traces=str(tmp_path), output_dir=out),
        ],
        "model": ["evaluate", "--model", missing, "--benchmark", "arithmetic", "--output_dir", out],
    }
    stages |= {
        f"model ({stage})": [stage, "--model", missing, "--output_dir", out]
        for stage in ("quantize", "prune")
    }
    chain = dict(teacher=missing, traces=str(tmp_path), output_dir=out)
    stages["teacher (pdq)"] = ["pdq", recipe(tmp_path, "pdq", **chain)]
    progressive = recipe(tmp_path, "progressive", **chain, assistants=[missing], student=missing)
    stages["teacher (progressive)"] = ["progressive", progressive]
    for setting, argv in stages.items():
        error = run_cli(capsys, *argv)
        name = setting.split(" ")[0]
        assert f"error: {name} {missing} does not exist (cwd " in error, (setting, error)
        assert f"set --{name} to a model directory" in error, (setting, error)
        assert not (tmp_path / "out").exists()


@pytest.fixture
def moved_adapter(tiny_model_dir, tmp_path) -> Path:
    """A LoRA adapter trained on a copy of the tiny model, whose base has since moved."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    adapter = tmp_path / "adapter"
    get_peft_model(model, LoraConfig(r=4, target_modules="all-linear")).save_pretrained(adapter)
    base.rename(tmp_path / "moved")
    return adapter


def test_adapter_whose_base_moved_gets_the_base_model_hint(moved_adapter, tmp_path, capsys):
    argv = ["quantize", "--model", str(moved_adapter), "--output_dir", str(tmp_path / "q")]
    error = run_cli(capsys, *argv)
    assert f"model {moved_adapter} is a LoRA adapter whose base {tmp_path / 'base'}" in error
    assert "pass the base model directory with --base_model DIR" in error


def test_evaluate_refuses_a_model_without_tokenizer_files_or_chat_template(tiny_model_dir, tmp_path, capsys):
    """Before: vLLM loaded the model (a minute), then failed on the chat template naming no directory."""
    weights_only = tmp_path / "weights-only"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, weights_only)
    no_template = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, no_template, ignore=shutil.ignore_patterns("chat_template.jinja"))
    evaluate = ["evaluate", "--benchmark", "arithmetic", "--output_dir", str(tmp_path / "out"), "--model"]

    error = run_cli(capsys, *evaluate, str(weights_only))
    assert f"model {weights_only} has no tokenizer files" in error and "--tokenizer" in error
    error = run_cli(capsys, *evaluate, str(no_template))
    assert f"model {no_template}: the tokenizer has no chat template" in error
    error = run_cli(capsys, *evaluate, str(weights_only), "--tokenizer", str(tmp_path / "tok"))
    assert f"tokenizer {tmp_path / 'tok'} does not exist" in error


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("top_p", "0", r"top_p must be in \(0, 1\]"),
        ("top_p", "1.5", r"top_p must be in \(0, 1\]"),
        ("temperature", "-1", "temperature must be a finite number >= 0"),
        ("max_model_len", "0", "max_model_len must be at least 1"),
    ],
)
def test_evaluate_refuses_sampling_settings_before_any_engine(
    tiny_model_dir, tmp_path, capsys, setting, value, message
):
    """Before: `--top_p 0` passed the settings check and failed after about 70 s inside vLLM."""
    argv = ["evaluate", "--model", str(tiny_model_dir), "--benchmark", "arithmetic"]
    error = run_cli(capsys, *argv, "--output_dir", str(tmp_path / "out"), f"--{setting}", value)
    assert re.search(message, error), error
