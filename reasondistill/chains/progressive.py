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
and the direct student differ only in whose traces they learn from. The starting models are model
directories or hub ids with the teacher's tokenizer (recipes/demo/progressive.yaml shows how to build
fresh demo-size ones). A step whose output holds a finished run of the same resolved settings is
reused; generation resumes. A chain or step directory holding a run of other settings is refused before
any step runs, naming what differs; with `--overwrite` those steps (and the traces of a retrained
assistant) are cleared and run again. LoRA steps save their merged model, which the next step reads.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from trl import ModelConfig

from reasondistill.chains.progressive_config import ProgressiveConfig
from reasondistill.core.markdown_table import markdown_table
from reasondistill.core.model_dir import check_model_source, parameter_count
from reasondistill.core.recipe import parse_recipe
from reasondistill.core.results_writer import write_results
from reasondistill.core.run_reuse import check_run_dir, clear_dir, finish_run, start_run
from reasondistill.core.traces import trace_totals
from reasondistill.evaluate.evaluate import evaluate_models, single_benchmark_config
from reasondistill.evaluate.report import write_report
from reasondistill.evaluate.results import ModelSpec, RunResult
from reasondistill.generate.generate import generate
from reasondistill.generate.generate_config import GenerateConfig
from reasondistill.train.distill_config import DistillConfig
from reasondistill.train.train import MERGED_DIR, RECIPE_FILE, train_unless_done

logger = logging.getLogger(__name__)

CHAIN_HEADER = ("model", "learned from", "parameters", "traces it learned from", "pass@1", "95% CI")
PROGRESSIVE_RECIPE_FILE = "progressive_recipe.yaml"


@dataclass
class Step:
    """One distillation step of the chain: `name` starts from `model_args.model_name_or_path` and learns
    from `teacher_name`'s traces."""

    name: str
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
    for name, start, teacher_name in chain:
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
        result.append(Step(name, teacher_name, model_args, args))
    return result


def model_dir(step: Step) -> Path:
    """The full model a finished step leaves: its output, or the merged model of a LoRA step."""
    out = Path(step.args.output_dir)
    return out / MERGED_DIR if step.model_args.use_peft else out


def assistant_generate_config(config: ProgressiveConfig, step: Step, traces_dir: str) -> GenerateConfig:
    """How assistant `step` writes the traces the next model learns from (`assistant_traces`)."""
    overrides = ["--teacher", str(model_dir(step)), "--output_dir", traces_dir]
    overrides += ["--overwrite", str(config.overwrite).lower()]  # traces of other settings: as the steps
    if (
        config.assistant_traces == "score"
    ):  # every kept completion of the teacher, rendered as the recipe says
        overrides += ["--mode", "score", "--prompts", config.traces, "--num_prompts", "null"]
        overrides += ["--question_field", "question", "--answer_field", "gold_answer"]
        overrides += ["--completion_field", "completion_token_ids"]
    (generate_config,) = parse_recipe(
        config.generate_recipe, (GenerateConfig,), config.generate_overrides + overrides
    )
    return generate_config


def chain_table(rows: list[dict]) -> str:
    cells = [
        [
            row["model"],
            row["learned_from"],
            f"{row['parameters']:,}",
            row["traces"],
            f"{row['pass@1']:.1%}",
            f"{row['ci95'][0]:.1%} - {row['ci95'][1]:.1%}",
        ]
        for row in rows
    ]
    return markdown_table(CHAIN_HEADER, cells, numeric=(2, 3, 4))


def run_progressive(config: ProgressiveConfig) -> tuple[list[dict], list[RunResult]]:
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
    evaluate_config = single_benchmark_config(config.evaluate_recipe, config.evaluate_overrides)
    check_model_source(config.teacher, "teacher")  # every model now, not when its step comes
    for assistant in config.assistants:
        check_model_source(assistant, "assistants")
    check_model_source(config.student, "student")
    # a directory of other settings is refused now, not after the steps before it trained
    check_run_dir([config], out / PROGRESSIVE_RECIPE_FILE, config.overwrite)
    for step in chain:
        check_run_dir(
            [step.model_args, step.args], Path(step.args.output_dir) / RECIPE_FILE, config.overwrite
        )
    start_run([config], out / PROGRESSIVE_RECIPE_FILE)  # not cleared: each step's own record decides

    retrained = set()  # models trained in this run: what learned from their old traces is stale
    for step in chain:
        logger.info("[train] %s <- %s's traces (%s)", step.name, step.teacher_name, step.args.traces)
        stale = step.teacher_name in retrained
        if train_unless_done(step.model_args, step.args, redo=stale, overwrite=config.overwrite):
            retrained.add(step.name)
        if step.name in generate_configs:
            logger.info("[generate] %s's traces", step.name)
            traces = Path(traces_of[step.name])
            if step.name in retrained and traces.exists():  # the same settings, but another model's
                logger.info("removing %s: written by the %s trained before this run", traces, step.name)
                shutil.rmtree(traces)
            generate(generate_configs[step.name])

    models = [("teacher", Path(config.teacher), "-")] + [
        (step.name, model_dir(step), step.teacher_name) for step in chain
    ]
    specs = [ModelSpec(str(path), name) for name, path, _ in models]
    results = evaluate_models(specs, evaluate_config.benchmark, evaluate_config)
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
    write_results(out, "progressive", rows, chain_table(rows))
    clear_dir(out / "report")  # rewritten whole: no samples of an earlier run's models stay
    write_report(results, out / "report")
    finish_run(out / PROGRESSIVE_RECIPE_FILE)
    return rows, results


def run_progressive_cli(recipe: Path | None, overrides: list[str]) -> int:
    (config,) = parse_recipe(recipe, (ProgressiveConfig,), overrides)
    rows, _ = run_progressive(config)
    logger.info("%s\nreport: %s", chain_table(rows), Path(config.output_dir) / "report" / "report.md")
    return 0
