"""The demo's base student on a tiny budget (real training, real files, real reuse), what it is
trained on, and the shared LM loop against the teacher's loop as it was before it was shared."""

import json
import math
import random
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reasondistill.core.arithmetic_task import generate_problems
from reasondistill.demo.base_student import (
    base_student_texts,
    build_base_student,
    main,
    tokenize_document,
    tokenizer_fingerprint,
)
from reasondistill.demo.base_student_config import BaseStudentConfig
from reasondistill.demo.factory import build_model
from reasondistill.demo.lm_training import (
    BUILD_INFO_FILE,
    LMTrainingSettings,
    mean_token_loss,
    token_budget_batches,
    train_causal_lm,
)
from reasondistill.demo.teacher import tokenize_example
from reasondistill.demo.tokenizer import CHAT_TEMPLATE, IM_START, THINK_CLOSE, THINK_OPEN

TINY = dict(
    train_problems=300,
    steps=30,
    batch_tokens=1024,
    learning_rate=3e-3,
    warmup_steps=3,
    eval_problems=20,
    eval_every=10,
)


def test_build_trains_saves_and_is_reused(tmp_path, tokenizer_dir, demo_tokenizer, info_log):
    config = BaseStudentConfig(cache_dir=str(tmp_path / "cache"), **TINY)
    directory = build_base_student(config, tokenizer_dir)
    info = json.loads((directory / BUILD_INFO_FILE).read_text())
    assert [p["step"] for p in info["learning_curve"]] == [10, 20, 30]
    assert info["steps"] == 30 and info["documents"] == 300 and info["heldout_questions"] == 20
    # Trained as a language model: the held-out loss falls far from where the random start has it.
    assert info["final_heldout_lm_loss"] < 0.6 * info["initial_heldout_lm_loss"], info
    assert info["initial_heldout_lm_loss"] > 0.8 * math.log(len(demo_tokenizer))  # near uniform at the start

    # An ordinary model directory: transformers loads it, with the teacher's tokenizer and chat template.
    model = AutoModelForCausalLM.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert model.config.hidden_size == 128 and model.config.num_hidden_layers == 4  # the student size
    assert tokenizer.get_vocab() == demo_tokenizer.get_vocab()
    assert tokenizer.chat_template == CHAT_TEMPLATE
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
    # The saved weights are the trained ones: they give the recorded held-out loss.
    heldout = [tokenize_document(tokenizer, t) for t in base_student_texts(config, "test")]
    assert mean_token_loss(model, heldout, tokenizer.pad_token_id) == pytest.approx(
        info["final_heldout_lm_loss"], abs=1e-3
    )

    weights_mtime = (directory / "model.safetensors").stat().st_mtime_ns
    info_log.clear()
    assert build_base_student(config, tokenizer_dir) == directory
    assert info_log.messages == [f"reusing demo base student at {directory}"]
    assert (directory / "model.safetensors").stat().st_mtime_ns == weights_mtime

    fingerprint = tokenizer_fingerprint(tokenizer_dir)
    for changed in ({"seed": 1}, {"steps": 31}, {"levels": [1]}, {"learning_rate": 1e-3}):
        assert (
            BaseStudentConfig(cache_dir=config.cache_dir, **{**TINY, **changed}).directory(fingerprint)
            != directory
        )
    # Not part of the result: where it is kept aside, how often the curve is sampled.
    assert (
        BaseStudentConfig(cache_dir=config.cache_dir, **{**TINY, "eval_every": 5}).directory(fingerprint)
        == directory
    )
    # Another tokenizer is another base student; the same tokenizer saved elsewhere is the same one.
    assert config.directory("another-tokenizer") != directory
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in tokenizer_dir.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    assert tokenizer_fingerprint(copy) == fingerprint


def test_training_text_is_questions_without_solutions(demo_tokenizer):
    config = BaseStudentConfig(train_problems=3000, eval_problems=500)
    problems = generate_problems("train", config.train_problems, config.levels, config.seed)
    texts = base_student_texts(config)
    assert texts == [p.question for p in problems]
    for text, problem in zip(texts, problems, strict=True):
        # No arithmetic result, worked step, reasoning section or answer format anywhere.
        assert not any(
            marker in text for marker in ("=", "\\boxed", "answer", "Step", "write", "carry", "borrow")
        )
        assert THINK_OPEN not in text and THINK_CLOSE not in text and IM_START not in text
        assert problem.solution not in text and problem.reasoning not in text
        assert not any(line in text for line in problem.reasoning.splitlines())
    # The held-out text is the test split's questions, none of them trained on.
    assert not set(base_student_texts(config, "test")) & set(texts)

    # A document is the question's tokens and the document separator, every token carrying loss.
    ids, prompt_len = tokenize_document(demo_tokenizer, texts[0])
    assert prompt_len == 0 and ids[-1] == demo_tokenizer.pad_token_id
    assert demo_tokenizer.decode(ids[:-1]) == texts[0]
    assert demo_tokenizer.convert_tokens_to_ids(THINK_OPEN) not in ids


