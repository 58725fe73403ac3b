"""Measures of a demo model on the arithmetic task, finer than exact match.

On models of a few million parameters exact-match accuracy moves in large discrete jumps and is too
noisy to separate training methods, so the demo also reports

- step accuracy: the share of correct arithmetic facts (`4+3=7` in `ones: 4+3=7, write 7`) among those
  the greedy completion states in its reasoning, averaged over problems (`step_accuracy`);
- held-out CE and KD: the per-token cross-entropy on, and the divergence to, a teacher's held-out
  traces (the training objective's two terms, on traces no student saw).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from reasondistill.core.arithmetic_task import Problem
from reasondistill.train.distill_data import TopKCollator, gen_temperature, load_trace_dataset
from reasondistill.train.losses import LossSettings, distillation_loss_from_logits

THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)
EQUATION = re.compile(r"(\d+)([-+*])(\d+)=(\d+)")


@torch.no_grad()
def greedy_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[Problem],
    batch_size: int = 64,
    max_new_tokens: int = 400,
) -> list[str]:
    """Greedy completion text of each problem's chat prompt (special tokens dropped, <think> kept)."""
    was_training = model.training
    model.eval()
    texts = []
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p.question}], add_generation_prompt=True, tokenize=False
            )
            for p in chunk
        ]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        texts += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    model.train(was_training)
    return texts


def is_correct(text: str, problem: Problem) -> bool:
    """The completion ends in the gold answer, boxed, as the task's solutions do."""
    return text.rstrip().endswith(f"\\boxed{{{problem.answer}}}.")


def problem_scores(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, problems: list[Problem]
) -> tuple[list[float], list[float]]:
    """Per problem, the exact match (1.0 or 0.0) and the step accuracy of the greedy completion."""
    texts = greedy_completions(model, tokenizer, problems)
    return [float(is_correct(t, p)) for t, p in zip(texts, problems, strict=True)], [
        step_accuracy(t, p) for t, p in zip(texts, problems, strict=True)
    ]


def task_scores(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, problems: list[Problem]):
    """(exact-match accuracy, step accuracy) of greedy completions, averaged over problems."""
    correct, steps = problem_scores(model, tokenizer, problems)
    return sum(correct) / len(problems), sum(steps) / len(problems)


def _equations(text: str) -> list[tuple[int, str, int, int]]:
    return [(int(a), op, int(b), int(c)) for a, op, b, c in EQUATION.findall(text)]


def step_accuracy(text: str, problem: Problem) -> float:
    """Share of correct arithmetic facts (`a+b=c`, `a-b=c`, `a*b=c`) in the completion's reasoning.

    Each stated fact is checked on its own (a fact right after an earlier slip still counts), divided
    by the larger of the facts stated and the facts the gold solution states, so stopping early does
    not score and wrong extra facts count against.
    """
    found = THINK.search(text)
    stated = _equations(found.group(1) if found else "")
    correct = sum(c == (a + b if op == "+" else a - b if op == "-" else a * b) for a, op, b, c in stated)
    return correct / max(len(stated), len(_equations(problem.reasoning)), 1)


@dataclass
class HeldoutLoss:
    ce: float  # mean per-token cross-entropy of the model on the teacher's completion tokens
    kd: float  # mean per-token divergence of the model to the teacher's stored top-k (+ tail)
    tokens: int


@torch.no_grad()
def heldout_loss(
    model: PreTrainedModel, trace_dir: str, divergence_kind: str = "forward_kl", batch_size: int = 32
) -> HeldoutLoss:
    """Per-token CE and divergence (temperature 1, tail bucket) of `model` on every trace in trace_dir."""
    dataset, info, _ = load_trace_dataset(trace_dir, only_correct=False, max_length=None)
    collator = TopKCollator(
        pad_token_id=0, k=info.k, student_vocab_size=model.get_output_embeddings().weight.shape[0]
    )
    model.eval()
    ce_sum = kd_sum = 0.0
    tokens = 0
    for start in range(0, len(dataset), batch_size):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = distillation_loss_from_logits(
            logits[:, :-1],
            batch["labels"][:, 1:],
            batch["topk_ids"][:, 1:],
            batch["topk_logprobs"][:, 1:],
            settings=LossSettings(
                divergence_kind=divergence_kind,
                gen_temperature=gen_temperature(info),
                ce_weight=1.0,
                kd_weight=1.0,
            ),
        )
        count = int((batch["labels"][:, 1:] != -100).sum())  # every completion token has targets
        ce_sum, kd_sum = ce_sum + loss.ce.item() * count, kd_sum + loss.kd.item() * count
        tokens += count
    return HeldoutLoss(ce=ce_sum / tokens, kd=kd_sum / tokens, tokens=tokens)
