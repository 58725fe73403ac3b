"""`reasondistill generate RECIPE.yaml`: teacher traces with top-k logprobs, verified, as a dataset.

Phases: read prompts -> check the output directory (resume or refuse; every existing shard checked
against its recorded sha256, a corrupt one named, or deleted with `--repair`) -> load the engine -> for
each missing shard: sample (or score) with top-k logprobs, grade, filter, write the shard atomically
-> when every shard exists, write the dataset card.

Shard i always holds prompts [i * shard_size, (i + 1) * shard_size), so a crashed run, a re-run or
any number of independent workers (`num_workers`, `worker_index`) fill the same shards, each at
most once. Each prompt's sampling seed derives from the recipe seed and its prompt id, so a
resumed vLLM run draws what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from reasondistill.core.engines import (
    LOGPROBS_MODE,
    Completion,
    SamplingConfig,
    TeacherEngine,
    TokenLogprobs,
    load_engine,
    prompt_seed,
)
from reasondistill.core.grading import grade
from reasondistill.core.logs import progress_bar
from reasondistill.core.model_dir import check_chat_tokenizer, check_model_source
from reasondistill.core.prompts import PromptRecord, load_prompts, render_prompt
from reasondistill.core.recipe import parse_recipe, recipe_changes, save_resolved_recipe
from reasondistill.core.traces import (
    INFO_FILE,
    TOKENIZER_DIR,
    TraceInfo,
    completed_shards,
    read_info,
    tokenizer_fingerprint,
    write_card,
    write_shard,
)
from reasondistill.generate.generate_config import NON_SEMANTIC_FIELDS, GenerateConfig

logger = logging.getLogger(__name__)

RECIPE_FILE = "generate_recipe.yaml"


def engine_version(backend: str) -> str:
    module = __import__(backend)
    return f"{backend} {getattr(module, '__version__', 'unknown')}"


def check_output_path(out: Path) -> None:
    """Refuse an output_dir that cannot become a directory before anything is loaded."""
    if blocker := next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None):
        raise ValueError(
            f"output_dir {out}: {blocker} is a file, not a directory; choose another output_dir "
            "(nothing was changed)"
        )


def prepare_output_dir(config: GenerateConfig, info: TraceInfo) -> TraceInfo:
    """Resume into a dataset of the same recipe, refuse another one, or start a new one.

    Returns the TraceInfo the shards must carry (an existing dataset keeps its own creation time).
    """
    out = Path(config.output_dir)
    if (out / INFO_FILE).exists() or any(out.glob("data/*.parquet")):
        existing = read_info(out)
        if existing.recipe_fingerprint == info.recipe_fingerprint:
            existing.check_compatible(info, str(out))
            # An older minor's dataset is finished at this one; the same recipe rendered the same prompts.
            return replace(existing, prompt_render=info.prompt_render, schema_version=info.schema_version)
        if not config.overwrite:
            recorded = out / RECIPE_FILE
            changes = recipe_changes([config], recorded, NON_SEMANTIC_FIELDS) if recorded.is_file() else []
            differ = ", ".join(changes) or (
                f"recipe fingerprint {existing.recipe_fingerprint} -> {info.recipe_fingerprint}"
            )
            raise ValueError(
                f"output_dir {out} holds traces made with other settings ({differ}). Nothing was changed. "
                "Use a new output_dir, restore the old recipe to resume, or pass --overwrite to delete them."
            )
        shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()):
        raise ValueError(
            f"output_dir {out} is not empty and holds no trace dataset; choose an empty or new "
            "directory (nothing was changed)"
        )
    out.mkdir(parents=True, exist_ok=True)
    save_resolved_recipe([config], out / RECIPE_FILE)
    write_card(out, info)  # trace_info.json, and a card that says INCOMPLETE until the last shard
    return info


def filter_completions(
    config: GenerateConfig, prompt: PromptRecord, completions: list[Completion], stats: Counter
) -> list[tuple[int, Completion, object]]:
    """Grade each completion and keep those the recipe wants; count every decision in `stats`."""
    kept = []
    for index, completion in enumerate(completions):
        stats["generated"] += 1
        verdict = grade(completion.text, prompt.gold_answer, config.answer_type)
        stats[f"graded_{verdict.reason}"] += 1
        if not (
            np.isfinite(completion.sampled_logprobs).all() and not np.isnan(completion.topk_logprobs).any()
        ):
            stats["dropped_nonfinite_logprobs"] += 1  # a numerically broken teacher step; never stored
        elif completion.finish_reason == "length" and config.drop_truncated:
            stats["dropped_truncated"] += 1
        elif config.keep == "correct" and not verdict.correct:
            stats[f"dropped_{verdict.reason}"] += 1
        elif config.max_completion_tokens and len(completion.token_ids) > config.max_completion_tokens:
            stats["dropped_too_long"] += 1
        elif config.max_samples_per_prompt is not None and len(kept) >= config.max_samples_per_prompt:
            stats["dropped_over_max_samples"] += 1
        else:
            stats["kept"] += 1
            kept.append((index, completion, verdict))
    return kept


def run_shard(
    config: GenerateConfig,
    engine: TeacherEngine,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[PromptRecord],
    on_batch: Callable[[int, int], None] = lambda prompts, tokens: None,
) -> tuple[list[dict], Counter]:
    """Generate (or score), grade and filter one shard's prompts; return its records and counters."""
    rendered = [render_prompt(tokenizer, p.question, **config.prompt_render()) for p in prompts]
    prompt_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in rendered]
    records, stats = [], Counter()
    for start in range(0, len(prompts), config.batch_prompts):
        batch = slice(start, start + config.batch_prompts)
        if config.mode == "score":
            outputs = [
                [as_completion(tokenizer, scored)]
                for scored in engine.score(
                    prompt_ids[batch], [completion_ids(tokenizer, p) for p in prompts[batch]]
                )
            ]
        else:
            sampling = SamplingConfig(
                n=config.num_samples,
                temperature=config.temperature,
                top_p=config.top_p,
                max_tokens=config.max_tokens,
            )
            seeds = [prompt_seed(config.seed, p.prompt_id) for p in prompts[batch]]
            outputs = engine.sample(prompt_ids[batch], sampling, seeds)
        for prompt, text, ids, completions in zip(
            prompts[batch], rendered[batch], prompt_ids[batch], outputs, strict=True
        ):
            for sample_index, completion, verdict in filter_completions(config, prompt, completions, stats):
                records.append(
                    {
                        "prompt_id": prompt.prompt_id,
                        "sample_index": sample_index,
                        "question": prompt.question,
                        "prompt": text,
                        "prompt_token_ids": ids,
                        "completion": completion.text,
                        "completion_token_ids": completion.token_ids,
                        "topk_ids": completion.topk_ids,
                        "topk_logprobs": completion.topk_logprobs,
                        "sampled_logprob": completion.sampled_logprobs,
                        "finish_reason": completion.finish_reason,
                        "extracted_answer": verdict.extracted,
                        "gold_answer": prompt.gold_answer,
                        "correct": verdict.correct,
                    }
                )
            stats["completion_tokens"] += sum(len(c.token_ids) for c in completions)
        on_batch(len(prompts[batch]), sum(len(c.token_ids) for cs in outputs for c in cs))
    return records, stats


