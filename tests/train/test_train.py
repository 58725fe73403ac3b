"""The distillation trainer with real TRL, PEFT, accelerate and trace datasets written by `generate`.

The teacher here is a random tiny Qwen2 (traces need not be correct to test the mechanics); its
top-k over a random vocabulary also reaches the padding rows of its embedding, which the mismatched
vocabulary test relies on.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import generate_config
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
from trl import ModelConfig, get_peft_config

from reasondistill.core.prompts import render_prompt
from reasondistill.core.recipe import RecipeError, parse_recipe
from reasondistill.core.traces import read_info, read_topk
from reasondistill.generate.generate import generate
from reasondistill.train.distill_config import DistillConfig
from reasondistill.train.distill_data import TopKCollator, load_on_policy_prompts, load_trace_dataset
from reasondistill.train.distill_trainer import DistillTrainer
from reasondistill.train.losses import LossSettings, distillation_loss_from_logits
from reasondistill.train.on_policy import TransformersSampler
from reasondistill.train.train import COMPUTE_FILE, MERGED_DIR, RECIPE_FILE, train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trace_dir(tmp_path_factory, tiny_model_dir):
    """24 traces (12 prompts x 2 samples, top-8) from the tiny model, by the transformers backend."""
    out = tmp_path_factory.mktemp("train-traces") / "traces"
    config = generate_config(
        tiny_model_dir, out, backend="transformers", num_prompts=12, shard_size=6, batch_prompts=6
    )
    return generate(config)


def recipe(tmp_path: Path, student: Path, traces: Path, **overrides) -> Path:
    settings = {
        "model_name_or_path": str(student),
        "traces": str(traces),
        "only_correct": False,
        "use_peft": False,
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "gradient_checkpointing": False,
        "learning_rate": 1e-2,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "output_dir": str(tmp_path / "out"),
        "seed": 3,
        **overrides,
    }
    path = tmp_path / f"recipe-{len(list(tmp_path.glob('recipe-*')))}.yaml"
    path.write_text(json.dumps(settings))  # JSON is YAML
    return path


def run(path: Path, *overrides: str) -> Path:
    return train(*parse_recipe(path, (ModelConfig, DistillConfig), list(overrides)))


def weights(directory: Path) -> dict[str, torch.Tensor]:
    name = (
        "adapter_model.safetensors"
        if (directory / "adapter_model.safetensors").exists()
        else "model.safetensors"
    )
    return load_file(directory / name)


def assert_same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=atol, rtol=0, msg=name)


def test_collator_aligns_stored_topk_with_labels(trace_dir, tiny_model_dir):
    dataset, info, _ = load_trace_dataset(str(trace_dir), only_correct=False, max_length=None)
    records = [dataset[i] for i in range(3)]
    batch = TopKCollator(pad_token_id=0, k=info.k, student_vocab_size=info.vocab_size)(records)
    for b, record in enumerate(records):
        prompt, completion = record["prompt_token_ids"], record["completion_token_ids"]
        p, c = len(prompt), len(completion)
        assert batch["input_ids"][b, : p + c].tolist() == prompt + completion
        assert batch["attention_mask"][b].sum() == p + c
        assert (batch["labels"][b, :p] == -100).all() and (batch["labels"][b, p + c :] == -100).all()
        assert batch["labels"][b, p : p + c].tolist() == completion
        ids, logprobs = read_topk(record)
        assert batch["topk_ids"][b, p : p + c].tolist() == ids.tolist()
        np.testing.assert_array_equal(batch["topk_logprobs"][b, p : p + c].numpy(), logprobs)
        assert (
            torch.isinf(batch["topk_logprobs"][b, :p]).all()
            and torch.isinf(batch["topk_logprobs"][b, p + c :]).all()
        )
        assert batch["prompt_lengths"][b] == p
    # truncation keeps the prompt and cuts the completion and its targets together
    short = TopKCollator(
        pad_token_id=0,
        k=info.k,
        student_vocab_size=info.vocab_size,
        max_length=len(records[0]["prompt_token_ids"]) + 2,
    )
    cut = short(records[:1])
    assert cut["input_ids"].shape[1] == len(records[0]["prompt_token_ids"]) + 2
    assert (cut["labels"][0] != -100).sum() == 2


def test_kd_top_k_keeps_the_first_ranks(trace_dir):
    """kd_top_k: 1 gives targets of width 1 holding the teacher's top-1 (the rest is the loss's tail)."""
    dataset, info, _ = load_trace_dataset(str(trace_dir), only_correct=False, max_length=None)
    records = [dataset[i] for i in range(3)]
    full = TopKCollator(pad_token_id=0, k=info.k, student_vocab_size=info.vocab_size)(records)
    top1 = TopKCollator(pad_token_id=0, k=info.k, student_vocab_size=info.vocab_size, target_k=1)(records)
    assert top1["topk_ids"].shape[-1] == 1 and top1["topk_logprobs"].shape[-1] == 1
    assert torch.equal(top1["topk_ids"][..., 0], full["topk_ids"][..., 0])
    assert torch.equal(top1["topk_logprobs"][..., 0], full["topk_logprobs"][..., 0])
    with pytest.raises(ValueError, match=f"kd_top_k={info.k + 1} but the traces store top-{info.k}"):
        TopKCollator(pad_token_id=0, k=info.k, student_vocab_size=info.vocab_size, target_k=info.k + 1)


def test_num_traces_takes_nested_subsets(trace_dir):
    """num_traces: n draws the first n of one fixed shuffle: smaller sets are inside larger ones."""
    everything, _, _ = load_trace_dataset(str(trace_dir), only_correct=False, max_length=None)

    def completions(n: int) -> list[list[int]]:
        subset, _, _ = load_trace_dataset(str(trace_dir), False, None, num_traces=n)
        return [list(ids) for ids in subset["completion_token_ids"]]

    five, ten = completions(5), completions(10)
    assert len(five) == 5 and ten[:5] == five
    assert five != [list(ids) for ids in everything["completion_token_ids"][:5]]  # shuffled, not the head
    with pytest.raises(ValueError, match=f"num_traces=99 but .* has {len(everything)} usable records"):
        completions(99)


def test_config_choices_are_checked_and_build_the_loss_settings(tmp_path, trace_dir, tiny_model_dir):
    """Enum-like fields are Literal types (a recipe gets the choices in its error), and the loss settings
    are built from the config field by field."""
    with pytest.raises(RecipeError, match="on_policy_teacher_backend' expects one of 'transformers', 'vllm'"):
        parse_recipe(
            recipe(tmp_path, tiny_model_dir, trace_dir, on_policy_teacher_backend="vLLM"),
            (ModelConfig, DistillConfig),
        )
    with pytest.raises(ValueError, match="divergence='generalized_jsd' is not one of"):
        DistillConfig(traces=str(trace_dir), output_dir=str(tmp_path), divergence="generalized_jsd")
    loss = dict(beta=0.2, alpha=0.3, temperature=1.5, tail=False, tail_floor=1e-5)
    loss |= dict(ce_weight=0.25, kd_weight=2.0)
    args = DistillConfig(
        traces=str(trace_dir), output_dir=str(tmp_path), divergence="skew_reverse_kl", **loss
    )
    expected = LossSettings(divergence_kind="skew_reverse_kl", gen_temperature=0.7, **loss)
    assert args.loss_settings(gen_temperature=0.7) == expected
    # TrainingArguments' label_smoothing_factor is our loss's (Trainer's own smoother never runs here)
    smoothed = DistillConfig(traces=str(trace_dir), output_dir=str(tmp_path), label_smoothing_factor=0.1)
    assert smoothed.loss_settings().label_smoothing == 0.1
    for name in ("num_traces", "kd_top_k"):
        with pytest.raises(ValueError, match=f"{name} must be >= 1"):
            DistillConfig(traces=str(trace_dir), output_dir=str(tmp_path), **{name: 0})
    with pytest.raises(dataclasses.FrozenInstanceError):
        expected.beta = 0.5


@pytest.mark.parametrize(
    ("override", "error"),
    [
        (["--max_steps", "0"], "max_steps must be >= 1, or -1 to train num_train_epochs epochs; got 0"),
        (["--max_steps", "-1", "--num_train_epochs", "0"], "num_train_epochs must be > 0"),
        (["--kd_weight", "nan"], "key 'kd_weight' must be a finite number, got nan on the command line"),
    ],
)
def test_settings_that_would_train_nothing_or_nan_are_refused_up_front(
    tmp_path, trace_dir, tiny_model_dir, override, error
):
    """max_steps 0 took a step and saved changed weights; kd_weight nan saved an all-NaN model."""
    with pytest.raises(RecipeError, match=error):
        run(recipe(tmp_path, tiny_model_dir, trace_dir), *override)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="temperature must be a finite number"):  # built in Python
        DistillConfig(traces=str(trace_dir), output_dir=str(tmp_path), temperature=float("inf"))


def test_module_entry_point_logs_at_the_requested_level(tmp_path, trace_dir, tiny_model_dir):
    """`python -m reasondistill.train` logs at info by default, and `--log_level warning` quiets it."""
    path = recipe(tmp_path, tiny_model_dir, trace_dir, max_steps=1)
    for extra, shown in (([], True), (["--log_level", "warning"], False)):
        out = tmp_path / ("out-quiet" if extra else "out")  # another log_level is another run
        command = [sys.executable, "-m", "reasondistill.train", str(path), "--output_dir", str(out), *extra]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-4000:]
        assert ("distilling" in done.stdout) == shown, done.stdout[-2000:]
    assert (
        "log_level: warning" in (tmp_path / "out-quiet" / RECIPE_FILE).read_text()
    )  # TrainingArguments' too


def test_student_with_smaller_embedding_masks_padding_ids(trace_dir, demo_tokenizer):
    """Qwen2.5-0.5B (151936 rows) under a 7B teacher (152064): ids past the student's rows go to the tail."""
    dataset, info, _ = load_trace_dataset(str(trace_dir), only_correct=False, max_length=None)
    student_rows = len(demo_tokenizer)  # the teacher's embedding is padded to a multiple of 64 past it
    # a trained teacher never samples its padding rows; this random one may, so keep the records that don't
    records = [r for r in dataset if max(r["completion_token_ids"]) < student_rows]
    assert len(records) >= 2
    full = TopKCollator(pad_token_id=0, k=info.k, student_vocab_size=info.vocab_size)(records)
    assert (full["topk_ids"] >= student_rows).any(), "the random teacher should rank some padding ids"
    small = TopKCollator(pad_token_id=0, k=info.k, student_vocab_size=student_rows)(records)
    kept = torch.isfinite(small["topk_logprobs"])
    assert (small["topk_ids"][kept] < student_rows).all()
    # masked ranks trail, and the remaining entries are exactly the full row's in-vocabulary ones
    assert not (kept[..., 1:] & ~kept[..., :-1]).any()
    for b, t in torch.nonzero(torch.isfinite(full["topk_logprobs"][..., 0])).tolist():
        inside = full["topk_ids"][b, t] < student_rows
        assert small["topk_ids"][b, t][kept[b, t]].tolist() == full["topk_ids"][b, t][inside].tolist()


