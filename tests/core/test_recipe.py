"""Recipes: YAML values, CLI overrides, `--config` or a leading recipe, the packaged recipes, the errors users
see, and the resolved-recipe round trip."""

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Literal

import pytest

from reasondistill.compress.prune_config import PruneConfig
from reasondistill.compress.quantize_config import QuantizeConfig
from reasondistill.core import recipe as recipe_module
from reasondistill.core.recipe import RecipeError, parse_recipe, save_resolved_recipe, split_recipe_argument


class Reduction(Enum):
    SUM = "sum"
    MEAN = "mean"


@dataclass
class ModelArgs:
    model_name: str = field(metadata={"help": "Student model id or path."})
    dtype: Literal["float32", "bfloat16"] = field(default="float32", metadata={"help": "Weights dtype."})
    revision: str | None = field(default=None, metadata={"help": "Model revision."})
    seed: int = field(default=0, metadata={"help": "Shared with TrainArgs."})


@dataclass
class TrainArgs:
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate."})
    max_steps: int = field(default=10, metadata={"help": "Optimizer steps."})
    bf16: bool = field(default=False, metadata={"help": "Train in bfloat16."})
    packing: bool = field(default=True, metadata={"help": "Pack sequences."})
    tasks: list[str] = field(default_factory=lambda: ["gsm8k"], metadata={"help": "Eval tasks."})
    betas: tuple[float, float] = field(default=(0.9, 0.99), metadata={"help": "Adam betas."})
    reduction: Reduction = field(default=Reduction.MEAN, metadata={"help": "Loss reduction."})
    seed: int = field(default=42, metadata={"help": "Shared with ModelArgs."})

    def __post_init__(self):
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


TYPES = (ModelArgs, TrainArgs)


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_values(tmp_path):
    path = write(
        tmp_path,
        "model_name: tiny\ndtype: bfloat16\nlearning_rate: 1e-4\nbf16: true\ntasks: [gsm8k, math]\n"
        "betas: [0.8, 0.9]\nreduction: sum\nrevision: no\n",
    )
    model, train = parse_recipe(path, TYPES)
    assert model == ModelArgs(model_name="tiny", dtype="bfloat16", revision="no")  # YAML 1.2: `no` is text
    assert train.learning_rate == 1e-4  # PyYAML alone reads `1e-4` as a string
    assert train.bf16 is True and train.packing is True
    assert train.tasks == ["gsm8k", "math"] and train.betas == (0.8, 0.9)
    assert train.reduction == "sum"  # enum values are passed through, as HfArgumentParser does
    assert train.max_steps == 10  # untouched default


def test_cli_overrides_yaml(tmp_path):
    path = write(tmp_path, "model_name: tiny\nlearning_rate: 0.1\nbf16: true\n")
    cli = ["--learning_rate", "1e-4", "--no_bf16", "--no_packing", "--tasks", "a", "b", "--dtype", "bfloat16"]
    model, train = parse_recipe(path, TYPES, cli)
    assert model.dtype == "bfloat16" and model.model_name == "tiny"
    assert train.learning_rate == 1e-4 and train.bf16 is False and train.packing is False
    assert train.tasks == ["a", "b"]
    assert parse_recipe(path, TYPES, ["--bf16", "false"])[1].bf16 is False


def test_required_field_given_on_cli_only():
    model, _ = parse_recipe(None, TYPES, ["--model_name", "tiny"])
    assert model.model_name == "tiny"


def test_shared_key_sets_both(tmp_path):
    model, train = parse_recipe(write(tmp_path, "model_name: m\nseed: 7\n"), TYPES)
    assert model.seed == train.seed == 7
    model, train = parse_recipe(write(tmp_path, "model_name: m\n"), TYPES, ["--seed", "3"])
    assert model.seed == train.seed == 3
    model, train = parse_recipe(write(tmp_path, "model_name: m\n"), TYPES)
    assert (model.seed, train.seed) == (0, 42)  # unset: each keeps its own default


