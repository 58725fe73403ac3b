"""`reasondistill pdq`: prune -> distil -> quantize on the tiny model, its table, reuse and refusals."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import generate_config
from transformers import AutoModelForCausalLM

from reasondistill.chains.pdq import format_chain, prune_step, run_chain, stage_configs
from reasondistill.chains.pdq_config import PDQConfig
from reasondistill.core.recipe import parse_recipe
from reasondistill.evaluate.report import load_results
from reasondistill.generate.generate import generate
from reasondistill.train.train import train_unless_done

DEMO = Path(__file__).resolve().parents[2] / "reasondistill/recipes/demo"


@pytest.fixture(scope="module")
def chain_recipe(tmp_path_factory, tiny_model_dir):
    """Tiny versions of the demo's stage recipes and a pdq recipe that points at them."""
    root = tmp_path_factory.mktemp("pdq")
    traces = generate(generate_config(tiny_model_dir, root / "traces", backend="transformers"))
    prune = {"num_layers": 3, "intermediate_size": 256, "num_calibration": 8, "calibration_tokens": 8}
    train = yaml.safe_load((DEMO / "train.yaml").read_text()) | {"only_correct": False, "max_steps": 3}
    quantize = yaml.safe_load((DEMO / "quantize.yaml").read_text())
    quantize |= {"profiles": ["gguf-q4"], "num_problems": 3, "max_tokens": 24, "speed_tokens": 8}
    for name, settings in {"prune": prune, "train": train, "quantize": quantize}.items():
        (root / f"{name}.yaml").write_text(yaml.safe_dump(settings))
    pdq = {
        "teacher": str(tiny_model_dir),
        "traces": str(traces),
        **{f"{name}_recipe": str(root / f"{name}.yaml") for name in ("prune", "train", "quantize")},
        "train_overrides": ["--learning_rate", "3.0e-4"],
        "output_dir": str(root / "out"),
    }
    (root / "pdq.yaml").write_text(yaml.safe_dump(pdq))
    return root / "pdq.yaml"


@pytest.fixture(scope="module")
def chain(chain_recipe):
    (config,) = parse_recipe(chain_recipe, (PDQConfig,))
    rows, results = run_chain(config)
    return config, rows, results


def test_chain_reports_every_step_measured_the_same_way(chain):
    config, rows, results = chain
    out = Path(config.output_dir)
    assert [r["step"] for r in rows] == ["teacher", "pruned", "distilled", "quantized"]
    assert [r["model"] for r in rows] == ["teacher", "pruned", "pruned+distilled", "pruned+distilled gguf-q4"]
    assert [r["layers"] for r in rows] == [4, 3, 3, 3]
    teacher, pruned, distilled, quantized = rows
    assert teacher["parameters"] > pruned["parameters"] == distilled["parameters"] == quantized["parameters"]
    assert teacher["size_mb"] > distilled["size_mb"] > quantized["size_mb"] > 0
    assert quantized["path"].endswith(".gguf")
    # the distil step trained the pruned weights with the chain's learning rate override
    trained = json.loads((out / "distilled" / "trainer_state.json").read_text())
    assert trained["global_step"] == 3
    assert yaml.safe_load((out / "distilled" / "train_recipe.yaml").read_text())["learning_rate"] == 3.0e-4
    # every pass@1 is what the report's per-sample records say, on the same problems
    reported, _ = load_results(out / "report")
    assert [r.model for r in reported] == [r["model"] for r in rows]
    for row, run in zip(rows, reported, strict=True):
        assert run.num_problems == 3 and run.sampling["temperature"] == 0.0
        correct = [s["correct"] for s in run.samples]
        assert row["pass@1"] == pytest.approx(sum(correct) / len(correct))
        assert row["size_vs_teacher"] == pytest.approx(row["size_mb"] / teacher["size_mb"])
    table = (out / "pdq.md").read_text()
    assert "| pruned | pruned | 3 |" in table and "| gguf-q4 | " in table
    assert (out / "report" / "report.md").exists()


