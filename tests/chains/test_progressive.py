"""`reasondistill progressive`: teacher -> assistant -> student on the tiny model, with real stages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import generate_config
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from reasondistill.chains.progressive import ProgressiveConfig, run_progressive
from reasondistill.core.traces import load_traces, read_info, read_topk
from reasondistill.generate.generate import generate

DEMO = Path(__file__).resolve().parents[2] / "recipes/demo"


@pytest.fixture(scope="module")
def teacher_traces(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("progressive") / "traces"
    return generate(generate_config(tiny_model_dir, out, backend="transformers"), log=lambda *_: None)


def config(tmp_path: Path, teacher: Path, traces: Path, **overrides) -> ProgressiveConfig:
    settings = dict(
        teacher=str(teacher),
        traces=str(traces),
        assistants=["demo:assistant"],
        student="demo:student",
        train_recipe=str(DEMO / "train.yaml"),
        generate_recipe=str(DEMO / "generate.yaml"),
        evaluate_recipe=str(DEMO / "evaluate.yaml"),
        train_overrides=["--only_correct", "false", "--max_steps", "2", "--report_to", "none"],
        generate_overrides=["--backend", "transformers", "--num_prompts", "4", "--max_tokens", "16"]
        + ["--keep", "all", "--drop_truncated", "false"],
        evaluate_overrides=["--backend", "transformers", "--num_problems", "3", "--num_samples", "1"]
        + ["--max_tokens", "16", "--bootstrap_samples", "100"],
        output_dir=str(tmp_path / "out"),
    )
    return ProgressiveConfig(**(settings | overrides))


def test_chain_trains_each_model_on_the_traces_of_the_one_before(tmp_path, tiny_model_dir, teacher_traces):
    messages = []
    rows, results = run_progressive(config(tmp_path, tiny_model_dir, teacher_traces), messages.append)
    out = tmp_path / "out"
    learned = {
        name: yaml.safe_load((out / name / "train_recipe.yaml").read_text())["traces"]
        for name in ("assistant-1", "student", "student-direct")
    }
    assert learned == {
        "assistant-1": str(teacher_traces),
        "student": str(out / "traces-assistant-1"),
        "student-direct": str(teacher_traces),
    }
    # the assistant's traces: the teacher's completions with the trained assistant's top-k on them
    info = read_info(out / "traces-assistant-1")
    assert info.teacher == str(out / "assistant-1") and info.k == 20
    teacher_records = sorted(load_traces(teacher_traces), key=lambda r: r["completion"])
    scored = sorted(load_traces(out / "traces-assistant-1"), key=lambda r: r["completion"])
    assert [r["completion_token_ids"] for r in scored] == [r["completion_token_ids"] for r in teacher_records]
    record = scored[0]
    ids, logprobs = read_topk(record)
    assistant = AutoModelForCausalLM.from_pretrained(out / "assistant-1")
    tokens = torch.tensor([record["prompt_token_ids"] + record["completion_token_ids"]])
    with torch.no_grad():  # brute force: the assistant's distribution at every completion token
        full = torch.log_softmax(assistant(input_ids=tokens).logits[0].double(), -1)
    start = len(record["prompt_token_ids"]) - 1
    expected = full[start : start + len(record["completion_token_ids"])].topk(20)
    assert ids.tolist() == expected.indices.tolist()
    np.testing.assert_allclose(logprobs, expected.values.numpy(), atol=1e-3)
    # both students start from the same initialisation: they differ only in whose traces they learn from
    init = load_file(out / "demo-student" / "model.safetensors")
    hidden = {
        name: json.loads((out / name / "config.json").read_text())["hidden_size"]
        for name in ("assistant-1", "student", "student-direct")
    }
    assert hidden == {"assistant-1": 192, "student": 128, "student-direct": 128}
    for name in ("student", "student-direct"):
        trained = load_file(out / name / "model.safetensors")
        assert any(not torch.equal(trained[key], init[key]) for key in init)
    assert [r["model"] for r in rows] == ["teacher", "assistant-1", "student", "student-direct"]
    assert [r["learned_from"] for r in rows] == ["-", "teacher", "assistant-1", "teacher"]
    assert rows[2]["traces"] == 12 and rows[1]["parameters"] > rows[2]["parameters"]
    assert [r.model for r in results] == [r["model"] for r in rows]
    assert (out / "progressive.md").read_text().count("\n") == 6 and (out / "report" / "report.md").exists()
    # a second run reuses every finished step
    messages.clear()
    run_progressive(config(tmp_path, tiny_model_dir, teacher_traces), messages.append)
    assert sum(m.startswith("reusing") for m in messages) == 3
    # a retrained assistant: its traces are rewritten and the student relearns them; the direct one stays
    messages.clear()
    longer = config(tmp_path, tiny_model_dir, teacher_traces, assistant_train_overrides=["--max_steps", "3"])
    run_progressive(longer, messages.append)
    assert [m for m in messages if m.startswith("reusing")] == [f"reusing {out / 'student-direct'}"]
    assert json.loads((out / "assistant-1" / "trainer_state.json").read_text())["global_step"] == 3
    rescored = sorted(load_traces(out / "traces-assistant-1"), key=lambda r: r["completion"])
    assert [r["topk_logprob_codes"] for r in rescored] != [r["topk_logprob_codes"] for r in scored]


def test_sampling_assistants_hand_on_their_own_traces(tmp_path, tiny_model_dir, teacher_traces):
    settings = config(
        tmp_path, tiny_model_dir, teacher_traces, assistant_traces="sample", direct_baseline=False
    )
    rows, _ = run_progressive(settings, lambda *_: None)
    assert [r["model"] for r in rows] == ["teacher", "assistant-1", "student"]
    traces = load_traces(tmp_path / "out" / "traces-assistant-1")
    assert rows[2]["traces"] == len(traces) == 8  # 4 prompts x 2 samples, all kept
    teacher_completions = set(map(tuple, load_traces(teacher_traces)["completion_token_ids"]))
    assert not set(map(tuple, traces["completion_token_ids"])) <= teacher_completions


def test_bad_settings_fail_before_any_training(tmp_path, tiny_model_dir, teacher_traces):
    with pytest.raises(ValueError, match="at least one teaching assistant"):
        config(tmp_path, tiny_model_dir, teacher_traces, assistants=[])
    bad_override = config(tmp_path, tiny_model_dir, teacher_traces, train_overrides=["--lerning_rate", "1"])
    with pytest.raises(ValueError, match="lerning_rate"):
        run_progressive(bad_override, lambda *_: None)
    unknown = config(
        tmp_path, tiny_model_dir, teacher_traces, evaluate_overrides=["--benchmark", "no-such-benchmark"]
    )
    with pytest.raises(ValueError, match="no-such-benchmark"):
        run_progressive(unknown, lambda *_: None)
    assert not (tmp_path / "out").exists()


def test_shipped_recipe_parses():
    from reasondistill.core.recipe import parse_recipe

    (shipped,) = parse_recipe(DEMO / "progressive.yaml", (ProgressiveConfig,))
    assert shipped.assistants == ["demo:assistant"] and shipped.student == "demo:student"
    assert shipped.direct_baseline and Path(shipped.train_recipe) == Path("recipes/demo/train.yaml")
