"""`reasondistill quantize`: turn a trained student into deployable artifacts and say what was lost.

Phases: merge (a PEFT adapter into its full-precision base; a full model is used as it is) -> build one
artifact per hardware profile (GGUF files with llama.cpp's converter, `llamacpp_convert.py`, or ours,
`gguf_export.py`; bitsandbytes directories with `bnb_quantize.py`) -> measure each against the
full-precision reference (`measure.py`: size, memory, tokens/s, accuracy kept) -> write
`measurements.json`, `measurements.md` and an evaluation report.

Library use (e.g. from the demo): `build_artifacts(config)` returns the reference directory and the
artifacts; `measure_artifacts(reference, artifacts, config)` returns one row per artifact.
"""

from __future__ import annotations

import logging
from pathlib import Path

from reasondistill.compress.bnb_quantize import quantize_bnb
from reasondistill.compress.gguf_export import export_gguf, llama_quantize
from reasondistill.compress.hardware_profiles import get_profile
from reasondistill.compress.llamacpp_convert import convert_hf_to_gguf
from reasondistill.compress.measure import Artifact, measure_accuracy, measure_speed, size_row
from reasondistill.compress.merge import check_full_precision, is_adapter_dir, merge_adapter
from reasondistill.compress.quantize_config import QuantizeConfig
from reasondistill.core.markdown_table import markdown_table
from reasondistill.core.model_dir import check_model_source, parameter_count
from reasondistill.core.recipe import parse_recipe
from reasondistill.core.results_writer import write_results
from reasondistill.core.run_reuse import run_in_dir
from reasondistill.evaluate.evaluate_config import EvaluateConfig

logger = logging.getLogger(__name__)

REFERENCE = "reference"
QUANTIZE_RECIPE_FILE = "quantize_recipe.yaml"
# GGUF types each converter writes itself; the others are llama.cpp's quantizer applied to the F16 file
WRITTEN_BY_CONVERTER = {"llama.cpp": ("F16", "Q8_0"), "reasondistill": ("F16", "Q8_0", "Q4_0")}
TABLE_HEADER = (
    "artifact",
    "runtime",
    "size MB",
    "% of bf16",
    "peak RSS MB",
    "model RSS MB",
    "tokens/s",
    "pass@1",
    "accuracy kept",
)


def prepare_reference(config: QuantizeConfig) -> Path:
    """The full-precision model every artifact is made from: the merged adapter, or the model itself."""
    source = Path(config.model)
    if is_adapter_dir(source):
        merged = merge_adapter(
            source, Path(config.output_dir) / "merged", config.base_model, config.merged_dtype
        )
        logger.info(f"merged adapter {source} into its base ({config.merged_dtype}): {merged}")
        return merged
    if not (source / "config.json").is_file():
        raise ValueError(f"{source} is neither a model directory nor a PEFT adapter directory; check --model")
    check_full_precision(source, "model")
    return source


def build_artifacts(config: QuantizeConfig) -> tuple[Path, list[Artifact]]:
    """Merge if needed, then build every requested profile's artifact; returns (reference dir, artifacts)."""
    out = Path(config.output_dir)
    reference = prepare_reference(config)
    artifacts = []
    f16 = out / get_profile("gguf-f16").artifact
    convert = convert_hf_to_gguf if config.gguf_converter == "llama.cpp" else export_gguf
    f16_exported = False  # in this call: an F16 file from an earlier run may be another model's
    for profile in map(get_profile, config.profiles):
        path = out / profile.artifact
        if profile.format == "bnb":
            quantize_bnb(reference, path, profile.bnb_bits, config.double_quant, config.compute_dtype)
        elif profile.gguf_type in WRITTEN_BY_CONVERTER[config.gguf_converter]:
            convert(reference, path, profile.gguf_type)
            f16_exported = f16_exported or path == f16
        else:  # llama.cpp's quantizer applied to the F16 export
            if not f16_exported:
                convert(reference, f16, "F16")
                f16_exported = True
            llama_quantize(f16, path, profile.gguf_type)
        logger.info(f"{profile.name} ({profile.device}): {path}")
        artifacts.append(Artifact(profile.name, path))
    return reference, artifacts


def accuracy_config(config: QuantizeConfig, reference: Path) -> EvaluateConfig:
    """The evaluation settings accuracy is measured with: greedy, one sample, the reference's tokenizer."""
    return EvaluateConfig(
        backend=config.eval_backend,
        dtype=config.eval_dtype,
        gpu_memory_utilization=config.gpu_memory_utilization,
        max_model_len=config.max_model_len,
        tokenizer=str(reference),
        num_problems=config.num_problems,
        num_samples=1,
        temperature=0.0,
        max_tokens=config.max_tokens,
        output_dir=str(Path(config.output_dir) / "eval"),
    )


def measure_artifacts(
    reference: Path, artifacts: list[Artifact], config: QuantizeConfig
) -> tuple[list[dict], list]:
    """One row per artifact, the reference first: size, memory, speed and (with a benchmark) accuracy.

    Returns (rows, evaluation RunResults) so callers can also write the evaluation report.
    """
    bf16_bytes = 2 * parameter_count(reference)
    eval_config = accuracy_config(config, reference)
    rows, results = [], []
    for artifact in [Artifact(REFERENCE, reference), *artifacts]:
        row = size_row(artifact, bf16_bytes)
        row |= measure_speed(artifact, reference, config.speed_tokens, config.threads)
        if config.benchmark:
            result = measure_accuracy(
                artifact, config.benchmark, eval_config, Path(config.output_dir), config.threads
            )
            results.append(result)
            row["pass@1"] = result.metrics["pass@1"]["value"]
            row["accuracy_kept"] = row["pass@1"] / rows[0]["pass@1"] if rows and rows[0]["pass@1"] else None
        rows.append(row)
        label, *cells = table_cells(row)
        measured = ", ".join(f"{name} {cell}" for name, cell in zip(TABLE_HEADER[1:], cells, strict=True))
        logger.info(f"measured {label}: {measured}")
    return rows, results


def _cell(value: float | str | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table_cells(row: dict) -> list[str]:
    """One measurement row as the table's cells, in TABLE_HEADER's order."""
    return [
        row["artifact"],
        row["runtime"],
        f"{row['size_mb']:.2f}",
        f"{row['size_vs_bf16']:.0%}",
        f"{row['peak_rss_mb']:.0f}",
        f"{row['model_rss_mb']:.0f}",
        f"{row['tokens_per_s']:.0f}",
        _cell(row.get("pass@1"), ".1%"),
        _cell(row.get("accuracy_kept"), ".1%"),
    ]


def format_table(rows: list[dict]) -> str:
    """Markdown table of measurement rows."""
    return markdown_table(
        TABLE_HEADER, [table_cells(row) for row in rows], numeric=range(2, len(TABLE_HEADER))
    )


def run_quantize(recipe: Path | None, overrides: list[str]) -> int:
    from reasondistill.evaluate.report import write_report

    (config,) = parse_recipe(recipe, (QuantizeConfig,), overrides)
    check_model_source(config.model, "model", config.base_model)
    out = Path(config.output_dir)
    with run_in_dir([config], out / QUANTIZE_RECIPE_FILE, config.overwrite):
        reference, artifacts = build_artifacts(config)
        if config.measure:
            rows, results = measure_artifacts(reference, artifacts, config)
            table = format_table(rows)
            write_results(out, "measurements", rows, table)
            if results:
                write_report(results, out / "eval")
            logger.info(table)
    return 0
