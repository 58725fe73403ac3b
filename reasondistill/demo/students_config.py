"""Settings of the demo's student comparison (recipes/demo/students.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from reasondistill.demo.factory import MODEL_SIZES, ModelSizeName

StudentStart = Literal["random", "base", "pruned"]
AFTER = "after"  # the method key that chains a method onto another's trained student
# The method key that gives a random-start student another tokenizer than the teacher's: "digit-runs"
# (demo.teacher.digit_runs_tokenizer), in a Llama of the student's shape (demo.factory.DemoArchitecture);
# "teacher-llama" is the teacher's tokenizer in that Llama: the control that tells the tokenizer's effect
# from the architecture's.
STUDENT_TOKENIZER = "student_tokenizer"
StudentTokenizer = Literal["teacher", "digit-runs", "teacher-llama"]


def default_methods() -> dict[str, dict[str, Any]]:
    return {"sft": {"kd_weight": 0.0}, "kd": {"kd_weight": 1.0}}


@dataclass
class StudentsConfig:
    start: StudentStart = field(
        default="random",
        metadata={
            "help": "Where every student starts: random (a fresh `size` model per seed), base (the "
            "pretrained base student of base_student.yaml, built once) or pruned (the teacher pruned by "
            "prune.yaml with the `prune` overrides, built once)."
        },
    )
    size: ModelSizeName = field(
        default="student", metadata={"help": f"Random-start shape, one of {list(MODEL_SIZES)}."}
    )
    prune: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Pruned start: prune.yaml fields to override, e.g. {num_layers: 2}."},
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "One student per seed."})
    methods: dict[str, dict[str, Any]] = field(
        default_factory=default_methods,
        metadata={
            "help": "Method name -> train.yaml fields it overrides (the rest is the shared recipe). "
            f"`{AFTER}: METHOD` starts it from that method's student of the same seed (e.g. SFT then "
            f"on-policy); `{STUDENT_TOKENIZER}: digit-runs` makes it a random-start Llama student of "
            "another tokenizer (with prompt_chat_template: student), `teacher-llama` one of the teacher's "
            "tokenizer. The first method is the baseline of "
            "the paired differences."
        },
    )
    test_problems: int = field(default=200, metadata={"help": "Held-out problems for exact/step accuracy."})
    test_levels: list[int] = field(default_factory=lambda: [1, 2, 3], metadata={"help": "Their levels."})
    heldout_prompts: int = field(default=128, metadata={"help": "Held-out teacher traces for CE and KD."})
    output_dir: str = field(default="outputs/demo/students", metadata={"help": "Where students are saved."})

    def __post_init__(self) -> None:
        # Literal is not checked at runtime for a config built in Python
        if self.size not in MODEL_SIZES or self.start not in get_args(StudentStart):
            raise ValueError(
                f"size={self.size!r} must be one of {list(MODEL_SIZES)} and start={self.start!r} one of "
                f"{list(get_args(StudentStart))}"
            )
        if not self.seeds or not self.methods:
            raise ValueError("need at least one seed and one method")
        seen: list[str] = []
        for method, overrides in self.methods.items():
            after = overrides.get(AFTER)
            if after is not None and after not in seen:
                raise ValueError(
                    f"method {method!r} runs after {after!r}, which is not a method listed before it "
                    f"(listed before: {seen}); list {after!r} first"
                )
            tokenizer = overrides.get(STUDENT_TOKENIZER, "teacher")
            if tokenizer not in get_args(StudentTokenizer):
                raise ValueError(
                    f"method {method!r}: {STUDENT_TOKENIZER}={tokenizer!r} is not one of "
                    f"{list(get_args(StudentTokenizer))}"
                )
            if tokenizer != "teacher" and (self.start != "random" or after is not None):
                raise ValueError(
                    f"method {method!r}: a student with its own tokenizer starts from random weights of "
                    f"that vocabulary: use start: random and no `{AFTER}`"
                )
            odd = {k: v for k, v in overrides.items() if not isinstance(v, str | int | float | bool)}
            if odd:
                raise ValueError(f"method {method!r}: override values must be scalars, got {odd}")
            seen.append(method)
