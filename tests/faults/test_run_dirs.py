"""A run directory holds one run: every stage that writes one refuses a directory of another run, naming
what differs, unless `--overwrite` (which clears it first) or an explicit resume of the same settings.

Real stages on the tiny model: the trainer on its traces, prune, quantize (GGUF export only) and evaluate.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import generate_config
from safetensors.torch import load_file
from trl import ModelConfig

from reasondistill.cli import main
from reasondistill.core.recipe import parse_recipe, save_resolved_recipe
from reasondistill.core.run_reuse import RunDirError, partial_recipe
from reasondistill.generate.generate import generate
from reasondistill.train.distill_config import DistillConfig
from reasondistill.train.train import RECIPE_FILE, TRACES_RECORD_FILE, train, train_unless_done


@pytest.fixture(scope="module")
def traces(tmp_path_factory, tiny_model_dir) -> Path:
    out = tmp_path_factory.mktemp("run-dirs") / "traces"
    return generate(generate_config(tiny_model_dir, out, backend="transformers"))


def settings(student: Path, traces: Path, out: Path, *overrides: str) -> list[str]:
    """A 4-step full-weight run that saves a checkpoint every 2 steps, as command-line arguments."""
    args = ["--model_name_or_path", str(student), "--traces", str(traces), "--output_dir", str(out)]
    args += ["--only_correct", "false", "--use_peft", "false", "--max_steps", "4", "--save_steps", "2"]
    args += [
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "1e-2",
        "--lr_scheduler_type",
        "constant",
    ]
    args += ["--gradient_checkpointing", "false", "--report_to", "none", "--seed", "3"]
    return args + list(overrides)


def configs(*args: str) -> tuple[ModelConfig, DistillConfig]:
    return parse_recipe(None, (ModelConfig, DistillConfig), list(args))


def snapshot(directory: Path) -> dict[str, int]:
    """Every file under `directory` with its modification time: what 'nothing was changed' compares."""
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in directory.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir, traces) -> Path:
    """A finished 4-step run with checkpoints 2 and 4."""
    return train(*configs(*settings(tiny_model_dir, traces, tmp_path_factory.mktemp("finished") / "run")))


def test_train_refuses_a_finished_run_of_other_settings_until_overwrite(
    tmp_path, tiny_model_dir, traces, finished, capsys
):
    """The issue's case: another learning rate and fewer steps into a finished run's directory."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = snapshot(out)
    changed = settings(tiny_model_dir, traces, out, "--learning_rate", "5e-3", "--max_steps", "2")
    for extra in ([], ["--resume_from_checkpoint", "last"]):
        with pytest.raises(RunDirError) as refused:
            train(*configs(*changed, *extra))
        message = str(refused.value)
        assert f"output_dir {out} holds a finished run of other settings" in message
        assert "learning_rate: 0.01 -> 0.005" in message and "max_steps: 4 -> 2" in message
        assert "--overwrite" in message and "another output_dir" in message
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("seed: 3\n")
    assert main(["train", str(recipe), *changed]) == 2  # the CLI: one line, no traceback
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("reasondistill train: error: output_dir") and "max_steps: 4 -> 2" in error
    assert snapshot(out) == before  # nothing was changed

    train(*configs(*settings(tiny_model_dir, traces, out)))  # the same settings: reused, not retrained
    assert snapshot(out) == before

    train(*configs(*changed, "--overwrite", "true"))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]  # the old run's are gone
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    assert yaml.safe_load((out / RECIPE_FILE).read_text())["learning_rate"] == 5e-3


