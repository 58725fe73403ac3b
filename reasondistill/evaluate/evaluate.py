"""`reasondistill evaluate`: score models on benchmarks and write a report.

Phases: resolve benchmarks and check models (before any model loads) -> per model: load the engine
once, and per benchmark: render prompts through the model's chat template, sample n responses per
problem, grade each (answer extracted, failure reason), group equivalent answers for majority voting,
compute metrics with bootstrap intervals -> write results JSON, per-sample JSONL, Markdown report and
plots (`report.py`).

Library use (e.g. from the demo): `evaluate_models([ModelSpec(dir, "teacher"), ...], ["arithmetic"],
config)` returns one `RunResult` per (model, benchmark); `report.write_report(results, out_dir)` writes
them down.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

from reasondistill.core.engines import SamplingConfig, SamplingEngine, load_engine, prompt_seed
from reasondistill.core.grading import AnswerType, answers_match, grade
from reasondistill.core.logs import progress_bar
from reasondistill.core.model_dir import check_chat_tokenizer, check_model_source, is_adapter_dir
from reasondistill.core.prompts import PromptRecord, render_prompt
from reasondistill.core.recipe import parse_recipe
from reasondistill.core.run_reuse import check_run_dir, finish_run, start_run
from reasondistill.evaluate.benchmark_specs import BenchmarkSpec, load_benchmark, load_problems
from reasondistill.evaluate.decontaminate import check_contamination, trace_questions
from reasondistill.evaluate.evaluate_config import EvaluateConfig
from reasondistill.evaluate.metrics import bootstrap_ci, k_values, majority_at_k, pass_at_k
from reasondistill.evaluate.report import write_report
from reasondistill.evaluate.results import ModelSpec, RunResult
from reasondistill.evaluate.token_divergence import (
    divergence_report,
    divergence_settings,
    divergence_students,
)

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
EVALUATE_RECIPE_FILE = "evaluate_recipe.yaml"


def model_size_bytes(path: str) -> int | None:
    """Bytes of the model's weight files on disk (a GGUF file: its size); None for a hub id."""
    location = Path(path)
    if location.is_file():
        return location.stat().st_size
    if not location.is_dir():
        return None
    weights = [p for p in location.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]
    return sum(p.stat().st_size for p in weights) if weights else None


def check_model(path: str | Path, config: EvaluateConfig) -> None:
    """Refuse a model that cannot load or render prompts, before any engine starts: a missing path, a
    directory without config.json, tokenizer files or chat template, an adapter vLLM cannot load."""
    if Path(path).suffix == ".gguf" and Path(path).is_file():  # llama.cpp's one-file model, tokenizer apart
        if not config.tokenizer:
            raise ValueError(
                f"model {path} is a GGUF file: set --tokenizer to the directory of the model it was made from"
            )
    else:
        check_model_source(path, "model")
        if config.backend == "vllm" and is_adapter_dir(path):
            raise ValueError(
                f"model {path} is a LoRA adapter, which vLLM does not load as a model: merge it into its "
                "base first (train's save_merged_model: OUTPUT_DIR/merged) or set --backend transformers"
            )
    check_chat_tokenizer(config.tokenizer or path, "tokenizer" if config.tokenizer else "model")


def sampling_for(config: EvaluateConfig, spec: BenchmarkSpec) -> SamplingConfig:
    """The benchmark's default sampling with the config's overrides applied."""

    def pick(override, default):
        return default if override is None else override

    return SamplingConfig(
        n=pick(config.num_samples, spec.num_samples),
        temperature=pick(config.temperature, spec.temperature),
        top_p=pick(config.top_p, spec.top_p),
        max_tokens=pick(config.max_tokens, spec.max_tokens),
    )


def check_context(config: EvaluateConfig, model: str, spec: BenchmarkSpec, prompts: list[list[int]]) -> None:
    """Refuse a run whose longest prompt plus max_tokens does not fit the context: vLLM would stop
    there and transformers would run past the trained positions, so the backends would disagree."""
    context = config.max_model_len or getattr(
        AutoConfig.from_pretrained(model), "max_position_embeddings", None
    )
    longest = max(map(len, prompts))
    max_tokens = sampling_for(config, spec).max_tokens
    if context is not None and longest + max_tokens > context:
        raise ValueError(
            f"benchmark {spec.name}: the longest prompt ({longest} tokens) plus max_tokens ({max_tokens}) "
            f"exceeds the context of {context} tokens of {model}; lower --max_tokens or raise --max_model_len"
        )