def completion_ids(tokenizer: PreTrainedTokenizerBase, prompt: PromptRecord) -> list[int]:
    """Token ids of an existing completion: given ids as they are; text tokenized and closed with the
    end-of-turn token the student must learn."""
    if isinstance(prompt.completion, tuple):
        return list(prompt.completion)
    ids = tokenizer(prompt.completion, add_special_tokens=False)["input_ids"]
    return ids if ids and ids[-1] == tokenizer.eos_token_id else ids + [tokenizer.eos_token_id]


def as_completion(tokenizer: PreTrainedTokenizerBase, scored: TokenLogprobs) -> Completion:
    text = tokenizer.decode(scored.token_ids, skip_special_tokens=True)
    return Completion(
        scored.token_ids,
        scored.sampled_logprobs,
        scored.topk_ids,
        scored.topk_logprobs,
        text=text,
        finish_reason="stop",
    )


def teacher_vocab_size(config: GenerateConfig, tokenizer: PreTrainedTokenizerBase) -> int:
    """Width of the teacher's logits, after checking the tokenizer belongs to the teacher."""
    model_config = AutoConfig.from_pretrained(config.teacher, revision=config.teacher_revision)
    vocab_size = getattr(model_config, "vocab_size", None) or model_config.get_text_config().vocab_size
    largest_id = max(tokenizer.get_vocab().values())
    if largest_id >= vocab_size:
        raise ValueError(
            f"tokenizer {config.tokenizer or config.teacher} has token ids up to {largest_id}, but "
            f"teacher {config.teacher} has only {vocab_size} logits: they do not belong together. "
            "Set tokenizer to the teacher's own tokenizer (or leave it unset)."
        )
    if config.logprobs > vocab_size:
        raise ValueError(f"logprobs (k) = {config.logprobs} exceeds the teacher's vocabulary of {vocab_size}")
    return vocab_size


