"""The demo's distillation experiment: methods x seeds from one start, same recipe and budget.

For a given seed every method starts from the same model (`StudentsConfig.start`: a random
initialisation, the cached base student, or the pruned teacher) and trains with the same
`reasondistill train` recipe (recipes/demo/train.yaml) plus the few fields the method overrides (e.g.
`kd_weight: 0` = sequence-level CE on the teacher's traces only); a method may continue another's
student (`after`). Each is scored on held-out problems (exact match and step accuracy,
demo/scoring.py) and on held-out teacher traces (CE and KD), and its compute is read from the run's
compute.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import ModelConfig

from reasondistill.chains.pdq import prune_step
from reasondistill.compress.prune_config import PruneConfig
from reasondistill.core.arithmetic_task import generate_problems
from reasondistill.core.markdown_table import markdown_table
from reasondistill.core.recipe import parse_recipe
from reasondistill.demo.base_student import build_base_student
from reasondistill.demo.base_student_config import BaseStudentConfig
from reasondistill.demo.factory import save_initial_model
from reasondistill.demo.scoring import HeldoutLoss, heldout_loss, problem_scores
from reasondistill.demo.students_config import AFTER, STUDENT_TOKENIZER, StudentsConfig
from reasondistill.demo.teacher import digit_runs_tokenizer
from reasondistill.evaluate.metrics import seed_problem_bootstrap
from reasondistill.train.distill_config import DistillConfig
from reasondistill.train.train import COMPUTE_FILE, train_unless_done

logger = logging.getLogger(__name__)

SUMMARY_HEADER = (
    "model",
    "seeds",
    "exact match ± sd [95% CI]",
    "step accuracy ± sd [95% CI]",
    "held-out CE",
    "held-out KD",
    "train s",
    "student tokens",
    "sampling s",
    "scoring s",
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
    train_seconds: float  # the whole `train_unless_done` call (0-ish when a finished run was reused)
    # compute.json of the run (distill_trainer.TrainingCompute), with the runs it continues added
    compute: dict[str, float]
    # per held-out problem, in a fixed order shared by every student (paired comparisons)
    problem_correct: list[float] = field(repr=False)
    problem_steps: list[float] = field(repr=False)


def override_arguments(fields: dict[str, object]) -> list[str]:
    """`{kd_weight: 0.0, tail: false}` -> ["--kd_weight", "0.0", "--tail", "false"] (scalars only)."""
    return [
        text
        for key, value in fields.items()
        for text in (f"--{key}", str(value).lower() if isinstance(value, bool) else str(value))
    ]


def pruned_start(config: StudentsConfig, recipe_dir: Path, teacher_dir: Path) -> tuple[str, PruneConfig]:
    """(name, settings) of the pruned start: prune.yaml with the `prune` overrides, named by its settings so
    that students of a start pruned otherwise live elsewhere and are never reused for this one."""
    overrides = ["--model", str(teacher_dir)] + override_arguments(config.prune)
    (prune_config,) = parse_recipe(recipe_dir / "prune.yaml", (PruneConfig,), overrides)
    settings = {k: v for k, v in asdict(prune_config).items() if k not in ("output_dir", "overwrite")}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    shape = f"{prune_config.num_layers or 'all'}x{prune_config.intermediate_size or 'all'}"
    return f"pruned-{shape}-{prune_config.depth_criterion}-{digest}", prune_config


def start_name(config: StudentsConfig, recipe_dir: Path, teacher_dir: Path) -> tuple[str, PruneConfig | None]:
    """The directory name of the students' start under OUTPUT_DIR/TEACHER (`random`, `base`, or the pruned
    start's `pruned_start` name) and, for a pruned start, its prune settings."""
    if config.start == "pruned":
        return pruned_start(config, recipe_dir, teacher_dir)
    return config.start, None


def start_model(
    config: StudentsConfig,
    recipe_dir: Path,
    teacher_dir: Path,
    tokenizer,
    root: Path,
    seed: int,
    prune_config: PruneConfig | None,
) -> Path:
    """The model every method of `seed` starts from (built or reused); a pruned start (`prune_config`, from
    `pruned_start`) is `root`/start."""
    if config.start == "random":
        init = root / f"init-{config.size}-seed{seed}"
        save_initial_model(config.size, tokenizer, init, seed)
        return init
    if config.start == "base":
        (base_config,) = parse_recipe(recipe_dir / "base_student.yaml", (BaseStudentConfig,))
        return build_base_student(base_config, teacher_dir)
    prune_step(replace(prune_config, output_dir=str(root / "start")))
    return root / "start"