def test_tokenizer_mismatch_is_refused_before_training(tmp_path, trace_dir, tiny_model_dir):
    from reasondistill.demo.factory import build_model
    from reasondistill.demo.tokenizer import train_tokenizer

    other = train_tokenizer(["1 + 2 = 3", "hello world"] * 50, vocab_size=300)
    student = tmp_path / "other-student"
    build_model("student", other).save_pretrained(student)
    other.save_pretrained(student)
    with pytest.raises(ValueError, match="different tokenizer"):
        run(recipe(tmp_path, student, trace_dir))
    assert not (tmp_path / "out").exists()


def test_trainer_loss_equals_reference_on_full_logits(tmp_path, trace_dir, tiny_model_dir):
    """compute_loss (distillation head, chunked, shifted) == the plain loss on the model's full logits."""
    model_args, args = parse_recipe(
        recipe(
            tmp_path,
            tiny_model_dir,
            trace_dir,
            ce_weight=0.7,
            kd_weight=1.3,
            temperature=2.0,
            loss_chunk_size=7,
        ),
        (ModelConfig, DistillConfig),
    )
    dataset, info, _ = load_trace_dataset(str(trace_dir), only_correct=False, max_length=None)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    collator = TopKCollator(pad_token_id=0, k=info.k, student_vocab_size=info.vocab_size)
    trainer = DistillTrainer(model=model, args=args, data_collator=collator, train_dataset=dataset)
    trainer.model.train()  # the model has no dropout; train mode logs under "train"
    # as Trainer runs a step: the batch's token counts first, then the loss of its (one) micro-batch
    (batch,), num_items = trainer.get_batch_samples(
        iter([collator([dataset[i] for i in range(4)])]), 1, trainer.args.device
    )
    loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=num_items)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    reference = distillation_loss_from_logits(
        logits[:, :-1].double(),
        batch["labels"][:, 1:],
        batch["topk_ids"][:, 1:],
        batch["topk_logprobs"][:, 1:].double(),
        settings=LossSettings(temperature=2.0, ce_weight=0.7, kd_weight=1.3),
    )
    torch.testing.assert_close(loss.double(), reference.total, atol=1e-5, rtol=1e-5)
    assert trainer._metrics["train"]["ce"][-1] == pytest.approx(reference.ce.item(), rel=1e-5)
    assert trainer._metrics["train"]["kd"][-1] == pytest.approx(reference.kd.item(), rel=1e-5)


