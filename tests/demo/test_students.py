"""The demo's student comparison table: mean ± sd over seeds and a seed x problem interval per method, the
teacher first, then each method against the first, paired."""

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import generate_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from reasondistill.core.recipe import PACKAGE_DIR
from reasondistill.core.traces import tokenizer_fingerprint
from reasondistill.demo.lm_training import BUILD_INFO_FILE
from reasondistill.demo.students import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    StudentResult,
    best_student,
    summary_table,
    train_students,
)
from reasondistill.demo.students_config import AFTER, STUDENT_TOKENIZER, StudentsConfig
from reasondistill.demo.teacher import DIGIT_RUNS_VOCAB, digit_runs_tokenizer
from reasondistill.demo.teacher_config import TeacherConfig
from reasondistill.evaluate.metrics import seed_problem_bootstrap
from reasondistill.generate.generate import generate
from reasondistill.train.train import COMPUTE_FILE, RECIPE_FILE


def student(method: str, seed: int, correct: list[float], steps: list[float], ce: float, kd: float):
    return StudentResult(
        method,
        seed,
        f"{method}-seed{seed}",
        float(np.mean(correct)),
        float(np.mean(steps)),
        ce,
        kd,
        1.0,
        compute={
            "train_seconds": 10.0 * (seed + 1),
            "student_tokens": 1000.0,
            "student_sampling_seconds": 0.0,
            "teacher_scoring_seconds": 0.0,
        },
        problem_correct=correct,
        problem_steps=steps,
    )


def test_summary_table_gives_spread_intervals_and_the_paired_difference():
    results = [
        student("sft", 0, [1.0, 0.0, 0.0, 1.0], [1.0, 0.5, 0.5, 1.0], 1.25, 0.5),
        student("sft", 1, [0.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.0, 1.0], 1.5, 0.25),
        student("kd", 0, [1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.5, 1.0], 1.0, 0.125),
        student("kd", 1, [1.0, 0.0, 0.0, 1.0], [1.0, 0.5, 0.5, 1.0], 1.0, 0.125),
    ]
    table = summary_table(results, teacher_accuracy=0.9, teacher_steps=0.95).splitlines()
    assert table[0] == (
        "| model | seeds | exact match ± sd [95% CI] | step accuracy ± sd [95% CI] | held-out CE "
        "| held-out KD | train s | student tokens | sampling s | scoring s |"
    )
    assert table[2] == "| teacher | - | 90.0% | 95.0% | - | - | - | - | - | - |"
    _, low, high = seed_problem_bootstrap([[1, 0, 0, 1], [0, 0, 0, 1]], BOOTSTRAP_SEED, BOOTSTRAP_RESAMPLES)
    assert table[3].startswith(f"| sft | 2 | 37.5% ± 17.7% [{low:.1%}, {high:.1%}] | 62.5% ± 17.7% [")
    assert table[3].endswith("| 1.3750 ± 0.1768 | 0.3750 ± 0.1768 | 15 | 1,000 | 0 | 0 |")
    assert table[4].startswith("| kd | 2 | 62.5% ± 17.7% [")
    # kd - sft, paired by seed and problem: +1 on two of the eight (seed, problem) cells
    mean, low, high = seed_problem_bootstrap(
        [[0, 1, 0, 0], [1, 0, 0, 0]], BOOTSTRAP_SEED, BOOTSTRAP_RESAMPLES
    )
    assert mean == pytest.approx(0.25)
    assert table[5].startswith(f"| kd − sft (paired) | 2 | +25.0 pts [{100 * low:+.1f}, {100 * high:+.1f}] |")
    assert table[5].endswith("| - | - | - | - | - | - |")


@pytest.fixture(scope="module")
def traces(tmp_path_factory, tiny_model_dir):
    """(training traces, held-out traces) of the tiny model, by the transformers backend."""
    out = tmp_path_factory.mktemp("student-traces")
    train = generate(generate_config(tiny_model_dir, out / "train", backend="transformers"))
    heldout = generate(
        generate_config(
            tiny_model_dir, out / "heldout", backend="transformers", prompt_split="test", num_prompts=2
        )
    )
    return train, heldout


