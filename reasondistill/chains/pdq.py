"""`reasondistill pdq RECIPE.yaml`: prune -> distil -> quantize, with size and accuracy after each step.

The chain runs three stages, each from its own recipe, through their on-disk artifacts:

1. prune (`prune.py`): the teacher, fewer layers and narrower MLPs   -> OUTPUT_DIR/pruned
2. distil (`train.py`): the pruned model on the teacher's traces     -> OUTPUT_DIR/distilled
3. quantize (`quantize.py`): every hardware profile of the distilled model, measured -> OUTPUT_DIR/quantized

and then scores the teacher and the pruned model with the quantize recipe's accuracy settings (greedy,
its benchmark and number of problems), so every row of the table is measured the same way. Writes
`pdq.json`, `pdq.md` (the table) and an evaluation report with plots under OUTPUT_DIR/report.

A step whose output directory holds a finished run of exactly the same resolved settings is reused, so
re-running after a change repeats only what the change affects.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig

from reasondistill.compress.prune import PRUNE_RECIPE_FILE, PruneConfig, describe, save_pruned
from reasondistill.compress.quantize import (
    REFERENCE,
    accuracy_config,
    build_artifacts,
    format_table,
    measure_artifacts,
)
from reasondistill.compress.quantize_config import QuantizeConfig
from reasondistill.core.benchmark_specs import load_benchmark
from reasondistill.core.model_dir import parameter_count
from reasondistill.core.recipe import matches_saved_recipe, parse_recipe, save_resolved_recipe
from reasondistill.evaluate.evaluate import evaluate_models
from reasondistill.evaluate.report import write_report
from reasondistill.evaluate.results import ModelSpec, RunResult
from reasondistill.train.distill_config import DistillConfig
from reasondistill.train.train import train_unless_done

DISTILLED = "pruned+distilled"


@dataclass
class PDQConfig:
    teacher: str = field(
        metadata={"help": "Full-precision model to prune; the teacher whose traces the pruned model learns."}
    )
    traces: str = field(metadata={"help": "Trace dataset of that teacher (`reasondistill generate`)."})
    prune_recipe: str = field(
        default="recipes/demo/prune.yaml", metadata={"help": "Recipe of the prune step (num_layers, ...)."}
    )
    train_recipe: str = field(
        default="recipes/demo/train.yaml",
        metadata={"help": "Recipe of the distil step (`reasondistill train`)."},
    )
    quantize_recipe: str = field(
        default="recipes/demo/quantize.yaml",
        metadata={"help": "Recipe of the quantize step: profiles, benchmark and accuracy settings."},
    )
    prune_overrides: list[str] = field(
        default_factory=list,
        metadata={"help": "Overrides of the prune recipe, in YAML as a list: [--key, value, ...]."},
    )
    train_overrides: list[str] = field(
        default_factory=list,
        metadata={"help": "Overrides of the train recipe, in YAML as a list: [--key, value, ...]."},
    )
    quantize_overrides: list[str] = field(
        default_factory=list,
        metadata={"help": "Overrides of the quantize recipe, in YAML as a list: [--key, value, ...]."},
    )
    output_dir: str = field(
        default="outputs/pdq", metadata={"help": "pruned/, distilled/, quantized/, report."}
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


def prune_step(config: PruneConfig, log: Callable[[str], None]) -> Path:
    out = Path(config.output_dir)
    if matches_saved_recipe([config], out / PRUNE_RECIPE_FILE):
        log(f"reusing {out}")
        return out
    out, info = save_pruned(config)
    log(describe(config, out, info))
    return out


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
    lines = [
        "| step | model | layers | parameters | size MB | % of teacher size | pass@1 | % of teacher pass@1 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        kept = "-" if row["accuracy_vs_teacher"] is None else f"{row['accuracy_vs_teacher']:.1%}"
        lines.append(
            f"| {row['step']} | {row['model']} | {row['layers']} | {row['parameters']:,} "
            f"| {row['size_mb']:.2f} | {row['size_vs_teacher']:.0%} | {row['pass@1']:.1%} | {kept} |"
        )
    return "\n".join(lines)


def run_chain(config: PDQConfig, log: Callable[[str], None] = print) -> tuple[list[dict], list[RunResult]]:
    """Run prune -> distil -> quantize; returns (the chain table's rows, every evaluation result)."""
    prune_config, model_args, train_config, quantize_config = stage_configs(config)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved_recipe([config], out / "pdq_recipe.yaml")
    log(f"[prune] {config.prune_recipe}")
    repruned = not matches_saved_recipe([prune_config], Path(prune_config.output_dir) / PRUNE_RECIPE_FILE)
    pruned = prune_step(prune_config, log)
    log(f"[distil] {config.train_recipe}")
    train_unless_done(model_args, train_config, log, redo=repruned)  # a new pruned model: distil it again
    log(f"[quantize] {config.quantize_recipe}")
    reference, artifacts = build_artifacts(quantize_config, log)
    measured, quantized_results = measure_artifacts(reference, artifacts, quantize_config, log)
    before = evaluate_models(
        [ModelSpec(config.teacher, "teacher"), ModelSpec(str(pruned), "pruned")],
        [quantize_config.benchmark],
        accuracy_config(quantize_config, reference),
        log=log,
    )
    for result in quantized_results:
        result.model = DISTILLED if result.model == REFERENCE else f"{DISTILLED} {result.model}"
    results = before + quantized_results
    rows = chain_rows(Path(config.teacher), pruned, reference, measured, results)
    (out / "pdq.json").write_text(json.dumps({"chain": rows, "artifacts": measured}, indent=2))
    (out / "pdq.md").write_text(f"{format_chain(rows)}\n\n{format_table(measured)}\n")
    write_report(results, out / "report")
    return rows, results


def run_pdq(recipe: Path | None, overrides: list[str]) -> int:
    (config,) = parse_recipe(recipe, (PDQConfig,), overrides)
    rows, _ = run_chain(config)
    print(f"{format_chain(rows)}\nreport: {Path(config.output_dir) / 'report' / 'report.md'}")
    return 0
