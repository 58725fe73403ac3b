"""`DistillTrainer`: TRL's `SFTTrainer` with the loss swapped for CE + T^2 * divergence to a stored top-k.

What differs from `SFTTrainer`, and nothing else:

- the student's forward gets a distillation head (`add_distill_head`): given `topk_ids`/`topk_logprobs`
  it runs the backbone and returns `reasondistill.train.losses.distillation_loss` on the final hidden states,
  chunked so [tokens, vocab] logits never exist at once. The loss lives inside `forward` so DDP, FSDP
  and DeepSpeed see an ordinary forward pass;
- `compute_loss` passes the loss settings and the accumulated batch's token counts (CE: label tokens, as
  transformers counts; KD: label tokens that have teacher targets, counted here) so gradient
  accumulation and multi-process runs give the loss of the whole batch, and logs the two terms (`ce`,
  `kd`) of that whole batch, so that the logged loss = ce_weight * ce + kd_weight * kd;
- on-policy steps (GKD's lmbda): for that share of optimizer steps, every micro-batch's completions are
  replaced by ones the student samples, scored by the live teacher (`reasondistill.train.on_policy`:
  transformers or vLLM on either side; one sampling call per optimizer step); only the divergence trains
  on them;
- it counts its compute (`TrainingCompute`): label tokens trained, and the seconds spent sampling the
  student and scoring with the teacher in on-policy steps;
- `train_sampling_strategy: batch_rebalance` shuffles with the run's `data_seed` or `seed` (Trainer leaves
  the sampler at its fixed default, so every seed would train on the same batches).
"""

from __future__ import annotations

import functools
import itertools
import time
import types
from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import ModelOutput
from transformers.trainer_pt_utils import BatchRebalanceSampler
from trl import SFTTrainer

from reasondistill.core.engines import ScoringEngine
from reasondistill.train.distill_config import DistillConfig
from reasondistill.train.distill_data import OnPolicyPrompts, TopKCollator
from reasondistill.train.losses import LossSettings, distillation_loss
from reasondistill.train.losses.distill import IGNORE_INDEX
from reasondistill.train.on_policy import StudentSampler, load_student_sampler, load_teacher_scorer


@dataclass
class DistillOutput(ModelOutput):
    """Forward output of a student called with teacher targets; `ce` and `kd` are the unweighted terms."""

    loss: torch.Tensor | None = None
    ce: torch.Tensor | None = None
    kd: torch.Tensor | None = None


def add_distill_head(model: PreTrainedModel, chunk_size: int) -> None:
    """Patch `model.forward`: with `topk_ids` given it returns DistillOutput, otherwise it is unchanged.

    Extra forward arguments: `labels` [B, L], `topk_ids` [B, L, K], `topk_logprobs` [B, L, K] (aligned as
    distill_data.TopKCollator builds them; shifted by one here), `loss_settings`, `num_items_in_batch`,
    `num_kd_items_in_batch`. `chunk_size`: rows per lm_head chunk. Add it to the model PEFT wraps, if any.
    """
    original_forward = model.forward

    @functools.wraps(type(model).forward)  # `generate` checks its kwargs against this signature
    def forward(
        self,
        *inputs,
        topk_ids=None,
        topk_logprobs=None,
        labels=None,
        prompt_lengths=None,
        loss_settings: LossSettings | None = None,
        num_items_in_batch=None,
        num_kd_items_in_batch=None,
        **kwargs,
    ):
        if topk_ids is None:
            if labels is not None:
                kwargs["labels"] = labels
            return original_forward(*inputs, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*inputs, **kwargs).last_hidden_state[:, :-1]  # [B, L-1, H]
        head = self.get_output_embeddings()
        loss = distillation_loss(
            hidden,
            head.weight,
            labels[:, 1:],
            topk_ids[:, 1:],
            topk_logprobs[:, 1:],
            lm_head_bias=head.bias,
            settings=loss_settings,
            num_items_in_batch=num_items_in_batch,
            num_kd_items_in_batch=num_kd_items_in_batch,
            chunk_size=chunk_size,
        )
        return DistillOutput(loss=loss.total, ce=loss.ce, kd=loss.kd)

    model.forward = types.MethodType(forward, model)


@dataclass
class TrainingCompute:
    """What a run spent, counted on this process (saved as OUTPUT_DIR/compute.json)."""

    student_tokens: int = 0  # label tokens trained on (traces and on-policy samples)
    on_policy_tokens: int = 0  # of which the student sampled itself
    on_policy_steps: int = 0
    student_sampling_seconds: float = 0.0  # on-policy: the student generating
    teacher_scoring_seconds: float = 0.0  # on-policy: the teacher's top-k on those samples
    train_seconds: float = 0.0  # the whole `train` call, both of the above included