def test_finished_steps_are_reused_and_changed_ones_rerun(chain, chain_recipe, tmp_path, info_log):
    config, _, _ = chain
    out = Path(config.output_dir)
    prune_config, model_args, train_config, _ = stage_configs(config)
    pruned_weights = (out / "pruned" / "model.safetensors").stat().st_mtime_ns
    assert not prune_step(prune_config)
    assert not train_unless_done(model_args, train_config)
    assert info_log.messages == [f"reusing {out / 'pruned'}", f"reusing {out / 'distilled'}"]
    assert (out / "pruned" / "model.safetensors").stat().st_mtime_ns == pruned_weights

    # a changed setting is not a finished run of it: the step runs again (here in a fresh directory)
    (changed,) = parse_recipe(chain_recipe, (PDQConfig,), ["--output_dir", str(tmp_path)])
    changed.prune_overrides = ["--intermediate_size", "128"]
    info_log.clear()
    changed_prune_config = stage_configs(changed)[0]
    assert prune_step(changed_prune_config)
    assert not any(m.startswith("reusing") for m in info_log.messages)
    pruned = AutoModelForCausalLM.from_pretrained(changed_prune_config.output_dir)
    assert pruned.config.intermediate_size == 128


@pytest.mark.parametrize(
    ("quantize_settings", "train_overrides", "error"),
    [
        ({"benchmark": None}, [], "sets no benchmark"),
        ({"benchmark": "gsm9k"}, [], "unknown benchmark 'gsm9k'"),
        ({}, ["--kd_wieght", "1"], "kd_wieght"),
    ],
)
def test_bad_stage_recipes_are_refused_before_any_step(
    chain_recipe, tmp_path, quantize_settings, train_overrides, error
):
    quantize = yaml.safe_load((chain_recipe.parent / "quantize.yaml").read_text()) | quantize_settings
    (tmp_path / "quantize.yaml").write_text(yaml.safe_dump(quantize))
    (config,) = parse_recipe(
        chain_recipe,
        (PDQConfig,),
        ["--output_dir", str(tmp_path / "out"), "--quantize_recipe", str(tmp_path / "quantize.yaml")],
    )
    config.train_overrides = train_overrides
    with pytest.raises(ValueError, match=error):
        run_chain(config)
    assert not (tmp_path / "out").exists()  # nothing was pruned, trained or written


def test_shipped_pdq_recipe_parses_with_its_stage_recipes(monkeypatch):
    monkeypatch.chdir(DEMO.parents[1])  # the package: its stage recipe paths are recipes/demo/...
    (config,) = parse_recipe(DEMO / "pdq.yaml", (PDQConfig,))
    prune_config, model_args, train_config, quantize_config = stage_configs(config)
    assert prune_config.model == config.teacher and train_config.traces == config.traces
    assert model_args.model_name_or_path == str(Path(config.output_dir) / "pruned")
    assert quantize_config.model == str(Path(config.output_dir) / "distilled")
    assert quantize_config.benchmark == "arithmetic"


def test_a_repruned_model_is_distilled_again_in_the_same_directory(chain_recipe, tmp_path, info_log):
    """The distil step's settings name the same pruned path, but the model behind it changed."""
    (config,) = parse_recipe(chain_recipe, (PDQConfig,), ["--output_dir", str(tmp_path / "out")])
    run_chain(config)
    config.prune_overrides = ["--intermediate_size", "128"]
    before = sorted((tmp_path / "out").rglob("*"))
    with pytest.raises(ValueError, match=r"prune_overrides: \[\] -> \[--intermediate_size, '128'\]"):
        run_chain(config)  # another run's directory: refused before any step
    assert sorted((tmp_path / "out").rglob("*")) == before
    config.overwrite = True
    info_log.clear()
    run_chain(config)
    assert not any(m.startswith("reusing") for m in info_log.messages)
    distilled = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "distilled")
    assert distilled.config.intermediate_size == 128


def test_chain_table_formats_every_measure():
    rows = [
        {"step": "teacher", "model": "teacher", "layers": 4, "parameters": 3300000, "size_mb": 13.2}
        | {"size_vs_teacher": 1.0, "pass@1": 0.8, "accuracy_vs_teacher": 1.0},
        {"step": "quantized", "model": "pruned+distilled gguf-q4", "layers": 3, "parameters": 2100000}
        | {"size_mb": 1.234, "size_vs_teacher": 0.0935, "pass@1": 0.0, "accuracy_vs_teacher": None},
    ]
    assert format_chain(rows) == (
        "| step | model | layers | parameters | size MB | % of teacher size | pass@1 "
        "| % of teacher pass@1 |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        "| teacher | teacher | 4 | 3,300,000 | 13.20 | 100% | 80.0% | 100.0% |\n"
        "| quantized | pruned+distilled gguf-q4 | 3 | 2,100,000 | 1.23 | 9% | 0.0% | - |"
    )