def train_students(
    config: StudentsConfig,
    recipe_dir: Path,
    teacher_dir: Path,
    traces_dir: Path,
    heldout_dir: Path,
) -> list[StudentResult]:
    """Train and score one student per (method, seed), recipes from `recipe_dir` (train.yaml and the
    start's recipe); reuses finished runs of identical settings."""
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    own_tokenizer = None  # built once, if a method asks for it
    problems = generate_problems("test", config.test_problems, config.test_levels, seed=1)
    # OUTPUT_DIR/TEACHER/START; a pruned start's directory is named by its prune settings (`pruned_start`)
    start_directory, prune_config = start_name(config, recipe_dir, teacher_dir)
    root = Path(config.output_dir) / teacher_dir.name / start_directory
    results = []
    for seed in config.seeds:
        start = start_model(config, recipe_dir, teacher_dir, tokenizer, root, seed, prune_config)
        done: dict[str, StudentResult] = {}
        for method, fields in config.methods.items():
            fields = dict(fields)
            after = done.get(fields.pop(AFTER, None))
            student_tokenizer, first = tokenizer, after.directory if after else start
            student_choice = fields.pop(STUDENT_TOKENIZER, "teacher")
            if student_choice != "teacher":  # a random-start Llama of the student's shape
                if student_choice == "digit-runs":
                    own_tokenizer = own_tokenizer or digit_runs_tokenizer(teacher_dir)
                    student_tokenizer = own_tokenizer
                first = root / f"init-{config.size}-{student_choice}-seed{seed}"
                save_initial_model(config.size, student_tokenizer, first, seed, architecture="llama")
            out = root / f"{method}-seed{seed}"
            overrides = ["--model_name_or_path", str(first)]
            overrides += ["--traces", str(traces_dir), "--output_dir", str(out), "--seed", str(seed)]
            overrides += override_arguments(fields)
            model_args, args = parse_recipe(
                recipe_dir / "train.yaml", (ModelConfig, DistillConfig), overrides
            )
            began = time.time()
            train_unless_done(model_args, args, overwrite=True)
            seconds = time.time() - began
            compute = json.loads((out / COMPUTE_FILE).read_text())
            if after:  # a chained method's compute includes what its start cost
                compute = {key: value + after.compute[key] for key, value in compute.items()}
            model = AutoModelForCausalLM.from_pretrained(out)
            correct, steps = problem_scores(model, student_tokenizer, problems)
            # per-token losses on the teacher's tokens; another tokenizer's tokens are not comparable
            nan = float("nan")
            heldout = (
                heldout_loss(model, str(heldout_dir))
                if student_tokenizer is tokenizer
                else HeldoutLoss(ce=nan, kd=nan, tokens=0)
            )
            result = StudentResult(
                method=method,
                seed=seed,
                directory=str(out),
                accuracy=statistics.fmean(correct),
                step_accuracy=statistics.fmean(steps),
                heldout_ce=heldout.ce,
                heldout_kd=heldout.kd,
                train_seconds=round(seconds, 1),
                compute=compute,
                problem_correct=correct,
                problem_steps=steps,
            )
            logger.info("  %s seed %d: %s", method, seed, repr(result))
            done[method] = result
            results.append(result)
    return results


def best_student(results: list[StudentResult]) -> StudentResult:
    """The best seed's student of the method with the best mean exact match over its seeds."""
    by_method: dict[str, list[StudentResult]] = {}
    for result in results:
        by_method.setdefault(result.method, []).append(result)
    runs = max(by_method.values(), key=lambda runs: statistics.fmean(r.accuracy for r in runs))
    return max(runs, key=lambda r: r.accuracy)


def paired_difference(a: list[list[float]] | np.ndarray, b: list[list[float]] | np.ndarray) -> str:
    """Paired difference a - b of per-problem scores [seeds, problems]: mean and 95% interval over seeds and
    problems (`seed_problem_bootstrap`), in points."""
    mean, low, high = seed_problem_bootstrap(np.array(a) - np.array(b), BOOTSTRAP_SEED, BOOTSTRAP_RESAMPLES)
    return f"{100 * mean:+.1f} pts [{100 * low:+.1f}, {100 * high:+.1f}]"


def summary_table(
    results: list[StudentResult],
    teacher_accuracy: float,
    teacher_steps: float,
    pairs: Sequence[tuple[str, str]] | None = None,
) -> str:
    """Markdown table: per method the mean ± sd over seeds of every measure, with a 95% interval over
    seeds and problems for the per-problem ones, and the mean compute per student (training seconds on
    this machine, label tokens trained, on-policy sampling and scoring seconds; a chained method counts
    its start's too); then paired rows, by seed and problem (the interval of the difference,
    `seed_problem_bootstrap`): each method against the first, or each (method, baseline) of `pairs`
    whose methods both ran."""

    def spread(values: list[float], percent: bool) -> str:
        if any(np.isnan(values)):  # not measured (held-out losses of another tokenizer)
            return "-"
        mean = statistics.fmean(values)
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{mean:.1%} ± {sd:.1%}" if percent else f"{mean:.4f} ± {sd:.4f}"

    def interval(scores: list[list[float]]) -> str:
        _, low, high = seed_problem_bootstrap(np.array(scores), BOOTSTRAP_SEED, BOOTSTRAP_RESAMPLES)
        return f" [{low:.1%}, {high:.1%}]"

    def mean_compute(runs: list[StudentResult], key: str) -> str:
        value = statistics.fmean(r.compute[key] for r in runs)
        return f"{value:,.0f}"

    compute_keys = ("train_seconds", "student_tokens", "student_sampling_seconds", "teacher_scoring_seconds")
    dashes = ["-"] * len(compute_keys)
    rows: list[list[object]] = [
        ["teacher", "-", f"{teacher_accuracy:.1%}", f"{teacher_steps:.1%}", "-", "-", *dashes]
    ]
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
                *(mean_compute(runs, key) for key in compute_keys),
            ]
        )
    if pairs is None:
        first, *others = by_method
        pairs = [(method, first) for method in others]
    for method, baseline in pairs:
        if method not in by_method or baseline not in by_method:
            continue
        seeds = [(r, b) for r in by_method[method] for b in by_method[baseline] if b.seed == r.seed]
        rows.append(
            [
                f"{method} − {baseline} (paired)",
                len(seeds),
                paired_difference(
                    [r.problem_correct for r, _ in seeds], [b.problem_correct for _, b in seeds]
                ),
                paired_difference([r.problem_steps for r, _ in seeds], [b.problem_steps for _, b in seeds]),
                "-",
                "-",
                *dashes,
            ]
        )
    return markdown_table(SUMMARY_HEADER, rows, numeric=range(1, len(SUMMARY_HEADER)))
