import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reasondistill import cli
from reasondistill.cli import STAGES, main
from reasondistill.core.recipe import PACKAGE_DIR
from reasondistill.core.traces import load_traces

SCRIPT = Path(sys.executable).parent / "reasondistill"  # the console script pip installed
DEMO = PACKAGE_DIR / "recipes" / "demo"  # the demo's recipes, shipped in the package
REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_help_lists_every_stage():
    result = run_cli("--help")
    assert result.returncode == 0
    stages = {"generate", "train", "evaluate", "quantize", "prune", "pdq", "progressive", "federate", "demo"}
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
    "federate": "--client_models",
    "demo": "--steps",
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_stage_explains_itself_and_lists_its_recipe_fields(stage):
    result = run_cli(stage, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert STAGES[stage].split()[0] in result.stdout and FIELD_OF[stage] in result.stdout


def test_help_with_a_recipe_shows_its_values_and_a_missing_recipe_is_refused(tmp_path):
    # from a directory without recipes/: the shipped recipe is found in the installed package
    result = run_cli("train", "--config", "recipes/demo/train.yaml", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--config RECIPE.yaml" in result.stdout  # the usage line names both forms
    max_steps = result.stdout[result.stdout.index("--max_steps MAX_STEPS, --max-steps") :][:400]
    assert "(default: 1000)" in " ".join(max_steps.split())  # the recipe's value, not TRL's -1
    result = run_cli("train")
    assert result.returncode == 2 and "reasondistill train: error: a recipe is required" in result.stderr


@pytest.fixture
def stage_calls(monkeypatch):
    """What main() hands on: its setup_logging and run_stage calls, recorded instead of run."""
    calls = []
    monkeypatch.setattr(cli, "setup_logging", lambda level: calls.append(("log_level", level)))
    monkeypatch.setattr(cli, "set_cache_locations", lambda cache_dir: None)
    monkeypatch.setattr(cli, "run_stage", lambda *args: calls.append(args) or 0)
    return calls


def test_recipe_as_config_flag_or_leading_argument_from_any_directory(stage_calls, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    packaged = DEMO / "train.yaml"
    assert main(["train", "--max_steps", "3", "--config", "recipes/demo/train.yaml"]) == 0
    assert main(["train", "recipes/demo/train.yaml", "--max_steps", "3"]) == 0
    assert stage_calls[1] == stage_calls[3] == ("train", packaged, ["--max_steps", "3"])
    mine = tmp_path / "recipes/demo/train.yaml"  # one in the working directory comes first
    mine.parent.mkdir(parents=True)
    mine.write_text("max_steps: 1\n")
    assert main(["train", "--config", "recipes/demo/train.yaml"]) == 0
    assert stage_calls[-1] == ("train", Path("recipes/demo/train.yaml"), [])
    assert main(["demo"]) == 0
    assert stage_calls[-1] == ("demo", DEMO / "teacher.yaml", [])  # the default demo recipe, shipped
    assert main(["evaluate", "--model", "a", "b"]) == 0
    assert stage_calls[-1] == ("evaluate", None, ["--model", "a", "b"])  # flags alone, no recipe


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "a.yaml", "--config", "b.yaml"], "two recipes given, a.yaml and --config b.yaml"),
        (["train", "--config"], "--config needs the recipe's path"),
        (["train", "recipes/demo/nope.yaml"], "recipes/demo/nope.yaml: recipe file not found in the working"),
    ],
)
def test_recipe_argument_errors(stage_calls, capsys, monkeypatch, tmp_path, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2 and stage_calls == []
    err = capsys.readouterr().err
    assert err.startswith("usage: reasondistill train") and f"reasondistill train: error: {message}" in err
    if "nope" in argv[1]:  # both places looked are named
        assert str(tmp_path / "recipes/demo/nope.yaml") in err and str(DEMO / "nope.yaml") in err


def test_log_level_is_set_before_the_stage_runs(stage_calls, capsys):
    recipe = str(DEMO / "train.yaml")
    assert main(["--log_level", "debug", "train", recipe]) == 0
    assert main(["train", recipe]) == 0
    runs_train = ("train", Path(recipe), [])
    assert stage_calls == [("log_level", "debug"), runs_train, ("log_level", "info"), runs_train]
    with pytest.raises(SystemExit) as exit_info:
        main(["--log_level", "loud", "train", recipe])
    assert exit_info.value.code == 2 and "invalid choice: 'loud'" in capsys.readouterr().err
    assert len(stage_calls) == 4


def test_demo_recipe_errors_name_key_and_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "setup_logging", lambda level: None)  # its handler would keep capsys's stdout
    recipe = tmp_path / "teacher.yaml"
    recipe.write_text("steps: 10\nlerning_rate: 0.1\n")
    assert main(["demo", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "lerning_rate" in err and str(recipe) in err and "learning_rate" in err

    recipe.write_text("steps: ten\n")
    assert main(["demo", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "reasondistill demo: error:" in err and "steps" in err and "int" in err and str(recipe) in err


def test_shipped_demo_recipe_parses(monkeypatch, tmp_path):
    from reasondistill.core.recipe import parse_recipe
    from reasondistill.demo.teacher_config import TeacherConfig

    monkeypatch.chdir(tmp_path)  # found in the package from any directory
    (config,) = parse_recipe("recipes/demo/teacher.yaml", (TeacherConfig,), ["--steps", "7"])
    assert config.steps == 7 and config.size == "teacher"
    assert set(yaml.safe_load((DEMO / "teacher.yaml").read_text())) <= set(TeacherConfig.__dataclass_fields__)


@pytest.mark.slow
def test_demo_runs_end_to_end_on_a_tiny_recipe(tmp_path):
    """`reasondistill demo` with tiny recipes: teacher, vLLM traces, two students, 4-bit, prune -> distil
    -> quantize, report."""
    shipped = yaml.safe_load((DEMO / "generate.yaml").read_text())
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
                "enforce_eager": True,  # no torch.compile of a model that lives seconds: about 20 s less
            }
        )
    )
    train = yaml.safe_load((DEMO / "train.yaml").read_text())
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({**train, "only_correct": False, "max_steps": 3}))
    students = yaml.safe_load((DEMO / "students.yaml").read_text())
    (tmp_path / "students.yaml").write_text(
        yaml.safe_dump({**students, "seeds": [0], "test_problems": 4, "heldout_prompts": 4})
    )
    quantize = yaml.safe_load((DEMO / "quantize.yaml").read_text())
    small = {"profiles": ["gguf-q4", "nf4"], "num_problems": 3, "max_tokens": 24, "speed_tokens": 8}
    (tmp_path / "quantize.yaml").write_text(yaml.safe_dump({**quantize, **small}))
    prune = yaml.safe_load((DEMO / "prune.yaml").read_text())
    small = {"intermediate_size": 256, "num_calibration": 4, "calibration_tokens": 8}
    (tmp_path / "prune.yaml").write_text(yaml.safe_dump({**prune, **small}))
    (tmp_path / "pdq.yaml").write_text((DEMO / "pdq.yaml").read_text())
    evaluate = yaml.safe_load((DEMO / "evaluate.yaml").read_text())  # the report's divergence section
    small = {"divergence_problems": 4, "divergence_max_tokens": 30}
    (tmp_path / "evaluate.yaml").write_text(yaml.safe_dump({**evaluate, **small}))
    result = run_cli("demo", str(recipe), "--seed", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held-out accuracy" in result.stdout and "parameters" in result.stdout
    assert "traces kept of 12 sampled" in result.stdout
    assert "| sft | 1 |" in result.stdout and "| kd | 1 |" in result.stdout
    report = tmp_path / quantize["output_dir"] / next((tmp_path / "cache").glob("demo-student-*")).name
    assert (report / "report" / "report.md").exists() and "| nf4 |" in result.stdout
    # stage 5 pruned the teacher (4 -> 3 layers), distilled and quantized it; all of it is in the report
    assert "| quantized | pruned+distilled gguf-q4 | 3 |" in result.stdout
    pdq = yaml.safe_load((DEMO / "pdq.yaml").read_text())["output_dir"]
    assert (tmp_path / pdq / report.name / "pdq.md").exists()
    assert "pruned+distilled nf4" in (report / "report" / "report.md").read_text()
    assert "on arithmetic: 4 greedy solutions" in result.stderr + result.stdout  # evaluate.yaml's size
    teacher_dir = next((tmp_path / "cache").glob("demo-student-*"))
    assert (teacher_dir / "model.safetensors").exists()
    traces = tmp_path / shipped["output_dir"] / teacher_dir.name
    assert (traces / "README.md").exists() and len(list(traces.glob("data/*.parquet"))) == 2
    heldout = traces.parent / f"{teacher_dir.name}-heldout"  # sampled by the same engine (LazyEngine)
    assert len(load_traces(heldout)) == 4
    summary = json.loads((tmp_path / students["output_dir"] / teacher_dir.name / "summary.json").read_text())
    assert sorted((s["method"], s["seed"]) for s in summary["students"]) == [("kd", 0), ("sft", 0)]


@pytest.mark.parametrize(
    "recipe",
    [
        "recipes/demo/generate.yaml",
        "recipes/DeepSeek-R1-Distill-Qwen-7B/generate/config_gsm8k.yaml",
    ],
)
def test_shipped_generate_recipes_parse(recipe, monkeypatch):
    from reasondistill.core.recipe import parse_recipe
    from reasondistill.generate.generate_config import GenerateConfig

    monkeypatch.chdir(REPO)  # as typed in a checkout: recipes/demo/ is found in the package
    (config,) = parse_recipe(
        recipe, (GenerateConfig,), ["--teacher", "some/teacher"] if "demo" in recipe else []
    )
    assert config.logprobs == 20 and config.keep == "correct"


@pytest.mark.parametrize(
    "recipe",
    [
        "recipes/demo/train.yaml",
        "recipes/DeepSeek-R1-Distill-Qwen-1.5B/distill/config_gsm8k.yaml",
        "recipes/DeepSeek-R1-Distill-Qwen-1.5B/on_policy/config_gsm8k.yaml",
        "recipes/Llama-3.2-1B-Instruct/distill/config_gsm8k.yaml",  # another tokenizer than the teacher's
        "recipes/Qwen2.5-1.5B-Instruct/distill/config_gsm8k.yaml",
    ],
)
def test_shipped_train_recipes_parse(recipe, monkeypatch):
    from trl import ModelConfig

    from reasondistill.core.recipe import parse_recipe
    from reasondistill.train.distill_config import DistillConfig

    monkeypatch.chdir(REPO)
    # bf16 recipes are for GPUs; parsing them here checks every key and type, not the hardware
    overrides = ["--model_name_or_path", "some/student"] if "demo" in recipe else ["--no_bf16"]
    model_args, args = parse_recipe(recipe, (ModelConfig, DistillConfig), overrides)
    assert args.kd_weight == 1.0 and args.ce_weight == 1.0 and args.traces
    assert model_args.use_peft == ("demo" not in recipe)


@pytest.mark.parametrize(
    "recipe",
    [
        "recipes/demo/quantize.yaml",
        "recipes/DeepSeek-R1-Distill-Qwen-1.5B/quantize/config_gsm8k.yaml",
        "recipes/Llama-3.2-1B-Instruct/quantize/config_gsm8k.yaml",
        "recipes/Qwen2.5-1.5B-Instruct/quantize/config_gsm8k.yaml",
    ],
)
def test_shipped_quantize_recipes_parse(recipe, monkeypatch):
    from reasondistill.compress.quantize_config import QuantizeConfig
    from reasondistill.core.recipe import parse_recipe

    monkeypatch.chdir(REPO)
    overrides = ["--model", "some/student"] if "demo" in recipe else []
    (config,) = parse_recipe(recipe, (QuantizeConfig,), overrides)
    assert "gguf-q4km" in config.profiles or "demo" in recipe
