"""Sequence-level training on another tokenizer's traces (kd_weight 0): the text, re-tokenized.

The teacher is the tiny Qwen2-style model (every digit its own token); the student has a tokenizer
trained on the same text with Llama 3's pre-tokenizer (numbers in runs of up to three digits) and
another vocabulary size, as a Llama student of a Qwen teacher.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import generate_config
from test_train import recipe, run
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from reasondistill.core.arithmetic_task import generate_problems
from reasondistill.core.traces import load_traces, read_info, tokenizer_fingerprint
from reasondistill.demo.factory import save_initial_model
from reasondistill.demo.teacher import render_conversation
from reasondistill.demo.tokenizer import (
    CHAT_TEMPLATE,
    IM_END,
    LLAMA3_SPLIT_PATTERN,
    PAD_TOKEN,
    train_tokenizer,
)
from reasondistill.generate.generate import generate
from reasondistill.train.distill_data import TopKCollator, load_trace_dataset, retokenize_completions

RENDER = {"system_prompt": "Be brief.", "instruction": "Show the steps.", "think_prefill": False}


def task_texts() -> list[str]:
    return [render_conversation(p) for p in generate_problems("train", 2000, [1, 2, 3], seed=0)]


@pytest.fixture(scope="module")
def other_tokenizer() -> PreTrainedTokenizerFast:
    return train_tokenizer(task_texts(), vocab_size=544, split_pattern=LLAMA3_SPLIT_PATTERN)


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, other_tokenizer) -> Path:
    directory = tmp_path_factory.mktemp("llama-style-student")
    save_initial_model("student", other_tokenizer, directory, seed=2)
    return directory


@pytest.fixture(scope="module")
def trace_dir(tmp_path_factory, tiny_model_dir) -> Path:
    out = tmp_path_factory.mktemp("traces") / "ds"
    return generate(generate_config(tiny_model_dir, out, backend="transformers", max_tokens=48, **RENDER))


def alphabet_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """A character-level BPE without byte fallback: characters outside `alphabet` become <unk>."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("\n", behavior="isolated")
    tokenizer.decoder = decoders.Fuse()  # characters joined as they are
    trainer = trainers.BpeTrainer(
        vocab_size=64, special_tokens=["<unk>", PAD_TOKEN, IM_END], initial_alphabet=list(alphabet)
    )
    tokenizer.train_from_iterator([alphabet], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token="<unk>",
        chat_template=CHAT_TEMPLATE,
    )


def test_the_two_tokenizers_differ_where_it_matters(demo_tokenizer, other_tokenizer):
    fingerprints = {tokenizer_fingerprint(t.get_vocab()) for t in (demo_tokenizer, other_tokenizer)}
    assert len(fingerprints) == 2
    numbers = " ".join(str(n) for n in range(100, 1000, 7))
    assert len(other_tokenizer(numbers)["input_ids"]) < len(demo_tokenizer(numbers)["input_ids"])
    assert len(other_tokenizer) == 544 and len(demo_tokenizer) < 512  # and 512 teacher embedding rows


def test_retokenized_text_ends_its_turn_and_unknown_characters_are_refused():
    tokenizer = alphabet_tokenizer("0123456789+-*= \n")
    ids = retokenize_completions(tokenizer, ["12 + 3 = 15", "12 + 3", "1 + é"], ["stop", "length", "stop"])
    assert tokenizer.decode(ids[0]) == "12 + 3 = 15" + IM_END and ids[0][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[1]) == "12 + 3"  # cut off by max_tokens: the turn did not end
    assert ids[2] is None
    tokenizer.eos_token = None
    with pytest.raises(ValueError, match="has no eos_token"):
        retokenize_completions(tokenizer, ["1"], ["stop"])


def test_student_reads_the_completion_text_in_its_own_tokens(trace_dir, student_dir, demo_tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    with pytest.raises(ValueError, match="kd_weight: 0 and prompt_chat_template: student"):
        load_trace_dataset(str(trace_dir), False, None, tokenizer)
    dataset, info, dropped = load_trace_dataset(str(trace_dir), False, None, tokenizer, retokenize=True)
    stored = list(load_traces(trace_dir))
    assert dropped == {"text_not_in_student_vocab": 0} and len(dataset) == len(stored) == 12
    batch = TopKCollator(pad_token_id=tokenizer.pad_token_id, k=1, student_vocab_size=544)(list(dataset))
    changed = 0
    for b, record in enumerate(stored):
        # the teacher's ids spell the text (and its end of turn where it ended); the student's spell the same
        teacher_text = demo_tokenizer.decode(
            record["completion_token_ids"], skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        assert teacher_text == record["completion"]
        prompt = tokenizer.apply_chat_template(
            [
                {"role": "system", "content": RENDER["system_prompt"]},
                {"role": "user", "content": f"{record['question']}\n{RENDER['instruction']}"},
            ],
            tokenize=False,
            add_generation_prompt=True,
        )
        p = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        labels = batch["labels"][b]
        completion = labels[labels != -100].tolist()
        assert tokenizer.decode(batch["input_ids"][b, :p]) == prompt
        end = IM_END if record["finish_reason"] == "stop" else ""
        assert tokenizer.decode(completion, clean_up_tokenization_spaces=False) == record["completion"] + end
        assert batch["topk_ids"][b, p : p + len(completion), 0].tolist() == completion  # one-hot targets
        assert (batch["topk_logprobs"][b, p : p + len(completion)] == 0).all()
        changed += completion != record["completion_token_ids"]
    assert changed == len(stored)


def test_text_a_student_cannot_spell_is_counted_not_trained(trace_dir):
    completions = [r["completion"] for r in load_traces(trace_dir)]
    # leave out of the student's alphabet a character that some completions have and others do not
    counts = {c: sum(c in text for text in completions) for c in set("".join(completions))}
    missing = next(c for c, n in sorted(counts.items()) if 0 < n < len(completions) and c != "\n")
    tokenizer = alphabet_tokenizer("".join(sorted(set(counts) - {missing})))
    dataset, _, dropped = load_trace_dataset(str(trace_dir), False, None, tokenizer, retokenize=True)
    assert dropped["text_not_in_student_vocab"] == counts[missing]
    assert len(dataset) == 12 - counts[missing]
    assert not any(tokenizer.unk_token_id in ids for ids in dataset["completion_token_ids"])


def test_sequence_level_training_runs_and_token_level_is_refused(tmp_path, trace_dir, student_dir):
    out = run(recipe(tmp_path, student_dir, trace_dir, kd_weight=0, prompt_chat_template="student"))
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert len([s["loss"] for s in history if "loss" in s]) == 2
    assert np.isfinite([s["loss"] for s in history if "loss" in s]).all()
    assert read_info(trace_dir).tokenizer_fingerprint != tokenizer_fingerprint(
        AutoTokenizer.from_pretrained(out).get_vocab()
    )
    for settings in ({"kd_weight": 1}, {"kd_weight": 0, "prompt_chat_template": "teacher"}):
        refused = tmp_path / f"refused-{len(settings)}"
        with pytest.raises(ValueError, match="kd_weight: 0 and prompt_chat_template: student"):
            run(recipe(tmp_path, student_dir, trace_dir, output_dir=str(refused), **settings))
        assert not refused.exists() or not any(refused.iterdir())