def recipe_dir(tmp_path: Path) -> Path:
    """The demo's recipes, with a train.yaml small enough for a test (2 steps of 4 traces)."""
    recipes = tmp_path / "recipes"
    shutil.copytree(PACKAGE_DIR / "recipes" / "demo", recipes)
    tiny = dict(only_correct=False, max_steps=2, per_device_train_batch_size=4, warmup_steps=0)
    tiny |= dict(report_to="none", logging_steps=1, max_length=256)
    (recipes / "train.yaml").write_text(
        (recipes / "train.yaml").read_text() + "".join(f"\n{k}: {v}" for k, v in tiny.items())
    )
    return recipes


def test_a_method_after_another_continues_its_student(tmp_path, traces, tiny_model_dir):
    """SFT, then on-policy distillation from the SFT student (2 steps each): the chained run starts from
    the SFT student, its compute includes the SFT run's, and a second call reuses both runs."""
    on_policy = {AFTER: "sft", "lmbda": 1.0, "kd_weight": 1.0, "teacher_model": str(tiny_model_dir)}
    on_policy |= {"divergence": "reverse_kl", "on_policy_max_new_tokens": 8}
    config = StudentsConfig(
        seeds=[0],
        methods={"sft": {"kd_weight": 0.0}, "sft-then-on-policy": on_policy},
        test_problems=2,
        output_dir=str(tmp_path / "students"),
    )
    recipes = recipe_dir(tmp_path)
    sft, chained = train_students(config, recipes, tiny_model_dir, *traces)
    saved = yaml.safe_load((Path(chained.directory) / RECIPE_FILE).read_text())
    assert saved["model_name_or_path"] == sft.directory and saved["lmbda"] == 1.0
    own = json.loads((Path(chained.directory) / COMPUTE_FILE).read_text())
    assert own["on_policy_steps"] == 2 and own["student_sampling_seconds"] > 0
    assert sft.compute["on_policy_steps"] == 0 and sft.compute["student_tokens"] > 0
    assert chained.compute["student_tokens"] == own["student_tokens"] + sft.compute["student_tokens"]
    assert len(chained.problem_correct) == 2 and 0.0 <= chained.accuracy <= 1.0
    weights = (Path(chained.directory) / "model.safetensors").stat().st_mtime_ns
    again = train_students(config, recipes, tiny_model_dir, *traces)
    assert [r.directory for r in again] == [sft.directory, chained.directory]
    assert (Path(chained.directory) / "model.safetensors").stat().st_mtime_ns == weights  # reused


def test_pruned_start_is_the_teacher_pruned_once(tmp_path, traces, tiny_model_dir):
    config = StudentsConfig(
        start="pruned",
        prune={"num_layers": 1, "intermediate_size": 256, "num_calibration": 4, "calibration_tokens": 8},
        seeds=[0, 1],
        methods={"sft": {"kd_weight": 0.0}},
        test_problems=1,
        output_dir=str(tmp_path / "students"),
    )
    recipes = recipe_dir(tmp_path)
    results = train_students(config, recipes, tiny_model_dir, *traces)
    starts = {
        yaml.safe_load((Path(r.directory) / RECIPE_FILE).read_text())["model_name_or_path"] for r in results
    }
    (start,) = starts  # one pruned model for every seed
    assert json.loads((Path(start) / "config.json").read_text())["num_hidden_layers"] == 1
    assert Path(start).parent.name.startswith("pruned-1x256-kl-")
    # a start pruned otherwise is another directory: its students never replace or reuse these
    weights = (Path(results[0].directory) / "model.safetensors").stat().st_mtime_ns
    other = replace(config, prune={**config.prune, "depth_criterion": "cosine"}, seeds=[0])
    (cosine,) = train_students(other, recipes, tiny_model_dir, *traces)
    assert Path(cosine.directory).parent.name.startswith("pruned-1x256-cosine-")
    assert (Path(results[0].directory) / "model.safetensors").stat().st_mtime_ns == weights


