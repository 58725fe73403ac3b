"""Sequence-level training on another tokenizer's traces (kd_weight 0): the text, re-tokenized.

The teacher is the tiny Qwen2-style model (every digit its own token); the student has a tokenizer
trained on the same text with Llama 3's pre-tokenizer (numbers in runs of up to three digits) and
another vocabulary size, as a Llama student of a Qwen teacher.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import generate_config
from test_train import recipe, run
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from reasondistill.core.arithmetic_task import generate_problems
from reasondistill.core.traces import TOKENIZER_DIR, load_traces, read_info, read_topk, tokenizer_fingerprint
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
    # a Llama: transformers 5 would load a qwen2 directory's tokenizer with Qwen2's digit split
    save_initial_model("student", other_tokenizer, directory, seed=2, architecture="llama")
    return directory


@pytest.fixture(scope="module")
def teacher_dir(trained_teacher_dir) -> Path:
    return trained_teacher_dir


@pytest.fixture(scope="module")
def teacher_tokenizer(teacher_dir):
    return AutoTokenizer.from_pretrained(teacher_dir)


@pytest.fixture(scope="module")
def trace_dir(tmp_path_factory, teacher_dir) -> Path:
    out = tmp_path_factory.mktemp("traces") / "ds"
    return generate(generate_config(teacher_dir, out, backend="transformers", max_tokens=48, **RENDER))


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


def test_the_two_tokenizers_differ_where_it_matters(teacher_tokenizer, other_tokenizer):
    fingerprints = {tokenizer_fingerprint(t.get_vocab()) for t in (teacher_tokenizer, other_tokenizer)}
    assert len(fingerprints) == 2
    numbers = " ".join(str(n) for n in range(100, 1000, 7))
    assert len(other_tokenizer(numbers)["input_ids"]) < len(teacher_tokenizer(numbers)["input_ids"])
    assert len(other_tokenizer) == 544 and len(teacher_tokenizer) <= 512


def test_the_saved_student_keeps_its_pre_tokenizer(student_dir, other_tokenizer):
    loaded = AutoTokenizer.from_pretrained(student_dir)
    text = "so 17, write 83"
    assert loaded.tokenize(text) == other_tokenizer.tokenize(text) and "17" in loaded.tokenize(text)


def test_retokenized_text_ends_its_turn_and_unknown_characters_are_refused():
    tokenizer = alphabet_tokenizer("0123456789+-*= \n")
    ids = retokenize_completions(tokenizer, ["12 + 3 = 15", "12 + 3", "1 + é"], ["stop", "length", "stop"])
    assert tokenizer.decode(ids[0]) == "12 + 3 = 15" + IM_END and ids[0][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[1]) == "12 + 3"  # cut off by max_tokens: the turn did not end
    assert ids[2] is None
    tokenizer.eos_token = None
    with pytest.raises(ValueError, match="has no eos_token"):
        retokenize_completions(tokenizer, ["1"], ["stop"])


def test_student_reads_the_completion_text_in_its_own_tokens(trace_dir, student_dir, teacher_tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    with pytest.raises(ValueError, match="re-tokenized for this student with prompt_chat_template: student"):
        load_trace_dataset(str(trace_dir), False, None, tokenizer)
    dataset, info, counts = load_trace_dataset(str(trace_dir), False, None, tokenizer, retokenize=True)
    stored = list(load_traces(trace_dir))
    assert counts.dropped == {"text_not_in_student_vocab": 0} and counts.alignment == {}
    assert len(dataset) == len(stored) == 12
    batch = TopKCollator(pad_token_id=tokenizer.pad_token_id, k=1, student_vocab_size=544)(list(dataset))
    changed = 0
    for b, record in enumerate(stored):
        # the teacher's ids spell the text (and its end of turn where it ended); the student's spell the same
        teacher_text = teacher_tokenizer.decode(
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
    assert changed > 0


def test_text_a_student_cannot_spell_is_counted_not_trained(trace_dir):
    completions = [r["completion"] for r in load_traces(trace_dir)]
    # leave out of the student's alphabet a character that some completions have and others do not
    counts = {c: sum(c in text for text in completions) for c in set("".join(completions))}
    missing = next(c for c, n in sorted(counts.items()) if 0 < n < len(completions) and c != "\n")
    tokenizer = alphabet_tokenizer("".join(sorted(set(counts) - {missing})))
    dataset, _, loaded = load_trace_dataset(str(trace_dir), False, None, tokenizer, retokenize=True)
    assert loaded.dropped["text_not_in_student_vocab"] == counts[missing]
    assert len(dataset) == 12 - counts[missing]
    assert not any(tokenizer.unk_token_id in ids for ids in dataset["completion_token_ids"])


def test_token_level_targets_are_aligned_by_bytes(trace_dir, student_dir, teacher_tokenizer):
    """Against a brute-force reference built from each token's decoded text: a student token with the
    same span as one teacher token gets the teacher's alternatives that are student tokens; one that
    covers several teacher tokens gets the product of their sampled probabilities."""
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    dataset, info, counts = load_trace_dataset(
        str(trace_dir), False, None, tokenizer, retokenize=True, teacher_tokenizer=teacher_tokenizer
    )
    spelled = lambda tok, ids: [tok.decode([i]).encode() for i in ids]  # noqa: E731 (ASCII vocabularies)
    # a random teacher may sample a lone non-ASCII byte, which no text can hold (vLLM writes U+FFFD there):
    # such a record cannot be aligned and is dropped; every other one is kept
    stored = list(load_traces(trace_dir))
    whole = [
        r
        for r in stored
        if all("\ufffd" not in teacher_tokenizer.decode([i]) for i in r["completion_token_ids"])
    ]
    assert counts.dropped["teacher_tokens_not_the_text"] == len(stored) - len(whole)
    assert len(dataset) == len(whole) >= len(stored) // 2
    stored = whole
    kinds = {name: n for name, n in counts.alignment.items() if name.startswith("target_")}
    assert sum(kinds.values()) == sum(len(r["completion_token_ids"]) for r in dataset)
    assert kinds["target_exact"] > 0 and kinds["target_merged"] > 0
    batch = TopKCollator(tokenizer.pad_token_id, info.k, len(tokenizer))(list(dataset))
    student_vocab = {b: i for i, b in enumerate(spelled(tokenizer, range(len(tokenizer))))}
    checked = {"exact": 0, "merged": 0}
    teacher_specials = set(teacher_tokenizer.all_special_ids)  # no bytes: only the end of turn maps
    for b, (record, aligned) in enumerate(zip(stored, dataset, strict=True)):
        stop = record["finish_reason"] == "stop"  # then both end with their end-of-turn token
        teacher_text = record["completion_token_ids"][:-1] if stop else record["completion_token_ids"]
        teacher_ends = np.cumsum([len(x) for x in spelled(teacher_tokenizer, teacher_text)])
        student_ids = aligned["completion_token_ids"][:-1] if stop else aligned["completion_token_ids"]
        if stop:  # the student's eos gets the teacher's probability of ending there
            row = int(batch["prompt_lengths"][b]) + len(student_ids)
            ending = dict(
                zip(batch["topk_ids"][b, row].tolist(), batch["topk_logprobs"][b, row].tolist(), strict=True)
            )
            assert ending[tokenizer.eos_token_id] == pytest.approx(record["sampled_logprob"][-1], abs=2e-3)
        student_ends = np.cumsum([len(x) for x in spelled(tokenizer, student_ids)])
        teacher_ids, teacher_logprobs = read_topk(record)
        p = int(batch["prompt_lengths"][b])
        for j, end in enumerate(student_ends):
            start = student_ends[j - 1] if j else 0
            covered = [t for t, t_end in enumerate(teacher_ends) if start < t_end <= end]
            first_start = teacher_ends[covered[0] - 1] if covered and covered[0] else 0
            if not covered or first_start != start or teacher_ends[covered[-1]] != end:
                continue  # boundaries cross: not a case this reference covers
            got = {
                int(i): float(lp)
                for i, lp in zip(batch["topk_ids"][b, p + j], batch["topk_logprobs"][b, p + j], strict=True)
                if lp > -np.inf
            }
            if len(covered) == 1:
                t = covered[0]
                expected = {
                    student_vocab[teacher_tokenizer.decode([int(i)]).encode()]: float(lp)
                    for i, lp in zip(teacher_ids[t], teacher_logprobs[t], strict=True)
                    if lp > -np.inf
                    and teacher_tokenizer.decode([int(i)]).encode() in student_vocab
                    and (i not in teacher_specials or i == teacher_tokenizer.eos_token_id)  # eos <-> eos
                }
                checked["exact"] += 1
            else:
                expected = {student_ids[j]: float(np.sum(np.asarray(record["sampled_logprob"])[covered]))}
                checked["merged"] += 1
            assert got.keys() == expected.keys()
            np.testing.assert_allclose([got[i] for i in expected], list(expected.values()), atol=2e-3)
    assert checked["exact"] > 0 and checked["merged"] > 0


def test_token_level_training_across_tokenizers_runs(tmp_path, trace_dir, student_dir, info_log):
    # the teacher's tokenizer comes with the traces (schema 1.2): no teacher_model needed
    stored = AutoTokenizer.from_pretrained(trace_dir / TOKENIZER_DIR)
    assert tokenizer_fingerprint(stored.get_vocab()) == read_info(trace_dir).tokenizer_fingerprint
    out = run(recipe(tmp_path, student_dir, trace_dir, kd_weight=1, prompt_chat_template="student"))
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    kd = [s["kd"] for s in history if "kd" in s]
    assert len(kd) == 2 and np.isfinite(kd).all() and min(kd) > 0
    assert any("target_exact" in message for message in info_log.messages)


def test_sequence_level_training_runs_and_wrong_settings_are_refused(
    tmp_path, trace_dir, student_dir, teacher_dir
):
    out = run(recipe(tmp_path, student_dir, trace_dir, kd_weight=0, prompt_chat_template="student"))
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert len([s["loss"] for s in history if "loss" in s]) == 2
    assert np.isfinite([s["loss"] for s in history if "loss" in s]).all()
    assert read_info(trace_dir).tokenizer_fingerprint != tokenizer_fingerprint(
        AutoTokenizer.from_pretrained(out).get_vocab()
    )
    older = tmp_path / "traces-1.1"
    shutil.copytree(trace_dir, older, ignore=shutil.ignore_patterns(TOKENIZER_DIR))
    refusals = {
        "prompt_chat_template: student": {"kd_weight": 1},  # the stored ids are the teacher's
        "use lmbda: 0": {"prompt_chat_template": "student", "lmbda": 1, "teacher_model": str(teacher_dir)},
        "set teacher_model to a local copy": {  # traces of schema 1.1 carry no tokenizer
            "prompt_chat_template": "student",
            "teacher_model": "missing/teacher",
            "older": True,
        },
    }
    for n, (message, settings) in enumerate(refusals.items()):
        refused = tmp_path / f"refused-{n}"
        with pytest.raises(ValueError, match=message):
            traces = older if settings.pop("older", False) else trace_dir
            run(recipe(tmp_path, student_dir, traces, output_dir=str(refused), **settings))
        assert not refused.exists() or not any(refused.iterdir())