def test_an_unfinished_run_is_resumed_only_when_asked(tmp_path, tiny_model_dir, traces, finished):
    """A run killed after checkpoint 2 (its partial record and that checkpoint) continues bit for bit with
    an explicit resume or in a chain, and is refused otherwise."""
    out = tmp_path / "run"
    shutil.copytree(finished / "checkpoint-2", out / "checkpoint-2")
    save_resolved_recipe(configs(*settings(tiny_model_dir, traces, out)), partial_recipe(out / RECIPE_FILE))
    with pytest.raises(RunDirError, match=r"holds an unfinished run of these settings \(last checkpoint: .*"):
        train(*configs(*settings(tiny_model_dir, traces, out)))
    with pytest.raises(RunDirError, match=r"holds an unfinished run of other settings \(max_steps: 4 -> 6\)"):
        train(*configs(*settings(tiny_model_dir, traces, out, "--max_steps", "6")))
    chained = tmp_path / "chained"
    shutil.copytree(out, chained)
    saved = {run: snapshot(run / "checkpoint-2") for run in (out, chained)}

    train(*configs(*settings(tiny_model_dir, traces, out, "--resume_from_checkpoint", "last")))
    assert train_unless_done(*configs(*settings(tiny_model_dir, traces, chained)))  # a chain resumes itself
    straight = load_file(finished / "model.safetensors")
    for resumed in (out, chained):
        assert (resumed / RECIPE_FILE).is_file() and not partial_recipe(resumed / RECIPE_FILE).exists()
        assert snapshot(resumed / "checkpoint-2") == saved[resumed]  # continued from it, not started again
        ours = load_file(resumed / "model.safetensors")
        assert all(ours[name].equal(straight[name]) for name in straight)


def test_traces_regenerated_under_the_same_path_make_a_run_stale(tmp_path, tiny_model_dir, traces, finished):
    """A finished run of the same settings is reused only on the traces it trained on: traces written again
    at that path are named and refused, and with --overwrite (as chains pass) trained on anew."""
    regenerated = tmp_path / "traces"
    shutil.copytree(traces, regenerated)
    out = tmp_path / "run"
    train(*configs(*settings(tiny_model_dir, regenerated, out)))
    before = snapshot(out)
    info = json.loads((regenerated / "trace_info.json").read_text())
    info["created_at"] = "2030-01-01T00:00:00+00:00"  # what `generate --overwrite` records for a new dataset
    (regenerated / "trace_info.json").write_text(json.dumps(info))
    with pytest.raises(
        RunDirError, match=r"holds a run of these settings, but the traces at .* were written 2030"
    ):
        train(*configs(*settings(tiny_model_dir, regenerated, out)))
    assert snapshot(out) == before  # nothing was changed
    assert train_unless_done(*configs(*settings(tiny_model_dir, regenerated, out)), overwrite=True)
    assert json.loads((out / TRACES_RECORD_FILE).read_text())["created_at"] == info["created_at"]
    # now the same traces: reused
    assert not train_unless_done(*configs(*settings(tiny_model_dir, regenerated, out)))


def test_prune_and_quantize_refuse_another_run_until_overwrite(tmp_path, tiny_model_dir, capsys):
    pruned = tmp_path / "pruned"
    prune = ["prune", "--model", str(tiny_model_dir), "--output_dir", str(pruned), "--num_layers", "3"]
    prune += ["--num_calibration", "4", "--calibration_tokens", "0", "--depth_criterion", "cosine"]
    assert main(prune) == 0
    capsys.readouterr()
    assert main([*prune, "--num_layers", "2"]) == 2
    assert "num_layers: 3 -> 2" in capsys.readouterr().err
    assert main([*prune, "--num_layers", "2", "--overwrite", "true"]) == 0
    assert json.loads((pruned / "prune_info.json").read_text())["num_layers"] == 2

    quantized = tmp_path / "quantized"
    quantize = [
        "quantize",
        "--model",
        str(tiny_model_dir),
        "--output_dir",
        str(quantized),
        "--measure",
        "false",
    ]
    assert main([*quantize, "--profiles", "gguf-q8"]) == 0
    capsys.readouterr()
    assert main([*quantize, "--profiles", "gguf-q4"]) == 2
    assert "profiles: [gguf-q8] -> [gguf-q4]" in capsys.readouterr().err
    assert main([*quantize, "--profiles", "gguf-q4", "--overwrite", "true"]) == 0
    # no Q8 file of the old run; Q4_0 is llama.cpp's quantizer on the F16 file, which is kept
    assert sorted(p.name for p in quantized.iterdir()) == [
        "model-F16.gguf",
        "model-Q4_0.gguf",
        "quantize_recipe.yaml",
    ]


def test_evaluate_refuses_another_run_before_any_engine_starts(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "eval"
    evaluate = ["evaluate", "--model", str(tiny_model_dir), "--benchmark", "arithmetic", "--backend"]
    evaluate += ["transformers", "--num_samples", "1", "--max_tokens", "8", "--output_dir", str(out)]
    assert main([*evaluate, "--num_problems", "2"]) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert main([*evaluate, "--num_problems", "3"]) == 2
    assert "num_problems: 2 -> 3" in capsys.readouterr().err
    assert snapshot(out) == before
