"""`reasondistill progressive RECIPE.yaml`: distillation through teaching assistants (TAKD).

When the teacher is much larger than the student, an intermediate "teaching assistant" can bridge the
gap (Mirzadeh et al., 2020, "Improved Knowledge Distillation via Teacher Assistant"): teacher -> TA_1
-> ... -> student, each model distilled on the traces of the one before it. The chain runs the
existing stages through their artifacts:

    for each model in assistants + [student]:
        train (`train.py`) on the previous model's traces             -> OUTPUT_DIR/<name>
        if it teaches the next one, `generate.py` writes its traces:  -> OUTPUT_DIR/traces-<name>
            score (default): its top-k on the teacher's trace completions (TAKD: the same data,
                the assistant's soft labels); sample: its own verified completions
    direct baseline: the student trained on the teacher's traces     -> OUTPUT_DIR/student-direct
    evaluate (`evaluate.py`) teacher, assistants, student via TAs and direct -> OUTPUT_DIR/report

Every step uses the same train and generate recipes (plus overrides), so the student via assistants
and the direct student differ only in whose traces they learn from. A model given as `demo:SIZE`
is a freshly initialised demo model of that size (reasondistill/demo/factory.py) with the
teacher's tokenizer. A step whose output holds a finished run of the same resolved settings is
reused; generation resumes. LoRA steps save their merged model, which the next step reads.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoTokenizer
from trl import ModelConfig

from reasondistill.core.benchmark_specs import load_benchmark
from reasondistill.core.model_dir import parameter_count
from reasondistill.core.recipe import matches_saved_recipe, parse_recipe, save_resolved_recipe
from reasondistill.core.traces import trace_totals
from reasondistill.demo.factory import save_initial_model
from reasondistill.evaluate.evaluate import evaluate_models
from reasondistill.evaluate.evaluate_config import EvaluateConfig
from reasondistill.evaluate.report import write_report
from reasondistill.evaluate.results import ModelSpec, RunResult
from reasondistill.generate.generate import generate
from reasondistill.generate.generate_config import GenerateConfig
from reasondistill.train.distill_config import DistillConfig
from reasondistill.train.train import MERGED_DIR, RECIPE_FILE, train_unless_done

DEMO_PREFIX = "demo:"


@dataclass
class ProgressiveConfig:
    teacher: str = field(metadata={"help": "The teacher model directory (or hub id)."})
    traces: str = field(metadata={"help": "The teacher's trace dataset (`reasondistill generate`)."})
    assistants: list[str] = field(
        metadata={
            "help": "Teaching assistants' starting models, largest first: directories, hub ids or "
            "demo:SIZE (a fresh demo model)."
        }
    )
    student: str = field(metadata={"help": "The student's starting model (directory, hub id or demo:SIZE)."})
    train_recipe: str = field(
        default="recipes/demo/train.yaml", metadata={"help": "Recipe of every distillation step."}
    )
    generate_recipe: str = field(
        default="recipes/demo/generate.yaml",
        metadata={"help": "Recipe of the assistants' traces (the one that made the teacher's)."},
    )
    evaluate_recipe: str = field(
        default="recipes/demo/evaluate.yaml", metadata={"help": "Recipe of the final evaluation."}
    )
    train_overrides: list[str] = field(
        default_factory=list,
        metadata={"help": "Overrides of the train recipe, every step: [--key, value, ...]."},
    )
    assistant_train_overrides: list[str] = field(
        default_factory=list,
        metadata={"help": "Further overrides for the assistants' steps only (e.g. a larger budget)."},
    )
    generate_overrides: list[str] = field(
        default_factory=list, metadata={"help": "Overrides of the generate recipe: [--key, value, ...]."}
    )
    evaluate_overrides: list[str] = field(
        default_factory=list, metadata={"help": "Overrides of the evaluate recipe: [--key, value, ...]."}
    )
    assistant_traces: str = field(
        default="score",
        metadata={
            "help": "What an assistant hands on. score: its top-k on the teacher's trace completions (the "
            "same sequences, the assistant's soft labels: TAKD); sample: its own verified traces from the "
            "generate recipe (needs an assistant that solves the prompts)."
        },
    )
    direct_baseline: bool = field(
        default=True, metadata={"help": "Also train the student directly on the teacher's traces."}
    )
    output_dir: str = field(default="outputs/progressive", metadata={"help": "Every step's output."})

    def __post_init__(self) -> None:
        if not self.assistants:
            raise ValueError("give at least one teaching assistant (assistants: [MODEL, ...])")
        if self.assistant_traces not in ("score", "sample"):
            raise ValueError(f"assistant_traces is score or sample, got {self.assistant_traces!r}")


@dataclass
class Step:
    """One distillation step of the chain: `name` starts from `init` and learns from `teacher_name`."""

    name: str
    init: str
    teacher_name: str
    model_args: ModelConfig
    args: DistillConfig


def assistant_names(config: ProgressiveConfig) -> list[str]:
    return [f"assistant-{i + 1}" for i in range(len(config.assistants))]


def steps(config: ProgressiveConfig, traces_of: dict[str, str]) -> list[Step]:
    """Every step's parsed train settings, up front: a bad recipe or override fails before any training.

    `traces_of[name]` is the trace directory model `name` writes (the teacher's is given)."""
    out = Path(config.output_dir)
    names = assistant_names(config) + ["student"]
    chain = list(zip(names, [*config.assistants, config.student], ["teacher", *names[:-1]], strict=True))
    if config.direct_baseline:
        chain.append(("student-direct", config.student, "teacher"))
    result = []
    for name, init, teacher_name in chain:
        start = str(out / init.replace(":", "-")) if init.startswith(DEMO_PREFIX) else init
        model_args, args = parse_recipe(
            config.train_recipe,
            (ModelConfig, DistillConfig),
            config.train_overrides
            + (config.assistant_train_overrides if name.startswith("assistant") else [])
            + ["--model_name_or_path", start, "--traces", traces_of[teacher_name]]
            + ["--output_dir", str(out / name)],
        )
        # LoRA steps merge: the next step's traces come from (and the evaluation reads) a full model
        args.save_merged_model = args.save_merged_model or model_args.use_peft
        result.append(Step(name, init, teacher_name, model_args, args))
    return result


def model_dir(step: Step) -> Path:
    """The full model a finished step leaves: its output, or the merged model of a LoRA step."""
    out = Path(step.args.output_dir)
    return out / MERGED_DIR if step.model_args.use_peft else out


def assistant_generate_config(config: ProgressiveConfig, step: Step, traces_dir: str) -> GenerateConfig:
    """How assistant `step` writes the traces the next model learns from (`assistant_traces`)."""
    overrides = ["--teacher", str(model_dir(step)), "--output_dir", traces_dir]
    if config.assistant_traces == "score":  # the teacher's kept completions, rendered as the recipe says
        overrides += ["--mode", "score", "--prompts", config.traces, "--question_field", "question"]
        overrides += ["--answer_field", "gold_answer", "--completion_field", "completion_token_ids"]
    (generate_config,) = parse_recipe(
        config.generate_recipe, (GenerateConfig,), config.generate_overrides + overrides
    )
    if config.assistant_traces == "score":
        generate_config.num_prompts = None  # every teacher trace (a recipe cannot say None on the CLI)
    return generate_config


def chain_table(rows: list[dict]) -> str:
    lines = [
        "| model | learned from | parameters | traces it learned from | pass@1 | 95% CI |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        low, high = row["ci95"]
        lines.append(
            f"| {row['model']} | {row['learned_from']} | {row['parameters']:,} | {row['traces']} "
            f"| {row['pass@1']:.1%} | {low:.1%} - {high:.1%} |"
        )
    return "\n".join(lines)


def run_progressive(
    config: ProgressiveConfig, log: Callable[[str], None] = print
) -> tuple[list[dict], list[RunResult]]:
    """Run the chain; returns (one table row per model, the evaluation results)."""
    out = Path(config.output_dir)
    names = assistant_names(config)
    traces_of = {"teacher": config.traces} | {n: str(out / f"traces-{n}") for n in names}
    chain = steps(config, traces_of)
    generate_configs = {  # each assistant writes traces for the next model in the chain
        step.name: assistant_generate_config(config, step, traces_of[step.name])
        for step in chain
        if step.name in names
    }
    (evaluate_config,) = parse_recipe(config.evaluate_recipe, (EvaluateConfig,), config.evaluate_overrides)
    if len(evaluate_config.benchmark) != 1:
        raise ValueError(f"the evaluate recipe must name one benchmark, got {evaluate_config.benchmark}")
    load_benchmark(evaluate_config.benchmark[0])  # an unknown one fails now, not after training
    out.mkdir(parents=True, exist_ok=True)
    save_resolved_recipe([config], out / "progressive_recipe.yaml")

    tokenizer = AutoTokenizer.from_pretrained(config.teacher)
    retrained = set()  # models trained in this run: what learned from their old traces is stale
    for step in chain:
        if step.init.startswith(DEMO_PREFIX):  # a fresh demo model: the teacher's tokenizer, the step's seed
            size, start = step.init.removeprefix(DEMO_PREFIX), Path(step.model_args.model_name_or_path)
            save_initial_model(size, tokenizer, start, step.args.seed)
        log(f"[train] {step.name} <- {step.teacher_name}'s traces ({step.args.traces})")
        redo = step.teacher_name in retrained
        if redo or not matches_saved_recipe(
            [step.model_args, step.args], Path(step.args.output_dir) / RECIPE_FILE
        ):
            retrained.add(step.name)
        train_unless_done(step.model_args, step.args, log, redo=redo)
        if step.name in generate_configs:
            log(f"[generate] {step.name}'s traces")
            traces = Path(traces_of[step.name])
            if step.name in retrained and traces.exists():  # the same settings, but another model's
                log(f"removing {traces}: written by the {step.name} trained before this run")
                shutil.rmtree(traces)
            generate(generate_configs[step.name], log=log)

    models = [("teacher", Path(config.teacher), "-")] + [
        (step.name, model_dir(step), step.teacher_name) for step in chain
    ]
    specs = [ModelSpec(str(path), name) for name, path, _ in models]
    results = evaluate_models(specs, evaluate_config.benchmark, evaluate_config, log=log)
    rows = []
    for (name, path, teacher_name), result in zip(models, results, strict=True):
        metric = result.metrics["pass@1"]
        traces = trace_totals(traces_of[teacher_name])["records"] if teacher_name != "-" else "-"
        rows.append(
            {
                "model": name,
                "path": str(path),
                "learned_from": teacher_name,
                "parameters": parameter_count(path),
                "traces": traces,
                "pass@1": metric["value"],
                "ci95": [metric["ci_low"], metric["ci_high"]],
            }
        )
    (out / "progressive.json").write_text(json.dumps(rows, indent=2))
    (out / "progressive.md").write_text(chain_table(rows) + "\n")
    write_report(results, out / "report")
    return rows, results


def run_progressive_cli(recipe: Path | None, overrides: list[str]) -> int:
    (config,) = parse_recipe(recipe, (ProgressiveConfig,), overrides)
    rows, _ = run_progressive(config)
    print(f"{chain_table(rows)}\nreport: {Path(config.output_dir) / 'report' / 'report.md'}")
    return 0
