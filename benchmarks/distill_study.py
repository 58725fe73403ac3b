"""Which distillation works on the demo task: methods x seeds from one start, same budget, paired.

    .venv/bin/python benchmarks/distill_study.py STUDY --teacher DIR --traces DIR --heldout DIR \
        [--start random] [--num-traces N] [--seeds 0 1 2] [--max-steps 1000] [--methods NAME ...] \
        [--output-dir outputs/study]

On a machine shared with another job, prefix `OMP_NUM_THREADS=1`: beside one, torch's default 2 threads
ran a student 3.1 s a step, one thread 0.35 s (docs/benchmarks.md, "#14's target with the demo's teacher").

Every student is trained and scored by the demo's student stage (reasondistill/demo/students.py):
for a seed, every method starts from the same model and trains with recipes/demo/train.yaml plus the
method's few overrides and `--max-steps` (warm-up 5% of it); exact match and step accuracy on 200
held-out problems (greedy), held-out CE and KD on the teacher's held-out traces, and the compute each
run spent. The table gives mean ± sd over seeds, a 95% interval over seeds and problems, and each method
minus the first (in `data`, KD minus SFT at each trace count), paired by seed and problem. Runs are
reused across studies when their settings match (the random-start `sft` and `kd` students serve
`starts`, `targets` and `on_policy`).

Studies:
- starts: SFT and CE + top-k KL from a random initialisation, the cached base student
  (recipes/demo/base_student.yaml) and the teacher pruned to 2 layers x 256 MLP channels (28% of it;
  `--pruned-layers`, `--pruned-channels`), its layers chosen by `--depth-criterion`
  (PruneConfig.depth_criterion).
- targets: what the top-k carries, from the random start: CE + top-k KL against CE with label smoothing
  0.1 (regularisation without the teacher) and KL to the teacher's top-1 probability only (kd_top_k 1,
  the rest in the tail bucket: the teacher's confidence, not its alternatives).
- on_policy: off-policy KD, on-policy distillation (lmbda 1, reverse KL, the teacher scoring the
  student's samples) from the start, after SFT and after KD, each given `--on-policy-steps` steps, and
  SFT followed by `--more-sft-steps` more SFT steps (set it to what the on-policy steps cost in wall
  time); the `*-new-prompts` arms sample after `--on-policy-prompts` questions of the task's training
  split instead of the traces' prompts (on-policy needs questions, not verified traces).
- tokenizers: SFT and KD students of the teacher's tokenizer against SFT and KD students of another
  tokenizer (demo.teacher.digit_runs_tokenizer: numbers in runs of up to 3 digits, another vocabulary
  size) trained on the traces' text re-tokenized (prompt_chat_template student; KD with the stored top-k
  aligned to the student's tokens by bytes), all from random starts of the same shape (issue #16); and
  SFT and KD students of the teacher's tokenizer in the other students' architecture (a Llama of the
  same shape, `sft-llama`, `kd-llama`), which tells the tokenizer's effect from the architecture's.
- data: SFT and KD on the first n traces of one fixed shuffle, n in `--trace-counts`, and on all of them
  (the `sft` and `kd` arms of the other studies, reused from OUTPUT_DIR when they are there); also plots
  exact match against n (data_efficiency.png).

`--start` (targets, on_policy, data) and `--num-traces` (every study but data, which sets its own) change
the setting for every arm; students of another trace count live in OUTPUT_DIR/students-<n>traces.

Writes OUTPUT_DIR/STUDY.json (every student, per problem) and STUDY.md (the table, and the command).
`--report` also writes the evaluation report users read (`reasondistill evaluate` with
recipes/demo/evaluate.yaml: pass@1 over samples, maj@k, plots, and each student's per-token divergence
from the teacher) of the teacher, every seed of the baseline (the first method) and every seed of the
method with the best mean exact match, in OUTPUT_DIR/STUDY-report/.
`--merge-with OTHER/STUDY.json` adds the students of another run of the study (other seeds, or the
methods this run's --methods leaves out, trained with another --output-dir) to the tables, the plot and
STUDY.json, paired by seed as this run's. Only
the teacher's score on the problems is checked; that both runs used the same recipes (train.yaml, the
start) is up to you (each student's directory holds its train_recipe.yaml).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import statistics
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from trl import ModelConfig

from reasondistill.core.arithmetic_task import generate_problems
from reasondistill.core.logs import setup_logging
from reasondistill.core.recipe import PACKAGE_DIR, parse_recipe
from reasondistill.demo.scoring import task_scores
from reasondistill.demo.students import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    StudentResult,
    start_name,
    summary_table,
    train_students,
)
from reasondistill.demo.students_config import AFTER, STUDENT_TOKENIZER, StudentsConfig
from reasondistill.demo.teacher import load_teacher
from reasondistill.evaluate.evaluate import run_evaluate
from reasondistill.evaluate.metrics import seed_problem_bootstrap
from reasondistill.train.distill_config import DistillConfig
from reasondistill.train.distill_data import load_trace_dataset

logger = logging.getLogger("reasondistill.benchmarks.distill_study")

SFT, KD = {"kd_weight": 0.0}, {"kd_weight": 1.0}


def study_arms(study: str, args: argparse.Namespace) -> list[tuple[str, dict[str, dict[str, Any]]]]:
    """(start, methods) pairs of a study; the first method of each is its baseline."""
    if study == "starts":
        return [(start, {"sft": SFT, "kd": KD}) for start in ("random", "base", "pruned")]
    if study == "targets":
        smoothing = {**SFT, "label_smoothing_factor": 0.1}
        return [
            (
                args.start,
                {"sft": SFT, "kd": KD, "sft-label-smoothing": smoothing, "kd-top1": {**KD, "kd_top_k": 1}},
            )
        ]
    if study == "on_policy":
        on_policy = {
            "kd_weight": 1.0,
            "lmbda": 1.0,
            "divergence": "reverse_kl",
            "teacher_model": args.teacher,
        }
        steps = budget(args.on_policy_steps)
        # questions only, beyond the traces: the training split of the task, whose first 512 problems
        # are the traces' prompts (the students are scored on the test split)
        new_prompts = {
            "on_policy_prompts": "task:arithmetic",
            "on_policy_num_prompts": args.on_policy_prompts,
        }
        return [
            (
                args.start,
                {
                    "sft": SFT,
                    "kd": KD,
                    "on-policy": {**on_policy, **steps},
                    "sft-then-on-policy": {AFTER: "sft", **on_policy, **steps},
                    "sft-then-sft": {AFTER: "sft", **SFT, **budget(args.more_sft_steps)},
                    "kd-then-on-policy": {AFTER: "kd", **on_policy, **steps},
                    "sft-then-on-policy-new-prompts": {AFTER: "sft", **on_policy, **steps, **new_prompts},
                    "kd-then-on-policy-new-prompts": {AFTER: "kd", **on_policy, **steps, **new_prompts},
                },
            )
        ]
    if study == "tokenizers":
        own = {"prompt_chat_template": "student", STUDENT_TOKENIZER: "digit-runs"}
        return [
            (
                "random",
                {
                    "sft": SFT,
                    "kd": KD,
                    "sft-digit-runs-tokenizer": {**SFT, **own},
                    "kd-digit-runs-tokenizer": {**KD, **own},  # the top-k aligned by bytes (train.md)
                    # the teacher's tokenizer in the digit-runs students' Llama: separates the two
                    "sft-llama": {**SFT, STUDENT_TOKENIZER: "teacher-llama"},
                    "kd-llama": {**KD, STUDENT_TOKENIZER: "teacher-llama"},
                },
            )
        ]
    if study == "data":
        methods = {}
        for count in args.trace_counts:
            methods[f"sft-{count}"] = {**SFT, "num_traces": count}
            methods[f"kd-{count}"] = {**KD, "num_traces": count}
        return [(args.start, {**methods, "sft": SFT, "kd": KD})]  # the last two: every trace
    raise ValueError(f"unknown study {study!r}")


# (method, baseline) pairs of the tokenizers study, each differing in one thing: the loss (KD or SFT), the
# architecture (Llama or Qwen2, the teacher's tokenizer) or the tokenizer (digit runs or the teacher's, Llama)
TOKENIZER_PAIRS = [
    ("kd", "sft"),
    ("kd-llama", "sft-llama"),
    ("kd-digit-runs-tokenizer", "sft-digit-runs-tokenizer"),
    ("sft-llama", "sft"),
    ("kd-llama", "kd"),
    ("sft-digit-runs-tokenizer", "sft-llama"),
    ("kd-digit-runs-tokenizer", "kd-llama"),
]


def pruned_shape(args: argparse.Namespace) -> dict[str, Any]:
    """The pruned start's prune.yaml overrides (2 x 256 keeps 919,808 of the demo teacher's 3,281,152)."""
    return {
        "num_layers": args.pruned_layers,
        "intermediate_size": args.pruned_channels,
        "depth_criterion": args.depth_criterion,
    }


def budget(max_steps: int) -> dict[str, int]:
    """`max_steps` with a warm-up of 5% of it."""
    return {"max_steps": max_steps, "warmup_steps": max(1, max_steps // 20)}


def with_defaults(methods: dict[str, dict[str, Any]], defaults: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every method gets `defaults` (budget, trace count) unless it sets its own."""
    return {name: {**defaults, **fields} for name, fields in methods.items()}


