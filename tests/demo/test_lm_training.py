"""The demo's LM loop in `mixed` batch order: what a step draws, and that its micro-batches add up to
the gradient of one batch holding the whole step."""

import random
from collections import Counter

import torch

from reasondistill.core.arithmetic_task import generate_problems
from reasondistill.demo.factory import build_model
from reasondistill.demo.lm_training import (
    MIXED_MICRO_BATCHES,
    LMTrainingSettings,
    backward_step,
    mixed_steps,
    pad_batch,
    token_budget_batches,
    train_causal_lm,
)
from reasondistill.demo.teacher import tokenize_example


def _examples(tokenizer, count: int):
    return [tokenize_example(tokenizer, p) for p in generate_problems("train", count, [1, 2, 3], seed=5)]


def _rows(batch, pad_id) -> list[tuple[int, ...]]:
    """The examples of a padded batch as token tuples (right padding stripped)."""
    rows = []
    for ids, labels in zip(*batch, strict=True):
        # The pad id also ends a document, so the length is the last position that carries a label.
        length = int((labels != -100).nonzero().max()) + 1
        rows.append(tuple(ids[:length].tolist()))
        assert (ids[length:] == pad_id).all()
    return rows


def test_mixed_steps_draw_each_example_once_an_epoch_in_length_sorted_micro_batches(demo_tokenizer):
    examples = _examples(demo_tokenizer, 90)
    pad_id = demo_tokenizer.pad_token_id
    budget = 1200
    steps = mixed_steps(examples, budget, pad_id, random.Random(0))
    by_tokens = Counter(tuple(tokens) for tokens, _ in examples)
    assert len(by_tokens) == len(examples)  # distinct problems, so a row names its example
    drawn: Counter = Counter()
    spreads = []
    for _ in range(40):  # about 4 epochs
        step = next(steps)
        assert 1 <= len(step) <= MIXED_MICRO_BATCHES
        rows = [_rows(batch, pad_id) for batch in step]
        lengths = [[len(r) for r in batch_rows] for batch_rows in rows]
        # Sorted by length across the step's micro-batches, each padded to its own longest.
        flat = [n for batch_lengths in lengths for n in batch_lengths]
        assert flat == sorted(flat)
        assert [batch[0].shape[1] for batch in step] == [max(n) for n in lengths]
        # About `budget` real tokens: the next example would have gone over it.
        assert sum(flat) <= budget and sum(flat) + max(len(t) for t, _ in examples) > budget
        drawn.update(r for batch_rows in rows for r in batch_rows)
        # Epochs of shuffled examples: at any step every example was drawn e or e + 1 times.
        assert max(drawn[r] for r in by_tokens) - min(drawn[r] for r in by_tokens) <= 1
        spreads.append(flat[-1] - flat[0])
    # A draw mixes lengths (levels), where a by-length batch holds one length band.
    by_length = token_budget_batches(examples, budget, pad_id, random.Random(0))
    by_length_spreads = [
        int((b[1] != -100).sum(1).max() - (b[1] != -100).sum(1).min())
        for b in (next(by_length) for _ in range(40))
    ]
    assert sum(spreads) > 3 * sum(by_length_spreads), (spreads, by_length_spreads)


def test_micro_batches_add_up_to_the_gradient_of_one_batch(demo_tokenizer):
    examples = _examples(demo_tokenizer, 12)
    pad_id = demo_tokenizer.pad_token_id
    step = next(mixed_steps(examples, 1200, pad_id, random.Random(1)))
    assert len(step) == MIXED_MICRO_BATCHES
    # Reference: the same examples as one right-padded batch, the model's mean over all answer tokens.
    drawn = [
        example for example in examples if any(tuple(example[0]) in _rows(batch, pad_id) for batch in step)
    ]
    model = build_model("student", demo_tokenizer, seed=0)
    ids, labels = pad_batch(drawn, pad_id)
    reference_loss = model(input_ids=ids, labels=labels).loss
    reference_loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    loss = backward_step(model, step)
    torch.testing.assert_close(loss, reference_loss.detach(), rtol=1e-5, atol=1e-6)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, reference[name], rtol=1e-4, atol=1e-6, msg=name)


def test_loop_trains_in_mixed_order(demo_tokenizer):
    examples = _examples(demo_tokenizer, 200)
    settings = LMTrainingSettings(
        steps=24,
        batch_tokens=1200,
        learning_rate=3e-3,
        warmup_steps=3,
        weight_decay=0.01,
        seed=0,
        report_every=12,
        batch_order="mixed",
    )
    model = build_model("student", demo_tokenizer, seed=0)
    curve = train_causal_lm(model, examples, demo_tokenizer.pad_token_id, settings)
    assert [p["step"] for p in curve] == [12, 24]
    assert curve[1]["loss"] < 0.7 * curve[0]["loss"], curve
