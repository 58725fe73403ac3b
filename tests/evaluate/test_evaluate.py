"""Evaluation stage: benchmark definitions, grading of every shipped benchmark's golds, model checks,
answer grouping for majority votes, and whole runs through vLLM and transformers on a tiny model.

The equivalence / non-equivalence table of answers (0.5 vs \\frac{1}{2}, tuples with pi, 025 vs 25,
1,000 vs 1000, ...) lives in tests/test_grading.py.
"""

import inspect
import json
from pathlib import Path

import pytest
import yaml

from reasondistill.cli import main
from reasondistill.core.grading import grade
from reasondistill.core.recipe import RecipeError
from reasondistill.evaluate.benchmark_specs import available_benchmarks, load_benchmark, load_problems
from reasondistill.evaluate.evaluate import answer_votes, check_model, evaluate_models, model_size_bytes
from reasondistill.evaluate.evaluate_config import EvaluateConfig
from reasondistill.evaluate.results import ModelSpec

SHIPPED = ["aime24", "arithmetic", "gsm8k", "math500"]

# ---------------------------------------------------------------------------------- benchmark definitions


def test_shipped_benchmarks_are_found_and_load():
    assert set(SHIPPED) <= set(available_benchmarks())
    sizes = {name: len(load_problems(load_benchmark(name))) for name in SHIPPED}
    assert sizes == {"aime24": 30, "arithmetic": 300, "gsm8k": 1319, "math500": 500}


@pytest.mark.parametrize("name", SHIPPED)
def test_every_gold_answer_scores_100_percent_through_the_grader(name):
    """Each gold, written as a model would ("... \\boxed{gold}" and "The answer is gold"), grades correct
    with the benchmark's own answer type and gold format."""
    spec = load_benchmark(name)
    failures = [
        (problem.prompt_id, output)
        for problem in load_problems(spec)
        for output in (
            f"Reasoning. So the final answer is \\boxed{{{problem.gold_answer}}}.",
            f"Reasoning.\nThe answer is {problem.gold_answer}",
        )
        if not grade(output, problem.gold_answer, spec.answer_type).correct
    ]
    assert not failures


def test_prompt_template_keeps_latex_braces():
    spec = load_benchmark("gsm8k")
    assert spec.user_turn("What is 2+2?") == (
        "What is 2+2?\nPlease reason step by step, and put your final answer within \\boxed{}."
    )
    assert load_benchmark("arithmetic").user_turn("Q?") == "Q?"


def write_benchmark(directory: Path, rows: list[dict], **settings) -> Path:
    """A user-added benchmark: a YAML file and a JSONL file beside it."""
    (directory / "mine.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    definition = {"data": "mine.jsonl", "answer_type": "number", "id_field": "id", **settings}
    path = directory / "mine.yaml"
    path.write_text(yaml.safe_dump(definition))
    return path


def test_a_user_benchmark_is_a_yaml_and_a_jsonl(tmp_path):
    path = write_benchmark(tmp_path, [{"id": "a", "question": "1+1?", "answer": "2"}], num_samples=3)
    spec = load_benchmark(str(path))
    assert spec.name == "mine" and spec.num_samples == 3
    (problem,) = load_problems(spec)
    assert (problem.prompt_id, problem.question, problem.gold_answer) == ("a", "1+1?", "2")


def test_unknown_benchmark_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown benchmark 'gsm8'.*did you mean 'gsm8k'.*math500"):
        load_benchmark("gsm8")
    with pytest.raises(ValueError, match="does not exist"):
        load_benchmark("nowhere/bench.yaml")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"answer_type": None}, r"required key 'answer_type'"),
        ({"anwser_field": "x"}, r"unknown key 'anwser_field'.*did you mean 'answer_field'"),
        ({"prompt_template": "no slot"}, r"prompt_template must contain \{question\}"),
        ({"temperature": "hot"}, r"'temperature' expects float"),
    ],
)
def test_bad_benchmark_yaml_names_file_and_key(tmp_path, settings, message):
    path = write_benchmark(tmp_path, [{"id": "a", "question": "q", "answer": "1"}], **settings)
    if settings.get("answer_type", "") is None:  # drop the required key altogether
        definition = yaml.safe_load(path.read_text())
        del definition["answer_type"]
        path.write_text(yaml.safe_dump(definition))
    with pytest.raises(RecipeError, match=message) as error:
        load_benchmark(str(path))
    assert str(path) in str(error.value)


