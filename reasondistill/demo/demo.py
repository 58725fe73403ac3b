"""`reasondistill demo`: the whole pipeline on a laptop CPU with models the project builds itself.

Each stage is driven by its own recipe in the demo recipe directory (the same files a user passes
to the stage's command) and reads the previous stage's artifact from disk:

1. teacher.yaml  -> build (or reuse) the demo teacher            -> model directory
2. generate.yaml -> sample verified traces from it with vLLM, and held-out traces on test prompts
   (one engine for both)                                         -> trace datasets
3. students.yaml + train.yaml -> one student per method and seed (SFT-only, CE + KD, ...), scored on held-out
   problems and the held-out teacher traces                      -> model directories + summary.json
4. quantize.yaml -> the best student as GGUF 4-bit and NF4, measured -> artifacts + table
5. pdq.yaml (+ prune.yaml, train.yaml, quantize.yaml) -> the teacher pruned, distilled back on its
   traces and quantized, measured after each step                 -> model directories + table
6. one greedy evaluation report of all of them: teacher, the best student and the best of the other
   methods, the pruned and distilled teacher, and their 4-bit artifacts, with the two students'
   per-token divergence from the teacher (its size: evaluate.yaml's divergence_* fields)
                                                                  -> report (Markdown + plots)
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import torch

from reasondistill.chains.pdq import format_chain, run_chain
from reasondistill.chains.pdq_config import PDQConfig
from reasondistill.compress.quantize import (
    REFERENCE,
    accuracy_config,
    build_artifacts,
    format_table,
    measure_artifacts,
)
from reasondistill.compress.quantize_config import QuantizeConfig
from reasondistill.core.arithmetic_task import generate_problems
from reasondistill.core.engines import LazyEngine
from reasondistill.core.recipe import parse_recipe
from reasondistill.core.results_writer import write_results
from reasondistill.core.traces import trace_totals
from reasondistill.demo.scoring import task_scores
from reasondistill.demo.students import best_student, summary_table, train_students
from reasondistill.demo.students_config import StudentsConfig
from reasondistill.demo.teacher import BUILD_INFO_FILE, load_teacher, train_teacher
from reasondistill.demo.teacher_config import TeacherConfig
from reasondistill.evaluate.benchmark_specs import load_benchmark
from reasondistill.evaluate.evaluate import evaluate_models
from reasondistill.evaluate.evaluate_config import EvaluateConfig
from reasondistill.evaluate.report import write_report
from reasondistill.evaluate.results import ModelSpec
from reasondistill.evaluate.token_divergence import divergence_report, divergence_settings
from reasondistill.generate.generate import generate
from reasondistill.generate.generate_config import GenerateConfig

logger = logging.getLogger(__name__)


def run_demo(recipe_path: Path, overrides: list[str]) -> int:
    """Run the demo; `recipe_path` is the teacher recipe, its siblings drive the later stages."""
    (teacher_config,) = parse_recipe(recipe_path, (TeacherConfig,), overrides)
    (generate_config,) = parse_recipe(
        recipe_path.parent / "generate.yaml",
        (GenerateConfig,),
        ["--teacher", str(teacher_config.directory())],
    )
    (students_config,) = parse_recipe(recipe_path.parent / "students.yaml", (StudentsConfig,))
    (evaluate_config,) = parse_recipe(recipe_path.parent / "evaluate.yaml", (EvaluateConfig,))
    torch.set_num_threads(os.cpu_count() or 1)

    logger.info(f"[1/6] demo teacher ({recipe_path})")
    teacher_dir = train_teacher(teacher_config)
    info = json.loads((teacher_dir / BUILD_INFO_FILE).read_text())
    logger.info(
        f"teacher: {teacher_dir}\n"
        f"  parameters: {info['parameters'] / 1e6:.2f}M\n"
        f"  held-out accuracy (greedy, {info['heldout_problems']} test problems, levels "
        f"{info['config']['levels']}): {info['heldout_accuracy']:.1%}\n"
        f"  built in {info['build_seconds']} s"
    )

    logger.info(f"[2/6] teacher traces with vLLM ({recipe_path.parent / 'generate.yaml'})")
    # Traces live beside the teacher they came from, so a rebuilt teacher never meets old traces.
    generate_config.output_dir = str(Path(generate_config.output_dir) / teacher_dir.name)
    generate_config.overwrite = True  # the demo's own directories: a changed recipe regenerates
    # Held-out traces: the teacher on test-split prompts, for the students' held-out CE and KD.
    (heldout_config,) = parse_recipe(
        recipe_path.parent / "generate.yaml",
        (GenerateConfig,),
        ["--teacher", str(teacher_dir), "--prompt_split", "test"]
        + ["--num_prompts", str(students_config.heldout_prompts), "--num_samples", "1", "--keep", "all"]
        + ["--output_dir", f"{generate_config.output_dir}-heldout"],
    )
    heldout_config.overwrite = True
    # one engine start for both sets (about a minute with vLLM here), none if both are already written
    engine = LazyEngine(generate_config)
    try:
        traces_dir = generate(generate_config, engine)
        heldout_dir = generate(heldout_config, engine)
    finally:
        engine.close()
    totals = trace_totals(traces_dir)
    generated = totals.get("stats.generated", 0)
    logger.info(
        f"traces: {traces_dir}\n"
        f"  {totals['records']} verified traces kept of {generated} sampled "
        f"({totals.get('stats.graded_correct', 0) / max(generated, 1):.1%} correct at temperature "
        f"{generate_config.temperature}), {totals['completion_tokens']} completion tokens\n"
        f"  top-{generate_config.logprobs} logprobs stored at "
        f"{totals['bytes_per_completion_token']} bytes/token\n"
        f"held-out traces (test prompts, all kept): {heldout_dir}"
    )

    logger.info(
        f"[3/6] distilled students ({recipe_path.parent}/students.yaml, {recipe_path.parent}/train.yaml)"
    )
    results = train_students(students_config, recipe_path.parent, teacher_dir, traces_dir, heldout_dir)
    teacher, tokenizer = load_teacher(teacher_dir)
    problems = generate_problems("test", students_config.test_problems, students_config.test_levels, seed=1)
    teacher_accuracy, teacher_steps = task_scores(teacher, tokenizer, problems)
    table = summary_table(results, teacher_accuracy, teacher_steps)
    students_dir = Path(students_config.output_dir) / teacher_dir.name
    summary = {"teacher": [teacher_accuracy, teacher_steps], "students": [asdict(r) for r in results]}
    write_results(students_dir, "summary", summary, table)
    logger.info(
        f"students on {len(problems)} held-out problems (greedy) and {heldout_dir} "
        f"(mean ± sd over seeds {students_config.seeds}):\n{table}\n"
        f"  details: {students_dir / 'summary.json'}"
    )

    best = best_student(results)
    # beside it in the report: the best student of the other methods (SFT beside KD, or KD beside SFT)
    others = [r for r in results if r.method != best.method]
    shown = [best_student(others)] if others else []
    logger.info(
        f"[4/6] compressing the best student, {best.method} seed {best.seed} "
        f"({recipe_path.parent}/quantize.yaml)"
    )
    (quantize_config,) = parse_recipe(
        recipe_path.parent / "quantize.yaml",
        (QuantizeConfig,),
        ["--model", best.directory],
    )
    quantize_config.output_dir = str(Path(quantize_config.output_dir) / teacher_dir.name)
    reference, artifacts = build_artifacts(quantize_config)
    rows, compressed = measure_artifacts(reference, artifacts, quantize_config)

    logger.info(f"[5/6] prune -> distil -> quantize the teacher ({recipe_path.parent}/pdq.yaml)")
    siblings = [
        f"--{step}_recipe={recipe_path.parent / f'{step}.yaml'}" for step in ("prune", "train", "quantize")
    ]
    (pdq_config,) = parse_recipe(
        recipe_path.parent / "pdq.yaml",
        (PDQConfig,),
        ["--teacher", str(teacher_dir), "--traces", str(traces_dir), *siblings],
    )
    pdq_config.output_dir = str(Path(pdq_config.output_dir) / teacher_dir.name)
    pdq_config.overwrite = True
    chain, chain_results = run_chain(pdq_config)
    logger.info(format_chain(chain))

    logger.info(f"[6/6] report: greedy, {quantize_config.num_problems} {quantize_config.benchmark} problems")
    # the teacher was scored in stage 5 with the same settings; only the other method's student is new
    other_specs = [ModelSpec(r.directory, f"student-{r.method} (seed {r.seed})") for r in shown]
    other_results = evaluate_models(
        other_specs, [quantize_config.benchmark], accuracy_config(quantize_config, reference)
    )
    name = f"student-{best.method} (seed {best.seed})"
    for result in compressed:
        result.model = name if result.model == REFERENCE else f"{name} {result.model}"
    report_dir = Path(quantize_config.output_dir) / "report"
    # where the students part from the teacher, token by token (evaluate.yaml: 4 pictured, kinds over 50)
    divergence = divergence_report(
        [*other_specs, ModelSpec(best.directory, name)],
        str(teacher_dir),
        [load_benchmark(quantize_config.benchmark)],
        report_dir,
        divergence_settings(evaluate_config),
    )
    report = write_report(
        [*chain_results[:1], *other_results, *compressed, *chain_results[1:]],
        report_dir,
        sections=[divergence],
    )
    logger.info(f"{format_table(rows)}\n{format_chain(chain)}\nreport: {report}")
    return 0
