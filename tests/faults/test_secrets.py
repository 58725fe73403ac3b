"""A credential given to a run is written to no file: a planted hub token, searched for in every byte a tiny
training run writes (settings, `training_args.bin` in the run and every checkpoint, TensorBoard logs) and
in what it logs."""

from __future__ import annotations

import logging

import torch
from conftest import generate_config
from trl import ModelConfig

from reasondistill.core.recipe import parse_recipe
from reasondistill.generate.generate import generate
from reasondistill.train.distill_config import DistillConfig
from reasondistill.train.train import train

TOKEN = "hf_PlantedSecretToken0123456789"


def test_a_hub_token_reaches_no_file_a_training_run_writes(tmp_path, tiny_model_dir, caplog, capfd):
    traces = generate(generate_config(tiny_model_dir, tmp_path / "traces", backend="transformers"))
    out = tmp_path / "run"
    args = ["--model_name_or_path", str(tiny_model_dir), "--traces", str(traces), "--output_dir", str(out)]
    args += ["--only_correct", "false", "--use_peft", "false", "--max_steps", "2", "--save_steps", "1"]
    args += [
        "--per_device_train_batch_size",
        "4",
        "--gradient_checkpointing",
        "false",
        "--logging_steps",
        "1",
    ]
    args += ["--report_to", "tensorboard", "--hub_token", TOKEN]
    caplog.set_level(logging.DEBUG)
    model_args, config = parse_recipe(None, (ModelConfig, DistillConfig), args)
    train(model_args, config)
    assert config.hub_token == TOKEN  # kept in memory, for a push to the hub

    written = [path for path in out.rglob("*") if path.is_file()]
    names = {path.name for path in written}
    assert {"training_args.bin", "train_recipe.yaml"} <= names
    assert any(name.startswith("events.out.tfevents") for name in names)
    assert len([path for path in written if path.name == "training_args.bin"]) == 3  # the run, 2 checkpoints
    assert [path for path in written if TOKEN.encode() in path.read_bytes()] == []
    logged = capfd.readouterr()
    assert TOKEN not in caplog.text + logged.out + logged.err
    assert torch.load(out / "training_args.bin", weights_only=False).hub_token is None