def test_a_student_of_another_tokenizer_learns_from_the_retokenized_text(tmp_path, traces, tiny_model_dir):
    """A `student_tokenizer: digit-runs` method starts from random weights of that vocabulary, trains on
    the traces' text in its own tokens and is scored with its own tokenizer; its held-out per-token losses
    (teacher tokens) are not measured, and the table says so."""
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_model_dir, teacher)
    (teacher / BUILD_INFO_FILE).write_text(json.dumps({"config": asdict(TeacherConfig(train_problems=800))}))
    own = {"kd_weight": 0.0, "prompt_chat_template": "student", STUDENT_TOKENIZER: "digit-runs"}
    config = StudentsConfig(
        seeds=[0],
        methods={"sft": {"kd_weight": 0.0}, "sft-own-tokenizer": own},
        test_problems=2,
        output_dir=str(tmp_path / "students"),
    )
    sft, other = train_students(config, recipe_dir(tmp_path), teacher, *traces)
    saved = yaml.safe_load((Path(other.directory) / RECIPE_FILE).read_text())
    assert Path(saved["model_name_or_path"]).name == "init-student-digit-runs-seed0"
    model = AutoModelForCausalLM.from_pretrained(other.directory)
    assert model.config.model_type == "llama"  # so that transformers keeps its tokenizer's own split
    tokenizer = AutoTokenizer.from_pretrained(other.directory)
    assert len(tokenizer) == DIGIT_RUNS_VOCAB <= model.get_input_embeddings().weight.shape[0]
    expected = tokenizer_fingerprint(digit_runs_tokenizer(teacher).get_vocab())
    assert tokenizer_fingerprint(tokenizer.get_vocab()) == expected
    assert expected != tokenizer_fingerprint(AutoTokenizer.from_pretrained(teacher).get_vocab())
    assert np.isnan(other.heldout_ce) and np.isfinite(sft.heldout_ce)
    assert len(other.problem_correct) == 2 and other.compute["student_tokens"] > 0
    row = summary_table([sft, other], 0.5, 0.5).splitlines()[4]
    assert row.startswith("| sft-own-tokenizer | 1 |") and "| - | - |" in row


def test_methods_are_checked():
    with pytest.raises(ValueError, match="runs after 'sft', which is not a method listed before it"):
        StudentsConfig(methods={"on-policy": {AFTER: "sft"}, "sft": {"kd_weight": 0.0}})
    with pytest.raises(ValueError, match="override values must be scalars"):
        StudentsConfig(methods={"kd": {"lora_target_modules": ["q_proj"]}})
    with pytest.raises(ValueError, match="student_tokenizer='llama' is not one of"):
        StudentsConfig(methods={"sft": {STUDENT_TOKENIZER: "llama"}})
    with pytest.raises(ValueError, match="use start: random and no `after`"):
        StudentsConfig(start="pruned", methods={"sft": {STUDENT_TOKENIZER: "digit-runs"}})


def test_best_student_is_the_best_seed_of_the_best_method():
    results = [
        student("sft", 0, [1.0, 1.0, 1.0, 0.0], [1.0] * 4, 1.0, 1.0),  # the best single student
        student("sft", 1, [0.0, 0.0, 0.0, 0.0], [1.0] * 4, 1.0, 1.0),
        student("kd", 0, [1.0, 1.0, 0.0, 0.0], [1.0] * 4, 1.0, 1.0),
        student("kd", 1, [1.0, 0.0, 0.0, 1.0], [1.0] * 4, 1.0, 1.0),
    ]
    best = best_student(results)
    assert (best.method, best.seed) in {("kd", 0), ("kd", 1)} and best.accuracy == 0.5