def test_gradient_accumulation_is_exact(tmp_path, trace_dir, tiny_model_dir):
    """One step of batch 4 == one step of 2 micro-batches of 2: the loss is per token of the whole batch,
    and so are the logged terms (not means of micro-batch means), so loss = 0.5 ce + 1.0 kd in the log."""
    # max_length cuts the completions after prompts of 28 to 49 tokens: micro-batches of unequal token
    # counts, whose mean of per-micro-batch means is not the whole batch's per-token mean
    common = dict(max_steps=1, optim="sgd", ce_weight=0.5, kd_weight=1.0, max_length=56)
    whole = run(recipe(tmp_path, tiny_model_dir, trace_dir, output_dir=str(tmp_path / "a"), **common))
    parts = run(
        recipe(
            tmp_path,
            tiny_model_dir,
            trace_dir,
            output_dir=str(tmp_path / "b"),
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
            **common,
        )
    )
    assert_same_weights(whole, parts, atol=1e-6)
    (whole_log,), (parts_log,) = (
        [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "kd" in h]
        for out in (whole, parts)
    )
    for key in ("loss", "ce", "kd"):
        assert parts_log[key] == pytest.approx(whole_log[key], rel=1e-5), key
    assert parts_log["loss"] == pytest.approx(0.5 * parts_log["ce"] + 1.0 * parts_log["kd"], rel=1e-6)
    assert not torch.equal(
        weights(whole)["model.norm.weight"],
        load_file(tiny_model_dir / "model.safetensors")["model.norm.weight"],
    )


