"""`reasondistill demo`: the whole pipeline on a laptop CPU with models the project builds itself.

Each stage is driven by its own recipe in the demo recipe directory (the same files a user passes
to the stage's command) and reads the previous stage's artifact from disk:

1. teacher.yaml  -> build (or reuse) the demo teacher            -> model directory
2. generate.yaml -> sample verified traces from it with vLLM     -> trace dataset

Distillation, 4-bit export and the evaluation report append themselves here as they land.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from reasondistill.demo_models.teacher import BUILD_INFO_FILE, TeacherConfig, train_teacher
from reasondistill.generate import generate
from reasondistill.generate_config import GenerateConfig
from reasondistill.recipe import parse_recipe
from reasondistill.traces import trace_totals


def run_demo(recipe_path: Path, overrides: list[str]) -> int:
    """Run the demo; `recipe_path` is the teacher recipe, its siblings drive the later stages."""
    (teacher_config,) = parse_recipe(recipe_path, (TeacherConfig,), overrides)
    (generate_config,) = parse_recipe(
        recipe_path.parent / "generate.yaml",
        (GenerateConfig,),
        ["--teacher", str(teacher_config.directory())],
    )
    torch.set_num_threads(os.cpu_count() or 1)

    print(f"[1/2] demo teacher ({recipe_path})")
    teacher_dir = train_teacher(teacher_config)
    info = json.loads((teacher_dir / BUILD_INFO_FILE).read_text())
    print(
        f"teacher: {teacher_dir}\n"
        f"  parameters: {info['parameters'] / 1e6:.2f}M\n"
        f"  held-out accuracy (greedy, {info['heldout_problems']} test problems, levels "
        f"{info['config']['levels']}): {info['heldout_accuracy']:.1%}\n"
        f"  built in {info['build_seconds']} s"
    )

    print(f"[2/2] teacher traces with vLLM ({recipe_path.parent / 'generate.yaml'})")
    # Traces live beside the teacher they came from, so a rebuilt teacher never meets old traces.
    generate_config.output_dir = str(Path(generate_config.output_dir) / teacher_dir.name)
    traces_dir = generate(generate_config)
    totals = trace_totals(traces_dir)
    generated = totals.get("stats.generated", 0)
    print(
        f"traces: {traces_dir}\n"
        f"  {totals['records']} verified traces kept of {generated} sampled "
        f"({totals.get('stats.graded_correct', 0) / max(generated, 1):.1%} correct at temperature "
        f"{generate_config.temperature}), {totals['completion_tokens']} completion tokens\n"
        f"  top-{generate_config.logprobs} logprobs stored at "
        f"{totals['bytes_per_completion_token']} bytes/token"
    )
    print("The demo stops here: distillation, 4-bit export and the evaluation report are not built yet.")
    return 0
