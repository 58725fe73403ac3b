"""`reasondistill progressive`: teacher -> assistant -> student on the tiny model, with real stages."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import generate_config
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import reasondistill.chains
from reasondistill.chains.progressive import chain_table, run_progressive
from reasondistill.chains.progressive_config import ProgressiveConfig
from reasondistill.core.traces import load_traces, read_info, read_topk
from reasondistill.demo.factory import save_initial_model
from reasondistill.generate.generate import generate

DEMO = Path(__file__).resolve().parents[2] / "reasondistill/recipes/demo"


@pytest.fixture(scope="module")
def teacher_traces(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("progressive") / "traces"
    return generate(generate_config(tiny_model_dir, out, backend="transformers"))


@pytest.fixture(scope="module")
def starting_models(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    """Fresh demo-size assistant and student with the teacher's tokenizer, as recipes/demo/progressive.yaml
    has them built before the chain runs."""
    root = tmp_path_factory.mktemp("starting-models")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for size in ("assistant", "student"):
        save_initial_model(size, tokenizer, root / size, seed=0)
    return {size: root / size for size in ("assistant", "student")}


def config(
    tmp_path: Path, teacher: Path, traces: Path, starts: dict[str, Path], **overrides
) -> ProgressiveConfig:
    settings = dict(
        teacher=str(teacher),
        traces=str(traces),
        assistants=[str(starts["assistant"])],
        student=str(starts["student"]),
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


def test_chain_trains_each_model_on_the_traces_of_the_one_before(
    tmp_path, tiny_model_dir, teacher_traces, starting_models, info_log
):
    rows, results = run_progressive(config(tmp_path, tiny_model_dir, teacher_traces, starting_models))
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
    init = load_file(starting_models["student"] / "model.safetensors")
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
    info_log.clear()
    run_progressive(config(tmp_path, tiny_model_dir, teacher_traces, starting_models))
    assert sum(m.startswith("reusing") for m in info_log.messages) == 3
    # a retrained assistant: its traces are rewritten and the student relearns them; the direct one stays
    longer = config(
        tmp_path,
        tiny_model_dir,
        teacher_traces,
        starting_models,
        assistant_train_overrides=["--max_steps", "3"],
    )
    with pytest.raises(ValueError, match=r"assistant_train_overrides: \[\] -> \[--max_steps, '3'\]"):
        run_progressive(longer)  # other settings in a finished chain's directory: refused before any step
    longer.overwrite = True
    info_log.clear()
    run_progressive(longer)
    assert [m for m in info_log.messages if m.startswith("reusing")] == [f"reusing {out / 'student-direct'}"]
    assert json.loads((out / "assistant-1" / "trainer_state.json").read_text())["global_step"] == 3
    rescored = sorted(load_traces(out / "traces-assistant-1"), key=lambda r: r["completion"])
    assert [r["topk_logprob_codes"] for r in rescored] != [r["topk_logprob_codes"] for r in scored]


def test_sampling_assistants_hand_on_their_own_traces(
    tmp_path, tiny_model_dir, teacher_traces, starting_models
):
    settings = config(
        tmp_path,
        tiny_model_dir,
        teacher_traces,
        starting_models,
        assistant_traces="sample",
        direct_baseline=False,
    )
    rows, _ = run_progressive(settings)
    assert [r["model"] for r in rows] == ["teacher", "assistant-1", "student"]
    traces = load_traces(tmp_path / "out" / "traces-assistant-1")
    assert rows[2]["traces"] == len(traces) == 8  # 4 prompts x 2 samples, all kept
    teacher_completions = set(map(tuple, load_traces(teacher_traces)["completion_token_ids"]))
    assert not set(map(tuple, traces["completion_token_ids"])) <= teacher_completions


def test_bad_settings_fail_before_any_training(tmp_path, tiny_model_dir, teacher_traces, starting_models):
    def settings(**overrides) -> ProgressiveConfig:
        return config(tmp_path, tiny_model_dir, teacher_traces, starting_models, **overrides)

    with pytest.raises(ValueError, match="at least one teaching assistant"):
        settings(assistants=[])
    with pytest.raises(ValueError, match="assistant_traces is score or sample"):
        settings(assistant_traces="copy")
    with pytest.raises(ValueError, match="lerning_rate"):
        run_progressive(settings(train_overrides=["--lerning_rate", "1"]))
    with pytest.raises(ValueError, match="no-such-benchmark"):
        run_progressive(settings(evaluate_overrides=["--benchmark", "no-such-benchmark"]))
    assert not (tmp_path / "out").exists()


def test_shipped_recipe_parses():
    from reasondistill.core.recipe import parse_recipe

    (shipped,) = parse_recipe(DEMO / "progressive.yaml", (ProgressiveConfig,))
    assert shipped.assistants == ["outputs/demo/progressive/init-assistant"]
    assert shipped.student == "outputs/demo/progressive/init-student"
    assert shipped.direct_baseline and Path(shipped.train_recipe) == Path("recipes/demo/train.yaml")


def test_no_chain_imports_the_demo():
    """Chains are product: their starting models are directories the user (or the demo's recipe) made."""
    for module in Path(reasondistill.chains.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                )
                assert not any(name.startswith("reasondistill.demo") for name in names), module


def test_chain_table_formats_every_measure():
    rows = [
        {"model": "teacher", "learned_from": "-", "parameters": 3300000, "traces": "-", "pass@1": 0.8}
        | {"ci95": [0.7, 0.9]},
        {
            "model": "student",
            "learned_from": "assistant-1",
            "parameters": 900000,
            "traces": 12,
            "pass@1": 0.25,
        }
        | {"ci95": [0.1, 0.4]},
    ]
    assert chain_table(rows) == (
        "| model | learned from | parameters | traces it learned from | pass@1 | 95% CI |\n"
        "| --- | --- | ---: | ---: | ---: | --- |\n"
        "| teacher | - | 3,300,000 | - | 80.0% | 70.0% - 90.0% |\n"
        "| student | assistant-1 | 900,000 | 12 | 25.0% | 10.0% - 40.0% |"
    )