def test_batch_rebalance_splits_each_seeded_draw_by_length(tmp_path, trace_dir, tiny_model_dir):
    """train_sampling_strategy batch_rebalance: an optimizer step trains on the examples a shuffle of the
    run's seed puts there (as random batches would), split into micro-batches by length."""
    dataset, info, _ = load_trace_dataset(str(trace_dir), only_correct=False, max_length=None)
    collator = TopKCollator(pad_token_id=0, k=info.k, student_vocab_size=info.vocab_size)

    def micro_batches(seed: int) -> list[list[int]]:
        path = recipe(
            tmp_path,
            tiny_model_dir,
            trace_dir,
            seed=seed,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
            train_sampling_strategy="batch_rebalance",
        )
        _, args = parse_recipe(path, (ModelConfig, DistillConfig))
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        trainer = DistillTrainer(model=model, args=args, data_collator=collator, train_dataset=dataset)
        return list(trainer._get_train_sampler())

    lengths = dataset["length"]
    for seed in (0, 1):
        batches = micro_batches(seed)
        shuffled = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
        assert len(batches) == 2 * (len(dataset) // 4)
        for step in range(len(batches) // 2):
            first, second = batches[2 * step], batches[2 * step + 1]
            assert sorted(first + second) == sorted(shuffled[4 * step : 4 * step + 4])
            short, long = sorted((first, second), key=lambda b: max(lengths[i] for i in b))
            assert max(lengths[i] for i in short) <= min(lengths[i] for i in long)
    assert micro_batches(0) != micro_batches(1)
    assert micro_batches(3) == micro_batches(3)


def test_lora_run_saves_adapter_merged_model_and_logs(tmp_path, trace_dir, tiny_model_dir):
    out = run(
        recipe(
            tmp_path,
            tiny_model_dir,
            trace_dir,
            use_peft=True,
            lora_r=4,
            lora_alpha=8,
            lora_target_modules=["q_proj", "v_proj", "up_proj"],
            save_merged_model=True,
            report_to="tensorboard",
            max_steps=3,
        )
    )
    assert (out / "adapter_config.json").exists() and (out / RECIPE_FILE).exists()
    compute = json.loads((out / COMPUTE_FILE).read_text())
    assert compute["student_tokens"] > 0 and compute["on_policy_steps"] == compute["on_policy_tokens"] == 0
    assert list(out.rglob("events.out.tfevents.*")), "TensorBoard logs by default"
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, out).eval()
    merged = AutoModelForCausalLM.from_pretrained(out / MERGED_DIR, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 17, 33, 2, 9, 40]])
    with torch.no_grad():
        expected, got = with_adapter(input_ids=ids).logits, merged(input_ids=ids).logits
        untrained = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)(
            input_ids=ids
        ).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)  # merge in float32 == base + adapter
    assert (got - untrained).abs().max() > 1e-3, "the adapter changed the model"


def test_qlora_trains_on_the_nf4_rounded_base(tmp_path, trace_dir, tiny_model_dir):
    """QLoRA (a frozen NF4 base under PEFT) computes what LoRA on the NF4-rounded weights computes: the
    same first-step loss (the adapter starts as a no-op), not the full-precision base's, and adapters that
    agree after training up to bfloat16, the dtype TRL keeps QLoRA adapters in (QLoRA paper, section 3)."""
    import bitsandbytes as bnb

    four_bit = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir,
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        ),
    )
    rounded = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    layers = dict(rounded.named_modules())
    quantized = 0
    for name, module in four_bit.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            layers[name].weight.data.copy_(weight.float())
            quantized += 1
    assert quantized == 7 * rounded.config.num_hidden_layers  # q, k, v, o, gate, up, down
    rounded.save_pretrained(tmp_path / "rounded")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "rounded")
    # plain SGD: an update is linear in the gradient (Adam's first steps are ~lr * sign(g), which turns
    # rounding in near-zero gradients into full-size differences)
    lora = dict(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0, max_steps=3, optim="sgd")
    lora["lora_target_modules"] = ["q_proj", "v_proj", "up_proj", "down_proj"]
    four_bit_settings = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", dtype="float32")
    runs = {
        "qlora": (tiny_model_dir, four_bit_settings),
        "lora-rounded": (tmp_path / "rounded", {}),
        "lora-original": (tiny_model_dir, {}),
    }
    outs = {
        name: run(recipe(tmp_path, base, trace_dir, output_dir=str(tmp_path / name), **lora, **extra))
        for name, (base, extra) in runs.items()
    }
    history = {name: json.loads((out / "trainer_state.json").read_text()) for name, out in outs.items()}
    losses = {name: [entry["loss"] for entry in state["log_history"][:3]] for name, state in history.items()}
    assert losses["qlora"] == pytest.approx(losses["lora-rounded"], rel=1e-5)  # every step
    assert abs(losses["qlora"][0] - losses["lora-original"][0]) > 1e-3  # NF4 rounding is visible
    qlora, reference = weights(outs["qlora"]), weights(outs["lora-rounded"])
    assert qlora.keys() == reference.keys()
    for name, tensor in qlora.items():
        assert tensor.dtype == torch.bfloat16
        if "lora_B" in name:
            assert tensor.abs().max() > 0, "lora_B starts at zero: gradients reached it through NF4 layers"
        # lora_B entries are ~1e-3 here; bf16 rounds them by ~4e-6, the unrounded base moves them by ~2e-4
        torch.testing.assert_close(tensor.float(), reference[name], atol=2e-5, rtol=1e-2)


