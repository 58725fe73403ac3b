"""Settings of `reasondistill prune`: the model, the sizes to keep, and the calibration sequences."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, get_args

DepthCriterion = Literal["kl", "cosine"]


@dataclass
class PruneConfig:
    # what runs recorded before a field existed did, where its default does otherwise (core/recipe.py,
    # recipe_changes): `prune` chose layers by cosine distance before depth_criterion
    BEFORE_ADDED: ClassVar[dict[str, object]] = {"depth_criterion": "cosine"}

    model: str = field(
        metadata={"help": "Full-precision Qwen2, Qwen3, Llama or Gemma 3 model directory to prune."}
    )
    output_dir: str = field(default="outputs/prune", metadata={"help": "The pruned model directory."})
    num_layers: int | None = field(
        default=None, metadata={"help": "Decoder layers to keep (depth pruning); null keeps all."}
    )
    depth_criterion: DepthCriterion = field(
        default="kl",
        metadata={
            "help": "Which layer goes in each depth round: kl (the one whose removal moves the next-token "
            "distribution on the model's own greedy continuations least, by KL on its top-20 + tail) or "
            "cosine (the one that moves the final hidden states least; block importance)."
        },
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
        if self.depth_criterion not in get_args(DepthCriterion):  # Literal is not checked at runtime
            raise ValueError(
                f"depth_criterion must be one of {get_args(DepthCriterion)}, got {self.depth_criterion!r}"
            )
        if self.depth_criterion == "kl" and self.calibration_tokens == 0 and self.num_layers is not None:
            raise ValueError(
                "depth_criterion: kl scores the model's own continuations, and calibration_tokens is 0; "
                "set calibration_tokens (e.g. 128) or depth_criterion: cosine"
            )
        if min(self.num_calibration, self.batch_size) < 1 or self.calibration_tokens < 0:
            raise ValueError(
                "num_calibration and batch_size must be at least 1, calibration_tokens at least 0"
            )
