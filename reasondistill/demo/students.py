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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import ModelConfig

from reasondistill.core.arithmetic_task import generate_problems
from reasondistill.core.markdown_table import markdown_table
from reasondistill.core.recipe import parse_recipe
from reasondistill.demo.factory import save_initial_model
from reasondistill.demo.scoring import heldout_loss, problem_scores
from reasondistill.demo.students_config import StudentsConfig
from reasondistill.evaluate.metrics import seed_problem_bootstrap
from reasondistill.train.distill_config import DistillConfig
from reasondistill.train.train import train_unless_done

logger = logging.getLogger(__name__)

SUMMARY_HEADER = (
    "model",
    "seeds",
    "exact match ± sd [95% CI]",
    "step accuracy ± sd [95% CI]",
    "held-out CE",
    "held-out KD",
)
BOOTSTRAP_SEED, BOOTSTRAP_RESAMPLES = 0, 2000


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
    # per held-out problem, in a fixed order shared by every student (paired comparisons)
    problem_correct: list[float] = field(repr=False)
    problem_steps: list[float] = field(repr=False)


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
            correct, steps = problem_scores(model, tokenizer, problems)
            heldout = heldout_loss(model, str(heldout_dir))
            result = StudentResult(
                method=method,
                seed=seed,
                directory=str(out),
                accuracy=statistics.fmean(correct),
                step_accuracy=statistics.fmean(steps),
                heldout_ce=heldout.ce,
                heldout_kd=heldout.kd,
                train_seconds=round(seconds, 1),
                problem_correct=correct,
                problem_steps=steps,
            )
            logger.info("  %s seed %d: %s", method, seed, repr(result))
            results.append(result)
    return results


def summary_table(results: list[StudentResult], teacher_accuracy: float, teacher_steps: float) -> str:
    """Markdown table: per method the mean ± sd over seeds of every measure, with a 95% interval over
    seeds and problems for the per-problem ones; then each method against the first, paired by seed and
    problem (the interval of the difference, `seed_problem_bootstrap`)."""

    def spread(values: list[float], percent: bool) -> str:
        mean = statistics.fmean(values)
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{mean:.1%} ± {sd:.1%}" if percent else f"{mean:.4f} ± {sd:.4f}"

    def interval(scores: list[list[float]]) -> str:
        _, low, high = seed_problem_bootstrap(np.array(scores), BOOTSTRAP_SEED, BOOTSTRAP_RESAMPLES)
        return f" [{low:.1%}, {high:.1%}]"

    def difference(a: list[list[float]], b: list[list[float]]) -> str:
        mean, low, high = seed_problem_bootstrap(
            np.array(a) - np.array(b), BOOTSTRAP_SEED, BOOTSTRAP_RESAMPLES
        )
        return f"{100 * mean:+.1f} pts [{100 * low:+.1f}, {100 * high:+.1f}]"

    rows: list[list[object]] = [["teacher", "-", f"{teacher_accuracy:.1%}", f"{teacher_steps:.1%}", "-", "-"]]
    by_method = {
        method: [r for r in results if r.method == method]
        for method in dict.fromkeys(r.method for r in results)
    }
    for method, runs in by_method.items():
        rows.append(
            [
                method,
                len(runs),
                spread([r.accuracy for r in runs], True) + interval([r.problem_correct for r in runs]),
                spread([r.step_accuracy for r in runs], True) + interval([r.problem_steps for r in runs]),
                spread([r.heldout_ce for r in runs], False),
                spread([r.heldout_kd for r in runs], False),
            ]
        )
    baseline, *others = by_method
    for method in others:
        pairs = [(r, b) for r in by_method[method] for b in by_method[baseline] if b.seed == r.seed]
        rows.append(
            [
                f"{method} − {baseline} (paired)",
                len(pairs),
                difference([r.problem_correct for r, _ in pairs], [b.problem_correct for _, b in pairs]),
                difference([r.problem_steps for r, _ in pairs], [b.problem_steps for _, b in pairs]),
                "-",
                "-",
            ]
        )
    return markdown_table(SUMMARY_HEADER, rows, numeric=range(1, len(SUMMARY_HEADER)))