def test_resume_from_checkpoint_continues_bit_for_bit(tmp_path, trace_dir, tiny_model_dir):
    common = dict(
        max_steps=4,
        per_device_train_batch_size=3,
        use_peft=True,
        lora_r=4,
        lora_dropout=0.1,
        lora_target_modules=["q_proj", "v_proj"],
        save_strategy="steps",
        save_steps=2,
    )
    straight = run(
        recipe(tmp_path, tiny_model_dir, trace_dir, output_dir=str(tmp_path / "straight"), **common)
    )
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(straight / "checkpoint-2", resumed_dir / "checkpoint-2")
    resumed = run(
        recipe(tmp_path, tiny_model_dir, trace_dir, output_dir=str(resumed_dir), **common),
        "--resume_from_checkpoint",
        "last",
    )
    assert_same_weights(straight, resumed)
    state = json.loads((resumed / "checkpoint-4" / "trainer_state.json").read_text())
    straight_state = json.loads((straight / "checkpoint-4" / "trainer_state.json").read_text())
    assert [h["loss"] for h in state["log_history"] if "loss" in h] == [
        h["loss"] for h in straight_state["log_history"] if "loss" in h
    ]


@pytest.fixture(scope="module")
def other_teacher_dir(tmp_path_factory, demo_tokenizer):
    """Another random model of the same tokenizer, so the student's KL to it is not 0."""
    from reasondistill.demo.factory import save_initial_model

    directory = tmp_path_factory.mktemp("other-teacher")
    save_initial_model("student", demo_tokenizer, directory, seed=7)
    return directory


def on_policy_trainer(tmp_path, trace_dir, student_dir, teacher_dir, **overrides):
    model_args, args = parse_recipe(
        recipe(
            tmp_path,
            student_dir,
            trace_dir,
            **{
                "lmbda": 1.0,
                "teacher_model": str(teacher_dir),
                "on_policy_max_new_tokens": 6,
                "on_policy_vllm_gpu_memory_utilization": 0.1,
                **overrides,
            },
        ),
        (ModelConfig, DistillConfig),
    )
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    render_with = tokenizer if args.prompt_chat_template == "student" else None
    dataset, info, _ = load_trace_dataset(str(trace_dir), False, None, render_with)
    collator = TopKCollator(pad_token_id=0, k=info.k, student_vocab_size=info.vocab_size)
    trainer = DistillTrainer(
        model=AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32),
        args=args,
        data_collator=collator,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    return trainer, collator([dataset[i] for i in range(3)]), (model_args, args)


def assert_teacher_topk_on_completions(
    online: dict, offline: dict, teacher_dir: Path, atol: float, teacher_prompts: list | None = None
) -> None:
    """Prompts kept, 1..6 sampled tokens, and their targets = brute-force top-8 of the teacher's forward
    on (its prompt: `teacher_prompts`, else the student's) + the sampled tokens."""
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    assert online["prompt_lengths"].tolist() == offline["prompt_lengths"].tolist()
    for b, p in enumerate(online["prompt_lengths"].tolist()):
        assert online["input_ids"][b, :p].tolist() == offline["input_ids"][b, :p].tolist()
        n = int((online["labels"][b] != -100).sum())
        assert 1 <= n <= 6
        prompt = online["input_ids"][b, :p].tolist() if teacher_prompts is None else teacher_prompts[b]
        tokens = torch.tensor(prompt + online["input_ids"][b, p : p + n].tolist())
        with torch.no_grad():  # the teacher's full distribution at each sampled token
            logprobs = torch.log_softmax(teacher(input_ids=tokens[None]).logits[0].double(), -1)
        top = logprobs[len(prompt) - 1 : len(prompt) - 1 + n].topk(8)
        torch.testing.assert_close(
            online["topk_logprobs"][b, p : p + n].double(), top.values, atol=atol, rtol=0
        )
        assert online["topk_ids"][b, p : p + n].tolist() == top.indices.tolist()


