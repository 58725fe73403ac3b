"""prompt_chat_template: student: real traces of the tiny model, re-rendered with another chat template.

The teacher is the tiny model under an R1-style template that opens <think> in its generation prompt;
the student is the same model directory under a different template (same vocabulary), as
R1-Distill-Qwen-7B -> Qwen2.5-1.5B-Instruct.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import generate_config
from test_train import assert_teacher_topk_on_completions, on_policy_trainer, recipe, run
from transformers import AutoTokenizer

from reasondistill.core.traces import (
    INFO_FILE,
    INFO_KEY,
    SCHEMA_VERSION,
    load_traces,
    read_info,
    read_topk,
    shard_path,
)
from reasondistill.demo.tokenizer import CHAT_TEMPLATE
from reasondistill.generate.generate import generate
from reasondistill.train.distill_config import DistillConfig
from reasondistill.train.distill_data import TopKCollator, load_trace_dataset

R1_TEMPLATE = CHAT_TEMPLATE.replace("'<|im_start|>assistant\n'", "'<|im_start|>assistant\n<think>\n'")
STUDENT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | upper + ': ' + m['content'] + '\n\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
RENDER = {"system_prompt": "Be brief.", "instruction": "Show the steps.", "think_prefill": False}


def with_template(src: Path, dst: Path, template: str) -> Path:
    """A copy of model directory `src` whose tokenizer has chat template `template` (same vocabulary)."""
    shutil.copytree(src, dst)
    tokenizer = AutoTokenizer.from_pretrained(src)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(dst)
    return dst


def trace_config(teacher: Path, out: Path):
    """12 traces (6 prompts x 2 samples, 2 shards) with a system prompt and an instruction."""
    return generate_config(teacher, out, backend="transformers", **RENDER)


def as_schema_1_0(trace_dir: Path, out: Path) -> Path:
    """A copy of a trace dataset as the 1.0 writer left it: no prompt_render in any metadata."""
    shutil.copytree(trace_dir, out)

    def downgrade(text: str | bytes) -> str:
        data = json.loads(text)
        del data["prompt_render"]
        return json.dumps(data | {"schema_version": "1.0"})

    (out / INFO_FILE).write_text(downgrade((out / INFO_FILE).read_text()))
    for path in (out / "data").glob("*.parquet"):
        table = pq.read_table(path)
        metadata = table.schema.metadata | {INFO_KEY: downgrade(table.schema.metadata[INFO_KEY])}
        pq.write_table(table.replace_schema_metadata(metadata), path)
        path.with_name(path.name + ".sha256").unlink()  # nor did it record checksums
    return out


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, tiny_model_dir) -> Path:
    return with_template(tiny_model_dir, tmp_path_factory.mktemp("student") / "model", STUDENT_TEMPLATE)


@pytest.fixture(scope="module")
def r1_teacher(tmp_path_factory, tiny_model_dir) -> Path:
    return with_template(tiny_model_dir, tmp_path_factory.mktemp("r1-teacher") / "model", R1_TEMPLATE)


@pytest.fixture(scope="module")
def trace_dir(tmp_path_factory, r1_teacher) -> Path:
    return generate(trace_config(r1_teacher, tmp_path_factory.mktemp("traces") / "ds"))


def test_student_prompts_carry_the_stored_completions_and_targets(trace_dir, student_dir):
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    dataset, info, _ = load_trace_dataset(str(trace_dir), False, None, tokenizer)
    assert info.schema_version == SCHEMA_VERSION and info.prompt_render == RENDER
    stored = list(load_traces(trace_dir))
    batch = TopKCollator(pad_token_id=0, k=info.k, student_vocab_size=info.vocab_size)(list(dataset))
    for b, record in enumerate(stored):
        user = f"{record['question']}\n{RENDER['instruction']}"
        text = f"SYSTEM: {RENDER['system_prompt']}\n\nUSER: {user}\n\nASSISTANT:"
        # the teacher's template opened <think>, so the student's prompt opens it too
        assert record["prompt"].endswith("<|im_start|>assistant\n<think>\n")
        prompt = tokenizer(f"{text}<think>\n", add_special_tokens=False)["input_ids"]
        completion = record["completion_token_ids"]
        p, c = len(prompt), len(completion)
        assert prompt != record["prompt_token_ids"] and dataset[b]["length"] == p + c
        assert batch["input_ids"][b, : p + c].tolist() == prompt + completion
        assert tokenizer.decode(batch["input_ids"][b, :p]).endswith("ASSISTANT:<think>\n")
        positions = torch.arange(batch["labels"].shape[1])
        on_completion = (positions >= p) & (positions < p + c)
        expected = torch.where(on_completion, batch["input_ids"][b], -100)
        assert batch["labels"][b].tolist() == expected.tolist()
        ids, logprobs = read_topk(record)
        assert batch["topk_ids"][b, p : p + c].tolist() == ids.tolist()
        np.testing.assert_array_equal(batch["topk_logprobs"][b, p : p + c].numpy(), logprobs)
        assert torch.isinf(batch["topk_logprobs"][b, ~on_completion]).all()


def test_max_length_drops_by_the_student_prompt(trace_dir, student_dir):
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    teacher = [len(r["prompt_token_ids"]) for r in load_traces(trace_dir)]
    student = [
        len(r["prompt_token_ids"]) for r in load_trace_dataset(str(trace_dir), False, None, tokenizer)[0]
    ]
    longer = lambda lengths, limit: sum(n >= limit for n in lengths)  # noqa: E731
    # a limit that keeps some records and drops a different number of teacher and student prompts
    limit = next(
        n
        for n in student
        if 0 < longer(student, n) < len(student) and longer(student, n) != longer(teacher, n)
    )
    dataset, _, counts = load_trace_dataset(str(trace_dir), False, limit, tokenizer)
    drops = longer(student, limit)
    assert counts.dropped["prompt_too_long"] == drops and len(dataset) == len(student) - drops


def test_schema_1_0_traces_load_as_teacher_prompts_and_are_refused_as_student(
    tmp_path, r1_teacher, trace_dir, student_dir
):
    old = as_schema_1_0(trace_dir, tmp_path / "old")
    dataset, info, _ = load_trace_dataset(str(old), False, None)
    assert info.schema_version == "1.0" and info.prompt_render is None
    assert dataset["prompt_token_ids"] == load_traces(trace_dir)["prompt_token_ids"]
    with pytest.raises(ValueError, match="regenerate with this version or use prompt_chat_template: teacher"):
        load_trace_dataset(str(old), False, None, AutoTokenizer.from_pretrained(student_dir))
    # resuming it with this version finishes it at 1.1: the same recipe rendered the same prompts
    shard_path(old, 1, 2).unlink()
    generate(trace_config(r1_teacher, old))
    assert read_info(old).prompt_render == RENDER and read_info(old).schema_version == SCHEMA_VERSION
    assert len(load_trace_dataset(str(old), False, None, AutoTokenizer.from_pretrained(student_dir))[0]) == 12


def test_unusable_student_templates_and_settings_are_refused(tmp_path, trace_dir, tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="has no chat template .* or use prompt_chat_template: teacher"):
        load_trace_dataset(str(trace_dir), False, None, tokenizer)
    # traces whose teacher did not open <think>, for a student whose template does
    plain = generate(
        generate_config(tiny_model_dir, tmp_path / "plain", backend="transformers", num_prompts=2)
    )
    tokenizer.chat_template = R1_TEMPLATE
    with pytest.raises(ValueError, match="opens <think> but the teacher's prompts do not"):
        load_trace_dataset(str(plain), False, None, tokenizer)
    with pytest.raises(ValueError, match="prompt_chat_template='Student' is not one of"):
        DistillConfig(traces=str(trace_dir), output_dir=str(tmp_path), prompt_chat_template="Student")


def test_training_on_student_prompts_runs(tmp_path, trace_dir, student_dir):
    out = run(recipe(tmp_path, student_dir, trace_dir, prompt_chat_template="student"))
    losses = [
        step["loss"]
        for step in json.loads((out / "trainer_state.json").read_text())["log_history"]
        if "loss" in step
    ]
    assert len(losses) == 2 and np.isfinite(losses).all()
    assert "prompt_chat_template: student" in (out / "train_recipe.yaml").read_text()


def test_on_policy_teacher_scores_after_its_own_prompt(tmp_path, trace_dir, student_dir, r1_teacher):
    """The student samples after its template's prompt; the teacher scores the sample after its own."""
    trainer, offline, _ = on_policy_trainer(
        tmp_path, trace_dir, student_dir, r1_teacher, prompt_chat_template="student"
    )
    teacher_prompts = offline["teacher_prompt_token_ids"]
    assert teacher_prompts == [r["prompt_token_ids"] for r in list(load_traces(trace_dir))[:3]]
    (online,) = trainer.on_policy_batches([offline])
    assert_teacher_topk_on_completions(online, offline, r1_teacher, 1e-5, teacher_prompts)
