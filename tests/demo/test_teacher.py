"""The demo teacher's build loop on a tiny budget: real training, real files, real reuse."""

import json

import pytest
import torch
from conftest import TINY_TEACHER
from transformers import AutoModelForCausalLM, AutoTokenizer

from reasondistill.core.arithmetic_task import generate_problems
from reasondistill.demo.teacher import BUILD_INFO_FILE, main, tokenize_example, train_teacher
from reasondistill.demo.teacher_config import TeacherConfig


def test_build_trains_saves_and_is_reused(tmp_path, info_log):
    config = TeacherConfig(cache_dir=str(tmp_path), **TINY_TEACHER)
    directory = train_teacher(config)
    info = json.loads((directory / BUILD_INFO_FILE).read_text())
    curve = info["learning_curve"]
    assert [p["step"] for p in curve] == [20, 40, 60]
    assert curve[-1]["loss"] < 0.6 * curve[0]["loss"], curve
    assert 0.0 <= info["heldout_accuracy"] <= 1.0 and info["heldout_problems"] == 8
    model = AutoModelForCausalLM.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert info["parameters"] == sum(p.numel() for p in model.parameters())

    # The saved model has learned the answer format: its loss on held-out answers is far below uniform.
    ids, prompt_len = tokenize_example(tokenizer, generate_problems("test", 1, [1], seed=5)[0])
    labels = torch.tensor([[-100] * prompt_len + ids[prompt_len:]])
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ids]), labels=labels).loss
    assert loss < 0.5 * torch.log(torch.tensor(float(len(tokenizer))))

    info_log.clear()
    assert train_teacher(config) == directory
    assert info_log.messages == [f"reusing demo teacher at {directory}"]
    other = TeacherConfig(cache_dir=str(tmp_path), **{**TINY_TEACHER, "seed": 1})
    assert other.directory() != directory


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="size='huge'"):
        TeacherConfig(size="huge")
    with pytest.raises(ValueError, match="positive"):
        TeacherConfig(steps=0)
    with pytest.raises(ValueError, match="batch_order='sorted'"):
        TeacherConfig(batch_order="sorted")


def test_solution_style_builds_another_teacher_from_the_command_line(tmp_path, capsys):
    # The fixed style and by-length batches keep the directories of teachers built before those fields
    # existed (the 1,000- and 1,500-step teachers, which the studies in docs/benchmarks.md name).
    assert TeacherConfig(steps=1000, batch_order="by_length").directory().name == "demo-teacher-dba4de7275"
    assert TeacherConfig(steps=1500, batch_order="by_length").directory().name == "demo-teacher-2dda572f0a"
    assert TeacherConfig().directory().name == "demo-teacher-7530151ab3"
    flags = [f"--{key}={value}" for key, value in TINY_TEACHER.items()]
    assert main([*flags, "--cache_dir", str(tmp_path), "--solution_style", "varied"]) == 0
    directory = capsys.readouterr().out.strip().splitlines()[-1]
    fixed = TeacherConfig(cache_dir=str(tmp_path), **TINY_TEACHER)
    varied = TeacherConfig(cache_dir=str(tmp_path), **TINY_TEACHER, solution_style="varied")
    assert directory == str(varied.directory()) != str(fixed.directory())
    info = json.loads((varied.directory() / BUILD_INFO_FILE).read_text())
    assert info["config"]["solution_style"] == "varied"
    with pytest.raises(SystemExit, match="solution_style"):
        main(["--solution_style", "wild"])