def test_on_policy_steps_score_student_samples_with_the_teacher(
    tmp_path, trace_dir, tiny_model_dir, other_teacher_dir
):
    """All micro-batches of an optimizer step are sampled in one call (one weight sync / adapter load for
    vLLM) and each gets back its own prompts, with the teacher's top-k on the student's samples."""
    trainer, offline, (model_args, args) = on_policy_trainer(
        tmp_path, trace_dir, tiny_model_dir, other_teacher_dir, gradient_accumulation_steps=2
    )
    dataset, _, _ = load_trace_dataset(str(trace_dir), False, None)
    second = trainer.data_collator([dataset[i] for i in (3, 4)])
    sample, sampled = trainer.student_sampler.sample, []

    def counting_sample(model, prompts, seed):
        sampled.append(len(prompts))
        return sample(model, prompts, seed)

    trainer.student_sampler.sample = counting_sample
    online = trainer.on_policy_batches([offline, second])
    assert sampled == [5]
    assert_teacher_topk_on_completions(online[0], offline, other_teacher_dir, 1e-5)
    assert_teacher_topk_on_completions(online[1], second, other_teacher_dir, 1e-5)
    out = train(model_args, args)  # 2 steps of 2 accumulated micro-batches, all on-policy
    logs = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "kd" in h]
    assert len(logs) == 2 and all(
        h["on_policy"] == 1.0 and np.isfinite(h["kd"]) and h["kd"] > 0 for h in logs
    )
    compute = json.loads((out / COMPUTE_FILE).read_text())
    assert compute["on_policy_steps"] == 2 and compute["on_policy_tokens"] == compute["student_tokens"] > 0
    assert compute["student_sampling_seconds"] + compute["teacher_scoring_seconds"] > 0
    assert compute["student_sampling_seconds"] + compute["teacher_scoring_seconds"] < compute["train_seconds"]


def test_on_policy_prompts_beyond_the_traces(tmp_path, trace_dir, tiny_model_dir, other_teacher_dir):
    """With on_policy_prompts (questions only), on-policy steps sample after those questions rendered as
    the traces' prompts were, the teacher scores them, and a run trains on them."""
    questions = [f"What is {a} plus {a + 1}?" for a in range(40, 50)]
    source = tmp_path / "questions.jsonl"
    source.write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))  # no answer column
    trainer, offline, (model_args, args) = on_policy_trainer(
        tmp_path, trace_dir, tiny_model_dir, other_teacher_dir, on_policy_prompts=str(source)
    )
    info = read_info(str(trace_dir))
    tokenizer = AutoTokenizer.from_pretrained(other_teacher_dir)
    prompts, too_long = load_on_policy_prompts(
        str(source), "train", None, "question", info, tokenizer, None, None
    )
    rendered = [
        tokenizer(render_prompt(tokenizer, q, **info.prompt_render), add_special_tokens=False)["input_ids"]
        for q in questions
    ]
    assert too_long == 0 and prompts.student == prompts.teacher == rendered
    trainer.on_policy_prompts = prompts
    online = trainer.on_policy_batches([offline])[0]
    drawn = [online["input_ids"][b, :p].tolist() for b, p in enumerate(online["prompt_lengths"].tolist())]
    assert len(drawn) == 3 and all(prompt in rendered for prompt in drawn)
    assert_teacher_topk_on_completions(online, online, other_teacher_dir, 1e-5)
    out = train(model_args, args)
    compute = json.loads((out / COMPUTE_FILE).read_text())
    assert compute["on_policy_steps"] == 2 and compute["on_policy_tokens"] > 0
    with pytest.raises(ValueError, match="lmbda is 0"):
        parse_recipe(
            recipe(tmp_path, tiny_model_dir, trace_dir, on_policy_prompts=str(source)),
            (ModelConfig, DistillConfig),
        )


