"""The demo's distillation experiment: SFT-only vs CE + KD students, same budget, several seeds.

Every student starts from the same random initialisation for a given seed and trains with the same
`reasondistill train` recipe (recipes/demo/train.yaml); the methods differ only in `kd_weight`
(0 = sequence-level CE on the teacher's traces only). Each is scored on held-out problems (exact
match and step accuracy, demo/scoring.py) and on held-out teacher traces (CE and KD).
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import ModelConfig

from reasondistill.core.arithmetic_task import generate_problems
from reasondistill.core.markdown_table import markdown_table
from reasondistill.core.recipe import parse_recipe
from reasondistill.demo.factory import save_initial_model
from reasondistill.demo.scoring import heldout_loss, task_scores
from reasondistill.demo.students_config import StudentsConfig
from reasondistill.train.distill_config import DistillConfig
from reasondistill.train.train import train_unless_done

logger = logging.getLogger(__name__)

SUMMARY_HEADER = ("model", "seeds", "exact match", "step accuracy", "held-out CE", "held-out KD")


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
) -> list[StudentResult]:
    """Train and score one student per (method, seed); reuses finished runs of identical settings."""
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    problems = generate_problems("test", config.test_problems, config.test_levels, seed=1)
    root = Path(config.output_dir) / teacher_dir.name
    results = []
    for seed in config.seeds:
        init = root / f"init-{config.size}-seed{seed}"
        save_initial_model(config.size, tokenizer, init, seed)
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
            train_unless_done(model_args, args)
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
            logger.info(
                "  %s seed %d: %s", method, seed, ", ".join(f"{k}={v}" for k, v in asdict(result).items())
            )
            results.append(result)
    return results


def summary_table(results: list[StudentResult], teacher_accuracy: float, teacher_steps: float) -> str:
    """Markdown table: per method the mean and standard deviation over seeds of every measure."""

    def cell(values: list[float], percent: bool) -> str:
        mean = statistics.fmean(values)
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{mean:.1%} ± {spread:.1%}" if percent else f"{mean:.4f} ± {spread:.4f}"

    rows = [["teacher", "-", f"{teacher_accuracy:.1%}", f"{teacher_steps:.1%}", "-", "-"]]
    for method in dict.fromkeys(r.method for r in results):
        runs = [r for r in results if r.method == method]
        rows.append(
            [
                method,
                len(runs),
                cell([r.accuracy for r in runs], True),
                cell([r.step_accuracy for r in runs], True),
                cell([r.heldout_ce for r in runs], False),
                cell([r.heldout_kd for r in runs], False),
            ]
        )
    return markdown_table(SUMMARY_HEADER, rows, numeric=range(1, len(SUMMARY_HEADER)))
