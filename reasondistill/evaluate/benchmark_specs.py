"""Benchmark definitions: one YAML file per benchmark, read into a `BenchmarkSpec`.

A benchmark is data, not code: a YAML file names the problems (a JSONL/Parquet file beside it, a dataset
directory, or the bundled `task:arithmetic`), the fields holding question, gold answer and id, the prompt
template, how answers are compared (`reasondistill/core/grading.py`) and the default sampling. The YAML
is read with the recipe parser, so an unknown key, a wrong type or a missing field is refused with the
file and the key named. The benchmark NAME is `eval/NAME.yaml` in the working directory (benchmarks a
user adds, or a shipped one redefined) else `NAME.yaml` in the package's `benchmarks/` folder (shipped
with the problems and their license notes in `benchmarks/data/`); see docs/evaluate.md to add one.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from reasondistill.core.prompts import TASK_PREFIX, PromptRecord, load_prompts
from reasondistill.core.recipe import parse_recipe

SHIPPED_BENCHMARKS_DIR = Path(__file__).resolve().parent / "benchmarks"
"""The benchmark definitions shipped in the package (package data)."""
USER_BENCHMARKS_DIR = Path("eval")
"""The working directory's benchmark definitions: searched first, so a name there wins."""

QUESTION = "{question}"


@dataclass
class BenchmarkSpec:
    data: str = field(
        metadata={
            "help": "Problems: a .jsonl/.parquet file or dataset directory (relative paths are relative to "
            "the YAML file), or task:arithmetic."
        }
    )
    answer_type: Literal["number", "integer", "latex"] = field(
        metadata={"help": "How answers are compared: number (GSM8K), integer (AIME) or latex (MATH)."}
    )
    description: str = field(default="", metadata={"help": "One line for the report: what and from where."})
    split: str = field(default="test", metadata={"help": "Split of a dataset directory or of the task."})
    num_problems: int | None = field(
        default=None, metadata={"help": "Use the first N problems (task:arithmetic: draw N)."}
    )
    question_field: str = field(default="question", metadata={"help": "Field holding the question."})
    answer_field: str = field(default="answer", metadata={"help": "Field holding the gold answer."})
    answer_format: Literal["plain", "gsm8k"] = field(
        default="plain", metadata={"help": "gsm8k: the gold answer follows the last '#### ' of the field."}
    )
    id_field: str | None = field(default=None, metadata={"help": "Field with a unique problem id."})
    task_levels: list[int] = field(
        default_factory=lambda: [1, 2, 3], metadata={"help": "Difficulty levels of task:arithmetic."}
    )
    prompt_template: str = field(
        default=QUESTION,
        metadata={
            "help": "User turn; {question} is replaced by the question (other braces stay as written)."
        },
    )
    system_prompt: str | None = field(default=None, metadata={"help": "System message, if any."})
    think_prefill: bool = field(default=False, metadata={"help": "Open <think> in the prompt (R1-style)."})
    num_samples: int = field(default=1, metadata={"help": "Default samples per problem."})
    temperature: float = field(default=0.6, metadata={"help": "Default sampling temperature (0 = greedy)."})
    top_p: float = field(default=0.95, metadata={"help": "Default nucleus sampling."})
    max_tokens: int = field(default=4096, metadata={"help": "Default longest response."})
    # Set by load_benchmark from the file, not written in it.
    name: str = field(default="", init=False)
    path: str = field(default="", init=False)

    def __post_init__(self) -> None:
        if QUESTION not in self.prompt_template:
            raise ValueError(f"prompt_template must contain {QUESTION}, got {self.prompt_template!r}")
        if self.num_samples < 1 or self.max_tokens < 1 or (self.num_problems or 1) < 1:
            raise ValueError("num_samples, max_tokens and num_problems must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")

    def user_turn(self, question: str) -> str:
        # str.replace, not str.format: templates ask for "\boxed{}", whose braces format would choke on.
        return self.prompt_template.replace(QUESTION, question)


def available_benchmarks() -> dict[str, Path]:
    """Benchmark name -> YAML file: the shipped definitions overlaid with the working directory's eval/."""
    found = {}
    for directory in (SHIPPED_BENCHMARKS_DIR, USER_BENCHMARKS_DIR):
        found.update({path.stem: path for path in sorted(directory.glob("*.yaml"))})
    return found


def load_benchmark(name_or_path: str) -> BenchmarkSpec:
    """Read a benchmark by name (./eval/NAME.yaml, else the shipped NAME.yaml) or by its YAML file's path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        known = available_benchmarks()
        if name_or_path not in known:
            close = difflib.get_close_matches(name_or_path, list(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(
                f"unknown benchmark '{name_or_path}'{hint}; the benchmarks are {', '.join(sorted(known))} "
                f"(files in ./{USER_BENCHMARKS_DIR} and {SHIPPED_BENCHMARKS_DIR}), or give the path of a "
                "benchmark YAML (docs/evaluate.md)"
            )
        path = known[name_or_path]
    elif not path.is_file():
        raise ValueError(f"benchmark file {path} does not exist; check the path (cwd is {Path.cwd()})")
    (spec,) = parse_recipe(path, (BenchmarkSpec,))
    spec.name, spec.path = path.stem, str(path)
    if not spec.data.startswith(TASK_PREFIX):
        spec.data = str(path.parent / spec.data)  # data lives beside its definition, wherever run from
    return spec


def load_problems(spec: BenchmarkSpec, limit: int | None = None) -> list[PromptRecord]:
    """The benchmark's problems (the first `limit` of them, if given)."""
    if limit is not None and spec.num_problems is not None:
        limit = min(limit, spec.num_problems)
    data = Path(spec.data)
    if not spec.data.startswith(TASK_PREFIX) and data.parent.is_dir() and not data.exists():
        # the wheel leaves out problems whose license forbids redistribution (AIME: pyproject.toml)
        raise ValueError(
            f"benchmark {spec.path}: its problems {data} are not installed ({data.parent / 'README.md'} "
            f"says where they come from); put the file there, or copy {spec.path} to ./eval/ with `data:` "
            "pointing at your copy"
        )
    try:
        return load_prompts(
            spec.data,
            split=spec.split,
            limit=limit or spec.num_problems,
            question_field=spec.question_field,
            answer_field=spec.answer_field,
            id_field=spec.id_field,
            answer_format=spec.answer_format,
            task_levels=tuple(spec.task_levels),
        )
    except ValueError as error:  # name the definition to fix, not only the data file
        raise ValueError(f"benchmark {spec.path}: {error}") from error
