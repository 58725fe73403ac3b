"""Settings of the demo's pretrained base student (recipes/demo/base_student.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from reasondistill.demo.factory import MODEL_SIZES, ModelSizeName
from reasondistill.demo.lm_training import build_digest


@dataclass
class BaseStudentConfig:
    """How the demo's base student is pretrained. Changing any field but `cache_dir` and `eval_every`
    (or the tokenizer) builds a new one in a new directory."""

    cache_dir: str = field(
        default=".cache/reasondistill", metadata={"help": "Where built demo models are kept."}
    )
    size: ModelSizeName = field(
        default="student",
        metadata={"help": f"Model shape, one of {sorted(MODEL_SIZES)}; the students' size by default."},
    )
    levels: list[int] = field(
        default_factory=lambda: [1, 2, 3],
        metadata={"help": "Task difficulty levels whose questions make up the text."},
    )
    train_problems: int = field(
        default=20000, metadata={"help": "Training-split problems whose questions are the training text."}
    )
    steps: int = field(default=300, metadata={"help": "Optimizer steps."})
    batch_tokens: int = field(default=4096, metadata={"help": "Tokens per batch, padding included."})
    learning_rate: float = field(default=3e-3, metadata={"help": "Peak AdamW learning rate."})
    warmup_steps: int = field(default=30, metadata={"help": "Linear warm-up, then cosine decay to 10%."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    eval_problems: int = field(
        default=500, metadata={"help": "Test-split questions for the held-out LM loss."}
    )
    eval_every: int = field(default=100, metadata={"help": "Steps between learning-curve points."})
    seed: int = field(default=0, metadata={"help": "Seeds data, initialisation and batching."})

    def __post_init__(self) -> None:
        if self.size not in MODEL_SIZES:  # Literal is not checked at runtime
            raise ValueError(f"size={self.size!r} is not one of {sorted(MODEL_SIZES)}")
        if self.steps < 1 or self.batch_tokens < 64 or self.train_problems < 1 or self.eval_problems < 1:
            raise ValueError(
                "steps, batch_tokens, train_problems and eval_problems must be positive (batch_tokens >= 64)"
            )
        if self.warmup_steps < 0 or self.eval_every < 1:
            raise ValueError("warmup_steps must be >= 0 and eval_every >= 1")

    def directory(self, tokenizer_id: str) -> Path:
        """Cache directory keyed by every field that changes the result and by the tokenizer.

        `tokenizer_id` names the tokenizer's exact content (`base_student.tokenizer_fingerprint`):
        the base student is only usable by students that share its tokenizer.
        """
        return Path(self.cache_dir) / f"demo-base-{self.size}-{build_digest(self, tokenizer=tokenizer_id)}"