def test_int_accepted_for_float(tmp_path):
    _, train = parse_recipe(write(tmp_path, "model_name: m\nlearning_rate: 1\n"), TYPES)
    assert train.learning_rate == 1


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("learning_rate: abc", "float"),
        ("bf16: yes", "bool"),
        ("bf16: 1", "bool"),
        ("bf16: 'true'", "bool"),
        ("max_steps: 2.5", "int"),
        ("dtype: float16", "'float32', 'bfloat16'"),
        ("reduction: median", "'sum', 'mean'"),
        ("tasks: gsm8k", "list[str]"),
        ("tasks: [1, 2]", "list[str]"),
        ("betas: [0.9]", "tuple[float, float]"),
        ("revision: 3", "str or null"),
    ],
)
def test_wrong_type(tmp_path, line, expected):
    path = write(tmp_path, f"model_name: m\n{line}\n")
    key, value = line.split(": ")
    with pytest.raises(RecipeError) as err:
        parse_recipe(path, TYPES)
    message = str(err.value)
    assert str(path) in message and f"'{key}'" in message and expected in message
    assert value.strip("'") in message


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="nope.yaml: recipe file not found"):
        parse_recipe(tmp_path / "nope.yaml", TYPES)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("learning_rate: 1e-4", 1e-4),  # YAML 1.1 (yaml.safe_load, TrlParser's) reads these two as text
        ("learning_rate: 5E+3", 5e3),
        ("revision: yes", "yes"),  # and these three as booleans
        ("revision: off", "off"),
        ("revision: n", "n"),
        ("bf16: True", True),
        ("bf16: FALSE", False),
    ],
)
def test_yaml_1_2_rules(tmp_path, line, expected):
    key = line.split(":")[0]
    model, train = parse_recipe(write(tmp_path, f"model_name: m\n{line}\n"), TYPES)
    value = getattr(model if hasattr(model, key) else train, key)
    assert value == expected and type(value) is type(expected)


def test_config_flag_as_trl_takes_it(tmp_path):
    path = write(tmp_path, "model_name: tiny\nlearning_rate: 0.1\n")
    model, train = parse_recipe(None, TYPES, ["--max_steps", "3", "--config", str(path)])
    assert (model, train) == parse_recipe(path, TYPES, ["--max_steps", "3"])
    assert model.model_name == "tiny" and train.learning_rate == 0.1 and train.max_steps == 3
    with pytest.raises(RecipeError, match="two recipes given"):
        parse_recipe(path, TYPES, ["--config", str(path)])
    with pytest.raises(RecipeError, match="--config needs the recipe's path"):
        parse_recipe(None, TYPES, ["--config"])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["r.yaml", "--seed", "1"], ("r.yaml", ["--seed", "1"])),
        (["--seed", "1", "--config", "r.yaml"], ("r.yaml", ["--seed", "1"])),
        (["--model", "a", "b"], (None, ["--model", "a", "b"])),
        ([], (None, [])),
    ],
)
def test_split_recipe_argument(args, expected):
    assert split_recipe_argument(args) == expected


def test_relative_recipe_missing_here_is_found_in_the_package(tmp_path, monkeypatch):
    package, work = tmp_path / "package", tmp_path / "work"
    (package / "recipes" / "demo").mkdir(parents=True)
    write(package / "recipes" / "demo", "model_name: packaged\n")
    monkeypatch.setattr(recipe_module, "PACKAGE_DIR", package)
    work.mkdir()
    monkeypatch.chdir(work)
    assert parse_recipe("recipes/demo/recipe.yaml", TYPES)[0].model_name == "packaged"
    with pytest.raises(RecipeError) as err:
        parse_recipe("recipes/demo/nope.yaml", TYPES)
    message = str(err.value)
    assert "recipes/demo/nope.yaml: recipe file not found" in message
    for looked in (work, package):  # both places are named
        assert str(looked / "recipes/demo/nope.yaml") in message

    (work / "recipes" / "demo").mkdir(parents=True)  # a recipe in the working directory comes first
    write(work / "recipes" / "demo", "model_name: mine\n")
    assert parse_recipe("recipes/demo/recipe.yaml", TYPES)[0].model_name == "mine"


def test_yaml_syntax_error_names_line(tmp_path):
    path = write(tmp_path, "model_name: m\nlearning_rate: [1\nbf16: true\n")
    with pytest.raises(RecipeError, match=r"recipe.yaml:\d+:\d+: YAML syntax error"):
        parse_recipe(path, TYPES)


@pytest.mark.parametrize("text", ["- model_name\n- m\n", "just a string\n"])
def test_top_level_not_mapping(tmp_path, text):
    with pytest.raises(RecipeError, match="recipe.yaml: the recipe must be a YAML mapping"):
        parse_recipe(write(tmp_path, text), TYPES)


def test_unknown_key_suggests(tmp_path):
    path = write(tmp_path, "model_name: m\nlerning_rate: 0.1\n")
    with pytest.raises(RecipeError) as err:
        parse_recipe(path, TYPES)
    message = str(err.value)
    assert str(path) in message and "'lerning_rate'" in message and "did you mean 'learning_rate'?" in message


def test_missing_required(tmp_path):
    path = write(tmp_path, "learning_rate: 0.1\n")
    with pytest.raises(RecipeError) as err:
        parse_recipe(path, TYPES)
    assert str(path) in str(err.value) and "'model_name'" in str(err.value)


