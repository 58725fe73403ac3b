"""Measurements of a compressed artifact: size on disk, peak memory, tokens/s, accuracy kept.

- **Size**: bytes of the weight files (a GGUF file: its size); compared to the model at 2 bytes per
  parameter (bf16), the size a hub checkpoint ships at.
- **Memory and speed** run in a fresh (spawned) process per artifact, so one model's memory does not
  hide another's: peak resident memory of the whole process (VmHWM, Python and torch included) and
  the part the model adds (peak minus the resident memory just before loading). Speed is greedy decoding
  of `speed_tokens` tokens at batch 1 after a short warm-up, with the end-of-turn token suppressed so every
  artifact decodes the same number of tokens.
- **Accuracy**: the evaluation stage (`evaluate_models`), greedy, on the same problems for every
  artifact; accuracy kept = artifact pass@1 / reference pass@1.

Runtimes: model directories (full precision, bitsandbytes) run in transformers; GGUF files run in
llama.cpp when llama-cpp-python is installed, else in transformers after dequantization (the weights'
rounding is measured, the speed is float32's, and the table says so).
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import torch

from reasondistill.compress.gguf_export import dequantize_gguf, load_gguf_transformers
from reasondistill.core.llamacpp_engine import LlamaCppEngine, llama_cpp_available
from reasondistill.core.logs import quiet_third_party
from reasondistill.evaluate.evaluate import evaluate_models, model_size_bytes
from reasondistill.evaluate.evaluate_config import EvaluateConfig
from reasondistill.evaluate.results import ModelSpec, RunResult

SPEED_QUESTION = "Mia has 47 stickers. She gets 38 more. How many stickers does Mia have now?"
WARMUP_TOKENS = 8


@dataclass(frozen=True)
class Artifact:
    """A model to measure: `path` is a model directory or a GGUF file; `label` names it in tables."""

    label: str
    path: Path

    @property
    def is_gguf(self) -> bool:
        return self.path.suffix == ".gguf"

    @property
    def runtime(self) -> str:
        if not self.is_gguf:
            return "transformers"
        return "llama.cpp" if llama_cpp_available() else "transformers (dequantized)"


def _memory_mb(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident) of this process, from /proc (Linux).

    Not `ru_maxrss`: Linux keeps that across exec, so a spawned child would report its parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status: memory is measured on Linux only")


def _speed_run(path: str, tokenizer_dir: str, new_tokens: int, threads: int) -> dict[str, float]:
    """In a fresh process: load, warm up, time `new_tokens` greedy tokens; report memory and speed."""
    quiet_third_party()  # a spawned process starts with fresh logging: no loading bars here either
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    messages = [{"role": "user", "content": SPEED_QUESTION}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    before = _memory_mb("VmRSS")
    artifact = Artifact("", Path(path))
    if artifact.runtime == "llama.cpp":
        engine = LlamaCppEngine(path, n_ctx=len(prompt_ids) + new_tokens + 8, threads=threads)
        engine.generate(prompt_ids, WARMUP_TOKENS, ignore_eos=True)
        started = time.perf_counter()
        produced = len(engine.generate(prompt_ids, new_tokens, ignore_eos=True))
        elapsed = time.perf_counter() - started
        engine.close()
    else:
        if artifact.is_gguf:
            model, _ = load_gguf_transformers(path)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.eval()
        ids = torch.tensor([prompt_ids])
        settings = dict(
            do_sample=False, suppress_tokens=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id
        )
        with torch.no_grad():
            model.generate(ids, max_new_tokens=WARMUP_TOKENS, **settings)
            started = time.perf_counter()
            produced = model.generate(ids, max_new_tokens=new_tokens, **settings).shape[1] - len(prompt_ids)
        elapsed = time.perf_counter() - started
    peak = _memory_mb("VmHWM")
    return {"tokens_per_s": produced / elapsed, "peak_rss_mb": peak, "model_rss_mb": peak - before}


def measure_speed(
    artifact: Artifact, tokenizer_dir: str | Path, new_tokens: int, threads: int
) -> dict[str, float]:
    """Tokens/s and memory of one artifact, measured in a fresh spawned process."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_speed_run, str(artifact.path), str(tokenizer_dir), new_tokens, threads).result()


def measure_accuracy(
    artifact: Artifact, benchmark: str, config: EvaluateConfig, work_dir: Path, threads: int
) -> RunResult:
    """Evaluate one artifact greedily through the evaluation stage (`config` sets problems and context).

    A GGUF file runs in llama.cpp when available; otherwise it is dequantized by transformers into
    `work_dir` first. The result's size is the artifact's own.
    """
    spec = ModelSpec(str(artifact.path), artifact.label)
    if artifact.runtime == "llama.cpp":
        engine = LlamaCppEngine(artifact.path, n_ctx=config.max_model_len, threads=threads, seed=config.seed)
        try:
            (result,) = evaluate_models([spec], [benchmark], config, engine=engine)
        finally:
            engine.close()
    else:
        if artifact.is_gguf:
            dequantized = dequantize_gguf(artifact.path, work_dir / f"{artifact.path.stem}-dequantized")
            spec = ModelSpec(str(dequantized), artifact.label)
        (result,) = evaluate_models([spec], [benchmark], config)
    result.model_path, result.size_bytes = str(artifact.path), model_size_bytes(str(artifact.path))
    result.backend = artifact.runtime
    return result


def size_row(artifact: Artifact, bf16_bytes: int) -> dict[str, float | str | None]:
    size = model_size_bytes(str(artifact.path)) or 0
    return {
        "artifact": artifact.label,
        "path": str(artifact.path),
        "runtime": artifact.runtime,
        "size_mb": size / 1e6,
        "size_vs_bf16": size / bf16_bytes,
    }
