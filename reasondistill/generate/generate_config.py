"""Settings of `reasondistill generate`: teacher engine, prompts, sampling, filtering, output."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

from reasondistill.core.engines import EngineConfig, check_sampling
from reasondistill.core.grading import AnswerType
from reasondistill.core.prompts import AnswerFormat

DEFAULT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

# Fields that only decide where or how fast the work runs; changing them never changes a record.
NON_SEMANTIC_FIELDS = {
    "output_dir",
    "overwrite",
    "repair",
    "num_workers",
    "worker_index",
    "gpu_memory_utilization",
    "enforce_eager",
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "batch_prompts",
}


@dataclass
class GenerateConfig(EngineConfig):
    # prompts
    prompts: str = field(
        default="task:arithmetic",
        metadata={
            "help": "task:arithmetic (bundled), a .jsonl/.parquet file, a Hugging Face dataset directory "
            "or hub id."
        },
    )
    prompt_subset: str | None = field(
        default=None, metadata={"help": "Hub dataset configuration, e.g. main."}
    )
    prompt_split: str = field(
        default="train", metadata={"help": "Split to read (the task has train and test)."}
    )
    num_prompts: int | None = field(
        default=None, metadata={"help": "Use the first N prompts (task: draw N)."}
    )
    question_field: str = field(default="question", metadata={"help": "Column holding the question."})
    answer_field: str = field(default="answer", metadata={"help": "Column holding the gold answer."})
    answer_format: AnswerFormat = field(
        default="plain", metadata={"help": "gsm8k: the gold answer follows the last '#### ' of the column."}
    )
    id_field: str | None = field(
        default=None, metadata={"help": "Column with a unique prompt id (default: row)."}
    )
    task_levels: list[int] = field(
        default_factory=lambda: [1, 2, 3],
        metadata={"help": "Difficulty levels when prompts is task:arithmetic."},
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "System message, if the teacher wants one."}
    )
    instruction: str | None = field(
        default=DEFAULT_INSTRUCTION, metadata={"help": "Appended to each question; null for none."}
    )
    think_prefill: bool = field(default=False, metadata={"help": "Open <think> in the prompt (R1-style)."})
    # scoring mode
    mode: Literal["sample", "score"] = field(
        default="sample",
        metadata={
            "help": "sample: the teacher writes completions; score: the teacher scores existing ones "
            "(completion_field) with vLLM prompt_logprobs."
        },
    )
    completion_field: str | None = field(
        default=None,
        metadata={
            "help": "score mode: column with completions: text, or token ids (a trace dataset's "
            "completion_token_ids, scored exactly as stored)."
        },
    )
    # sampling
    num_samples: int = field(default=1, metadata={"help": "Completions sampled per prompt."})
    temperature: float = field(default=0.6, metadata={"help": "Sampling temperature (0 = greedy)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling."})
    max_tokens: int = field(
        default=4096, metadata={"help": "Longest completion; longer ones end as 'length'."}
    )
    # verification and filtering
    answer_type: AnswerType = field(
        default="latex", metadata={"help": "How answers are compared (reasondistill/core/grading.py)."}
    )
    keep: Literal["correct", "all"] = field(
        default="correct", metadata={"help": "correct: rejection sampling, keep verified traces only."}
    )
    max_samples_per_prompt: int | None = field(
        default=None, metadata={"help": "Keep at most this many traces per prompt."}
    )
    drop_truncated: bool = field(default=True, metadata={"help": "Drop completions that hit max_tokens."})
    max_completion_tokens: int | None = field(
        default=None, metadata={"help": "Drop kept traces longer than this."}
    )
    # output
    output_dir: str = field(default="outputs/traces", metadata={"help": "Trace dataset directory."})
    shard_size: int = field(default=256, metadata={"help": "Prompts per shard (the unit of resume)."})
    batch_prompts: int = field(default=256, metadata={"help": "Prompts sent to the engine at once."})
    num_workers: int = field(default=1, metadata={"help": "Independent workers sharing the shards."})
    worker_index: int = field(default=0, metadata={"help": "This worker's index in [0, num_workers)."})
    overwrite: bool = field(
        default=False,
        metadata={"help": "Delete an existing dataset made with different settings instead of refusing."},
    )
    repair: bool = field(
        default=False,
        metadata={
            "help": "Delete shards whose bytes no longer match the checksum recorded when they were written "
            "(named by the error a plain re-run gives) and regenerate them with the missing ones; intact "
            "shards are kept byte for byte."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_samples < 1 or self.max_tokens < 1 or self.shard_size < 1 or self.batch_prompts < 1:
            raise ValueError("num_samples, max_tokens, shard_size and batch_prompts must be at least 1")
        if not 0 <= self.worker_index < self.num_workers:
            raise ValueError(
                f"worker_index must be in [0, num_workers={self.num_workers}), got {self.worker_index}"
            )
        check_sampling(self.temperature, self.top_p)
        if self.mode == "score" and not self.completion_field:
            raise ValueError(
                "mode: score needs completion_field, the column holding the completions to score"
            )

    def prompt_render(self) -> dict:
        """The `render_prompt` settings, as `TraceInfo.prompt_render` records them."""
        return {
            "system_prompt": self.system_prompt,
            "instruction": self.instruction,
            "think_prefill": self.think_prefill,
        }

    def fingerprint(self) -> str:
        """Hash of every setting that changes the records; resume refuses a dataset with another."""
        semantic = {k: v for k, v in asdict(self).items() if k not in NON_SEMANTIC_FIELDS}
        return hashlib.sha256(json.dumps(semantic, sort_keys=True).encode()).hexdigest()[:16]
