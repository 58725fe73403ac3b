"""Settings of `reasondistill prune`: the model, the sizes to keep, and the calibration sequences."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PruneConfig:
    model: str = field(
        metadata={"help": "Full-precision Qwen2, Qwen3, Llama or Gemma 3 model directory to prune."}
    )
    output_dir: str = field(default="outputs/prune", metadata={"help": "The pruned model directory."})
    num_layers: int | None = field(
        default=None, metadata={"help": "Decoder layers to keep (depth pruning); null keeps all."}
    )
    intermediate_size: int | None = field(
        default=None,
        metadata={
            "help": "MLP channels to keep per layer (width pruning), a multiple of 32; null keeps all."
        },
    )
    calibration_prompts: str = field(
        default="task:arithmetic",
        metadata={"help": "Prompt source for calibration (task:arithmetic, .jsonl/.parquet, dataset dir)."},
    )
    question_field: str = field(
        default="question", metadata={"help": "Question column of the prompt source."}
    )
    answer_field: str = field(default="answer", metadata={"help": "Answer column of the prompt source."})
    num_calibration: int = field(default=64, metadata={"help": "Calibration sequences."})
    calibration_tokens: int = field(
        default=128, metadata={"help": "Greedy tokens the model adds to each prompt (0: prompts alone)."}
    )
    batch_size: int = field(default=16, metadata={"help": "Calibration sequences per forward pass."})
    seed: int = field(default=0, metadata={"help": "Seed of the bundled task's prompts."})
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Clear output_dir first when it holds a pruned model (else other settings are refused)."
        },
    )

    def __post_init__(self) -> None:
        if self.num_layers is not None and self.num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {self.num_layers}")
        if self.intermediate_size is not None and (
            self.intermediate_size < 32 or self.intermediate_size % 32
        ):
            raise ValueError(
                f"intermediate_size must be a positive multiple of 32 (bitsandbytes' CPU kernels need it), "
                f"got {self.intermediate_size}"
            )
        if min(self.num_calibration, self.batch_size) < 1 or self.calibration_tokens < 0:
            raise ValueError(
                "num_calibration and batch_size must be at least 1, calibration_tokens at least 0"
            )