def test_unknown_cli_flag_suggests(tmp_path):
    path = write(tmp_path, "model_name: m\n")
    with pytest.raises(RecipeError) as err:
        parse_recipe(path, TYPES, ["--lerning_rate", "1e-4"])
    message = str(err.value)
    assert (
        str(path) in message
        and "'--lerning_rate'" in message
        and "did you mean '--learning_rate'?" in message
    )
    with pytest.raises(RecipeError, match="unknown command-line argument '--learning'"):
        parse_recipe(path, TYPES, ["--learning", "1e-4"])  # no silent prefix match


def test_bad_cli_value(tmp_path):
    path = write(tmp_path, "model_name: m\n")
    with pytest.raises(RecipeError, match=r"recipe.yaml: .*--learning_rate.*'abc'"):
        parse_recipe(path, TYPES, ["--learning_rate", "abc"])
    with pytest.raises(RecipeError, match=r"recipe.yaml: .*--dtype.*'float16'"):
        parse_recipe(path, TYPES, ["--dtype", "float16"])


def test_tuple_on_cli_is_rejected_not_garbled(tmp_path):
    # HfArgumentParser calls tuple[float, float]("0.5") -> ('0', '.', '5'); the type check catches it.
    path = write(tmp_path, "model_name: m\n")
    with pytest.raises(
        RecipeError, match=r"recipe.yaml: key 'betas' expects tuple\[float, float\].*on the command line"
    ):
        parse_recipe(path, TYPES, ["--betas", "0.5"])


def test_post_init_error_names_file(tmp_path):
    path = write(tmp_path, "model_name: m\nlearning_rate: -1.0\n")
    with pytest.raises(
        RecipeError, match="recipe.yaml: invalid TrainArgs settings: learning_rate must be > 0"
    ):
        parse_recipe(path, TYPES)