def answer_votes(samples: list[dict], answer_type: AnswerType) -> list[int | None]:
    """Majority-vote class of each sample of one problem: 0 for a correct answer, 1, 2, ... for classes
    of equivalent wrong answers, None for no answer. Correct answers all match the gold: one class."""
    votes: list[int | None] = []
    classes: list[str] = []  # one representative wrong answer per class
    for sample in samples:
        if sample["correct"]:
            votes.append(0)
        elif sample["extracted"] is None:
            votes.append(None)
        else:
            match = next(
                (i for i, rep in enumerate(classes) if answers_match(sample["extracted"], rep, answer_type)),
                None,
            )
            if match is None:
                classes.append(sample["extracted"])
                match = len(classes) - 1
            votes.append(match + 1)
    return votes


def summarize(per_problem: list[list[dict]], seed: int, resamples: int) -> dict[str, dict[str, float]]:
    """pass@k and maj@k (k = 1, powers of two, n) with 95% bootstrap intervals over problems."""
    n = len(per_problem[0])
    metrics = {}
    for k in k_values(n):
        scores = {
            f"pass@{k}": [pass_at_k(n, sum(s["correct"] for s in samples), k) for samples in per_problem]
        }
        if k > 1:  # maj@1 is pass@1
            scores[f"maj@{k}"] = [
                majority_at_k([s["vote"] for s in samples], 0, k) for samples in per_problem
            ]
        for name, values in scores.items():
            low, high = bootstrap_ci(values, seed=seed, resamples=resamples)
            metrics[name] = {"value": sum(values) / len(values), "ci_low": low, "ci_high": high}
    return metrics


def encode_prompts(
    config: EvaluateConfig, model: ModelSpec, spec: BenchmarkSpec, problems: list[PromptRecord]
) -> list[list[int]]:
    """The problems rendered through the model's chat template, as token ids; done before any engine
    starts, so that a prompt plus max_tokens longer than the context is refused first."""
    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer or model.path)
    rendered = [
        render_prompt(tokenizer, spec.user_turn(p.question), spec.system_prompt, None, spec.think_prefill)
        for p in problems
    ]
    prompt_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in rendered]
    check_context(config, model.path, spec, prompt_ids)
    return prompt_ids


def evaluate_benchmark(
    config: EvaluateConfig,
    model: ModelSpec,
    spec: BenchmarkSpec,
    problems: list[PromptRecord],
    prompt_ids: list[list[int]],
    engine: SamplingEngine,
) -> RunResult:
    """Sample, grade and score one loaded model on one benchmark's problems (`encode_prompts`' ids)."""
    sampling = sampling_for(config, spec)
    seeds = [prompt_seed(config.seed, p.prompt_id) for p in problems]

    started, per_problem = time.time(), []
    with progress_bar(
        logger, total=len(problems), desc=f"{model.label} / {spec.name}", unit="problem"
    ) as bar:
        for start in range(0, len(problems), config.batch_prompts):
            batch = slice(start, start + config.batch_prompts)
            outputs = engine.sample(prompt_ids[batch], sampling, seeds[batch])
            for problem, completions in zip(problems[batch], outputs, strict=True):
                samples = []
                for index, completion in enumerate(completions):
                    verdict = grade(completion.text, problem.gold_answer, spec.answer_type)
                    truncated = completion.finish_reason == "length"
                    samples.append(
                        {
                            "model": model.label,
                            "benchmark": spec.name,
                            "problem_id": problem.prompt_id,
                            "sample_index": index,
                            "question": problem.question,
                            "gold": problem.gold_answer,
                            "response": completion.text,
                            "response_tokens": len(completion.token_ids),
                            "finish_reason": completion.finish_reason,
                            "extracted": verdict.extracted,
                            "correct": verdict.correct,
                            # why it failed; a cut-off response counts as truncated whatever it held
                            "failure": None
                            if verdict.correct
                            else "truncated"
                            if truncated
                            else verdict.reason,
                        }
                    )
                for sample, vote in zip(samples, answer_votes(samples, spec.answer_type), strict=True):
                    sample["vote"] = vote
                per_problem.append(samples)
            bar.update(len(outputs))
    elapsed = time.time() - started

    samples = [sample for group in per_problem for sample in group]
    lengths = [s["response_tokens"] for s in samples]
    failures = {
        reason: sum(s["failure"] == reason for s in samples) for reason in ("no_answer", "wrong", "truncated")
    }
    result = RunResult(
        model=model.label,
        model_path=model.path,
        size_bytes=model_size_bytes(model.path),
        benchmark=spec.name,
        description=spec.description,
        backend=engine.name,
        sampling=asdict(sampling) | {"seed": config.seed},
        bootstrap_samples=config.bootstrap_samples,
        num_problems=len(problems),
        metrics=summarize(per_problem, config.seed, config.bootstrap_samples),
        response_tokens={"mean": statistics.fmean(lengths), "median": statistics.median(lengths)},
        truncation_rate=sum(s["finish_reason"] == "length" for s in samples) / len(samples),
        failures={"correct": sum(s["correct"] for s in samples)} | failures,
        elapsed_s=round(elapsed, 1),
        samples=samples,
    )
    pass1 = result.metrics["pass@1"]
    logger.info(
        f"{model.label} on {spec.name}: pass@1 {pass1['value']:.1%} "
        f"[{pass1['ci_low']:.1%}, {pass1['ci_high']:.1%}] over {len(problems)} problems x {sampling.n} "
        f"samples in {elapsed:.0f} s"
    )
    return result


