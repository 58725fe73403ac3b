"""On-policy completions for `DistillTrainer` (GKD's lmbda steps): the student samples, the teacher scores.

Student samplers (`on_policy_student_backend`), each a `StudentSampler` built from the run's
`StudentSampling` settings:

- `transformers`: `generate` on the training model itself. Any student, any device, any process count.
- `vllm`, LoRA student in one process (CPU or GPU): one vLLM engine on the student's base weights with
  LoRA enabled; at every on-policy step the current adapter is saved and hot-loaded in place
  (`LoRARequest(load_inplace=True)`), so vLLM computes the function the PEFT model computes. Only the
  adapter's few MB move per step.
- `vllm`, full fine-tuning or several processes (CPU or GPU): an in-process vLLM engine per training
  process that reloads the current weights in place before sampling
  (`reasondistill.train.vllm_weight_sync`: gathered or LoRA-merged aside, taken by vLLM's `reload_weights`).

Teacher scoring (`on_policy_teacher_backend`) is `reasondistill.core.engines`' `score`: vLLM `prompt_logprobs`
or a transformers forward, the same code that scores traces for `reasondistill generate`. Both return the
teacher's raw top-k (T_gen = 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from accelerate import Accelerator
from transformers import PreTrainedModel

from reasondistill.core.engines import (
    EngineConfig,
    ScoringEngine,
    TransformersEngine,
    end_at_eos,
    load_engine,
)
from reasondistill.train.distill_config import DistillConfig, StudentSampling
from reasondistill.train.vllm_sampling import VllmLoraSampler

ADAPTER_DIR = "on_policy_adapter"  # under output_dir: the adapter vLLM hot-loads, rewritten every step


class StudentSampler(Protocol):
    """Samples the student as it is at this step: `TransformersSampler`, `vllm_sampling.VllmLoraSampler`
    or `vllm_weight_sync.VllmWeightSyncSampler`."""

    def sample(self, model: PreTrainedModel, prompts: list[list[int]], seed: int) -> list[list[int]]:
        """One completion per prompt (token ids after the prompt, up to EOS or the length limit), drawn
        from `seed` (greedy at temperature 0)."""
        ...

    def close(self) -> None:
        """Free what the sampler holds (a vLLM engine); the training model stays."""
        ...


class TransformersSampler:
    """`generate` on the training model, in left-padded batches of `generation_batch_size` prompts;
    temperature 0 = greedy."""

    def __init__(self, sampling: StudentSampling, pad_token_id: int):
        self.sampling, self.pad_token_id = sampling, pad_token_id

    def close(self) -> None:
        """Nothing to stop: it samples with the training model."""

    @torch.no_grad()
    def sample(self, model: PreTrainedModel, prompts: list[list[int]], seed: int) -> list[list[int]]:
        device = model.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)  # a function of the seed, whatever else drew from torch's RNG
            size = self.sampling.generation_batch_size
            return [
                completion
                for start in range(0, len(prompts), size)
                for completion in self._generate(model, prompts[start : start + size])
            ]

    def _generate(self, model: PreTrainedModel, prompts: list[list[int]]) -> list[list[int]]:
        device = model.device
        width = max(map(len, prompts))
        input_ids = torch.tensor([[self.pad_token_id] * (width - len(p)) + p for p in prompts], device=device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        greedy = self.sampling.temperature == 0
        was_training = model.training
        model.eval()
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=not greedy,
            temperature=None if greedy else self.sampling.temperature,
            top_k=None if greedy else 0,
            top_p=None if greedy else 1.0,
            max_new_tokens=self.sampling.max_new_tokens,
            pad_token_id=self.pad_token_id,
        )[:, width:]
        model.train(was_training)
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        return [end_at_eos(tokens, eos_ids) for tokens in generated.tolist()]


def load_student_sampler(
    model, args: DistillConfig, accelerator: Accelerator, tokenizer, max_model_len: int | None
) -> StudentSampler:
    """The sampler `on_policy_student_backend` asks for, or a clear error where it cannot run."""
    sampling = args.student_sampling()
    if args.on_policy_student_backend == "transformers":
        return TransformersSampler(sampling, tokenizer.pad_token_id)
    if hasattr(model, "peft_config") and accelerator.num_processes == 1:
        return VllmLoraSampler(model, sampling, Path(args.output_dir) / ADAPTER_DIR, max_model_len)
    from reasondistill.train.vllm_weight_sync import VllmWeightSyncSampler  # imports TRL's vLLM module

    return VllmWeightSyncSampler(model, sampling, accelerator, tokenizer, max_model_len)


def load_teacher_scorer(
    args: DistillConfig, accelerator: Accelerator, dtype: torch.dtype, max_model_len: int | None
) -> ScoringEngine:
    """The teacher engine that scores on-policy samples with its top `on_policy_topk` logprobs, in `dtype`
    (the student's: vLLM's "auto" would pick bfloat16 for a float32 checkpoint on CPU)."""
    if args.on_policy_teacher_backend == "vllm" and accelerator.num_processes > 1:
        raise ValueError(
            "on_policy_teacher_backend: vllm runs in single-process training (each process would start its "
            "engine on the same device); use on_policy_teacher_backend: transformers with several processes"
        )
    config = EngineConfig(
        teacher=args.teacher_model,
        backend=args.on_policy_teacher_backend,
        dtype=str(dtype).removeprefix("torch."),
        max_model_len=max_model_len,
        gpu_memory_utilization=args.on_policy_vllm_gpu_memory_utilization,
        enforce_eager=args.on_policy_vllm_enforce_eager,
        logprobs=args.on_policy_topk,
        seed=args.seed,
    )
    if config.backend == "vllm":
        return load_engine(config, scoring=True)
    return TransformersEngine(config, batch_size=args.generation_batch_size(), device=accelerator.device)
