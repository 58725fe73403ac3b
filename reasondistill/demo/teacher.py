"""Build the demo teacher: train a tokenizer and a small Qwen2 model on the arithmetic task.

Plain PyTorch rather than a Trainer: on 2 CPU cores the Trainer's per-step overhead is a large
share of a 20 ms step, and this is the one model the project trains without distillation.
The result is an ordinary model directory (config, safetensors, tokenizer, chat template) that
the later stages use as the teacher, exactly as they would use a hub checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict
from pathlib import Path

import jinja2
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from reasondistill.core.arithmetic_task import Problem, generate_problems
from reasondistill.demo.factory import build_model, count_parameters
from reasondistill.demo.scoring import task_scores
from reasondistill.demo.teacher_config import TeacherConfig
from reasondistill.demo.tokenizer import CHAT_TEMPLATE, train_tokenizer

logger = logging.getLogger(__name__)

CHAT_TEMPLATE_RENDERER = jinja2.Template(CHAT_TEMPLATE)
BUILD_INFO_FILE = "demo_build.json"  # written last: its presence marks a finished, reusable teacher


def chat_messages(problem: Problem) -> tuple[list[dict], dict]:
    """The user turn that asks the question and the assistant turn that answers it."""
    user = {"role": "user", "content": problem.question}
    assistant = {"role": "assistant", "content": problem.solution, "reasoning_content": problem.reasoning}
    return [user], assistant


def render_conversation(problem: Problem) -> str:
    """The whole worked conversation as chat-template text (the tokenizer's training corpus)."""
    prompt_msgs, answer = chat_messages(problem)
    return CHAT_TEMPLATE_RENDERER.render(messages=prompt_msgs + [answer], add_generation_prompt=False)


def tokenize_example(tokenizer: PreTrainedTokenizerBase, problem: Problem) -> tuple[list[int], int]:
    """Token ids of prompt + answer (through <|im_end|>) and the prompt length (no loss there)."""
    prompt_msgs, answer = chat_messages(problem)
    prompt = tokenizer.apply_chat_template(prompt_msgs, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(prompt_msgs + [answer], tokenize=False)
    full = full[: full.rindex(tokenizer.eos_token) + len(tokenizer.eos_token)]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise RuntimeError("chat template tokenises the prompt differently inside the full conversation")
    return full_ids, len(prompt_ids)


def token_budget_batches(
    examples: list[tuple[list[int], int]], batch_tokens: int, pad_id: int, rng: random.Random
):
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
            width = max(len(examples[i][0]) for i in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for row, i in enumerate(batch):
                tokens, prompt_len = examples[i]
                ids[row, : len(tokens)] = torch.tensor(tokens)
                labels[row, prompt_len : len(tokens)] = torch.tensor(tokens[prompt_len:])
            yield ids, labels


def train_teacher(config: TeacherConfig) -> Path:
    """Build (or reuse) the demo teacher and return its model directory."""
    out_dir = config.directory()
    if (out_dir / BUILD_INFO_FILE).exists():
        logger.info("reusing demo teacher at %s", out_dir)
        return out_dir
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    started = time.time()

    train = generate_problems("train", config.train_problems, config.levels, config.seed)
    test = generate_problems("test", config.eval_problems, config.levels, config.seed)
    tokenizer = train_tokenizer((render_conversation(p) for p in train[:5000]), config.vocab_size)
    examples = [tokenize_example(tokenizer, p) for p in train]
    model = build_model(config.size, tokenizer, seed=config.seed)
    logger.info(
        "teacher: %.2fM parameters, %d training problems, %.0f tokens each on average",
        count_parameters(model) / 1e6,
        len(examples),
        sum(len(t) for t, _ in examples) / len(examples),
    )

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
        betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return config.learning_rate * (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    curve: list[dict] = []
    batches = token_budget_batches(examples, config.batch_tokens, tokenizer.pad_token_id, rng)
    model.train()
    loss_sum, answer_tokens, train_seconds = torch.zeros(()), 0, 0.0
    for step in range(config.steps):
        step_start = time.time()
        ids, labels = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        answer_tokens += int((labels != -100).sum())
        train_seconds += time.time() - step_start
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            window = (step % config.eval_every) + 1
            point = {
                "step": step + 1,
                "loss": round(float(loss_sum) / window, 4),
                "heldout_accuracy_100": task_scores(model, tokenizer, test[:100])[0],
                "answer_tokens_per_s": round(answer_tokens / train_seconds),
                "elapsed_s": round(time.time() - started),
            }
            curve.append(point)
            logger.info("%s", json.dumps(point))
            loss_sum, answer_tokens, train_seconds = torch.zeros(()), 0, 0.0

    accuracy = task_scores(model, tokenizer, test)[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {
        "config": asdict(config),
        "parameters": count_parameters(model),
        "heldout_accuracy": accuracy,
        "heldout_problems": len(test),
        "learning_curve": curve,
        "build_seconds": round(time.time() - started),
    }
    (out_dir / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2))
    logger.info(
        "teacher held-out accuracy %.1f%% on %d problems, built in %d s",
        100 * accuracy,
        len(test),
        info["build_seconds"],
    )
    return out_dir


def load_teacher(directory: str | Path):
    """The teacher model and tokenizer from a built directory."""
    return AutoModelForCausalLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)