def token_counts(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(label tokens, label tokens with teacher targets) of a collated batch, after the causal shift."""
    labelled = batch["labels"][:, 1:] != IGNORE_INDEX
    targeted = labelled & torch.isfinite(batch["topk_logprobs"][:, 1:, 0])
    return labelled.sum(), targeted.sum()


class DistillTrainer(SFTTrainer):
    """SFTTrainer whose loss is w_ce * CE + w_kd * T^2 * divergence against a stored teacher top-k."""

    def __init__(
        self,
        model: PreTrainedModel,
        args: DistillConfig,
        data_collator: TopKCollator,
        gen_temperature: float = 1.0,
        on_policy_prompts: OnPolicyPrompts | None = None,
        **kwargs,
    ):
        super().__init__(model=model, args=args, data_collator=data_collator, **kwargs)
        add_distill_head(
            self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model,
            args.loss_chunk_size,
        )
        # Our loss divides by the accumulated batch's token counts itself (Trainer then skips its
        # division by the accumulation steps).
        self.model_accepts_loss_kwargs = True
        self.loss_settings = args.loss_settings(gen_temperature)
        self.on_policy_loss_settings: LossSettings | None = None
        self.on_policy_prompts = on_policy_prompts
        self.student_sampler: StudentSampler | None = None
        self.teacher_scorer: ScoringEngine | None = None
        if args.lmbda > 0:
            # the teacher's raw logprobs (T_gen = 1); only the divergence trains on the student's own
            # samples (CE on them would reinforce its mistakes)
            self.on_policy_loss_settings = replace(self.loss_settings, gen_temperature=1.0, ce_weight=0.0)
            if args.on_policy_topk is None:
                args.on_policy_topk = data_collator.k
            elif args.on_policy_topk != data_collator.k:
                raise ValueError(
                    f"on_policy_topk={args.on_policy_topk} but the traces store top-{data_collator.k}: a "
                    f"batch holds one k, so set on_policy_topk: {data_collator.k}"
                )
            positions = self.model.config.max_position_embeddings
            max_model_len = (
                None
                if args.max_length is None
                else min(args.max_length + args.on_policy_max_new_tokens, positions)
            )
            self.teacher_scorer = load_teacher_scorer(args, self.accelerator, self.model.dtype, max_model_len)
            self.student_sampler = load_student_sampler(
                self.model, args, self.accelerator, self.processing_class, max_model_len
            )
        self._num_kd_items_in_batch = None
        self._on_policy_step = False
        self._step_terms: list[torch.Tensor] = []  # (ce, kd) [2] of each micro-batch of this step so far
        self._step_micro_batches = 0
        self.compute = TrainingCompute()

    # ----- batches: the sampler's seed, on-policy replacement, token counts of the accumulated batch -----

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, BatchRebalanceSampler):
            # it shuffles with its own generator, seeded 42 unless told
            sampler.seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return sampler

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        # torch's global RNG: Trainer checkpoints it, so a resumed run makes the same choices
        self._on_policy_step = self.args.lmbda > 0 and torch.rand(()).item() < self.args.lmbda
        if self._on_policy_step and batches:
            batches = self.on_policy_batches(batches)
            num_items = self._get_num_items_in_batch(batches, device)
        counts = [token_counts(batch) for batch in batches]
        labelled = int(sum(c[0] for c in counts))  # one host sync per step: cheap beside the step
        self.compute.student_tokens += labelled
        if self._on_policy_step:
            self.compute.on_policy_steps += 1
            self.compute.on_policy_tokens += labelled
        kd_items = sum(c[1] for c in counts) if batches else None
        if kd_items is not None:
            kd_items = kd_items.to(device)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                kd_items = self.accelerator.gather(kd_items).sum()
        self._num_kd_items_in_batch = kd_items
        self._step_terms, self._step_micro_batches = [], len(batches)
        return batches, num_items

    def on_policy_batches(self, batches: list[dict]) -> list[dict]:
        """The micro-batches' prompts, with completions the student samples now and the teacher's top-k.

        One sampler call for the whole accumulated batch: vLLM syncs the weights (or loads the adapter)
        once per optimizer step and generates for all its prompts together. With `on_policy_prompts` the
        step's prompts are drawn from those instead, as many as the batches hold."""
        prompts = [
            [batch["input_ids"][b, :n].tolist() for b, n in enumerate(batch["prompt_lengths"].tolist())]
            for batch in batches
        ]
        # the teacher reads its own chat template's prompt (prompt_chat_template: student re-renders ours)
        teacher_prompts = [
            prompt
            for batch, group in zip(batches, prompts, strict=True)
            for prompt in batch.get("teacher_prompt_token_ids", group)
        ]
        if self.on_policy_prompts is not None:
            # from torch's global RNG (checkpoints restore it), offset per process so that processes
            # draw different prompts as they read different trace batches
            draw = torch.Generator().manual_seed(
                int(torch.randint(2**31 - 1, ())) + self.accelerator.process_index * 2**32
            )
            count = len(self.on_policy_prompts.student)
            drawn = torch.randint(count, (len(teacher_prompts),), generator=draw).tolist()
            teacher_prompts = [self.on_policy_prompts.teacher[i] for i in drawn]
            chosen = iter(self.on_policy_prompts.student[i] for i in drawn)
            prompts = [[next(chosen) for _ in group] for group in prompts]
        flat_prompts = [prompt for group in prompts for prompt in group]
        # torch's global RNG (checkpoints restore it) draws the same on every process: each process gets
        # its own range, so that a prompt on two processes gets two samples
        seed = int(torch.randint(2**31 - 1, ())) + self.accelerator.process_index * 2**32
        start = time.perf_counter()
        completions = self.student_sampler.sample(
            self.accelerator.unwrap_model(self.model), flat_prompts, seed
        )
        self.compute.student_sampling_seconds += time.perf_counter() - start
        start = time.perf_counter()
        scores = self.teacher_scorer.score(teacher_prompts, completions)  # raw logprobs: gen_temperature 1
        self.compute.teacher_scoring_seconds += time.perf_counter() - start
        records = [
            {
                "prompt_token_ids": prompt,
                "completion_token_ids": completion,
                "topk_ids": score.topk_ids,
                "topk_logprobs": score.topk_logprobs,
            }
            for prompt, completion, score in zip(flat_prompts, completions, scores, strict=True)
        ]
        ends = itertools.accumulate(len(group) for group in prompts)
        return [
            self.data_collator(records[end - len(group) : end])
            for group, end in zip(prompts, ends, strict=True)
        ]

    def train(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return super().train(*args, **kwargs)
        finally:
            self.compute.train_seconds += time.perf_counter() - start
            # vLLM engines hold memory (KV cache) until shut down
            for engine in (self.student_sampler, self.teacher_scorer):
                if engine is not None:
                    engine.close()

    # ----- loss -----

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        on_policy = mode == "train" and self._on_policy_step
        inputs = {k: v for k, v in inputs.items() if k != "teacher_prompt_token_ids"}
        outputs = model(
            **inputs,
            loss_settings=self.on_policy_loss_settings if on_policy else self.loss_settings,
            num_items_in_batch=num_items_in_batch,
            num_kd_items_in_batch=self._num_kd_items_in_batch if num_items_in_batch is not None else None,
        )
        loss, terms = outputs.loss, torch.stack([outputs.ce, outputs.kd]).detach()  # terms [2]
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # the counts are global (all processes) and DDP averages gradients over processes
            loss, terms = loss * self.accelerator.num_processes, terms * self.accelerator.num_processes
        if mode == "eval":  # no global counts in evaluation: the terms are this batch's per-token means
            self._log_terms(mode, self.accelerator.gather_for_metrics(terms[None]).mean(0))
        else:
            self._step_terms.append(terms)
            if len(self._step_terms) == self._step_micro_batches:  # the step's last micro-batch
                # summed over the micro-batches as Trainer sums their losses: the whole batch's terms
                step_terms = torch.stack(self._step_terms).sum(0)
                self._log_terms(mode, self.accelerator.gather(step_terms[None]).mean(0))
        return (loss, outputs) if return_outputs else loss

    def _log_terms(self, mode: str, terms: torch.Tensor) -> None:
        """Log (ce, kd), averaged over processes as Trainer averages the loss."""
        ce, kd = terms.tolist()
        self._metrics[mode]["ce"].append(ce)
        self._metrics[mode]["kd"].append(kd)
        if mode == "train":
            self._metrics[mode]["on_policy"].append(float(self._on_policy_step))

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # The distillation head returns no logits; evaluation reports the loss and its terms.
        return super().prediction_step(model, inputs, True, ignore_keys)