def generate(config: GenerateConfig, engine: TeacherEngine | None = None) -> Path:
    """Fill this worker's missing shards of `config.output_dir`; write the card once all exist.

    `engine` reuses an already loaded teacher (it must match the config); by default one is loaded.
    """
    # 1. prompts and tokenizer (the output path first: a typo there should not wait for them)
    out = Path(config.output_dir)
    check_output_path(out)
    check_model_source(config.teacher, "teacher", revision=config.teacher_revision)
    check_chat_tokenizer(config.tokenizer or config.teacher, "tokenizer" if config.tokenizer else "teacher")
    prompts = load_prompts(
        config.prompts,
        split=config.prompt_split,
        subset=config.prompt_subset,
        limit=config.num_prompts,
        question_field=config.question_field,
        answer_field=config.answer_field,
        id_field=config.id_field,
        completion_field=config.completion_field,
        answer_format=config.answer_format,
        task_levels=tuple(config.task_levels),
        seed=config.seed,
    )
    tokenizer = AutoTokenizer.from_pretrained(
        config.tokenizer or config.teacher, revision=config.teacher_revision
    )
    vocab_size = teacher_vocab_size(config, tokenizer)
    info = TraceInfo(
        teacher=config.teacher,
        teacher_revision=config.teacher_revision,
        tokenizer=config.tokenizer or config.teacher,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer.get_vocab()),
        vocab_size=vocab_size,
        k=config.logprobs,
        temperature=config.temperature,
        top_p=config.top_p,
        logprobs_mode=LOGPROBS_MODE,
        seed=config.seed,
        backend=engine_version(config.backend),
        recipe_fingerprint=config.fingerprint(),
        prompt_render=config.prompt_render(),
    )

    # 2. output directory: resume (checking every shard's checksum), repair, refuse or start
    info = prepare_output_dir(config, info)
    num_shards = math.ceil(len(prompts) / config.shard_size)
    done = completed_shards(out, num_shards, info, repair=config.repair)
    mine = [i for i in range(num_shards) if i % config.num_workers == config.worker_index and i not in done]
    logger.info(
        f"{len(prompts)} prompts in {num_shards} shards: {len(done)} done, {len(mine)} for this worker "
        f"({config.worker_index + 1}/{config.num_workers})"
    )

    # 3. engine and shards
    if mine:
        own_engine = engine is None
        engine = engine or load_engine(config, scoring=config.mode == "score")
        started = time.time()
        total = sum(len(prompts[i * config.shard_size : (i + 1) * config.shard_size]) for i in mine)
        try:
            with progress_bar(logger, total=total, desc="prompts", unit="prompt") as progress:
                tokens = 0

                def show(prompts_done: int, new_tokens: int) -> None:
                    nonlocal tokens
                    tokens += new_tokens
                    progress.update(prompts_done)
                    progress.set_postfix(
                        tokens_per_s=f"{tokens / max(progress.format_dict['elapsed'], 1e-9):.0f}"
                    )

                for shard in mine:
                    chunk = prompts[shard * config.shard_size : (shard + 1) * config.shard_size]
                    records, stats = run_shard(config, engine, tokenizer, chunk, show)
                    write_shard(out, shard, num_shards, records, info, dict(stats))
        finally:
            if own_engine:
                engine.close()
        logger.info(f"generated {len(mine)} shard(s) in {time.time() - started:.0f} s")

    # 4. the card, once every worker's shards are in
    if len(completed_shards(out, num_shards, info)) == num_shards:
        # the ids' spelling travels with them: token-level KD for a student of another tokenizer
        tokenizer.save_pretrained(out / TOKENIZER_DIR)
        write_card(out, info)
        logger.info(f"trace dataset complete: {out} (card: {out / 'README.md'})")
    else:
        logger.info(f"{out}: waiting for other workers' shards; re-run any worker to finish the card")
    return out


def run_generate(recipe: Path | None, overrides: list[str]) -> int:
    (config,) = parse_recipe(recipe, (GenerateConfig,), overrides)
    generate(config)
    return 0
