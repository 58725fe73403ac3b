"""A finished federation's table and plot of accuracy per round (`evaluate_recipe` in the federate recipe).

The initial student and every round's global student are evaluated with `reasondistill evaluate`'s code
and settings (the recipe names one benchmark; pass@1 over its samples with a 95% bootstrap interval),
beside what each round cost and who took part, from the round records:

    OUTPUT_DIR/federate.md            the table (round, pass@1 [CI], clients aggregated, missing / rejected,
                                      bytes received per round and in total, epsilon with the privacy option,
                                      clients co-distilled with co-distillation)
    OUTPUT_DIR/federate.json          the same rows and the evaluation's settings
    OUTPUT_DIR/federate_accuracy.png  pass@1 per round with its interval
    OUTPUT_DIR/report/                the evaluation report of every student (evaluate.report)

Written after the rounds, never during them: it changes nothing a round depends on, so it is not part of
the run's recorded settings; the same evaluation of the same rounds is reused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from reasondistill.core.markdown_table import markdown_table
from reasondistill.core.results_writer import write_results
from reasondistill.core.run_reuse import clear_dir
from reasondistill.evaluate.evaluate import evaluate_models, single_benchmark_config
from reasondistill.evaluate.evaluate_config import EvaluateConfig
from reasondistill.evaluate.report import write_report
from reasondistill.evaluate.results import ModelSpec
from reasondistill.federate.federate_config import FederateConfig
from reasondistill.federate.rounds import CO_DISTILL_FILE, STUDENT_DIR, RoundRecord, round_dir

logger = logging.getLogger(__name__)

REPORT = "federate"  # federate.md / federate.json


def evaluate_config_of(config: FederateConfig) -> EvaluateConfig:
    """The federation's evaluate recipe with its overrides; one benchmark, checked to exist."""
    return single_benchmark_config(config.evaluate_recipe, config.evaluate_overrides)


def round_rows(config: FederateConfig, pass_at_1: list[dict]) -> list[dict]:
    """One row per student (round 0: the initial one): its pass@1 and the round's participation and bytes."""
    rows, total = [], 0
    for r, metric in enumerate(pass_at_1):
        row = {"round": r, "pass@1": metric["value"], "ci95": [metric["ci_low"], metric["ci_high"]]}
        if r:
            directory = round_dir(config.output_dir, r)
            record = RoundRecord.load(directory)
            total += sum(record.bytes_received.values())
            row |= {
                "aggregated": sorted(record.aggregated),
                "missing": record.missing,
                "rejected": sorted(record.rejected),
                "bytes_received": sum(record.bytes_received.values()),
                "bytes_received_total": total,
            }
            if record.privacy:
                row["epsilon"] = max(record.privacy["epsilon"].values())
            if (directory / CO_DISTILL_FILE).exists():
                row["co_distilled"] = json.loads((directory / CO_DISTILL_FILE).read_text())["co_distilled"]
        rows.append(row)
    return rows


def rounds_table(rows: list[dict], benchmark: str) -> str:
    header = ["round", f"pass@1 on {benchmark} [95% CI]", "clients aggregated", "missing / rejected"]
    header += ["bytes received, round", "bytes received, total"]
    privacy, co_distilled = any("epsilon" in r for r in rows), any("co_distilled" in r for r in rows)
    header += ["epsilon (largest)"] * privacy + ["co-distilled"] * co_distilled
    body = []
    for row in rows:
        low, high = row["ci95"]
        cells = [row["round"] or "initial student", f"{row['pass@1']:.1%} [{low:.1%}, {high:.1%}]"]
        if row["round"]:
            absent = ", ".join(row["missing"] + [f"{c} (rejected)" for c in row["rejected"]]) or "none"
            cells += [", ".join(row["aggregated"]), absent]
            cells += [f"{row['bytes_received']:,}", f"{row['bytes_received_total']:,}"]
        else:
            cells += ["-", "-", "0", "0"]
        cells += [f"{row['epsilon']:.3g}" if "epsilon" in row else "-"] * privacy
        cells += [", ".join(row.get("co_distilled", [])) or "-"] * co_distilled
        body.append(cells)
    return markdown_table(header, body, numeric=range(4, len(header)))


def plot_rounds(rows: list[dict], benchmark: str, path: Path) -> None:
    """pass@1 of the global student per round (round 0: the initial student), with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [row["round"] for row in rows]
    figure, axes = plt.subplots(figsize=(6, 3.5))
    axes.plot(rounds, [100 * row["pass@1"] for row in rows], marker="o", label="global student")
    low, high = ([100 * row["ci95"][i] for row in rows] for i in (0, 1))
    axes.fill_between(rounds, low, high, alpha=0.2, label="95% interval")
    axes.set_xticks(rounds)
    axes.set_xlabel("round (0: the initial student)")
    axes.set_ylabel(f"pass@1 on {benchmark}, %")
    axes.set_title("Federated distillation: accuracy per round")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def report_rounds(config: FederateConfig) -> Path:
    """Evaluate the finished federation's students and write its table, plot and report; returns the
    table's path. Reused when OUTPUT_DIR holds the same evaluation of the same rounds."""
    evaluate_config = evaluate_config_of(config)
    out = Path(config.output_dir)
    settings = json.loads(json.dumps(asdict(evaluate_config), default=str))
    students = [config.student] + [
        str(round_dir(out, r) / STUDENT_DIR) for r in range(1, config.num_rounds + 1)
    ]
    # which weights were evaluated: a rerun federation writes new students under the same paths
    weights = [Path(s) / "model.safetensors" for s in students]
    written = [w.stat().st_mtime_ns if w.exists() else None for w in weights]
    saved = out / f"{REPORT}.json"
    if saved.exists():
        earlier = json.loads(saved.read_text())
        if [earlier["evaluate"], earlier["students"], earlier["written"]] == [settings, students, written]:
            logger.info(f"{out / f'{REPORT}.md'}: the same evaluation of these rounds, reused")
            return out / f"{REPORT}.md"
    specs = [ModelSpec(s, "initial student" if r == 0 else f"round {r}") for r, s in enumerate(students)]
    results = evaluate_models(specs, evaluate_config.benchmark, evaluate_config)
    benchmark = evaluate_config.benchmark[0]
    rows = round_rows(config, [result.metrics["pass@1"] for result in results])
    table = rounds_table(rows, benchmark)
    clear_dir(out / "report")  # rewritten whole: no samples of an earlier evaluation stay
    write_report(results, out / "report")
    plot_rounds(rows, benchmark, out / f"{REPORT}_accuracy.png")
    write_results(
        out, REPORT, {"evaluate": settings, "students": students, "written": written, "rounds": rows}, table
    )
    logger.info(f"the global student per round ({benchmark}):\n{table}")
    return out / f"{REPORT}.md"