def only(methods: dict[str, dict[str, Any]], names: list[str] | None) -> dict[str, dict[str, Any]]:
    """The methods in `names` (None = all) and the ones they chain onto, in the study's order."""
    if names is None:
        return methods
    unknown = set(names) - set(methods)
    if unknown:
        raise ValueError(f"--methods: {sorted(unknown)} are not in this study; choose from {list(methods)}")
    wanted = set(names) | {methods[name][AFTER] for name in names if AFTER in methods[name]}
    return {name: fields for name, fields in methods.items() if name in wanted}


def usable_traces(args: argparse.Namespace) -> int:
    """How many traces a student trains on when it takes them all (train.yaml's filters applied)."""
    overrides = ["--traces", args.traces, "--output_dir", "unused"]
    _, recipe = parse_recipe(Path(args.recipes) / "train.yaml", (ModelConfig, DistillConfig), overrides)
    dataset, _, _ = load_trace_dataset(args.traces, recipe.only_correct, recipe.max_length)
    return len(dataset)


def plot_data_efficiency(
    results: list[StudentResult], all_traces: int, teacher_accuracy: float, path: Path
) -> None:
    """Exact match (mean over seeds, 95% interval over seeds and problems) against the trace count
    (`sft-N`, `kd-N`; `sft` and `kd` at `all_traces`), with the teacher's on the same problems as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    figure, axes = plt.subplots(figsize=(6, 4))
    ticks: set[int] = set()
    for kind in ("sft", "kd"):
        by_count: dict[int, list[list[float]]] = {}
        for r in results:
            if r.method == kind or r.method.startswith(f"{kind}-"):
                count = all_traces if r.method == kind else int(r.method.split("-")[1])
                by_count.setdefault(count, []).append(r.problem_correct)
        counts = sorted(by_count)
        ticks.update(counts)
        points = []
        for count in counts:
            scores = np.array(by_count[count])
            points.append(seed_problem_bootstrap(scores, BOOTSTRAP_SEED, BOOTSTRAP_RESAMPLES))
        means, lows, highs = (100 * np.array(column) for column in zip(*points, strict=True))
        label = "SFT (CE on traces)" if kind == "sft" else "CE + top-k KL"
        axes.plot(counts, means, marker="o", label=label)
        axes.fill_between(counts, lows, highs, alpha=0.2)
    axes.axhline(100 * teacher_accuracy, color="gray", linestyle="--", label="teacher")
    axes.set_xscale("log", base=2)
    axes.set_xticks(sorted(ticks), [f"{count:,}" for count in sorted(ticks)])
    axes.xaxis.set_minor_locator(NullLocator())
    axes.set_xlabel("verified teacher traces")
    axes.set_ylabel("exact match, % (95% CI)")
    axes.set_title("What stored top-k buys: exact match against trace count")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("study", choices=["starts", "targets", "on_policy", "tokenizers", "data"])
    parser.add_argument("--teacher", required=True, help="demo teacher directory")
    parser.add_argument("--traces", required=True, help="its verified training traces")
    parser.add_argument("--heldout", required=True, help="its traces on held-out (test) prompts")
    parser.add_argument("--recipes", default=str(PACKAGE_DIR / "recipes" / "demo"), help="demo recipe dir")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--on-policy-steps", type=int, default=300)
    parser.add_argument(
        "--on-policy-prompts", type=int, default=4096, help="questions the *-new-prompts arms sample after"
    )
    parser.add_argument("--more-sft-steps", type=int, default=1000, help="sft-then-sft's extra steps")
    parser.add_argument("--start", choices=["random", "base", "pruned"], default="random")
    parser.add_argument("--pruned-layers", type=int, default=2, help="layers the pruned start keeps")
    parser.add_argument("--pruned-channels", type=int, default=256, help="MLP channels it keeps per layer")
    parser.add_argument(
        "--depth-criterion",
        choices=["kl", "cosine"],
        default="kl",
        help="which layers the pruned start keeps (PruneConfig.depth_criterion)",
    )
    parser.add_argument("--num-traces", type=int, help="train every arm on the first N traces")
    parser.add_argument(
        "--trace-counts", type=int, nargs="+", default=[64, 256, 1024], help="besides all of them"
    )
    parser.add_argument("--test-problems", type=int, default=200)
    parser.add_argument(
        "--methods", nargs="+", help="only these methods of the study (and the ones they chain onto)"
    )
    parser.add_argument("--output-dir", default="outputs/study")
    parser.add_argument(
        "--merge-with",
        nargs="+",
        default=[],
        metavar="STUDY.json",
        help="other seeds of this study (run with another --output-dir): their students join the tables "
        "and plot, paired by seed",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="also the evaluation report of the teacher, the baseline and the best method "
        "(OUTPUT_DIR/STUDY-report)",
    )
    return parser.parse_args(argv)


def merged_students(paths: list[str], teacher: list[float]) -> list[StudentResult]:
    """The students of other runs of a study (`--merge-with`), scored on the same problems by the same
    teacher (refused otherwise: their per-problem scores would not pair)."""
    students = []
    for path in paths:
        summary = json.loads(Path(path).read_text())
        if summary["teacher"] != teacher:
            sys.exit(
                f"--merge-with {path}: its teacher scored {summary['teacher']} on the held-out problems, "
                f"this run's {teacher}: another teacher or other problems; merge runs of one study only"
            )
        students += [StudentResult(**student) for student in summary["students"]]
    return students


def report_students(results: list[StudentResult]) -> list[StudentResult]:
    """Every seed of the baseline (the first arm: the first method of the first start) and of the arm
    with the best mean exact match; an arm is a start's method (its directory's parent and method)."""

    def arm(result: StudentResult) -> tuple[str, str]:
        return Path(result.directory).parent.name, result.method

    arms: dict[tuple[str, str], list[StudentResult]] = {}
    for result in results:
        arms.setdefault(arm(result), []).append(result)
    best = max(arms, key=lambda key: statistics.fmean(r.accuracy for r in arms[key]))
    return [r for key in dict.fromkeys([arm(results[0]), best]) for r in arms[key]]


def write_study_report(study: str, results: list[StudentResult], args: argparse.Namespace) -> None:
    """The evaluation stage's report (`reasondistill evaluate`) of the teacher and `report_students`."""
    students = report_students(results)
    starts = {Path(r.directory).parent.name for r in students}
    names = [
        f"{r.method} seed {r.seed}" + (f" ({Path(r.directory).parent.name})" if len(starts) > 1 else "")
        for r in students
    ]
    report_dir = Path(args.output_dir) / f"{study}-report"
    run_evaluate(
        Path(args.recipes) / "evaluate.yaml",
        ["--model", args.teacher, *(r.directory for r in students), "--model_name", "teacher", *names]
        + ["--divergence_teacher", args.teacher, "--output_dir", str(report_dir), "--overwrite", "true"],
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging("info")
    out = Path(args.output_dir)
    teacher_dir = Path(args.teacher)
    teacher, tokenizer = load_teacher(teacher_dir)
    levels = [1, 2, 3]
    problems = generate_problems("test", args.test_problems, levels, seed=1)  # the students' problems
    teacher_accuracy, teacher_steps = task_scores(teacher, tokenizer, problems)
    merged = merged_students(args.merge_with, [teacher_accuracy, teacher_steps])
    defaults: dict[str, Any] = budget(args.max_steps)
    students_dir = out / "students"
    if args.num_traces is not None and args.study != "data":
        defaults["num_traces"] = args.num_traces
        students_dir = out / f"students-{args.num_traces}traces"  # method names stay those of all traces
    tables, results = [], []
    for start, methods in study_arms(args.study, args):
        config = StudentsConfig(
            start=start,
            prune=pruned_shape(args) if start == "pruned" else {},
            seeds=args.seeds,
            methods=with_defaults(only(methods, args.methods), defaults),
            test_problems=args.test_problems,
            test_levels=levels,
            output_dir=str(students_dir),
        )
        # merged students of this start (their directory's name) and this study's methods: other seeds,
        # or methods left out of this run's --methods
        start_directory = start_name(config, Path(args.recipes), teacher_dir)[0]
        others = [r for r in merged if Path(r.directory).parent.name == start_directory]
        others = [r for r in others if r.method in methods]
        to_train = {(method, seed) for method in config.methods for seed in args.seeds}
        if clash := sorted({(r.method, r.seed) for r in others} & to_train):
            sys.exit(f"--merge-with: {clash} are merged and would be trained again: leave their seeds out")
        runs = train_students(config, Path(args.recipes), teacher_dir, Path(args.traces), Path(args.heldout))
        order = list(methods)  # each method's seeds together, merged ones included
        runs = sorted(runs + others, key=lambda r: (order.index(r.method), r.seed))
        results += runs
        # the data study pairs KD with SFT at each trace count, the tokenizers study the arms that differ
        # in one thing; the others, every method with the first
        pairs = TOKENIZER_PAIRS if args.study == "tokenizers" else None
        if args.study == "data":
            pairs = [
                (m, "sft" + m[2:])
                for m in config.methods
                if m.startswith("kd") and "sft" + m[2:] in config.methods
            ]
        tables.append(f"start: {start}\n\n{summary_table(runs, teacher_accuracy, teacher_steps, pairs)}")
    if args.study == "data":
        all_traces = usable_traces(args)
        tables.append(f"sft, kd: all {all_traces} usable traces")
        plot_data_efficiency(results, all_traces, teacher_accuracy, out / "data_efficiency.png")
    command = shlex.join(
        [".venv/bin/python", "benchmarks/distill_study.py", *(sys.argv[1:] if argv is None else argv)]
    )
    text = f"Command: `{command}`\n\n" + "\n\n".join(tables)
    (out / f"{args.study}.md").write_text(text + "\n")
    summary = {"teacher": [teacher_accuracy, teacher_steps], "students": [asdict(r) for r in results]}
    (out / f"{args.study}.json").write_text(json.dumps(summary))
    best = max(results, key=lambda r: r.accuracy)
    method_mean = statistics.fmean(r.accuracy for r in results if r.method == best.method)
    kept = f" ({best.accuracy / teacher_accuracy:.0%} of the teacher)" if teacher_accuracy else ""
    if args.report:
        write_study_report(args.study, results, args)
    print(text)
    print(
        f"\nteacher {teacher_accuracy:.1%}; best student {best.method} seed {best.seed} {best.accuracy:.1%}"
        f"{kept}; mean of its method {method_mean:.1%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