def test_benchmark_rows_missing_a_field_name_the_definition_and_field(tmp_path):
    path = write_benchmark(tmp_path, [{"id": "a", "problem": "q", "answer": "1"}])
    with pytest.raises(ValueError, match=r"mine\.yaml.*missing field\(s\) \['question'\].*question_field"):
        load_problems(load_benchmark(str(path)))


# ---------------------------------------------------------------------------------- models and votes


def test_model_checks_and_size_on_disk(tiny_model_dir, tmp_path):
    config = EvaluateConfig()
    check_model(str(tiny_model_dir), config)
    assert model_size_bytes(str(tiny_model_dir)) == (tiny_model_dir / "model.safetensors").stat().st_size
    with pytest.raises(ValueError, match="does not exist"):
        check_model(str(tmp_path / "missing-model"), config)
    with pytest.raises(ValueError, match="neither config.json"):
        check_model(str(tmp_path), config)
    gguf = tmp_path / "model-q4.gguf"  # a single-file model (GGUF): its own size, the tokenizer given apart
    gguf.write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="is a GGUF file: set --tokenizer"):
        check_model(str(gguf), config)
    check_model(str(gguf), EvaluateConfig(tokenizer=str(tiny_model_dir)))
    assert model_size_bytes(str(gguf)) == 100
    with pytest.raises(ValueError, match="nor in the hub cache, and HF_HUB_OFFLINE is set"):
        check_model("Qwen/Qwen2.5-0.5B", config)  # tests run offline (conftest); online the hub answers
    assert model_size_bytes("Qwen/Qwen2.5-0.5B") is None


def test_an_adapter_is_refused_by_vllm_only(tiny_model_dir, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(f'{{"base_model_name_or_path": "{tiny_model_dir}"}}')
    with pytest.raises(ValueError, match="LoRA adapter, which vLLM does not load as a model"):
        check_model(str(adapter), EvaluateConfig(tokenizer=str(tiny_model_dir)))
    check_model(str(adapter), EvaluateConfig(tokenizer=str(tiny_model_dir), backend="transformers"))


def test_answer_votes_group_equivalent_wrong_answers():
    samples = [
        {"correct": True, "extracted": "2"},
        {"correct": False, "extracted": "0.5"},
        {"correct": False, "extracted": None},
        {"correct": False, "extracted": "\\frac{1}{2}"},
        {"correct": False, "extracted": "3"},
        {"correct": True, "extracted": "2.0"},
    ]
    assert answer_votes(samples, "latex") == [0, 1, None, 1, 2, 0]


@pytest.mark.parametrize("engine_class", ["VllmEngine", "TransformersEngine", "LlamaCppEngine"])
def test_every_engine_is_a_sampling_engine(engine_class):
    """What evaluate_models takes: the protocol's members, with its signatures (annotations as written),
    checked without loading a model or needing llama-cpp-python."""
    from reasondistill.core import engines, llamacpp_engine

    cls = getattr(engines, engine_class, None) or getattr(llamacpp_engine, engine_class)
    assert isinstance(cls.name, str)
    for method in ("sample", "close"):
        expected = inspect.signature(getattr(engines.SamplingEngine, method))
        assert inspect.signature(getattr(cls, method)) == expected, f"{engine_class}.{method}"


def test_config_refuses_mismatched_labels_and_bad_counts():
    with pytest.raises(ValueError, match="2 labels for 1 models"):
        EvaluateConfig(model=["a"], model_name=["x", "y"])
    with pytest.raises(ValueError, match="num_samples"):
        EvaluateConfig(num_samples=0)


def test_cli_refuses_missing_model_and_benchmark(tmp_path, capsys):
    assert main(["evaluate", "--benchmark", "gsm8k"]) == 2
    assert "give at least one model" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "nope"), "--benchmark", "gsm8k"]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- whole runs


def eval_config(**overrides) -> EvaluateConfig:
    settings = dict(
        dtype="float32",
        max_model_len=512,
        gpu_memory_utilization=0.2,
        num_problems=6,
        num_samples=1,
        temperature=0.0,
        max_tokens=40,
        batch_prompts=4,
        bootstrap_samples=200,
    )
    return EvaluateConfig(**{**settings, **overrides})


