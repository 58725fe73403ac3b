"""Build the demo teacher: train a tokenizer and a small Qwen2 model on the arithmetic task.

Trained by the plain-PyTorch loop of `lm_training.py` (shared with the base student), with the loss
on the answer only; this is the one model the project trains on the task without distillation.
The result is an ordinary model directory (config, safetensors, tokenizer, chat template) that
the later stages use as the teacher, exactly as they would use a hub checkpoint.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import jinja2
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from reasondistill.core.arithmetic_task import Problem
from reasondistill.core.logs import setup_logging
from reasondistill.core.recipe import RecipeError, parse_recipe, split_recipe_argument
from reasondistill.demo.factory import build_model, count_parameters
from reasondistill.demo.lm_training import BUILD_INFO_FILE, LMTrainingSettings, train_causal_lm
from reasondistill.demo.scoring import task_scores
from reasondistill.demo.teacher_config import TeacherConfig
from reasondistill.demo.tokenizer import CHAT_TEMPLATE, LLAMA3_SPLIT_PATTERN, train_tokenizer

logger = logging.getLogger("reasondistill.demo.teacher")  # not __name__: it also runs as __main__

DEFAULT_RECIPE = "recipes/demo/teacher.yaml"

CHAT_TEMPLATE_RENDERER = jinja2.Template(CHAT_TEMPLATE)
TOKENIZER_PROBLEMS = 5000  # the first training problems, rendered, are the tokenizer's corpus
# A student tokenizer unlike the teacher's (docs/train.md, cross-tokenizer): Llama 3's number runs
# and another vocabulary size (the teacher's BPE stops near 475 entries in 512 embedding rows).
DIGIT_RUNS_VOCAB = 544


def chat_messages(problem: Problem) -> tuple[list[dict], dict]:
    """The user turn that asks the question and the assistant turn that answers it."""
    user = {"role": "user", "content": problem.question}
    assistant = {"role": "assistant", "content": problem.solution, "reasoning_content": problem.reasoning}
    return [user], assistant


def render_conversation(problem: Problem) -> str:
    """The whole worked conversation as chat-template text (the tokenizer's training corpus)."""
    prompt_msgs, answer = chat_messages(problem)
    return CHAT_TEMPLATE_RENDERER.render(messages=prompt_msgs + [answer], add_generation_prompt=False)


def tokenizer_corpus(train: list[Problem]) -> Iterator[str]:
    """What the demo's tokenizers are trained on: the first TOKENIZER_PROBLEMS training problems, rendered."""
    return (render_conversation(p) for p in train[:TOKENIZER_PROBLEMS])


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


def train_teacher(config: TeacherConfig) -> Path:
    """Build (or reuse) the demo teacher and return its model directory."""
    out_dir = config.directory()
    if (out_dir / BUILD_INFO_FILE).exists():
        logger.info("reusing demo teacher at %s", out_dir)
        return out_dir
    torch.manual_seed(config.seed)
    started = time.time()

    train = config.problems("train", config.train_problems)
    test = config.problems("test", config.eval_problems)
    tokenizer = train_tokenizer(tokenizer_corpus(train), config.vocab_size)
    examples = [tokenize_example(tokenizer, p) for p in train]
    model = build_model(config.size, tokenizer, seed=config.seed)
    logger.info(
        "teacher: %.2fM parameters, %d training problems, %.0f tokens each on average",
        count_parameters(model) / 1e6,
        len(examples),
        sum(len(t) for t, _ in examples) / len(examples),
    )

    settings = LMTrainingSettings.of(config)
    curve = train_causal_lm(
        model,
        examples,
        tokenizer.pad_token_id,
        settings,
        evaluate=lambda: {"heldout_accuracy_100": task_scores(model, tokenizer, test[:100])[0]},
        started=started,
    )

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


def digit_runs_tokenizer(teacher_dir: Path) -> PreTrainedTokenizerBase:
    """A student tokenizer that splits the task's numbers otherwise than the teacher's: trained on the
    teacher's tokenizer corpus with Llama 3's pre-tokenizer (numbers in runs of up to three digits, so
    "35" can be one token) and DIGIT_RUNS_VOCAB entries; same chat template and special tokens."""
    built = json.loads((teacher_dir / BUILD_INFO_FILE).read_text())["config"]
    config = TeacherConfig(**{"batch_order": "by_length", **built})  # built before the field: by length
    train = config.problems("train", config.train_problems)
    return train_tokenizer(tokenizer_corpus(train), DIGIT_RUNS_VOCAB, LLAMA3_SPLIT_PATTERN)


def main(argv: list[str] | None = None) -> int:
    """`python -m reasondistill.demo.teacher [RECIPE.yaml] [--key value ...]`: build (or reuse) one demo
    teacher without the rest of the demo (e.g. `--solution_style varied`) and print its directory."""
    try:
        recipe, overrides = split_recipe_argument(sys.argv[1:] if argv is None else argv)
        (config,) = parse_recipe(recipe or DEFAULT_RECIPE, (TeacherConfig,), overrides)
    except RecipeError as error:
        sys.exit(f"python -m reasondistill.demo.teacher: error: {error}")
    setup_logging()
    print(train_teacher(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
