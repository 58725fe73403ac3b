"""Evaluation report: results JSON, per-sample JSONL, a Markdown report and matplotlib plots.

`write_report(results, out_dir)` writes, for any number of models and benchmarks (`load_results` reads
them back, so runs from several machines can be merged into one report):

    results.json              every run's settings, metrics with 95% intervals, lengths, failure counts
    samples/MODEL__BENCH.jsonl one record per response (prompt id, response, extracted answer, verdict)
    report.md                 tables per benchmark, the plots, the contamination check if one ran
    accuracy.png              pass@1 per model and benchmark with 95% bootstrap error bars
    accuracy_vs_size.png      pass@1 against the model's size on disk (log scale)
    response_lengths.png      histogram of response tokens per model, one panel per benchmark
    divergence__*.png         with evaluate's divergence_teacher: `token_divergence.py`'s pictures
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from reasondistill.core.markdown_table import markdown_table  # noqa: E402
from reasondistill.evaluate.decontaminate import Contamination  # noqa: E402
from reasondistill.evaluate.results import RunResult  # noqa: E402

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
RESULTS_VERSION = 1
PLOTS = {
    "accuracy.png": "pass@1 per model (95% bootstrap intervals)",
    "accuracy_vs_size.png": "pass@1 against size on disk",
    "response_lengths.png": "response lengths",
}


def samples_file(result: RunResult) -> str:
    safe = re.sub(r"[^\w.-]+", "_", f"{result.model}__{result.benchmark}")
    return f"samples/{safe}.jsonl"


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def _size(size_bytes: int | None) -> str:
    return "?" if size_bytes is None else f"{size_bytes / 1e6:.1f} MB"


def _by_benchmark(results: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    grouped: dict[str, list[RunResult]] = {}
    for result in results:
        grouped.setdefault(result.benchmark, []).append(result)
    return grouped


def _models(results: Sequence[RunResult]) -> list[str]:
    return list(dict.fromkeys(r.model for r in results))


def plot_accuracy(results: Sequence[RunResult], path: Path) -> None:
    """Grouped bars: benchmarks on the x axis, one bar per model, 95% intervals as error bars."""
    grouped, models = _by_benchmark(results), _models(results)
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + 1.6 * len(grouped) * len(models) * width * 2), 3.6))
    for m, model in enumerate(models):
        xs, values, errors = [], [], [[], []]
        for b, runs in enumerate(grouped.values()):
            run = next((r for r in runs if r.model == model), None)
            if run is None:
                continue
            metric = run.metrics["pass@1"]
            xs.append(b - 0.4 + width * (m + 0.5))
            values.append(100 * metric["value"])
            errors[0].append(100 * (metric["value"] - metric["ci_low"]))
            errors[1].append(100 * (metric["ci_high"] - metric["value"]))
        ax.bar(xs, values, width * 0.9, yerr=errors, capsize=4, label=model)
        for x, value, above in zip(xs, values, errors[1], strict=True):  # above the interval, not on it
            ax.text(x, value + above + 1.5, f"{value:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(grouped)), list(grouped))
    ax.set_ylabel("pass@1 (%)")
    ax.set_ylim(0, 110)
    ax.set_title("Accuracy per model (95% bootstrap CI)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accuracy_vs_size(results: Sequence[RunResult], path: Path) -> bool:
    """pass@1 against megabytes on disk, one series per benchmark; False (no file) if no size is known."""
    sized = [r for r in results if r.size_bytes]
    if not sized:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    # points carry numbers and a key beside the axes names them: full names collide once models cluster
    number = {model: i + 1 for i, model in enumerate(_models(sized))}
    for benchmark, runs in _by_benchmark(sized).items():
        runs = sorted(runs, key=lambda r: r.size_bytes)
        sizes = np.array([r.size_bytes / 1e6 for r in runs])
        values = np.array([100 * r.metrics["pass@1"]["value"] for r in runs])
        errors = np.array(
            [
                [values[i] - 100 * r.metrics["pass@1"]["ci_low"] for i, r in enumerate(runs)],
                [100 * r.metrics["pass@1"]["ci_high"] - values[i] for i, r in enumerate(runs)],
            ]
        )
        # points, not a line: the models are not a series along a size axis
        ax.errorbar(sizes, values, yerr=errors, marker="o", linestyle="none", capsize=4, label=benchmark)
        # each point's number sits above its interval; points that coincide share one label ("2,3")
        labels: dict[tuple[float, float, float], list[str]] = {}  # (size, pass@1, top of interval)
        for run, x, y, above in zip(runs, sizes, values, values + errors[1], strict=True):
            labels.setdefault((round(x, 2), round(y, 1), above), []).append(str(number[run.model]))
        for (x, _, above), numbers in labels.items():
            ax.annotate(
                ",".join(numbers),
                (x, above),
                textcoords="offset points",
                xytext=(0, 3),
                ha="center",
                fontsize=8,
                fontweight="bold",
            )
    key = "\n".join(f"{n:>2}  {model}" for model, n in number.items())
    ax.text(1.03, 1.0, key, transform=ax.transAxes, va="top", fontsize=8, family="monospace")
    ax.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # "2", "10" instead of "2x10^0"
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide below a decade
    ax.margins(x=0.1)
    ax.set_xlabel("model size on disk (MB, log scale)")
    ax.set_ylabel("pass@1 (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Accuracy vs size")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, which="both")
    fig.savefig(path, dpi=120, bbox_inches="tight")  # "tight" takes in the key outside the axes
    plt.close(fig)
    return True


def plot_lengths(results: Sequence[RunResult], path: Path) -> None:
    """Histogram of response tokens per model, one panel per benchmark; the dashed line is max_tokens."""
    grouped = _by_benchmark(results)
    fig, axes = plt.subplots(1, len(grouped), figsize=(5.0 * len(grouped), 3.4), squeeze=False)
    for ax, (benchmark, runs) in zip(axes[0], grouped.items(), strict=True):
        limit = max(r.sampling["max_tokens"] for r in runs)
        bins = np.linspace(0, limit, 41)
        for run in runs:
            lengths = [s["response_tokens"] for s in run.samples]
            ax.hist(
                lengths,
                bins=bins,
                histtype="step",
                linewidth=1.5,
                label=f"{run.model} (median {run.response_tokens['median']:.0f})",
            )
        ax.axvline(limit, color="grey", linestyle="--", linewidth=1)
        ax.set_title(f"{benchmark}: response lengths")
        ax.set_xlabel("response tokens (dashed: max_tokens)")
        ax.set_ylabel("responses")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _table(runs: list[RunResult]) -> str:
    n = runs[0].sampling["n"]
    extra = [f"pass@{n}", f"maj@{n}"] if n > 1 else []
    header = ["model", "size", "pass@1 % [95% CI]", *(f"{name} %" for name in extra)]
    header += ["tokens mean / median", "truncated %", "no answer", "wrong", "truncated"]
    rows = []
    for run in runs:
        pass1 = run.metrics["pass@1"]
        rows.append(
            [
                run.model,
                _size(run.size_bytes),
                f"**{_percent(pass1['value'])}** [{_percent(pass1['ci_low'])}, {_percent(pass1['ci_high'])}]",
                *(_percent(run.metrics[name]["value"]) for name in extra),
                f"{run.response_tokens['mean']:.0f} / {run.response_tokens['median']:.0f}",
                _percent(run.truncation_rate),
                *(run.failures[reason] for reason in ("no_answer", "wrong", "truncated")),
            ]
        )
    return markdown_table(header, rows)


def render_markdown(
    results: Sequence[RunResult],
    plots: Sequence[str],
    contamination: Sequence[Contamination] | None,
    sections: Sequence[str] = (),
) -> str:
    lines = [
        "# Evaluation report",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M')} by `reasondistill evaluate`. pass@1 is the share of "
        "correct responses averaged over the n samples of each problem; pass@k is the unbiased estimator of "
        "Chen et al. (2021); maj@k is the expected accuracy of a majority vote over k of the n samples. "
        "Brackets are 95% bootstrap intervals over problems. Failure columns count responses: no answer "
        "found, a wrong answer, or cut off at max_tokens. Every response is in the per-sample JSONL files.",
        "",
    ]
    for benchmark, runs in _by_benchmark(results).items():
        s = runs[0].sampling
        lines += [
            f"## {benchmark}",
            "",
            f"{runs[0].description}. {runs[0].num_problems} problems x {s['n']} samples, temperature "
            f"{s['temperature']}, top_p {s['top_p']}, max_tokens {s['max_tokens']}, seed {s['seed']} "
            f"({runs[0].bootstrap_samples} bootstrap resamples); backend {runs[0].backend}.",
            "",
            _table(runs),
            "",
            "Per-sample records: " + ", ".join(f"[{r.model}]({samples_file(r)})" for r in runs) + ".",
            "",
        ]
    lines += [f"![{PLOTS[name]}]({name})\n" for name in plots]
    lines += list(sections)
    if contamination:
        header = ["benchmark", "n-gram", "training prompts", "overlapping", "share"]
        rows = [
            [c.benchmark, c.ngram_size, c.num_prompts, c.num_contaminated, f"{_percent(c.rate)} %"]
            for c in contamination
        ]
        lines += ["## Decontamination check", "", markdown_table(header, rows), ""]
    return "\n".join(lines)


def load_results(out_dir: str | Path) -> tuple[list[RunResult], list[Contamination]]:
    """Read back what write_report wrote, e.g. to merge runs made on different machines into one report."""
    payload = json.loads((Path(out_dir) / RESULTS_FILE).read_text(encoding="utf-8"))
    if payload.get("version") != RESULTS_VERSION:
        raise ValueError(
            f"{out_dir}/{RESULTS_FILE} has version {payload.get('version')}, not {RESULTS_VERSION}"
        )
    results = []
    for run in payload["runs"]:
        lines = (Path(out_dir) / run.pop("samples_file")).read_text(encoding="utf-8").splitlines()
        results.append(RunResult(**run, samples=[json.loads(line) for line in lines]))
    return results, [Contamination(**c) for c in payload["contamination"]]


def write_report(
    results: Sequence[RunResult],
    out_dir: str | Path,
    contamination: Sequence[Contamination] | None = None,
    sections: Sequence[str] = (),
) -> Path:
    """Write results JSON, per-sample JSONL, plots and the Markdown report; return the report's path.
    `sections` are Markdown blocks placed after the plots (e.g. `token_divergence.divergence_report`'s,
    whose pictures are already in `out_dir`)."""
    if not results:
        raise ValueError("write_report needs at least one result")
    keys = [(r.model, r.benchmark) for r in results]
    if len(set(keys)) != len(keys):
        raise ValueError("two results share a model label and benchmark; give the models distinct names")
    out = Path(out_dir)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    for result in results:
        with open(out / samples_file(result), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(sample, ensure_ascii=False) + "\n" for sample in result.samples)
    runs = [r.summary() | {"samples_file": samples_file(r)} for r in results]
    payload = {
        "version": RESULTS_VERSION,
        "runs": runs,
        "contamination": [asdict(c) for c in contamination or []],
    }
    (out / RESULTS_FILE).write_text(
        json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )

    plot_accuracy(results, out / "accuracy.png")
    plots = ["accuracy.png"]
    if plot_accuracy_vs_size(results, out / "accuracy_vs_size.png"):
        plots.append("accuracy_vs_size.png")
    plot_lengths(results, out / "response_lengths.png")
    plots.append("response_lengths.png")
    report = out / REPORT_FILE
    report.write_text(render_markdown(results, plots, contamination, sections), encoding="utf-8")
    return report
