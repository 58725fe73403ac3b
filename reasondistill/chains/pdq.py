"""`reasondistill pdq RECIPE.yaml`: prune -> distil -> quantize, with size and accuracy after each step.

The chain runs three stages, each from its own recipe, through their on-disk artifacts:

1. prune (`prune.py`): the teacher, fewer layers and narrower MLPs   -> OUTPUT_DIR/pruned
2. distil (`train.py`): the pruned model on the teacher's traces     -> OUTPUT_DIR/distilled
3. quantize (`quantize.py`): every hardware profile of the distilled model, measured -> OUTPUT_DIR/quantized
   (cleared and redone on every run)

and then scores the teacher and the pruned model with the quantize recipe's accuracy settings (greedy,
its benchmark and number of problems), so every row of the table is measured the same way. Writes
`pdq.json`, `pdq.md` (the table) and an evaluation report with plots under OUTPUT_DIR/report.

A step whose output directory holds a finished run of exactly the same resolved settings is reused. A
step directory (or the chain's own) holding a run of other settings is refused before any step runs,
naming what differs; with `--overwrite` those steps are cleared and run again, so re-running after a
change repeats only what the change affects.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from trl import ModelConfig

from reasondistill.chains.pdq_config import PDQConfig
from reasondistill.compress.prune import PRUNE_RECIPE_FILE, describe, save_pruned
from reasondistill.compress.prune_config import PruneConfig
from reasondistill.compress.quantize import (
    REFERENCE,
    accuracy_config,
    build_artifacts,
    format_table,
    measure_artifacts,
)
from reasondistill.compress.quantize_config import QuantizeConfig
from reasondistill.core.markdown_table import markdown_table
from reasondistill.core.model_dir import check_model_source, parameter_count
from reasondistill.core.recipe import parse_recipe
from reasondistill.core.results_writer import write_results
from reasondistill.core.run_reuse import check_run_dir, clear_dir, finish_run, run_unless_done, start_run
from reasondistill.evaluate.benchmark_specs import load_benchmark
from reasondistill.evaluate.evaluate import evaluate_models
from reasondistill.evaluate.report import write_report
from reasondistill.evaluate.results import ModelSpec, RunResult
from reasondistill.train.distill_config import DistillConfig
from reasondistill.train.train import RECIPE_FILE as TRAIN_RECIPE_FILE
from reasondistill.train.train import train_unless_done

logger = logging.getLogger(__name__)

DISTILLED = "pruned+distilled"
PDQ_RECIPE_FILE = "pdq_recipe.yaml"
CHAIN_HEADER = (
    "step",
    "model",
    "layers",
    "parameters",
    "size MB",
    "% of teacher size",
    "pass@1",
    "% of teacher pass@1",
)


def stage_configs(config: PDQConfig) -> tuple[PruneConfig, ModelConfig, DistillConfig, QuantizeConfig]:
    """Parse all three stage recipes up front, so a bad one fails before hours of pruning and training."""
    out = Path(config.output_dir)
    # the chain owns the paths between stages: they come after the user's overrides, which they win over
    (prune_config,) = parse_recipe(
        config.prune_recipe,
        (PruneConfig,),
        config.prune_overrides + ["--model", config.teacher, "--output_dir", str(out / "pruned")],
    )
    model_args, train_config = parse_recipe(
        config.train_recipe,
        (ModelConfig, DistillConfig),
        config.train_overrides
        + ["--model_name_or_path", str(out / "pruned"), "--traces", config.traces]
        + ["--output_dir", str(out / "distilled")],
    )
    (quantize_config,) = parse_recipe(
        config.quantize_recipe,
        (QuantizeConfig,),
        config.quantize_overrides
        + ["--model", str(out / "distilled"), "--output_dir", str(out / "quantized")],
    )
    if not quantize_config.benchmark:
        raise ValueError(
            f"the quantize recipe {config.quantize_recipe} sets no benchmark, but the chain reports accuracy "
            "after every step: set `benchmark` there or in quantize_overrides"
        )
    load_benchmark(quantize_config.benchmark)  # an unknown one is named now, not after training
    return prune_config, model_args, train_config, quantize_config


def prune_step(config: PruneConfig, overwrite: bool = False) -> bool:
    """Prune unless OUTPUT_DIR holds a finished run of exactly these settings; True if it pruned.
    A run of other settings there is refused, or with `overwrite` replaced."""

    def prune() -> None:
        out, info = save_pruned(config)
        logger.info("%s", describe(config, out, info))

    recipe_file = Path(config.output_dir) / PRUNE_RECIPE_FILE
    return run_unless_done([config], recipe_file, prune, overwrite=overwrite)


def check_chain_dirs(
    config: PDQConfig,
    prune_config: PruneConfig,
    model_args: ModelConfig,
    train_config: DistillConfig,
    quantize_config: QuantizeConfig,
) -> None:
    """Refuse, before any step runs, a chain or step directory that holds a run of other settings (unless
    `overwrite`): a changed stage recipe is named here, not after hours of pruning and training."""
    check_run_dir([config], Path(config.output_dir) / PDQ_RECIPE_FILE, config.overwrite)
    check_run_dir([prune_config], Path(prune_config.output_dir) / PRUNE_RECIPE_FILE, config.overwrite)
    distilled = Path(train_config.output_dir) / TRAIN_RECIPE_FILE
    check_run_dir([model_args, train_config], distilled, config.overwrite)


def _layers(path: Path) -> int:
    config = json.loads((path / "config.json").read_text())
    return config["num_hidden_layers"]


def chain_rows(
    teacher: Path, pruned: Path, reference: Path, measured: list[dict], results: list[RunResult]
) -> list[dict]:
    """One row per step: the teacher, the pruned model, the distilled model and each quantized artifact.

    `results` holds the teacher's and the pruned model's evaluations followed by the quantize step's
    (the distilled reference first, then one per artifact, in `measured` order)."""
    # a GGUF file has no safetensors to count: its parameters and layers are the distilled model's
    steps = [("teacher", teacher), ("pruned", pruned), ("distilled", reference)]
    steps += [("quantized", reference)] * (len(measured) - 1)
    shape = {d: (_layers(d), parameter_count(d)) for d in (teacher, pruned, reference)}  # read once each
    rows = []
    for (step, model_dir), result in zip(steps, results, strict=True):
        rows.append(
            {
                "step": step,
                "model": result.model,
                "path": result.model_path,
                "layers": shape[model_dir][0],
                "parameters": shape[model_dir][1],
                "size_mb": (result.size_bytes or 0) / 1e6,
                "pass@1": result.metrics["pass@1"]["value"],
            }
        )
    for row in rows:
        row["size_vs_teacher"] = row["size_mb"] / rows[0]["size_mb"]
        row["accuracy_vs_teacher"] = row["pass@1"] / rows[0]["pass@1"] if rows[0]["pass@1"] else None
    return rows


def format_chain(rows: list[dict]) -> str:
    cells = [
        [
            row["step"],
            row["model"],
            row["layers"],
            f"{row['parameters']:,}",
            f"{row['size_mb']:.2f}",
            f"{row['size_vs_teacher']:.0%}",
            f"{row['pass@1']:.1%}",
            "-" if row["accuracy_vs_teacher"] is None else f"{row['accuracy_vs_teacher']:.1%}",
        ]
        for row in rows
    ]
    return markdown_table(CHAIN_HEADER, cells, numeric=range(2, len(CHAIN_HEADER)))


def run_chain(config: PDQConfig) -> tuple[list[dict], list[RunResult]]:
    """Run prune -> distil -> quantize; returns (the chain table's rows, every evaluation result)."""
    prune_config, model_args, train_config, quantize_config = stage_configs(config)
    check_model_source(config.teacher, "teacher")  # before any step, not when pruning loads it
    check_chain_dirs(config, prune_config, model_args, train_config, quantize_config)
    out = Path(config.output_dir)
    start_run([config], out / PDQ_RECIPE_FILE)  # not cleared: each step's own record decides what is reused
    logger.info("[prune] %s", config.prune_recipe)
    repruned = prune_step(prune_config, config.overwrite)
    pruned = Path(prune_config.output_dir)
    logger.info("[distil] %s", config.train_recipe)
    # a new pruned model: distil it again
    train_unless_done(model_args, train_config, redo=repruned, overwrite=config.overwrite)
    logger.info("[quantize] %s", config.quantize_recipe)
    clear_dir(quantize_config.output_dir)  # redone every run, never reused: no other profile's artifact stays
    reference, artifacts = build_artifacts(quantize_config)
    measured, quantized_results = measure_artifacts(reference, artifacts, quantize_config)
    before = evaluate_models(
        [ModelSpec(config.teacher, "teacher"), ModelSpec(str(pruned), "pruned")],
        [quantize_config.benchmark],
        accuracy_config(quantize_config, reference),
    )
    for result in quantized_results:
        result.model = DISTILLED if result.model == REFERENCE else f"{DISTILLED} {result.model}"
    results = before + quantized_results
    rows = chain_rows(Path(config.teacher), pruned, reference, measured, results)
    tables = f"{format_chain(rows)}\n\n{format_table(measured)}"
    write_results(out, "pdq", {"chain": rows, "artifacts": measured}, tables)
    clear_dir(out / "report")  # rewritten whole: no samples of an earlier run's models stay
    write_report(results, out / "report")
    finish_run(out / PDQ_RECIPE_FILE)
    return rows, results


def run_pdq(recipe: Path | None, overrides: list[str]) -> int:
    (config,) = parse_recipe(recipe, (PDQConfig,), overrides)
    rows, _ = run_chain(config)
    logger.info("%s\nreport: %s", format_chain(rows), Path(config.output_dir) / "report" / "report.md")
    return 0
