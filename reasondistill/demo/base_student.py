"""The demo's pretrained base student: knows the task's language, not the teacher's reasoning.

Real users distil into a pretrained base model (a Qwen2.5 base, say) that already reads language but
has never seen the teacher's way of reasoning. The demo's students otherwise start from random
weights; this module builds a stand-in for such a base model once and caches it, so the demo can
measure whether starting the way users do helps.

What it learns from, and why:

- **The questions of the training split's word problems, as plain text**, one document each, ended by
  `<|endoftext|>` (the tokenizer's pad token, Qwen2's document separator), e.g. "Mia has 47 marbles.
  She finds 38 more marbles. How many marbles does Mia have now?". They are the language every
  prompt is written in (names, objects, verbs, numbers), as a base model knows English, and they hold
  no solution: a question states its operands and never the result of an operation on them.
- **Nothing else.** No chat turns, `<think>` sections, worked steps, `a+b=c` facts or `\\boxed{}`
  answers, so everything the traces teach (column arithmetic, the reasoning format, the answer
  format) is left to distillation. Generic number text was considered and left out: counting states
  `n+1` facts that the reasoning's carry steps use (`7+1=8`), and numbers spelt in words are not in
  the prompts and fall apart into byte pieces in a 512-token BPE trained on the task.

It is a plain causal LM (loss on every token), the size of the demo's students, with the teacher's
tokenizer (the student must share it for the stored top-k token ids to mean the same tokens), trained
by the loop of `lm_training.py` that also builds the teacher. Its directory is keyed by every setting
that changes the result and by the tokenizer's content; `demo_build.json`, written last, holds the
held-out LM loss (test-split questions) before and after training and marks it reusable.

`python -m reasondistill.demo.base_student [RECIPE] --tokenizer_dir DIR [--key value ...]` builds it
(recipe: recipes/demo/base_student.yaml) and logs its directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from reasondistill.core.arithmetic_task import generate_problems
from reasondistill.core.logs import setup_logging
from reasondistill.demo.base_student_config import BaseStudentConfig
from reasondistill.demo.builder_command import parse_builder_command
from reasondistill.demo.factory import build_model, count_parameters
from reasondistill.demo.lm_training import (
    BUILD_INFO_FILE,
    Example,
    LMTrainingSettings,
    mean_token_loss,
    train_causal_lm,
)

logger = logging.getLogger("reasondistill.demo.base_student")  # not __name__: it also runs as __main__

DEFAULT_RECIPE = "recipes/demo/base_student.yaml"
# The files that define a saved tokenizer's behaviour: vocabulary and merges, special tokens, chat template.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def base_student_texts(config: BaseStudentConfig, split: str = "train") -> list[str]:
    """The plain-text documents of `split`: the word problems' questions only, no reasoning or answer."""
    count = config.train_problems if split == "train" else config.eval_problems
    return [p.question for p in generate_problems(split, count, config.levels, config.seed)]


def tokenize_document(tokenizer: PreTrainedTokenizerBase, text: str) -> Example:
    """Token ids of `text` then the document separator; every token carries loss (prompt length 0)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.pad_token_id], 0


def tokenizer_fingerprint(tokenizer_dir: str | Path) -> str:
    """Short hash of a saved tokenizer's files: equal for the same tokenizer wherever it is saved, so
    teachers that share a tokenizer share a base student, and a new tokenizer gets a new one."""
    tokenizer_dir = Path(tokenizer_dir)
    if not (tokenizer_dir / "tokenizer.json").exists():
        raise ValueError(
            f"{tokenizer_dir} has no tokenizer.json; pass a directory with a saved fast tokenizer"
        )
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            digest.update(name.encode() + b"\0" + (tokenizer_dir / name).read_bytes())
    return digest.hexdigest()[:16]


def build_base_student(config: BaseStudentConfig, tokenizer_dir: str | Path) -> Path:
    """Build (or reuse) the base student with the tokenizer saved in `tokenizer_dir`; return its directory.

    `tokenizer_dir` is a model directory whose tokenizer the students use: the demo teacher's.
    """
    tokenizer_dir = Path(tokenizer_dir)
    fingerprint = tokenizer_fingerprint(tokenizer_dir)
    out_dir = config.directory(fingerprint)
    if (out_dir / BUILD_INFO_FILE).exists():
        logger.info("reusing demo base student at %s", out_dir)
        return out_dir
    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if tokenizer.pad_token_id is None:
        raise ValueError(f"the tokenizer in {tokenizer_dir} has no pad token (<|endoftext|> in Qwen2's)")
    pad_id = tokenizer.pad_token_id
    examples = [tokenize_document(tokenizer, text) for text in base_student_texts(config, "train")]
    heldout = [tokenize_document(tokenizer, text) for text in base_student_texts(config, "test")]
    model = build_model(config.size, tokenizer, seed=config.seed)
    initial_loss = mean_token_loss(model, heldout, pad_id)
    logger.info(
        "base student: %.2fM parameters, %d questions of %.0f tokens on average, held-out LM loss %.3f",
        count_parameters(model) / 1e6,
        len(examples),
        sum(len(t) for t, _ in examples) / len(examples),
        initial_loss,
    )

    settings = LMTrainingSettings.of(config)
    curve = train_causal_lm(
        model,
        examples,
        pad_id,
        settings,
        evaluate=lambda: {"heldout_lm_loss": round(mean_token_loss(model, heldout, pad_id), 4)},
        started=started,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {
        "config": asdict(config),
        "tokenizer": {"source": str(tokenizer_dir), "fingerprint": fingerprint},
        "training_text": "questions of the train-split word problems, plain text, no reasoning or answers",
        "documents": len(examples),
        "document_tokens": sum(len(t) for t, _ in examples),
        "parameters": count_parameters(model),
        "steps": config.steps,
        "heldout_questions": len(heldout),
        "initial_heldout_lm_loss": round(initial_loss, 4),
        "final_heldout_lm_loss": curve[-1]["heldout_lm_loss"],  # the last point is the last step's
        "final_train_lm_loss": curve[-1]["loss"],
        "learning_curve": curve,
        "build_seconds": round(time.time() - started),
    }
    (out_dir / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2))
    logger.info(
        "base student held-out LM loss %.3f -> %.3f per token, built in %d s: %s",
        initial_loss,
        info["final_heldout_lm_loss"],
        info["build_seconds"],
        out_dir,
    )
    return out_dir


def main(argv: list[str] | None = None) -> int:
    config, tokenizer_dir = parse_builder_command(
        argv,
        "python -m reasondistill.demo.base_student",
        "Build (or reuse) the demo's pretrained base student: a student-size Qwen2 trained "
        "as a plain language model on the task's questions, with another model's tokenizer.",
        BaseStudentConfig,
        DEFAULT_RECIPE,
    )
    setup_logging()
    build_base_student(config, tokenizer_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