def single_benchmark_config(recipe: str | Path, overrides: list[str]) -> EvaluateConfig:
    """A chain's evaluate recipe with its overrides, checked now (before any training) to name exactly one
    benchmark that exists: the chains report one benchmark per model."""
    (config,) = parse_recipe(recipe, (EvaluateConfig,), overrides)
    if len(config.benchmark) != 1:
        raise ValueError(f"the evaluate recipe must name one benchmark, got {config.benchmark}")
    load_benchmark(config.benchmark[0])  # an unknown one fails now, not after the long part
    return config


def evaluate_models(
    models: Sequence[ModelSpec | str],
    benchmarks: Sequence[str | BenchmarkSpec],
    config: EvaluateConfig | None = None,
    engine: SamplingEngine | None = None,
) -> list[RunResult]:
    """Every model on every benchmark, one engine load per model; results in model-major order.

    `config` supplies engine, sampling overrides and metric settings (its `model` and `benchmark` lists
    are not used here). `engine` reuses an already loaded model (one model only).
    """
    config = config or EvaluateConfig()
    specs = [b if isinstance(b, BenchmarkSpec) else load_benchmark(b) for b in benchmarks]
    problems = [load_problems(spec, config.num_problems) for spec in specs]  # bad data fails before loading
    model_specs = [m if isinstance(m, ModelSpec) else ModelSpec(m) for m in models]
    if engine is not None and len(model_specs) != 1:
        raise ValueError("an already loaded engine can only evaluate its own model: pass one model")
    for model in model_specs:
        check_model(model.path, config)
    # every model's prompts before the first engine starts (a minute for vLLM on CPU): bad lengths fail now
    encoded = [
        [encode_prompts(config, m, s, p) for s, p in zip(specs, problems, strict=True)] for m in model_specs
    ]
    results = []
    for model, model_prompts in zip(model_specs, encoded, strict=True):
        model_engine = engine or load_engine(config.engine_config(model.path))
        try:
            for spec, spec_problems, prompt_ids in zip(specs, problems, model_prompts, strict=True):
                results.append(
                    evaluate_benchmark(config, model, spec, spec_problems, prompt_ids, model_engine)
                )
        finally:
            if engine is None:
                model_engine.close()
    return results


def run_evaluate(recipe: Path | None, overrides: list[str]) -> int:
    (config,) = parse_recipe(recipe, (EvaluateConfig,), overrides)
    if not config.model or not config.benchmark:
        raise ValueError("give at least one model and one benchmark: --model DIR [DIR ...] --benchmark NAME")
    names = config.model_name or [None] * len(config.model)
    models = [ModelSpec(path, name) for path, name in zip(config.model, names, strict=True)]
    for model in models:  # before the traces' overlap check and the divergence section read them
        check_model(model.path, config)
    contamination = None
    if config.traces:
        questions = trace_questions(config.traces)
        contamination = [check_contamination(questions, b, config.ngram_size) for b in config.benchmark]
    students = []
    if config.divergence_teacher:  # a missing teacher or another tokenizer fails before the long run
        check_model_source(config.divergence_teacher, "divergence_teacher")
        students = divergence_students(models, config.divergence_teacher)
    out = Path(config.output_dir)
    # one run per output_dir, refused before any engine starts
    record = check_run_dir([config], out / EVALUATE_RECIPE_FILE, config.overwrite)
    results = evaluate_models(models, config.benchmark, config)
    start_run([config], out / EVALUATE_RECIPE_FILE, clear=config.overwrite and record.state != "empty")
    sections = []
    if students:
        specs = [load_benchmark(b) for b in config.benchmark]
        settings = divergence_settings(config)
        sections.append(divergence_report(students, config.divergence_teacher, specs, out, settings))
    report = write_report(results, out, contamination, sections)
    finish_run(out / EVALUATE_RECIPE_FILE)
    logger.info(f"report: {report}")
    return 0
