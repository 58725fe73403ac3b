"""benchmarks/distill_study.py end to end on a handful of traces of a tiny model: the data-efficiency
study's table, plot and results file, and the on-policy study's chains on a trace subset; the numbers
mean nothing at 2 steps."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import generate_config

from reasondistill.core.traces import trace_totals
from reasondistill.generate.generate import generate

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "distill_study.py"


def study_command(study: str, teacher: Path, tmp_path: Path) -> list[str]:
    """The script on traces and held-out traces of `teacher` and a tiny full fine-tuning recipe."""
    traces = generate(generate_config(teacher, tmp_path / "traces", backend="transformers"))
    heldout = generate(
        generate_config(
            teacher, tmp_path / "heldout", backend="transformers", prompt_split="test", num_prompts=2
        )
    )
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "train.yaml").write_text(
        "use_peft: false\ndtype: float32\nonly_correct: false\nper_device_train_batch_size: 2\n"
        "learning_rate: 1.0e-3\nreport_to: none\nsave_strategy: 'no'\nlogging_steps: 1\n"
        "on_policy_max_new_tokens: 8\ntraces: unset\noutput_dir: unset\n"
    )
    # `--report`'s evaluation: greedy, few problems and tokens (the demo's recipe samples 4 x 400 tokens)
    (recipes / "evaluate.yaml").write_text(
        "backend: transformers\ndtype: float32\nbenchmark: [arithmetic]\nnum_problems: 2\nnum_samples: 1\n"
        "temperature: 0.0\nmax_tokens: 16\ndivergence_examples: 1\ndivergence_problems: 2\n"
        "divergence_max_tokens: 16\noutput_dir: unset\n"
    )
    command = [sys.executable, str(SCRIPT), study, "--teacher", str(teacher), "--traces", str(traces)]
    return command + ["--heldout", str(heldout), "--recipes", str(recipes), "--test-problems", "2"]


def test_data_efficiency_study_trains_each_count_and_plots(tiny_model_dir, tmp_path):
    command = study_command("data", tiny_model_dir, tmp_path) + ["--seeds", "0", "1"]
    command += ["--max-steps", "2", "--trace-counts", "4"]
    command += ["--output-dir", str(tmp_path / "study")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    # the first 4 traces, then all of them (the curve's last point, as the other studies' sft and kd)
    for row in ("| sft-4 | 2 |", "| kd-4 | 2 |", "| sft | 2 |", "| kd | 2 |"):
        assert row in run.stdout
    # KD against SFT at each trace count, nothing else
    paired = [line.split(" | ")[0] for line in run.stdout.splitlines() if "(paired)" in line]
    assert paired == ["| kd-4 − sft-4 (paired)", "| kd − sft (paired)"]
    assert (tmp_path / "study" / "data_efficiency.png").stat().st_size > 1000
    students = json.loads((tmp_path / "study" / "data.json").read_text())["students"]
    assert len(students) == 8 and {s["compute"]["student_tokens"] > 0 for s in students} == {True}
    # the curve's last point sits at every usable trace (the tiny recipe keeps incorrect ones too)
    records = int(trace_totals(tmp_path / "traces")["records"])
    assert records > 4 and f"sft, kd: all {records} usable traces" in run.stdout
    assert (
        "Command: `.venv/bin/python benchmarks/distill_study.py data"
        in (tmp_path / "study" / "data.md").read_text()
    )

    # a third seed in another directory, merged: every row over 3 seeds, the pairs over 3
    merge = ["--merge-with", str(tmp_path / "study" / "data.json")]
    refused = subprocess.run([*command, "--seeds", "1", *merge], capture_output=True, text=True, timeout=900)
    assert (
        refused.returncode != 0
        and "('kd', 1)" in refused.stderr
        and "leave their seeds out" in refused.stderr
    )
    third = [*command, "--seeds", "2", "--output-dir", str(tmp_path / "seed2"), *merge]
    run = subprocess.run(third, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    for row in ("| sft-4 | 3 |", "| kd-4 | 3 |", "| sft | 3 |", "| kd | 3 |", "| kd − sft (paired) | 3 |"):
        assert row in run.stdout
    students = json.loads((tmp_path / "seed2" / "data.json").read_text())["students"]
    assert sorted(s["seed"] for s in students if s["method"] == "kd-4") == [0, 1, 2]
    assert len(students) == 12 and (tmp_path / "seed2" / "data_efficiency.png").exists()


def test_on_policy_study_chains_on_a_trace_subset(tiny_model_dir, tmp_path):
    command = study_command("on_policy", tiny_model_dir, tmp_path) + ["--seeds", "0", "--max-steps", "2"]
    command += ["--on-policy-steps", "2", "--more-sft-steps", "3", "--num-traces", "4"]
    command += ["--on-policy-prompts", "8"]
    command += ["--output-dir", str(tmp_path / "study")]
    # every kind of arm once (the study's other arms differ only in the fields they set): SFT, KD, on-policy
    # after SFT on the traces' prompts, more SFT after SFT, on-policy after KD on new questions
    chosen = ["sft-then-on-policy", "sft-then-sft", "kd-then-on-policy-new-prompts"]
    run = subprocess.run([*command, "--methods", *chosen], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    students = {
        s["method"]: s for s in json.loads((tmp_path / "study" / "on_policy.json").read_text())["students"]
    }
    assert list(students) == [
        "sft",
        "kd",
        "sft-then-on-policy",
        "sft-then-sft",
        "kd-then-on-policy-new-prompts",
    ]
    assert {Path(s["directory"]).parts[-4] for s in students.values()} == {"students-4traces"}
    # a chain's compute adds its start's: SFT's 2 off-policy steps, then 2 on-policy or 3 more SFT steps
    assert students["sft"]["compute"]["on_policy_steps"] == 0
    assert students["sft-then-on-policy"]["compute"]["on_policy_steps"] == 2
    sft_tokens = students["sft"]["compute"]["student_tokens"]
    assert students["sft-then-sft"]["compute"]["student_tokens"] > sft_tokens
    assert students["sft-then-on-policy"]["compute"]["student_tokens"] > sft_tokens
    new_prompts = students["kd-then-on-policy-new-prompts"]
    assert new_prompts["compute"]["on_policy_steps"] == 2
    recorded = (Path(new_prompts["directory"]) / "train_recipe.yaml").read_text()
    assert "on_policy_prompts: task:arithmetic" in recorded and "on_policy_num_prompts: 8" in recorded
    # a subset, with the methods it chains onto; the students above are reused; with the evaluation
    # report of the teacher, the baseline (kd, the first) and the best method
    rerun = subprocess.run(
        [*command, "--methods", "kd-then-on-policy-new-prompts", "--report"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    subset = json.loads((tmp_path / "study" / "on_policy.json").read_text())["students"]
    assert [s["method"] for s in subset] == ["kd", "kd-then-on-policy-new-prompts"]
    assert subset[1]["accuracy"] == new_prompts["accuracy"]
    best = max(subset, key=lambda s: s["accuracy"])["method"]
    report = tmp_path / "study" / "on_policy-report"
    runs = json.loads((report / "results.json").read_text())["runs"]
    shown = ["teacher", "kd seed 0"] + ([f"{best} seed 0"] if best != "kd" else [])
    assert [r["model"] for r in runs] == shown
    assert {r["num_problems"] for r in runs} == {2}
    text = (report / "report.md").read_text()
    assert "kd seed 0" in text and list(report.glob("divergence_*kd_seed_0*.png"))
