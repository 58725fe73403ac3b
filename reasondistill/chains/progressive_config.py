"""Settings of `reasondistill progressive` (teacher -> teaching assistants -> student)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

AssistantTraces = Literal["score", "sample"]


@dataclass
class ProgressiveConfig:
    teacher: str = field(metadata={"help": "The teacher model directory (or hub id)."})
    traces: str = field(metadata={"help": "The teacher's trace dataset (`reasondistill generate`)."})
    assistants: list[str] = field(
        metadata={
            "help": "Teaching assistants' starting models, largest first: model directories or hub ids "
            "(with the teacher's tokenizer)."
        }
    )
    student: str = field(metadata={"help": "The student's starting model: a model directory or hub id."})
    train_recipe: str = field(
        default="recipes/demo/train.yaml", metadata={"help": "Recipe of every distillation step."}
    )
    generate_recipe: str = field(
        default="recipes/demo/generate.yaml",
        metadata={"help": "Recipe of the assistants' traces (the one that made the teacher's)."},
    )
    evaluate_recipe: str = field(
        default="recipes/demo/evaluate.yaml", metadata={"help": "Recipe of the final evaluation."}
    )
    train_overrides: list[str] = field(
        default_factory=list,
        metadata={"help": "Overrides of the train recipe, every step: [--key, value, ...]."},
    )
    assistant_train_overrides: list[str] = field(
        default_factory=list,
        metadata={"help": "Further overrides for the assistants' steps only (e.g. a larger budget)."},
    )
    generate_overrides: list[str] = field(
        default_factory=list, metadata={"help": "Overrides of the generate recipe: [--key, value, ...]."}
    )
    evaluate_overrides: list[str] = field(
        default_factory=list, metadata={"help": "Overrides of the evaluate recipe: [--key, value, ...]."}
    )
    assistant_traces: AssistantTraces = field(
        default="score",
        metadata={
            "help": "What an assistant hands on. score: its top-k on the teacher's trace completions (the "
            "same sequences, the assistant's soft labels: TAKD); sample: its own verified traces from the "
            "generate recipe (needs an assistant that solves the prompts)."
        },
    )
    direct_baseline: bool = field(
        default=True, metadata={"help": "Also train the student directly on the teacher's traces."}
    )
    output_dir: str = field(default="outputs/progressive", metadata={"help": "Every step's output."})
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Clear and redo the steps whose directories hold runs of other settings (and traces "
            "made with other settings) instead of refusing; finished steps of unchanged settings are "
            "still reused."
        },
    )

    def __post_init__(self) -> None:
        if not self.assistants:
            raise ValueError("give at least one teaching assistant (assistants: [MODEL, ...])")
        if self.assistant_traces not in get_args(AssistantTraces):  # Literal is not checked at runtime
            raise ValueError(f"assistant_traces is score or sample, got {self.assistant_traces!r}")
