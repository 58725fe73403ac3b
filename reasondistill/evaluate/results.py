"""What `reasondistill evaluate` returns and writes: one `RunResult` per (model, benchmark)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ModelSpec:
    """A model to evaluate: its directory (or hub id, or GGUF file) and its label in the report."""

    path: str
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or Path(self.path).name


@dataclass
class RunResult:
    """One model on one benchmark. `metrics` maps "pass@k" / "maj@k" to value, ci_low, ci_high (95%)."""

    model: str
    model_path: str
    size_bytes: int | None
    benchmark: str
    description: str
    backend: str
    sampling: dict  # n, temperature, top_p, max_tokens, seed (of the samples and of the bootstrap)
    bootstrap_samples: int
    num_problems: int
    metrics: dict[str, dict[str, float]]
    response_tokens: dict[str, float]
    truncation_rate: float
    failures: dict[str, int]
    elapsed_s: float
    samples: list[dict] = field(repr=False)  # one record per response; stored as JSONL, not in the JSON

    def summary(self) -> dict:
        """Everything but the per-sample records."""
        return {key: value for key, value in asdict(self).items() if key != "samples"}
