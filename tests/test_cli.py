import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reasondistill.cli import STAGES, main

SCRIPT = Path(sys.executable).parent / "reasondistill"  # the console script pip installed


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_help_lists_every_stage():
    result = run_cli("--help")
    assert result.returncode == 0
    stages = {"generate", "train", "evaluate", "quantize", "prune", "pdq", "progressive", "demo"}
    for stage in stages:
        assert stage in result.stdout
    assert set(STAGES) == stages


FIELD_OF = {
    "generate": "--logprobs",
    "train": "--kd_weight",
    "evaluate": "--benchmark",
    "quantize": "--profiles",
    "prune": "--num_layers",
    "pdq": "--train_recipe",
    "progressive": "--assistant_traces",
    "demo": "--steps",
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_stage_explains_itself_and_lists_its_recipe_fields(stage):
    result = run_cli(stage, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert STAGES[stage].split()[0] in result.stdout and FIELD_OF[stage] in result.stdout


def test_help_with_a_recipe_shows_its_values_and_a_missing_recipe_is_refused():
    recipe = Path(__file__).resolve().parents[1] / "recipes/demo/train.yaml"
    result = run_cli("train", str(recipe), "--help")
    assert result.returncode == 0
    max_steps = result.stdout[result.stdout.index("--max_steps MAX_STEPS, --max-steps") :][:400]
    assert "(default: 200)" in " ".join(max_steps.split())  # the recipe's value, not TRL's -1
    result = run_cli("train")
    assert result.returncode == 2 and "a recipe is required" in result.stderr


def test_demo_recipe_errors_name_key_and_file(tmp_path, capsys):
    recipe = tmp_path / "teacher.yaml"
    recipe.write_text("steps: 10\nlerning_rate: 0.1\n")
    assert main(["demo", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "lerning_rate" in err and str(recipe) in err and "learning_rate" in err

    recipe.write_text("steps: ten\n")
    assert main(["demo", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "steps" in err and "int" in err and str(recipe) in err


def test_shipped_demo_recipe_parses():
    from reasondistill.core.recipe import parse_recipe
    from reasondistill.demo.teacher import TeacherConfig

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "demo" / "teacher.yaml"
    (config,) = parse_recipe(recipe, (TeacherConfig,), ["--steps", "7"])
    assert config.steps == 7 and config.size == "teacher"
    assert set(yaml.safe_load(recipe.read_text())) <= set(TeacherConfig.__dataclass_fields__)


@pytest.mark.slow
def test_demo_runs_end_to_end_on_a_tiny_recipe(tmp_path):
    """`reasondistill demo` with tiny recipes: teacher, vLLM traces, two students, 4-bit, prune -> distil
    -> quantize, report."""
    demo = Path(__file__).resolve().parents[1] / "recipes/demo"
    shipped = yaml.safe_load((demo / "generate.yaml").read_text())
    recipe = tmp_path / "teacher.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "cache_dir": str(tmp_path / "cache"),
                "size": "student",
                "train_problems": 200,
                "steps": 10,
                "batch_tokens": 1024,
                "eval_problems": 4,
                "eval_every": 10,
            }
        )
    )
    (tmp_path / "generate.yaml").write_text(
        yaml.safe_dump(
            {
                **shipped,
                "num_prompts": 6,
                "max_tokens": 30,
                "keep": "all",
                "drop_truncated": False,
                "shard_size": 3,
            }
        )
    )
    train = yaml.safe_load((demo / "train.yaml").read_text())
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({**train, "only_correct": False, "max_steps": 3}))
    students = yaml.safe_load((demo / "students.yaml").read_text())
    (tmp_path / "students.yaml").write_text(
        yaml.safe_dump({**students, "seeds": [0], "test_problems": 4, "heldout_prompts": 4})
    )
    quantize = yaml.safe_load((demo / "quantize.yaml").read_text())
    small = {"profiles": ["gguf-q4", "nf4"], "num_problems": 3, "max_tokens": 24, "speed_tokens": 8}
    (tmp_path / "quantize.yaml").write_text(yaml.safe_dump({**quantize, **small}))
    prune = yaml.safe_load((demo / "prune.yaml").read_text())
    small = {"intermediate_size": 256, "num_calibration": 4, "calibration_tokens": 8}
    (tmp_path / "prune.yaml").write_text(yaml.safe_dump({**prune, **small}))
    (tmp_path / "pdq.yaml").write_text((demo / "pdq.yaml").read_text())
    result = run_cli("demo", str(recipe), "--seed", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held-out accuracy" in result.stdout and "parameters" in result.stdout
    assert "traces kept of 12 sampled" in result.stdout
    assert "| sft | 1 |" in result.stdout and "| kd | 1 |" in result.stdout
    report = tmp_path / quantize["output_dir"] / next((tmp_path / "cache").glob("demo-student-*")).name
    assert (report / "report" / "report.md").exists() and "| nf4 |" in result.stdout
    # stage 5 pruned the teacher (4 -> 3 layers), distilled and quantized it; all of it is in the report
    assert "| quantized | pruned+distilled gguf-q4 | 3 |" in result.stdout
    pdq = yaml.safe_load((demo / "pdq.yaml").read_text())["output_dir"]
    assert (tmp_path / pdq / report.name / "pdq.md").exists()
    assert "pruned+distilled nf4" in (report / "report" / "report.md").read_text()
    teacher_dir = next((tmp_path / "cache").glob("demo-student-*"))
    assert (teacher_dir / "model.safetensors").exists()
    traces = tmp_path / shipped["output_dir"] / teacher_dir.name
    assert (traces / "README.md").exists() and len(list(traces.glob("data/*.parquet"))) == 2
    summary = json.loads((tmp_path / students["output_dir"] / teacher_dir.name / "summary.json").read_text())
    assert sorted((s["method"], s["seed"]) for s in summary["students"]) == [("kd", 0), ("sft", 0)]


@pytest.mark.parametrize(
    "recipe", ["recipes/demo/generate.yaml", "recipes/DeepSeek-R1-Distill-Qwen-7B/generate/config_gsm8k.yaml"]
)
def test_shipped_generate_recipes_parse(recipe):
    from reasondistill.core.recipe import parse_recipe
    from reasondistill.generate.generate_config import GenerateConfig

    path = Path(__file__).resolve().parents[1] / recipe
    (config,) = parse_recipe(
        path, (GenerateConfig,), ["--teacher", "some/teacher"] if "demo" in recipe else []
    )
    assert config.logprobs == 20 and config.keep == "correct"


@pytest.mark.parametrize(
    "recipe",
    [
        "recipes/demo/train.yaml",
        "recipes/DeepSeek-R1-Distill-Qwen-1.5B/distill/config_gsm8k.yaml",
        "recipes/DeepSeek-R1-Distill-Qwen-1.5B/on_policy/config_gsm8k.yaml",
    ],
)
def test_shipped_train_recipes_parse(recipe):
    from trl import ModelConfig

    from reasondistill.core.recipe import parse_recipe
    from reasondistill.train.distill_config import DistillConfig

    path = Path(__file__).resolve().parents[1] / recipe
    # bf16 recipes are for GPUs; parsing them here checks every key and type, not the hardware
    overrides = ["--model_name_or_path", "some/student"] if "demo" in recipe else ["--no_bf16"]
    model_args, args = parse_recipe(path, (ModelConfig, DistillConfig), overrides)
    assert args.kd_weight == 1.0 and args.ce_weight == 1.0 and args.traces
    assert model_args.use_peft == ("demo" not in recipe)