def _teacher_loop_before_sharing(model, examples, pad_id, settings: LMTrainingSettings) -> list[float]:
    """The teacher's training loop as reasondistill/demo/teacher.py had it before `train_causal_lm`
    took it over (evaluation left out: it reads the model and draws no random numbers).
    Kept as an independent reference: cached teachers are reused, so the shared loop must give
    them bit-identical weights."""
    rng = random.Random(settings.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.learning_rate,
        betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:
        if step < settings.warmup_steps:
            return settings.learning_rate * (step + 1) / settings.warmup_steps
        progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
        return settings.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    batches = token_budget_batches(examples, settings.batch_tokens, pad_id, rng)
    model.train()
    window_losses, loss_sum = [], torch.zeros(())
    for step in range(settings.steps):
        ids, labels = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        if (step + 1) % settings.report_every == 0 or step + 1 == settings.steps:
            window_losses.append(round(float(loss_sum) / ((step % settings.report_every) + 1), 4))
            loss_sum = torch.zeros(())
    return window_losses


def test_shared_loop_gives_the_teacher_bit_identical_weights(demo_tokenizer):
    examples = [tokenize_example(demo_tokenizer, p) for p in generate_problems("train", 120, [1, 2], seed=3)]
    settings = LMTrainingSettings(
        steps=12,
        batch_tokens=768,
        learning_rate=2e-3,
        warmup_steps=4,
        weight_decay=0.01,
        seed=3,
        report_every=5,
    )
    reference = build_model("student", demo_tokenizer, seed=3)
    reference_losses = _teacher_loop_before_sharing(
        reference, examples, demo_tokenizer.pad_token_id, settings
    )
    shared = build_model("student", demo_tokenizer, seed=3)
    evaluations = []
    curve = train_causal_lm(
        shared,
        examples,
        demo_tokenizer.pad_token_id,
        settings,
        evaluate=lambda: evaluations.append(1) or {"probe": len(evaluations)},
        started=time.time(),
    )
    assert [p["loss"] for p in curve] == reference_losses
    assert [p["step"] for p in curve] == [5, 10, 12] and [p["probe"] for p in curve] == [1, 2, 3]
    shared_state, reference_state = shared.state_dict(), reference.state_dict()
    assert shared_state.keys() == reference_state.keys()
    for name, tensor in reference_state.items():
        assert torch.equal(shared_state[name], tensor), name


def test_command_line_builds_and_requires_a_tokenizer(tmp_path, tokenizer_dir, info_log, capsys, monkeypatch):
    # setup_logging's handler would keep this test's stdout for the rest of the session
    monkeypatch.setattr("reasondistill.demo.base_student.setup_logging", lambda: None)
    flags = ["--cache_dir", str(tmp_path / "cache"), "--train_problems", "50", "--steps", "2"]
    flags += ["--eval_problems", "4", "--warmup_steps", "1"]
    assert main(["recipes/demo/base_student.yaml", "--tokenizer_dir", str(tokenizer_dir), *flags]) == 0
    (built,) = (tmp_path / "cache").iterdir()
    assert json.loads((built / BUILD_INFO_FILE).read_text())["config"]["steps"] == 2
    assert any(str(built) in message for message in info_log.messages)
    with pytest.raises(SystemExit) as stop:
        main(flags)
    assert stop.value.code == 2 and "--tokenizer_dir is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--tokenizer_dir", str(tokenizer_dir), "--stepz", "2"])
    assert "stepz" in capsys.readouterr().err


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="size='huge'"):
        BaseStudentConfig(size="huge")
    with pytest.raises(ValueError, match="positive"):
        BaseStudentConfig(steps=0)
    with pytest.raises(ValueError, match="tokenizer.json"):
        tokenizer_fingerprint(tmp_path)
