"""`reasondistill demo`: the whole pipeline on a laptop CPU with models the project builds itself.

Stages so far: build (or reuse) the demo teacher. Each later stage (traces, distillation, 4-bit,
evaluation report) appends itself here as it lands, reading the previous stage's artifact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from reasondistill.demo_models.teacher import BUILD_INFO_FILE, TeacherConfig, train_teacher
from reasondistill.recipe import parse_recipe


def run_demo(recipe_path: Path, overrides: list[str]) -> int:
    (config,) = parse_recipe(recipe_path, (TeacherConfig,), overrides)
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"[1/1] demo teacher ({recipe_path})")
    teacher_dir = train_teacher(config)
    info = json.loads((teacher_dir / BUILD_INFO_FILE).read_text())
    print(f"teacher: {teacher_dir}\n"
          f"  parameters: {info['parameters'] / 1e6:.2f}M\n"
          f"  held-out accuracy (greedy, {info['heldout_problems']} test problems, levels "
          f"{info['config']['levels']}): {info['heldout_accuracy']:.1%}\n"
          f"  built in {info['build_seconds']} s")
    print("The demo stops here: trace generation, distillation, 4-bit export and the evaluation report "
          "are not built yet.")
    return 0
