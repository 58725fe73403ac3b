"""The plain-PyTorch language-model loop that builds the demo's own models from scratch.

The demo teacher (`teacher.py`, loss on the answer only), the base student (`base_student.py`, loss
on every token of plain text) and the federated demo's clients are trained by this one loop: steps of
about a token budget, in one of BATCH_ORDERS (the teacher mixed: steps of one length are steps of one
level, and learned the task in twice the steps), AdamW with linear warm-up then cosine decay to 10%,
gradient clipping at 1.0. Plain PyTorch rather than a Trainer: on 2 CPU cores the Trainer's per-step
overhead is a large share of a 20 ms step.

An example is `(token ids, prompt length)`: the first `prompt length` tokens carry no loss (0 for
plain text).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

BUILD_INFO_FILE = "demo_build.json"  # written last: its presence marks a finished, reusable demo model

Example = tuple[list[int], int]  # (token ids, prompt length: leading tokens without loss)
Batch = tuple[torch.Tensor, torch.Tensor]  # (input_ids [B, T], labels [B, T]), right-padded
BatchOrder = Literal["by_length", "mixed"]
BATCH_ORDERS = {
    "by_length": "each step one batch of examples of similar length, the batches in random order "
    "(no padding; on the arithmetic task a batch of one length is a batch of one level)",
    "mixed": "each step a random draw of examples, split by length into MIXED_MICRO_BATCHES "
    "micro-batches whose gradients add up (every level in every step, little padding)",
}
BATCH_ORDER_HELP = "How a step's examples are drawn: " + "; ".join(
    f"{k}: {v}" for k, v in BATCH_ORDERS.items()
)
MIXED_MICRO_BATCHES = 3  # the demo's ~25 problems a step are 3 levels, about a third each
# fields that came after models were cached, at their first value: left out of the cache key, so those
# models keep their directories
FIELDS_ADDED_LATER = {"batch_order": "by_length", "solution_style": "fixed"}


def build_digest(config, **extra: object) -> str:
    """10 hex digits of the settings that change a built model: every field of the build config `config`
    (a dataclass) but where it is cached and how often it reports (a field of FIELDS_ADDED_LATER at its
    first value left out), plus `extra` (e.g. the tokenizer's fingerprint)."""
    key = {
        name: value
        for name, value in asdict(config).items()
        if name not in ("cache_dir", "eval_every") and FIELDS_ADDED_LATER.get(name, object()) != value
    }
    key |= extra
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


def check_batch_order(order: str) -> None:
    """Refuse a batch order that is not one of BATCH_ORDERS (build configs call it as they are parsed)."""
    if order not in BATCH_ORDERS:
        raise ValueError(f"batch_order={order!r} is not one of {sorted(BATCH_ORDERS)}")


@dataclass(frozen=True)
class LMTrainingSettings:
    """How `train_causal_lm` trains: the optimiser, its schedule and the batches."""

    steps: int  # optimiser steps
    batch_tokens: int  # tokens per step: padding included by_length, real tokens when mixed
    learning_rate: float  # peak AdamW learning rate, reached after warm-up
    warmup_steps: int  # linear warm-up, then cosine decay to 10% of the peak at the last step
    weight_decay: float  # AdamW weight decay on matrices (not on norms or biases)
    seed: int  # seeds the batch order
    report_every: int  # steps between learning-curve points
    batch_order: BatchOrder = "by_length"  # see BATCH_ORDERS

    @classmethod
    def of(cls, config) -> LMTrainingSettings:
        """From a build config with these fields (TeacherConfig, BaseStudentConfig; eval_every reports;
        a config without `batch_order` trains by length)."""
        fields = ("steps", "batch_tokens", "learning_rate", "warmup_steps", "weight_decay", "seed")
        return cls(
            **{name: getattr(config, name) for name in fields},
            report_every=config.eval_every,
            batch_order=getattr(config, "batch_order", "by_length"),
        )


def token_budget_batches(
    examples: list[Example], batch_tokens: int, pad_id: int, rng: random.Random
) -> Iterator[Batch]:
    """Endless stream of right-padded batches of similar-length examples, about batch_tokens each.

    Yields (input_ids [B, T], labels [B, T]); labels are -100 on prompt and padding so only the
    answer carries loss. No attention mask is needed: with right padding and causal attention no
    real token ever sees a pad, and leaving the mask out keeps SDPA on its fast causal path.
    """
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    while True:
        # Sorted by length, so the newest example is the longest: grow a batch while it fits.
        batches, current = [], []
        for i in order:
            if current and (len(current) + 1) * len(examples[i][0]) > batch_tokens:
                batches.append(current)
                current = []
            current.append(i)
        batches.append(current)
        rng.shuffle(batches)
        for batch in batches:
            yield pad_batch([examples[i] for i in batch], pad_id)


def mixed_steps(
    examples: list[Example], batch_tokens: int, pad_id: int, rng: random.Random
) -> Iterator[list[Batch]]:
    """Endless stream of steps: each a random draw of about batch_tokens real tokens (epochs of
    shuffled examples), sorted by length and cut into MIXED_MICRO_BATCHES padded micro-batches."""
    step: list[Example] = []
    step_tokens = 0
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        for i in order:
            if step and step_tokens + len(examples[i][0]) > batch_tokens:
                step.sort(key=lambda example: len(example[0]))
                size = math.ceil(len(step) / MIXED_MICRO_BATCHES)
                yield [pad_batch(step[start : start + size], pad_id) for start in range(0, len(step), size)]
                step, step_tokens = [], 0
            step.append(examples[i])
            step_tokens += len(examples[i][0])


def training_steps(
    examples: list[Example], pad_id: int, settings: LMTrainingSettings
) -> Iterator[list[Batch]]:
    """The batches of each optimiser step in `settings.batch_order` (one batch a step by length)."""
    rng = random.Random(settings.seed)
    if settings.batch_order == "mixed":
        return mixed_steps(examples, settings.batch_tokens, pad_id, rng)
    return ([batch] for batch in token_budget_batches(examples, settings.batch_tokens, pad_id, rng))


def pad_batch(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [B, T], labels [B, T]) of `examples`, right-padded to the longest; labels are -100
    on prompt and padding."""
    width = max(len(tokens) for tokens, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, (tokens, prompt_len) in enumerate(examples):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        labels[row, prompt_len : len(tokens)] = torch.tensor(tokens[prompt_len:])
    return ids, labels


def learning_rate_at(step: int, settings: LMTrainingSettings) -> float:
    """Linear warm-up to the peak, then cosine decay to 10% of it at the last step."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def backward_step(model: PreTrainedModel, batches: list[Batch]) -> torch.Tensor:
    """Accumulate one step's gradients and return its loss (detached): the mean cross-entropy over
    the step's answer tokens, whichever micro-batch holds them."""
    if len(batches) == 1:  # the model's own mean, as the teachers in the cache were built
        loss = model(input_ids=batches[0][0], labels=batches[0][1]).loss
        loss.backward()
        return loss.detach()
    counts = [int((labels[:, 1:] != -100).sum()) for _, labels in batches]  # tokens with a next-token target
    loss = torch.zeros(())
    for (ids, labels), count in zip(batches, counts, strict=True):
        part = model(input_ids=ids, labels=labels).loss * (count / sum(counts))
        part.backward()
        loss += part.detach()
    return loss


def train_causal_lm(
    model: PreTrainedModel,
    examples: list[Example],
    pad_id: int,
    settings: LMTrainingSettings,
    evaluate: Callable[[], dict] | None = None,
    started: float | None = None,
) -> list[dict]:
    """Train `model` in place on `examples` and return its learning curve.

    Every `settings.report_every` steps and at the last one a point is logged and kept:
    `{"step", "loss" (mean training loss of the window), **evaluate(), "loss_tokens_per_s",
    "elapsed_s" (since `started`, a `time.time()`; default: the call)}`. The model is left in
    training mode; `evaluate` must restore the mode it changes.
    """
    started = time.time() if started is None else started
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.learning_rate,
        betas=(0.9, 0.95),
    )
    curve: list[dict] = []
    steps = training_steps(examples, pad_id, settings)
    model.train()
    # Summed as a tensor and read once per window: no .item() sync per step in the hot path.
    loss_sum, loss_tokens, train_seconds = torch.zeros(()), 0, 0.0
    for step in range(settings.steps):
        step_start = time.time()
        batches = next(steps)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, settings)
        loss = backward_step(model, batches)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        loss_tokens += sum(int((labels != -100).sum()) for _, labels in batches)
        train_seconds += time.time() - step_start
        if (step + 1) % settings.report_every == 0 or step + 1 == settings.steps:
            window = (step % settings.report_every) + 1
            point = {
                "step": step + 1,
                "loss": round(float(loss_sum) / window, 4),
                **(evaluate() if evaluate is not None else {}),
                "loss_tokens_per_s": round(loss_tokens / train_seconds),
                "elapsed_s": round(time.time() - started),
            }
            curve.append(point)
            logger.info("%s", json.dumps(point))
            loss_sum, loss_tokens, train_seconds = torch.zeros(()), 0, 0.0
    return curve


@torch.no_grad()
def mean_token_loss(
    model: PreTrainedModel, examples: list[Example], pad_id: int, batch_size: int = 64
) -> float:
    """Cross-entropy per loss-carrying token over all `examples` (each token weighs the same).

    Summed over batches before dividing, so batch composition does not change the result.
    """
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64), 0
    for start in range(0, len(examples), batch_size):
        ids, labels = pad_batch(examples[start : start + batch_size], pad_id)
        logits = model(input_ids=ids).logits[:, :-1]  # [B, T-1, V] predicts tokens 1..T-1
        targets = labels[:, 1:]  # [B, T-1]
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            targets.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        count += int((targets != -100).sum())
    model.train(was_training)
    return float(total) / max(count, 1)
