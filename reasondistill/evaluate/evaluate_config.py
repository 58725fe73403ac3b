"""Settings of `reasondistill evaluate`: models, benchmarks, sampling overrides, engine, output."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from reasondistill.core.engines import EngineConfig, check_sampling


@dataclass
class EvaluateConfig(EngineConfig):
    # Engine fields that name one teacher make no sense for a list of models: hidden from recipes.
    teacher: str = field(default="", init=False)
    teacher_revision: str | None = field(default=None, init=False)
    logprobs: int = field(default=1, init=False)  # the engines always return top-k; 1 is the cheapest
    # what to evaluate
    model: list[str] = field(
        default_factory=list,
        metadata={"help": "Model directories (or hub ids) to evaluate, one or more: --model A B."},
    )
    model_name: list[str] | None = field(
        default=None, metadata={"help": "Labels in the report, one per model (default: directory names)."}
    )
    benchmark: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Benchmarks, by name (eval/NAME.yaml: gsm8k, math500, aime24, arithmetic) or path."
        },
    )
    num_problems: int | None = field(
        default=None, metadata={"help": "Evaluate only the first N problems of each benchmark."}
    )
    # sampling: unset fields take each benchmark's defaults
    num_samples: int | None = field(
        default=None, metadata={"help": "Samples per problem (pass@1 averages over them; maj@k votes)."}
    )
    temperature: float | None = field(default=None, metadata={"help": "Sampling temperature (0 = greedy)."})
    top_p: float | None = field(default=None, metadata={"help": "Nucleus sampling."})
    max_tokens: int | None = field(
        default=None, metadata={"help": "Longest response; longer ones are cut and count as truncated."}
    )
    batch_prompts: int = field(default=256, metadata={"help": "Prompts sent to the engine at once."})
    # metrics and report
    bootstrap_samples: int = field(
        default=10_000, metadata={"help": "Bootstrap resamples of the problems for the 95% intervals."}
    )
    traces: str | None = field(
        default=None,
        metadata={"help": "Trace dataset to check for n-gram overlap with each benchmark (in the report)."},
    )
    ngram_size: int = field(default=8, metadata={"help": "Word n-gram length of the overlap check."})
    divergence_teacher: str | None = field(
        default=None,
        metadata={
            "help": "Teacher model directory (same tokenizer): the report shows where each full-precision "
            "transformers model diverges from it, token by token (KL(teacher || student))."
        },
    )
    divergence_examples: int = field(
        default=4, metadata={"help": "Problems drawn token by token in the divergence picture."}
    )
    divergence_problems: int = field(
        default=50, metadata={"help": "Problems (first N evaluated) behind the divergence by kind of token."}
    )
    divergence_max_tokens: int = field(
        default=512,
        metadata={"help": "Longest greedy solution in the divergence section (also <= max_tokens)."},
    )
    output_dir: str = field(
        default="outputs/eval", metadata={"help": "Report, results.json and per-sample JSONL go here."}
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Clear output_dir first when it holds an evaluation (else other settings are refused)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model_name is not None and len(self.model_name) != len(self.model):
            raise ValueError(
                f"model_name has {len(self.model_name)} labels for {len(self.model)} models: one per model"
            )
        positive = {"num_problems": self.num_problems, "num_samples": self.num_samples}
        positive |= {"max_tokens": self.max_tokens, "batch_prompts": self.batch_prompts}
        positive |= {"bootstrap_samples": self.bootstrap_samples, "ngram_size": self.ngram_size}
        positive |= {"divergence_examples": self.divergence_examples}
        positive |= {"divergence_problems": self.divergence_problems}
        positive |= {"divergence_max_tokens": self.divergence_max_tokens}
        if bad := [name for name, value in positive.items() if value is not None and value < 1]:
            raise ValueError(f"{', '.join(bad)} must be at least 1")
        check_sampling(self.temperature, self.top_p)

    def engine_config(self, model: str) -> EngineConfig:
        """The engine settings for one of the models."""
        return EngineConfig(
            **{f.name: getattr(self, f.name) for f in fields(EngineConfig)} | {"teacher": model}
        )