def test_transformers_sampling_in_chunks_gives_each_prompt_its_own_completion(
    tmp_path, trace_dir, tiny_model_dir, other_teacher_dir
):
    """Greedy completions of 5 prompts generated 2 at a time (left-padded) equal those generated alone."""
    trainer, offline, _ = on_policy_trainer(
        tmp_path,
        trace_dir,
        tiny_model_dir,
        other_teacher_dir,
        on_policy_temperature=0.0,
        on_policy_generation_batch_size=2,
    )
    dataset, _, _ = load_trace_dataset(str(trace_dir), False, None)
    prompts = [list(p) for p in dict.fromkeys(map(tuple, dataset["prompt_token_ids"]))][:5]
    assert len(prompts) == 5 and len(set(map(len, prompts))) > 1  # distinct, and padding is exercised
    student = trainer.accelerator.unwrap_model(trainer.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # larger random weights, so that greedy completions depend on the prompt
        for weight in student.parameters():
            weight.normal_(0, 0.5, generator=generator)
    sampler = trainer.student_sampler
    in_chunks = sampler.sample(student, prompts, seed=0)
    one_at_a_time = dataclasses.replace(sampler.sampling, generation_batch_size=1)
    alone = TransformersSampler(one_at_a_time, sampler.pad_token_id).sample(student, prompts, seed=0)
    assert in_chunks == alone and len(set(map(tuple, alone))) == 5
    with pytest.raises(ValueError, match="on_policy_generation_batch_size must be >= 1"):
        on_policy_trainer(
            tmp_path, trace_dir, tiny_model_dir, other_teacher_dir, on_policy_generation_batch_size=0
        )


@pytest.mark.slow
def test_on_policy_with_vllm_follows_the_lora_student_and_scores_like_transformers(
    tmp_path, trace_dir, tiny_model_dir, other_teacher_dir
):
    """vLLM samples with the adapter as it is now (hot-loaded every step) and scores with prompt_logprobs."""
    from reasondistill.train.vllm_sampling import VllmLoraSampler

    trainer, offline, (model_args, args) = on_policy_trainer(
        tmp_path,
        trace_dir,
        tiny_model_dir,
        other_teacher_dir,
        use_peft=True,
        lora_target_modules=["q_proj", "v_proj", "up_proj"],
        on_policy_temperature=0.0,  # greedy: vLLM and transformers must pick the same tokens
        on_policy_student_backend="vllm",
        on_policy_teacher_backend="vllm",
        on_policy_vllm_enforce_eager=True,  # a faster start; the default (compiled) runs in the next test
    )
    assert isinstance(trainer.student_sampler, VllmLoraSampler)
    for llm in (trainer.student_sampler.llm, trainer.teacher_scorer.llm):
        assert llm.llm_engine.vllm_config.model_config.enforce_eager
    student = trainer.accelerator.unwrap_model(trainer.model)
    prompts = [offline["input_ids"][b, :n].tolist() for b, n in enumerate(offline["prompt_lengths"].tolist())]
    reference = TransformersSampler(args.student_sampling(), pad_token_id=0)
    try:
        samples = []
        for seed in (1, 2):  # a new adapter each time: vLLM must follow it, not keep the first one
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for name, weight in student.named_parameters():
                    if "lora_B" in name:
                        weight.normal_(0, 1.0, generator=generator)
            samples.append(reference.sample(student, prompts, seed=0))
            assert trainer.student_sampler.sample(student, prompts, seed=0) == samples[-1]
        assert samples[0] != samples[1]  # the two adapters sample differently, so following them shows
        (online,) = trainer.on_policy_batches([offline])
        assert_teacher_topk_on_completions(online, offline, other_teacher_dir, 1e-4)
        trainer.args.max_steps = 2
        trainer.train()
    finally:
        trainer.student_sampler.close()
        trainer.teacher_scorer.close()
    logs = [h for h in trainer.state.log_history if "kd" in h]
    assert len(logs) == 2 and all(h["on_policy"] == 1.0 and h["kd"] > 0 for h in logs)


@pytest.mark.slow
@pytest.mark.parametrize("use_peft", [False, True], ids=["full", "lora-merged"])
def test_vllm_weight_sync_samples_with_the_current_weights(
    tmp_path, trace_dir, tiny_model_dir, other_teacher_dir, use_peft
):
    """vLLM's copy of the student follows the training weights (full, or LoRA merged as in several
    processes): its greedy completions equal transformers' after each change, and it trains."""
    from reasondistill.train.vllm_weight_sync import LAUNCHER_VARIABLES, VllmWeightSyncSampler

    lora = {"use_peft": True, "lora_target_modules": ["q_proj", "v_proj", "up_proj"]} if use_peft else {}
    environment = {name: os.environ.get(name) for name in LAUNCHER_VARIABLES}
    trainer, offline, (_, args) = on_policy_trainer(
        tmp_path,
        trace_dir,
        tiny_model_dir,
        other_teacher_dir,
        on_policy_temperature=0.0,
        # LoRA in one process hot-loads the adapter; several processes merge it and take this path
        on_policy_student_backend="transformers" if use_peft else "vllm",
        **lora,
    )
    student = trainer.accelerator.unwrap_model(trainer.model)
    if use_peft:
        trainer.student_sampler = VllmWeightSyncSampler(
            student, args.student_sampling(), trainer.accelerator, trainer.processing_class, max_model_len=512
        )
        base = {n: w.clone() for n, w in student.named_parameters() if "lora_" not in n}
    assert isinstance(trainer.student_sampler, VllmWeightSyncSampler)
    # the engine's torch.distributed variables are not left for processes started from this one
    assert {name: os.environ.get(name) for name in LAUNCHER_VARIABLES} == environment
    dataset, _, _ = load_trace_dataset(str(trace_dir), False, None)
    prompts = [list(p) for p in dict.fromkeys(map(tuple, dataset["prompt_token_ids"]))][:4]
    reference = TransformersSampler(args.student_sampling(), pad_token_id=0)
    try:
        samples = []
        for seed in (1, 2):  # new weights each time: vLLM must follow them, not keep the first ones
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():  # large enough that greedy completions depend on the weights
                for name, weight in student.named_parameters():
                    if weight.requires_grad and "norm" not in name:
                        weight.normal_(0, 1.0 if use_peft else 0.5, generator=generator)
            samples.append(reference.sample(student, prompts, seed=0))
            assert trainer.student_sampler.sample(student, prompts, seed=0) == samples[-1]
        assert samples[0] != samples[1]
        if use_peft:  # the adapter was merged into copies: the frozen base is bit for bit unchanged
            assert all(torch.equal(w, base[n]) for n, w in student.named_parameters() if n in base)
            merged = dict(copy.deepcopy(student).merge_and_unload().named_parameters())
            synced = dict(trainer.student_sampler.current_weights())
            assert synced.keys() == merged.keys()
            for name, weight in synced.items():
                torch.testing.assert_close(weight, merged[name], atol=1e-6, rtol=0)
        # at temperature 1 a repeated prompt gets its own sample each time
        sampler = trainer.student_sampler
        sampler.sampling = dataclasses.replace(sampler.sampling, temperature=1.0)
        repeated = sampler.sample(student, [prompts[0]] * 4, seed=0)
        assert len(set(map(tuple, repeated))) > 1
        if not use_peft:
            trainer.args.max_steps = 2
            trainer.train()
            logs = [h for h in trainer.state.log_history if "kd" in h]
            assert len(logs) == 2 and all(h["on_policy"] == 1.0 and h["kd"] > 0 for h in logs)
    finally:
        trainer.student_sampler.close()
        trainer.teacher_scorer.close()


def test_vllm_weight_sync_refuses_students_it_cannot_sync(tmp_path, tiny_model_dir):
    """A merged adapter on an NF4 base is not what vLLM would load, and DoRA is not W + B A: both are
    refused before any engine starts."""
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model

    from reasondistill.train.vllm_weight_sync import VllmWeightSyncSampler

    four_bit = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir,
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32),
    )
    dora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, target_modules=["q_proj"], use_dora=True, task_type="CAUSAL_LM"),
    )
    args = DistillConfig(output_dir=str(tmp_path), traces=str(tmp_path), use_cpu=True)
    for model, problem in ((four_bit, r"quantized \(QLoRA\) base"), (dora, "DoRA student")):
        with pytest.raises(ValueError, match=problem):
            VllmWeightSyncSampler(
                model, args.student_sampling(), Accelerator(cpu=True), None, max_model_len=512
            )


