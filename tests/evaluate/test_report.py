"""The report: results JSON, per-sample JSONL, Markdown tables and plots that open as images."""

import json

import matplotlib.image
import pytest

from reasondistill.evaluate.decontaminate import Contamination
from reasondistill.evaluate.report import load_results, write_report
from reasondistill.evaluate.results import RunResult


def run(model: str, benchmark: str, size: int | None, correct: list[bool], n: int = 2) -> RunResult:
    samples = [
        {
            "problem_id": f"p{i // n}",
            "sample_index": i % n,
            "response_tokens": 50 + 7 * i,
            "finish_reason": "stop",
            "correct": ok,
            "failure": None if ok else "wrong",
        }
        for i, ok in enumerate(correct)
    ]
    rate = sum(correct) / len(correct)
    return RunResult(
        model=model,
        model_path=f"/models/{model}",
        size_bytes=size,
        benchmark=benchmark,
        description=f"{benchmark} test",
        backend="vllm",
        sampling={"n": n, "temperature": 0.6, "top_p": 0.95, "max_tokens": 200, "seed": 0},
        bootstrap_samples=1000,
        num_problems=len(correct) // n,
        metrics={
            "pass@1": {"value": rate, "ci_low": rate / 2, "ci_high": (1 + rate) / 2},
            f"pass@{n}": {"value": 0.9, "ci_low": 0.8, "ci_high": 1.0},
            f"maj@{n}": {"value": 0.7, "ci_low": 0.6, "ci_high": 0.8},
        },
        response_tokens={"mean": 80.0, "median": 78.0},
        truncation_rate=0.0,
        failures={
            "correct": sum(correct),
            "no_answer": 0,
            "wrong": len(correct) - sum(correct),
            "truncated": 0,
        },
        elapsed_s=1.0,
        samples=samples,
    )


def test_report_for_several_models_and_benchmarks(tmp_path):
    results = [
        run("teacher", "arithmetic", 13_000_000, [True, True, True, False]),
        run("student", "arithmetic", 2_000_000, [True, False, False, False]),
        run("teacher", "gsm8k", 13_000_000, [False, True, False, False]),
        run("student", "gsm8k", 2_000_000, [False, False, False, False]),
    ]
    contamination = [Contamination("gsm8k", 8, 512, 1319, 3)]
    report = write_report(results, tmp_path, contamination)

    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["version"] == 1 and len(saved["runs"]) == 4
    assert "samples" not in saved["runs"][0] and saved["runs"][0]["metrics"]["pass@1"]["value"] == 0.75
    assert saved["contamination"][0]["num_contaminated"] == 3
    lines = (tmp_path / saved["runs"][1]["samples_file"]).read_text().splitlines()
    assert [json.loads(line)["correct"] for line in lines] == [True, False, False, False]

    text = report.read_text()
    assert text.index("## arithmetic") < text.index("## gsm8k")
    assert "| teacher | 13.0 MB | **75.0** [37.5, 87.5] | 90.0 | 70.0 | 80 / 78 | 0.0 | 0 | 1 | 0 |" in text
    assert "| gsm8k | 8 | 512 | 3 | 0.6 % |" in text
    loaded, checks = load_results(tmp_path)
    assert loaded == results and checks == contamination
    for plot in ("accuracy.png", "accuracy_vs_size.png", "response_lengths.png"):
        image = matplotlib.image.imread(tmp_path / plot)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500
        assert f"]({plot})" in text


def test_size_plot_is_left_out_when_no_size_is_known(tmp_path):
    report = write_report([run("hub-model", "aime24", None, [True, False], n=1)], tmp_path)
    assert not (tmp_path / "accuracy_vs_size.png").exists()
    text = report.read_text()
    assert "accuracy_vs_size.png" not in text and "| hub-model | ? |" in text
    assert "pass@1 %" in text and "maj@" not in text.split("## aime24")[1].split("\n\n")[2]


def test_duplicate_labels_and_empty_results_are_refused(tmp_path):
    with pytest.raises(ValueError, match="distinct names"):
        write_report([run("a", "b", 1, [True, True]), run("a", "b", 2, [True, True])], tmp_path)
    with pytest.raises(ValueError, match="at least one result"):
        write_report([], tmp_path)
