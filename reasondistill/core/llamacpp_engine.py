"""Run a GGUF file with llama.cpp (llama-cpp-python), the runtime on-device users have.

`LlamaCppEngine` is a `SamplingEngine` (`reasondistill.core.engines`), so the evaluation stage scores a GGUF
file exactly as it scores a model directory (`evaluate_models(..., engine=LlamaCppEngine(...))`).
llama-cpp-python is an optional extra (`pip install 'reasondistill[llamacpp]'`, a source build).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from reasondistill.core.engines import Completion, SamplingConfig


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def suppress(token_id: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A llama.cpp logits processor that never lets `token_id` be chosen (for fixed-length speed runs)."""

    def processor(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        scores[token_id] = -np.inf
        return scores

    return processor


class LlamaCppEngine:
    """One GGUF model in llama.cpp; completions one prompt at a time (batch 1, as on a device).

    Completions carry token ids, text and finish reason; their logprob arrays are empty (shape [T, 0]),
    since the evaluation stage does not read them.
    """

    name = "llama.cpp"

    def __init__(self, gguf_path: str | Path, n_ctx: int = 1024, threads: int = 2, seed: int = 0):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_threads=threads, seed=seed, verbose=False)
        self.eos_id = self.llm.token_eos()

    def close(self) -> None:
        self.llm.close()

    def generate(
        self,
        prompt: list[int],
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        ignore_eos: bool = False,
    ) -> list[int]:
        """New token ids after `prompt`, ending with the end-of-turn token unless cut at `max_tokens`."""
        self.llm.set_seed(seed)
        tokens: list[int] = []
        for token in self.llm.generate(
            prompt,
            temp=temperature,
            top_p=top_p,
            top_k=0,  # off, as in vLLM and transformers here: only temperature and top-p shape sampling
            min_p=0.0,
            repeat_penalty=1.0,
            reset=True,
            logits_processor=[suppress(self.eos_id)] if ignore_eos else None,
        ):
            tokens.append(token)
            if token == self.eos_id or len(tokens) == max_tokens:
                break
        return tokens

    def sample(
        self, prompts: list[list[int]], sampling: SamplingConfig, seeds: list[int]
    ) -> list[list[Completion]]:
        """As `VllmEngine.sample`: `sampling.n` completions per prompt, sample i seeded with seed + i."""
        results = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            completions = []
            for index in range(sampling.n):
                tokens = self.generate(
                    prompt, sampling.max_tokens, sampling.temperature, sampling.top_p, seed + index
                )
                ended = bool(tokens) and tokens[-1] == self.eos_id
                empty = np.zeros((len(tokens), 0))
                completions.append(
                    Completion(
                        token_ids=np.asarray(tokens, dtype=np.int64),
                        sampled_logprobs=np.zeros(0),
                        topk_ids=empty.astype(np.int64),
                        topk_logprobs=empty,
                        text=self.llm.detokenize(tokens, special=False).decode("utf-8", errors="replace"),
                        finish_reason="stop" if ended else "length",
                    )
                )
            results.append(completions)
        return results