def test_help_lists_recipe_values(tmp_path, capsys):
    path = write(tmp_path, "model_name: m\nlearning_rate: 0.25\n")
    with pytest.raises(SystemExit) as exit_info:
        parse_recipe(path, TYPES, ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--learning_rate" in out and "0.25" in out and "Peak learning rate." in out


def test_round_trip(tmp_path):
    path = write(
        tmp_path, "model_name: tiny\nlearning_rate: 3.0e-4\nreduction: sum\nseed: 5\nbetas: [0.5, 0.6]\n"
    )
    configs = parse_recipe(path, TYPES, ["--revision", "main", "--tasks", "x"])
    resolved = tmp_path / "run" / "resolved.yaml"
    resolved.parent.mkdir()
    save_resolved_recipe(configs, resolved)
    assert parse_recipe(resolved, TYPES) == configs
    text = resolved.read_text()
    for f in dataclasses.fields(TrainArgs):
        assert f"{f.name}:" in text


@pytest.fixture(scope="module")
def training_args_type():
    transformers = pytest.importorskip("transformers")

    @dataclass
    class StudentTrainingArguments(transformers.TrainingArguments):
        temperature: float = field(default=1.0, metadata={"help": "Loss temperature."})

    return StudentTrainingArguments


def test_transformers_training_arguments(tmp_path, training_args_type):
    path = write(
        tmp_path,
        f"output_dir: {tmp_path / 'out'}\nlearning_rate: 2e-5\nlr_scheduler_type: cosine\n"
        "num_train_epochs: 2\ntemperature: 2\nreport_to: none\n",
    )
    (args,) = parse_recipe(
        path,
        [training_args_type],
        ["--learning_rate", "1e-4", "--gradient_checkpointing", "--no_dataloader_pin_memory"],
    )
    assert args.output_dir == str(tmp_path / "out")
    assert args.learning_rate == 1e-4 and args.num_train_epochs == 2 and args.temperature == 2
    assert args.lr_scheduler_type.value == "cosine" and args.gradient_checkpointing is True
    assert args.dataloader_pin_memory is False

    save_resolved_recipe([args], tmp_path / "resolved.yaml")
    assert parse_recipe(tmp_path / "resolved.yaml", [training_args_type]) == (args,)
    # a hub token given on the command line never lands in the run directory
    (with_token,) = parse_recipe(path, [training_args_type], ["--hub_token", "hf_secret123"])
    save_resolved_recipe([with_token], tmp_path / "with_token.yaml")
    assert "hf_secret123" not in (tmp_path / "with_token.yaml").read_text()

    bad = write(tmp_path, f"output_dir: {tmp_path}\nlr_scheduler_type: cosin\n", "bad.yaml")
    with pytest.raises(RecipeError, match=r"bad.yaml: key 'lr_scheduler_type' expects one of .*'cosine'"):
        parse_recipe(bad, [training_args_type])


def test_a_saved_run_matches_only_the_same_settings(tmp_path):
    from reasondistill.core.recipe import matches_saved_recipe, recipe_changes

    configs = parse_recipe(write(tmp_path, "model_name: tiny\nseed: 5\n"), TYPES)
    saved = tmp_path / "saved.yaml"
    save_resolved_recipe(configs, saved)
    assert matches_saved_recipe(configs, saved)
    assert not matches_saved_recipe(
        parse_recipe(write(tmp_path, "model_name: tiny\nseed: 5\nmax_steps: 11\n"), TYPES), saved
    )
    # a run saved before `packing` existed did what its default does, and nothing else
    older = tmp_path / "older.yaml"
    older.write_text("".join(line for line in saved.read_text().splitlines(True) if "packing" not in line))
    assert matches_saved_recipe(configs, older)
    assert not matches_saved_recipe(
        parse_recipe(write(tmp_path, "model_name: tiny\nseed: 5\npacking: false\n"), TYPES), older
    )
    changed = parse_recipe(write(tmp_path, "model_name: tiny\nseed: 5\nmax_steps: 11\nbf16: true\n"), TYPES)
    assert recipe_changes(changed, saved) == ["max_steps: 10 -> 11", "bf16: false -> true"]
    assert recipe_changes(changed, saved, ignore={"bf16"}) == ["max_steps: 10 -> 11"]
    # a field whose default does otherwise than the runs before it names what they did (BEFORE_ADDED)
    prune = parse_recipe(write(tmp_path, "model: m\nnum_layers: 2\n"), (PruneConfig,))
    before = tmp_path / "before.yaml"
    save_resolved_recipe(prune, before)
    before.write_text(
        "".join(line for line in before.read_text().splitlines(True) if "depth_criterion" not in line)
    )
    assert recipe_changes(prune, before) == ["depth_criterion: cosine -> kl"]
    assert matches_saved_recipe(
        parse_recipe(write(tmp_path, "model: m\nnum_layers: 2\ndepth_criterion: cosine\n"), (PruneConfig,)),
        before,
    )
    # quantize runs from before gguf_converter wrote GGUF files with our own writer: not reused as llama.cpp's
    quantize = parse_recipe(write(tmp_path, "model: m\n"), (QuantizeConfig,))
    save_resolved_recipe(quantize, before)
    before.write_text(
        "".join(line for line in before.read_text().splitlines(True) if "gguf_converter" not in line)
    )
    assert recipe_changes(quantize, before) == ["gguf_converter: reasondistill -> llama.cpp"]
    newer = tmp_path / "newer.yaml"  # a field this version does not know
    newer.write_text(saved.read_text() + "unknown_field: 1\n")
    assert not matches_saved_recipe(configs, newer)
    assert not matches_saved_recipe(configs, tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("yaml_line", "cli", "key"),
    [
        ("learning_rate: .nan\n", [], "learning_rate"),
        ("", ["--learning_rate", "nan"], "learning_rate"),
        ("", ["--learning_rate=-inf"], "learning_rate"),
        ("betas: [0.9, .inf]\n", [], "betas"),
    ],
)
def test_nan_and_infinity_are_refused_naming_the_key(tmp_path, yaml_line, cli, key):
    """NaN passes `learning_rate <= 0` and every other range check written that way."""
    path = write(tmp_path, "model_name: m\n" + yaml_line)
    with pytest.raises(
        RecipeError, match=rf"recipe.yaml: key '{key}' must be a finite number, got .*(nan|inf)"
    ):
        parse_recipe(path, TYPES, cli)


@dataclass
class Limits:
    num_prompts: int | None = field(default=100, metadata={"help": "null: all."})
    tasks: list[str] | None = field(default=None, metadata={"help": "null: every task."})
    revision: str | None = field(default="main", metadata={"help": "null: the newest."})
    reduction: Literal["sum", "mean"] | None = field(default="sum", metadata={"help": "null: none."})
    max_steps: int = field(default=10, metadata={"help": "Never null."})


def test_null_on_the_command_line_sets_a_field_that_may_be_null(tmp_path):
    path = write(tmp_path, "num_prompts: 5\ntasks: [gsm8k]\n")
    nulls = ["--num_prompts", "null", "--tasks", "None", "--revision", "null", "--reduction", "null"]
    (limits,) = parse_recipe(path, (Limits,), nulls)
    assert (limits.num_prompts, limits.tasks, limits.revision, limits.reduction) == (None,) * 4
    (limits,) = parse_recipe(path, (Limits,), ["--num_prompts", "7", "--tasks", "a", "b"])
    assert (limits.num_prompts, limits.tasks) == (7, ["a", "b"])
    with pytest.raises(RecipeError, match="max_steps.*'null'"):
        parse_recipe(path, (Limits,), ["--max_steps", "null"])
