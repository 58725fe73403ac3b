"""Settings of the demo teacher's build (recipes/demo/teacher.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from reasondistill.core.arithmetic_task import SOLUTION_STYLES, Problem, generate_problems
from reasondistill.demo.factory import MODEL_SIZES, ModelSizeName
from reasondistill.demo.lm_training import BATCH_ORDER_HELP, BatchOrder, build_digest, check_batch_order


@dataclass
class TeacherConfig:
    """How the demo teacher is built. Changing any field builds a new teacher in a new directory."""

    cache_dir: str = field(
        default=".cache/reasondistill", metadata={"help": "Where built demo models are kept."}
    )
    size: ModelSizeName = field(
        default="teacher", metadata={"help": f"Model shape, one of {sorted(MODEL_SIZES)}."}
    )
    levels: list[int] = field(
        default_factory=lambda: [1, 2, 3],
        metadata={"help": "Task difficulty levels to train and evaluate on."},
    )
    solution_style: Literal["fixed", "varied"] = field(
        default="fixed",
        metadata={
            "help": "fixed: one worked solution per problem (a nearly certain teacher); varied: additions "
            "in either order and varied wording (core/arithmetic_task.py), a less certain teacher."
        },
    )
    vocab_size: int = field(default=512, metadata={"help": "Tokenizer vocabulary, special tokens included."})
    train_problems: int = field(default=20000, metadata={"help": "Distinct training problems drawn."})
    steps: int = field(default=600, metadata={"help": "Optimizer steps."})
    batch_tokens: int = field(
        default=4096,
        metadata={"help": "Tokens per step: padding included by_length, real tokens when mixed."},
    )
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak AdamW learning rate."})
    warmup_steps: int = field(default=100, metadata={"help": "Linear warm-up, then cosine decay to 10%."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    eval_problems: int = field(
        default=300, metadata={"help": "Held-out test problems for the accuracy check."}
    )
    eval_every: int = field(default=250, metadata={"help": "Steps between learning-curve evaluations."})
    batch_order: BatchOrder = field(
        default="mixed",
        metadata={"help": BATCH_ORDER_HELP},
    )
    seed: int = field(default=0, metadata={"help": "Seeds data, initialisation and batching."})

    def __post_init__(self) -> None:
        if self.size not in MODEL_SIZES:  # Literal is not checked at runtime
            raise ValueError(f"size={self.size!r} is not one of {sorted(MODEL_SIZES)}")
        check_batch_order(self.batch_order)
        if self.solution_style not in SOLUTION_STYLES:
            raise ValueError(f"solution_style={self.solution_style!r} is not one of {SOLUTION_STYLES}")
        if self.steps < 1 or self.batch_tokens < 64 or self.train_problems < 1:
            raise ValueError("steps, batch_tokens and train_problems must be positive (batch_tokens >= 64)")

    def problems(self, split: str, count: int) -> list[Problem]:
        """`count` problems of `split` as the teacher learns them: its levels, seed and solution style."""
        return generate_problems(split, count, self.levels, self.seed, self.solution_style)

    def directory(self) -> Path:
        """Cache directory keyed by every field that changes the result."""
        return Path(self.cache_dir) / f"demo-{self.size}-{build_digest(self)}"
