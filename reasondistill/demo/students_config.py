"""Settings of the demo's student comparison (recipes/demo/students.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field

from reasondistill.demo.factory import MODEL_SIZES, ModelSizeName


@dataclass
class StudentsConfig:
    size: ModelSizeName = field(
        default="student", metadata={"help": f"Student shape, one of {list(MODEL_SIZES)}."}
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "One student per seed."})
    kd_weights: dict[str, float] = field(
        default_factory=lambda: {"sft": 0.0, "kd": 1.0},
        metadata={"help": "Method name -> kd_weight; everything else comes from the train recipe."},
    )
    test_problems: int = field(default=200, metadata={"help": "Held-out problems for exact/step accuracy."})
    test_levels: list[int] = field(default_factory=lambda: [1, 2, 3], metadata={"help": "Their levels."})
    heldout_prompts: int = field(default=128, metadata={"help": "Held-out teacher traces for CE and KD."})
    output_dir: str = field(default="outputs/demo/students", metadata={"help": "Where students are saved."})

    def __post_init__(self) -> None:
        if self.size not in MODEL_SIZES:  # Literal is not checked at runtime
            raise ValueError(f"size={self.size!r} is not one of {list(MODEL_SIZES)}")
        if not self.seeds or not self.kd_weights:
            raise ValueError("need at least one seed and one method")
