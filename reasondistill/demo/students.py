"""The demo's distillation experiment: SFT-only vs CE + KD students, same budget, several seeds.

Every student starts from the same random initialisation for a given seed and trains with the same
`reasondistill train` recipe (recipes/demo/train.yaml); the methods differ only in `kd_weight`
(0 = sequence-level CE on the teacher's traces only). Each is scored on held-out problems (exact
match and step accuracy, demo_models/scoring.py) and on held-out teacher traces (CE and KD).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import ModelConfig

from reasondistill.core.arithmetic_task import generate_problems
from reasondistill.core.model_dir import parameter_count
from reasondistill.core.recipe import parse_recipe
from reasondistill.demo.factory import MODEL_SIZES, save_initial_model
from reasondistill.demo.scoring import heldout_loss, task_scores
from reasondistill.train.distill_config import DistillConfig
from reasondistill.train.train import train_unless_done


@dataclass
class StudentsConfig:
    """Settings of the demo's student comparison (recipes/demo/students.yaml)."""

    size: str = field(default="student", metadata={"help": f"Student shape, one of {list(MODEL_SIZES)}."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "One student per seed."})
    kd_weights: dict[str, float] = field(
        default_factory=lambda: {"sft": 0.0, "kd": 1.0},
        metadata={"help": "Method name -> kd_weight; everything else comes from the train recipe."},
    )
    test_problems: int = field(default=200, metadata={"help": "Held-out problems for exact/step accuracy."})
    test_levels: list[int] = field(default_factory=lambda: [1, 2, 3], metadata={"help": "Their levels."})
    heldout_prompts: int = field(default=128, metadata={"help": "Held-out teacher traces for CE and KD."})
    output_dir: str = field(default="outputs/demo/students", metadata={"help": "Where students are saved."})

    def __post_init__(self) -> None:
        if self.size not in MODEL_SIZES:
            raise ValueError(f"size={self.size!r} is not one of {list(MODEL_SIZES)}")
        if not self.seeds or not self.kd_weights:
            raise ValueError("need at least one seed and one method")


@dataclass
class StudentResult:
    method: str
    seed: int
    directory: str
    accuracy: float
    step_accuracy: float
    heldout_ce: float
    heldout_kd: float
    train_seconds: float


def train_students(
    config: StudentsConfig,
    train_recipe: Path,
    teacher_dir: Path,
    traces_dir: Path,
    heldout_dir: Path,
    log=print,
) -> list[StudentResult]:
    """Train and score one student per (method, seed); reuses finished runs of identical settings."""
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    problems = generate_problems("test", config.test_problems, config.test_levels, seed=1)
    root = Path(config.output_dir) / teacher_dir.name
    results = []
    for seed in config.seeds:
        init = root / f"init-{config.size}-seed{seed}"
        if save_initial_model(config.size, tokenizer, init, seed):
            log(f"student init {init}: {parameter_count(init) / 1e6:.2f}M parameters")
        for method, kd_weight in config.kd_weights.items():
            out = root / f"{method}-seed{seed}"
            overrides = [
                "--model_name_or_path",
                str(init),
                "--traces",
                str(traces_dir),
                "--output_dir",
                str(out),
            ]
            overrides += ["--seed", str(seed), "--kd_weight", str(kd_weight)]
            model_args, args = parse_recipe(train_recipe, (ModelConfig, DistillConfig), overrides)
            start = time.time()
            train_unless_done(model_args, args, log)
            seconds = time.time() - start
            model = AutoModelForCausalLM.from_pretrained(out)
            accuracy, steps = task_scores(model, tokenizer, problems)
            heldout = heldout_loss(model, str(heldout_dir))
            result = StudentResult(
                method=method,
                seed=seed,
                directory=str(out),
                accuracy=accuracy,
                step_accuracy=steps,
                heldout_ce=heldout.ce,
                heldout_kd=heldout.kd,
                train_seconds=round(seconds, 1),
            )
            log(f"  {method} seed {seed}: " + ", ".join(f"{k}={v}" for k, v in asdict(result).items()))
            results.append(result)
    return results


def summary_table(results: list[StudentResult], teacher_accuracy: float, teacher_steps: float) -> str:
    """Markdown table: per method the mean and standard deviation over seeds of every measure."""

    def cell(values: list[float], percent: bool) -> str:
        mean = statistics.fmean(values)
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{mean:.1%} ± {spread:.1%}" if percent else f"{mean:.4f} ± {spread:.4f}"

    lines = [
        "| model | seeds | exact match | step accuracy | held-out CE | held-out KD |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| teacher | - | {teacher_accuracy:.1%} | {teacher_steps:.1%} | - | - |",
    ]
    for method in dict.fromkeys(r.method for r in results):
        runs = [r for r in results if r.method == method]
        lines.append(
            f"| {method} | {len(runs)} | {cell([r.accuracy for r in runs], True)} | "
            f"{cell([r.step_accuracy for r in runs], True)} | {cell([r.heldout_ce for r in runs], False)} | "
            f"{cell([r.heldout_kd for r in runs], False)} |"
        )
    return "\n".join(lines)