def test_on_policy_topk_is_the_traces_k(tmp_path, trace_dir, tiny_model_dir, other_teacher_dir):
    trainer, _, _ = on_policy_trainer(tmp_path, trace_dir, tiny_model_dir, other_teacher_dir)
    assert trainer.args.on_policy_topk == 8  # unset in the recipe: the traces' k
    with pytest.raises(ValueError, match="set on_policy_topk: 8"):
        on_policy_trainer(tmp_path, trace_dir, tiny_model_dir, other_teacher_dir, on_policy_topk=5)


@pytest.mark.slow
def test_accelerate_two_processes_match_one_process(tmp_path, trace_dir, tiny_model_dir):
    """DDP on gloo: 2 processes x batch 2 == 1 process x batch 4 after one SGD step (same data and loss)."""
    common = dict(max_steps=1, optim="sgd", use_cpu=True)
    single = run(recipe(tmp_path, tiny_model_dir, trace_dir, output_dir=str(tmp_path / "one"), **common))
    two = recipe(
        tmp_path,
        tiny_model_dir,
        trace_dir,
        output_dir=str(tmp_path / "two"),
        per_device_train_batch_size=2,
        **common,
    )
    launch_two_processes(two, tmp_path)
    assert_same_weights(single, tmp_path / "two", atol=1e-6)


@pytest.mark.slow
def test_accelerate_two_processes_sample_on_policy_with_vllm(
    tmp_path, trace_dir, tiny_model_dir, other_teacher_dir
):
    """Each DDP process reloads the current weights into its own vLLM engine (which joins their process
    group), samples, trains, and the run still saves at the end (vLLM leaves the group alone)."""
    on_policy = recipe(
        tmp_path,
        tiny_model_dir,
        trace_dir,
        output_dir=str(tmp_path / "two"),
        per_device_train_batch_size=2,
        use_cpu=True,
        lmbda=1.0,
        teacher_model=str(other_teacher_dir),
        on_policy_topk=8,
        on_policy_max_new_tokens=6,
        on_policy_vllm_gpu_memory_utilization=0.1,
        on_policy_student_backend="vllm",
        on_policy_vllm_enforce_eager=True,
    )
    launch_two_processes(on_policy, tmp_path)
    logs = [
        h for h in json.loads((tmp_path / "two/trainer_state.json").read_text())["log_history"] if "kd" in h
    ]
    assert len(logs) == 2 and all(h["on_policy"] == 1.0 and h["kd"] > 0 for h in logs)
    assert (tmp_path / "two/model.safetensors").exists()


def launch_two_processes(recipe_path: Path, tmp_path: Path) -> None:
    """`accelerate launch -m reasondistill.train` on 2 CPU processes (DDP on gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "recipes/accelerate/cpu_ddp.yaml"),
        "-m",
        "reasondistill.train",
        str(recipe_path),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "on 2 processes" in done.stdout


def test_heldout_loss_of_the_teacher_on_its_own_traces(trace_dir, tiny_model_dir):
    """CE = mean of the stored sampled-token -logprobs; KL to itself ~ 0 (logprob codes: 1/2048 nat)."""
    from reasondistill.core.traces import load_traces
    from reasondistill.demo.scoring import heldout_loss

    teacher = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    measured = heldout_loss(teacher, str(trace_dir), batch_size=5)
    sampled = np.concatenate([np.asarray(r["sampled_logprob"]) for r in load_traces(trace_dir)])
    assert measured.tokens == sampled.size
    assert measured.ce == pytest.approx(-sampled.mean(), rel=1e-4)
    assert 0 <= measured.kd < 1e-3