def test_context_overflow_is_refused_before_sampling(tiny_model_dir, hf_engine):
    with pytest.raises(ValueError, match="exceeds the context of 512 tokens.*--max_tokens"):
        evaluate_models([tiny_model_dir], ["arithmetic"], eval_config(max_tokens=600), engine=hf_engine)


@pytest.mark.slow
def test_vllm_and_transformers_give_the_same_greedy_answers(tiny_model_dir, vllm_engine, hf_engine):
    config = eval_config()
    model = ModelSpec(str(tiny_model_dir), "tiny")
    (vllm_run,) = evaluate_models([model], ["arithmetic"], config, engine=vllm_engine)
    (hf_run,) = evaluate_models([model], ["arithmetic"], config, engine=hf_engine)
    assert (vllm_run.backend, hf_run.backend) == ("vllm", "transformers")
    assert len(vllm_run.samples) == 6
    fields = ("problem_id", "response", "response_tokens", "finish_reason", "extracted", "correct", "failure")
    for ours, theirs in zip(vllm_run.samples, hf_run.samples, strict=True):
        assert {f: ours[f] for f in fields} == {f: theirs[f] for f in fields}
    assert vllm_run.metrics == hf_run.metrics


def test_cli_evaluates_two_models_and_writes_the_report(tiny_model_dir, demo_tokenizer, tmp_path):
    """`reasondistill evaluate` without a recipe: a user benchmark, two models, transformers backend."""
    from reasondistill.demo.factory import build_model

    bigger = tmp_path / "assistant"
    build_model("assistant", demo_tokenizer, seed=2).save_pretrained(bigger)
    demo_tokenizer.save_pretrained(bigger)
    rows = [{"id": f"q{i}", "question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(5)]
    benchmark = write_benchmark(tmp_path, rows, num_samples=3, temperature=1.0, max_tokens=24)
    out = tmp_path / "report"
    argv = ["evaluate", "--model", str(tiny_model_dir), str(bigger), "--model_name", "student", "assistant"]
    argv += ["--benchmark", str(benchmark), "--backend", "transformers", "--bootstrap_samples", "300"]
    argv += ["--output_dir", str(out)]
    assert main(argv) == 0

    results = json.loads((out / "results.json").read_text())
    assert [(r["model"], r["benchmark"]) for r in results["runs"]] == [
        ("student", "mine"),
        ("assistant", "mine"),
    ]
    for run in results["runs"]:
        assert run["sampling"] == {"n": 3, "temperature": 1.0, "top_p": 0.95, "max_tokens": 24, "seed": 0}
        assert set(run["metrics"]) == {"pass@1", "pass@2", "maj@2", "pass@3", "maj@3"}
        samples = [json.loads(line) for line in (out / run["samples_file"]).read_text().splitlines()]
        assert len(samples) == 15 and sum(s["correct"] for s in samples) == run["failures"]["correct"]
        assert sum(run["failures"].values()) == 15
        # random models ramble: cut off at max_tokens, and counted so
        assert run["truncation_rate"] == sum(s["finish_reason"] == "length" for s in samples) / 15
        assert run["failures"]["truncated"] == sum(s["failure"] == "truncated" for s in samples)
    assert results["runs"][1]["size_bytes"] > results["runs"][0]["size_bytes"]
    report = (out / "report.md").read_text()
    assert "| student |" in report and "| assistant |" in report
    for plot in ("accuracy.png", "accuracy_vs_size.png", "response_lengths.png"):
        assert (out / plot).stat().st_size > 10_000 and f"]({plot})" in report
    resolved = yaml.safe_load((out / "evaluate_recipe.yaml").read_text())
    assert resolved["model_name"] == ["student", "assistant"]


def test_shipped_demo_recipe_parses():
    from reasondistill.core.recipe import parse_recipe

    recipe = Path(__file__).resolve().parents[2] / "reasondistill" / "recipes" / "demo" / "evaluate.yaml"
    (config,) = parse_recipe(recipe, (EvaluateConfig,), ["--model", "teacher_dir", "student_dir"])
    assert config.model == ["teacher_dir", "student_dir"] and config.benchmark == ["arithmetic"]
    assert config.engine_config("teacher_dir").teacher == "teacher_dir"
    assert config.engine_config("teacher_dir").gpu_memory_utilization == 0.2
