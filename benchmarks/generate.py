"""Trace-generation throughput and storage, measured in one process.

    .venv/bin/python benchmarks/generate.py [--teacher DIR] [--prompts 64] [--max-tokens 128]
        [--models teacher random] [--repeats 2] [--storage-tokens 400]

Prints a table of completion tokens/s for, on the same prompts and sampling parameters:
raw vLLM `LLM.generate` without logprobs, with top-20 logprobs (per-token dicts, and flat lists),
our engine (flat lists -> numpy), our whole shard pipeline (engine + grading + records + Parquet
write), and the transformers backend; then stored bytes per completion token at k = 1, 8, 20.
Every vLLM row uses the same sampling parameters and per-prompt seeds, so they draw the same
completions; rates are the best of `--repeats` runs, ratios against the raw call in the same process.
Two models: the trained demo teacher (real
distributions, for storage) and a randomly initialised ~80M-parameter Qwen2 (where generation,
not Python overhead, dominates).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from reasondistill.core.logs import setup_logging
from reasondistill.core.markdown_table import markdown_table
from reasondistill.core.prompts import render_prompt


def best_rate(run, count_tokens, repeats: int, fresh_dir: str | None = None) -> float:
    """Best of `repeats` runs, in tokens per second (the machine's other load only slows runs down)."""
    rates = []
    for _ in range(repeats):
        if fresh_dir:
            shutil.rmtree(fresh_dir, ignore_errors=True)
        start = time.perf_counter()
        result = run()
        rates.append(count_tokens(result) / (time.perf_counter() - start))
    return max(rates)


def build_random_model(tokenizer_dir: Path, out: Path) -> Path:
    from transformers import AutoTokenizer

    from reasondistill.demo.factory import ModelSize, build_model, count_parameters

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = build_model(
        ModelSize(
            hidden_size=768,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_key_value_heads=4,
        ),
        tokenizer,
        seed=0,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"random model: {count_parameters(model) / 1e6:.0f}M parameters at {out}")
    return out


def engine_settings(model_dir: Path) -> dict:
    return dict(
        teacher=str(model_dir),
        dtype="float32",
        max_model_len=1024,
        gpu_memory_utilization=0.2,
        logprobs=20,
        seed=0,
    )


def open_engine(model_dir: Path, prompts, eager: bool):
    """A vLLM engine on model_dir, its tokenizer, and the prompts' chat-template token ids."""
    from reasondistill.core.engines import EngineConfig, VllmEngine

    engine = VllmEngine(EngineConfig(**engine_settings(model_dir), enforce_eager=eager))
    tokenizer = engine.llm.get_tokenizer()
    prompt_ids = [
        tokenizer(render_prompt(tokenizer, p.question, None, None, False), add_special_tokens=False)[
            "input_ids"
        ]
        for p in prompts
    ]
    return engine, tokenizer, prompt_ids


def bench_info(model: str, vocab_size: int, k: int):
    from reasondistill.core.traces import TraceInfo

    return TraceInfo(
        teacher=model,
        teacher_revision=None,
        tokenizer=model,
        tokenizer_fingerprint="bench",
        vocab_size=vocab_size,
        k=k,
        temperature=1.0,
        top_p=1.0,
        logprobs_mode="raw_logprobs",
        seed=0,
        backend="vllm",
        recipe_fingerprint="bench",
    )


def measure_model(model_dir: Path, engine, tokenizer, prompt_ids, prompts, args) -> list[tuple[str, float]]:
    """Rows of (what, completion tokens/s) for one model, `engine` a VllmEngine on it."""
    from vllm import SamplingParams

    from reasondistill.core.engines import EngineConfig, SamplingConfig, TransformersEngine
    from reasondistill.generate.generate import run_shard
    from reasondistill.generate.generate_config import GenerateConfig

    settings = engine_settings(model_dir)
    common = dict(n=1, temperature=1.0, top_p=1.0, max_tokens=args.max_tokens)
    requests = [{"prompt_token_ids": p} for p in prompt_ids]
    rows = []

    def raw(**extra):
        params = [SamplingParams(**{**common, **extra}, seed=i) for i in range(len(requests))]
        return best_rate(
            lambda: engine.llm.generate(requests, params, use_tqdm=False),
            lambda outputs: sum(len(o.outputs[0].token_ids) for o in outputs),
            args.repeats,
        )

    raw(max_tokens=4)  # warm-up
    rows.append(("vLLM LLM.generate, no logprobs", raw()))
    rows.append(("vLLM LLM.generate, top-20 logprobs (dicts)", raw(logprobs=20)))
    rows.append(("vLLM LLM.generate, top-20 logprobs (flat)", raw(logprobs=20, flat_logprobs=True)))

    sampling = SamplingConfig(n=1, temperature=1.0, top_p=1.0, max_tokens=args.max_tokens)
    tokens_of = lambda results: sum(len(c[0].token_ids) for c in results)  # noqa: E731
    rows.append(
        (
            "our VllmEngine.sample (numpy top-20)",
            best_rate(
                lambda: engine.sample(prompt_ids, sampling, seeds=list(range(len(prompt_ids)))),
                tokens_of,
                args.repeats,
            ),
        )
    )

    config = GenerateConfig(
        **settings,
        prompts="task:arithmetic",
        instruction=None,
        temperature=1.0,
        top_p=1.0,
        max_tokens=args.max_tokens,
        answer_type="number",
        keep="all",
        drop_truncated=False,
        batch_prompts=len(prompts),
    )
    with tempfile.TemporaryDirectory() as scratch:
        from reasondistill.core.traces import write_shard

        def pipeline():
            records, stats = run_shard(config, engine, tokenizer, prompts)
            info = bench_info(str(model_dir), engine.llm.llm_engine.model_config.get_vocab_size(), 20)
            write_shard(scratch, 0, 1, records, info, dict(stats))
            return stats

        rows.append(
            (
                "our pipeline: sample + grade + records + Parquet",
                best_rate(pipeline, lambda stats: stats["completion_tokens"], args.repeats, scratch),
            )
        )

    hf = TransformersEngine(EngineConfig(**{**settings, "backend": "transformers"}), batch_size=len(prompts))
    rows.append(
        (
            "transformers backend (top-20)",
            best_rate(
                lambda: hf.sample(prompt_ids, sampling, seeds=list(range(len(prompt_ids)))),
                tokens_of,
                args.repeats,
            ),
        )
    )
    return rows


def storage_rows(teacher_dir: Path, engine, prompt_ids, prompts, args) -> list[tuple[int, str, str]]:
    """(k, bytes/token all columns, bytes/token top-k columns) on the demo teacher's real traces."""
    from reasondistill.core.engines import SamplingConfig
    from reasondistill.core.traces import TOPK_COLUMNS, bytes_per_token, write_shard

    completions = engine.sample(
        prompt_ids,
        SamplingConfig(n=1, temperature=1.0, top_p=1.0, max_tokens=args.storage_tokens),
        seeds=list(range(len(prompts))),
    )
    vocab_size = engine.llm.llm_engine.model_config.get_vocab_size()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for k in (1, 8, 20):
            records = [
                {
                    "prompt_id": str(i),
                    "sample_index": 0,
                    "question": p.question,
                    "prompt": "",
                    "prompt_token_ids": ids,
                    "completion": c[0].text,
                    "completion_token_ids": c[0].token_ids,
                    "topk_ids": c[0].topk_ids[:, :k],
                    "topk_logprobs": c[0].topk_logprobs[:, :k],
                    "sampled_logprob": c[0].sampled_logprobs,
                    "finish_reason": c[0].finish_reason,
                    "extracted_answer": None,
                    "gold_answer": p.gold_answer,
                    "correct": False,
                }
                for i, (p, ids, c) in enumerate(zip(prompts, prompt_ids, completions, strict=True))
            ]
            info = bench_info(str(teacher_dir), vocab_size, k)
            path = write_shard(Path(scratch) / f"k{k}", 0, 1, records, info, dict(Counter()))
            rows.append((k, f"{bytes_per_token(path):.1f}", f"{bytes_per_token(path, TOPK_COLUMNS):.1f}"))
    return rows


def main() -> None:
    from reasondistill.core.prompts import load_prompts

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--teacher", type=Path, help="demo teacher directory (default: the newest in the cache)"
    )
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--models",
        nargs="+",
        choices=["teacher", "random"],
        default=["teacher", "random"],
        help="models to time",
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs per rate (the best counts)")
    parser.add_argument("--storage-tokens", type=int, default=400, help="longest trace of the storage table")
    parser.add_argument(
        "--eager", action="store_true", help="vLLM without torch.compile: a faster start, slower decoding"
    )
    args = parser.parse_args()
    setup_logging("warning")  # the tables are the output; third-party start-up chatter stays down
    os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(".cache/reasondistill/vllm").resolve()))
    torch.set_num_threads(os.cpu_count() or 1)
    teacher = args.teacher or max(Path(".cache/reasondistill").glob("demo-teacher-*"), key=os.path.getmtime)
    prompts = load_prompts("task:arithmetic", split="test", limit=args.prompts)

    with tempfile.TemporaryDirectory() as scratch:
        models = {"teacher": ("demo teacher (3.3M)", teacher)}
        if "random" in args.models:
            models["random"] = (
                "random Qwen2 (~80M)",
                build_random_model(teacher, Path(scratch) / "random-80m"),
            )
        storage = []
        for name, model_dir in (models[chosen] for chosen in args.models):
            engine, tokenizer, prompt_ids = open_engine(model_dir, prompts, args.eager)
            try:
                rows = measure_model(model_dir, engine, tokenizer, prompt_ids, prompts, args)
                if model_dir == teacher:
                    storage = storage_rows(teacher, engine, prompt_ids, prompts, args)
            finally:
                engine.close()
            base = rows[0][1]
            print(
                f"\n{name}: {args.prompts} prompts x {args.max_tokens} tokens, temperature 1, float32, "
                f"{os.cpu_count()} CPU threads"
            )
            table = [(what, f"{rate:.0f}", f"{rate / base:.2f}") for what, rate in rows]
            print(markdown_table(["what", "tokens/s", "vs raw no-logprobs"], table, numeric=(1, 2)))
            rate = dict(rows)
            print(
                f"cost of top-20 logprobs (raw flat / raw none): {rate[rows[2][0]] / base:.2f}; "
                f"our pipeline / raw flat with the same sampling parameters: "
                f"{rate[rows[4][0]] / rate[rows[2][0]]:.2f}; vLLM engine / transformers backend: "
                f"{rate[rows[3][0]] / rate[rows[5][0]]:.2f}"
            )

    if storage:
        print("\nstored bytes per completion token (demo teacher traces, Parquet zstd):")
        print(markdown_table(["k", "all columns", "top-k columns"], storage, numeric=(0, 1, 2)))


if __name__ == "__main__":
    main()
