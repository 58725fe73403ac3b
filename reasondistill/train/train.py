"""`reasondistill train RECIPE.yaml`: distil a student on a trace dataset with `DistillTrainer`.

Also runs under accelerate, one process per device:

    accelerate launch --config_file recipes/accelerate/ddp.yaml -m reasondistill.train RECIPE.yaml

Reads a trace dataset (docs/trace_schema.md) and a student model directory; writes OUTPUT_DIR with the
PEFT adapter (or full model), the tokenizer, checkpoints, TensorBoard logs, `compute.json` (what the
run spent: `distill_trainer.TrainingCompute`), `train_recipe.yaml` (the resolved settings: written as
`train_recipe.partial.yaml` when training starts, renamed when it ends) and, with `save_merged_model`,
OUTPUT_DIR/merged (a plain model directory).

OUTPUT_DIR holds one run (`core.run_reuse`): a finished run of the same settings is reused, an unfinished
one is resumed only when asked (`--resume_from_checkpoint last`), and a run of other settings is refused
unless `--overwrite`, which clears the directory first.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig, get_peft_config, get_quantization_config

from reasondistill.core.logs import setup_logging
from reasondistill.core.model_dir import check_model_source
from reasondistill.core.recipe import RecipeError, parse_recipe, split_recipe_argument
from reasondistill.core.run_reuse import RunDirError, check_run_dir, finish_run, start_run
from reasondistill.core.traces import TOKENIZER_DIR, TraceInfo, read_info
from reasondistill.train.distill_config import DistillConfig
from reasondistill.train.distill_data import (
    TopKCollator,
    check_tokenizer,
    gen_temperature,
    load_on_policy_prompts,
    load_trace_dataset,
    same_tokenizer,
)
from reasondistill.train.distill_trainer import DistillTrainer

RECIPE_FILE = "train_recipe.yaml"
COMPUTE_FILE = "compute.json"
# which trace dataset a run trained on (written when it starts): traces regenerated under the same path
# make a run of the same settings stale, never silently reused
TRACES_RECORD_FILE = "trained_on.json"


def traces_record(trace_dir: str) -> dict[str, str]:
    """What identifies a trace dataset beyond its path: when it was started, and its recipe's fingerprint."""
    info = read_info(trace_dir)
    return {"created_at": info.created_at, "recipe_fingerprint": info.recipe_fingerprint}


def traces_changed(args: DistillConfig) -> str | None:
    """How the traces differ from the ones OUTPUT_DIR's run trained on, or None (same, or not recorded:
    a run from before the record existed)."""
    saved = Path(args.output_dir) / TRACES_RECORD_FILE
    if not saved.is_file():
        return None
    old, new = json.loads(saved.read_text(encoding="utf-8")), traces_record(args.traces)
    if old == new:
        return None
    return (
        f"the traces at {args.traces} were written {new['created_at']}, "
        f"the run trained on ones written {old['created_at']}"
    )


MERGED_DIR = "merged"
USAGE = (
    "usage: python -m reasondistill.train {RECIPE.yaml | --config RECIPE.yaml} [--key value ...] "
    "[--log_level info]\n"
)

logger = logging.getLogger(__name__)


def load_model(path: str, model_args: ModelConfig) -> PreTrainedModel:
    """A causal LM from a directory or hub id, in the recipe's dtype, 4/8-bit if the recipe asks."""
    quantization_config = get_quantization_config(model_args)
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    device_map = None  # k-bit weights are placed at load: on this process's GPU when there is one
    if quantization_config is not None and torch.cuda.is_available():
        device_map = {"": PartialState().local_process_index}
    return AutoModelForCausalLM.from_pretrained(
        path,
        revision=model_args.model_revision,
        dtype=dtype,
        attn_implementation=model_args.attn_implementation,
        quantization_config=quantization_config,
        device_map=device_map,
    )


@dataclass(frozen=True)
class Claim:
    """How a run uses OUTPUT_DIR, decided before anything is loaded: `reuse` a finished run, else train
    after clearing it (`clear`) or not, from `resume` (Trainer's resume_from_checkpoint)."""

    reuse: bool = False
    clear: bool = False
    resume: str | bool | None = None


def claim_output_dir(
    model_args: ModelConfig, args: DistillConfig, redo: bool, overwrite: bool, resume_unfinished: bool
) -> Claim:
    """What OUTPUT_DIR holding a run means for this one; reads only (every process decides alike).

    `overwrite`: a run of other settings is cleared instead of refused. `redo`: a run of the same settings
    is stale (an input changed behind its path). `resume_unfinished`: an unfinished run of the same settings
    continues from its last checkpoint (chains); else it must be resumed explicitly or overwritten."""
    asked = True if args.resume_from_checkpoint == "last" else args.resume_from_checkpoint
    recipe_file = Path(args.output_dir) / RECIPE_FILE
    record = check_run_dir([model_args, args], recipe_file, overwrite or args.overwrite, resume=bool(asked))
    if record.state in ("empty", "unrecorded"):  # unrecorded: resumed as asked
        return Claim(resume=asked)
    if args.overwrite or redo or not record.same:
        return Claim(clear=True)
    if changed := traces_changed(args):  # the same settings on other traces: stale
        if overwrite:
            return Claim(clear=True)
        raise RunDirError(
            f"output_dir {record.directory} holds a run of these settings, but {changed} (regenerated); "
            "nothing was changed. Pass --overwrite to train again on them, or choose another output_dir"
        )
    if record.state == "finished":
        return Claim(reuse=True)
    if asked:  # an explicit resume of the same settings
        return Claim(resume=asked)
    last = get_last_checkpoint(args.output_dir)
    if last is None:  # nothing saved yet: nothing to lose by starting again
        return Claim(clear=True)
    if resume_unfinished:
        return Claim(resume=True)
    raise RunDirError(
        f"output_dir {record.directory} holds an unfinished run of these settings (last checkpoint: {last}); "
        "nothing was changed. Resume it with --resume_from_checkpoint last, pass --overwrite to start again, "
        "or choose another output_dir"
    )


def distill_trainer(
    model: PreTrainedModel,
    args: DistillConfig,
    tokenizer: PreTrainedTokenizerBase,
    info: TraceInfo,
    train_dataset: Dataset,
    k: int | None = None,
    **trainer_kwargs: Any,
) -> DistillTrainer:
    """The trainer of `reasondistill train` on a loaded trace dataset: batches of its top-k (`k`, default
    the traces' own; 1 for one-hot targets) at the traces' generation temperature."""
    k = info.k if k is None else k
    collator = TopKCollator(
        pad_token_id=tokenizer.pad_token_id,
        k=k,
        student_vocab_size=model.get_output_embeddings().weight.shape[0],
        max_length=args.max_length,
        target_k=args.kd_top_k if k == info.k else None,  # kd_top_k has no effect at kd_weight 0
    )
    return DistillTrainer(
        model=model,
        args=args,
        data_collator=collator,
        gen_temperature=gen_temperature(info),
        train_dataset=train_dataset,
        processing_class=tokenizer,
        **trainer_kwargs,
    )


def distil(model_args: ModelConfig, args: DistillConfig, claim: Claim) -> None:
    """Load, record the run as started in OUTPUT_DIR, train, save; `claim` says how OUTPUT_DIR is used."""
    set_seed(args.seed)
    student = model_args.model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(student, revision=model_args.model_revision)
    render_with = tokenizer if args.prompt_chat_template == "student" else None  # None: the stored prompt ids
    # A student with another tokenizer reads the traces' text re-tokenized (prompt_chat_template: student):
    # one-hot targets for sequence-level training, the top-k aligned by bytes for token-level KD.
    info = read_info(args.traces)
    cross_tokenizer = render_with is not None and not same_tokenizer(info, tokenizer)
    if cross_tokenizer and args.lmbda > 0:
        raise ValueError(
            f"on-policy steps (lmbda > 0) score the student's samples with the teacher's vocabulary, and the "
            f"student {student} has another tokenizer than the traces' teacher: use lmbda: 0"
        )
    teacher_tokenizer = (
        cross_tokenizer_teacher(args.traces, info, args) if cross_tokenizer and args.kd_weight > 0 else None
    )
    train_dataset, info, counts = load_trace_dataset(
        args.traces, args.only_correct, args.max_length, render_with, args.num_traces, True, teacher_tokenizer
    )
    if render_with is None:  # load_trace_dataset checked it when it re-rendered the prompts
        check_tokenizer(info, tokenizer, student)
    k = 1 if cross_tokenizer and teacher_tokenizer is None else info.k  # one-hot targets: k = 1
    eval_dataset = None
    if args.eval_traces:
        eval_dataset, eval_info, _ = load_trace_dataset(
            args.eval_traces, args.only_correct, args.max_length, render_with, None, True, teacher_tokenizer
        )
        if render_with is None:
            check_tokenizer(eval_info, tokenizer, student)
        if eval_info.k != info.k:
            raise ValueError(
                f"eval_traces store top-{eval_info.k}, the training traces top-{info.k}: use one k"
            )
    on_policy_prompts = None
    if args.lmbda > 0:  # the trainer loads the teacher for on-policy scoring (reasondistill.train.on_policy)
        scoring_tokenizer = AutoTokenizer.from_pretrained(args.teacher_model)
        check_tokenizer(info, scoring_tokenizer, args.teacher_model)
        if args.on_policy_prompts:
            on_policy_prompts, too_long = load_on_policy_prompts(
                args.on_policy_prompts,
                args.on_policy_prompts_split,
                args.on_policy_num_prompts,
                args.on_policy_question_field,
                info,
                scoring_tokenizer,
                render_with,
                args.max_length,
            )
            logger.info(
                "on-policy steps draw from %d prompts of %s (%d dropped: prompt fills max_length)",
                len(on_policy_prompts.student),
                args.on_policy_prompts,
                too_long,
            )
    model = load_model(student, model_args)

    # Loaded: the run starts now. Every process has read OUTPUT_DIR before the main one writes it, and the
    # settings are recorded before the trainer exists, as they were parsed.
    recipe_file = Path(args.output_dir) / RECIPE_FILE
    state = PartialState()
    state.wait_for_everyone()
    if state.is_main_process:
        start_run([model_args, args], recipe_file, clear=claim.clear)
        (Path(args.output_dir) / TRACES_RECORD_FILE).write_text(json.dumps(traces_record(args.traces)))
    state.wait_for_everyone()

    trainer = distill_trainer(
        model,
        args,
        tokenizer,
        info,
        train_dataset,
        k=k,
        on_policy_prompts=on_policy_prompts,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
    )
    logger.info(
        "distilling %s on %d traces from %s (dropped: %s, prompts in the %s's chat template) on %d processes",
        student,
        len(train_dataset),
        info.teacher,
        counts.dropped,
        args.prompt_chat_template,
        trainer.accelerator.num_processes,
    )
    if counts.alignment:
        logger.info("top-k aligned to the student's tokens: %s", counts.alignment)
    trainer.train(resume_from_checkpoint=claim.resume)
    out = Path(args.output_dir)
    trainer.save_model(str(out))
    if trainer.accelerator.is_main_process:
        (out / COMPUTE_FILE).write_text(json.dumps(asdict(trainer.compute), indent=1))
        trainer.state.save_to_json(str(out / "trainer_state.json"))  # the log history of this run
        if args.save_merged_model:
            merged = trainer.model.merge_and_unload() if model_args.use_peft else trainer.model
            merged.save_pretrained(out / MERGED_DIR)
            tokenizer.save_pretrained(out / MERGED_DIR)
        finish_run(recipe_file)
    trainer.accelerator.wait_for_everyone()


def cross_tokenizer_teacher(trace_dir: str, info: TraceInfo, args: DistillConfig) -> PreTrainedTokenizerBase:
    """The traces' teacher tokenizer, which token-level KD across tokenizers needs to spell the teacher's
    ids as bytes: the copy in the dataset (schema >= 1.2), else `teacher_model`, else the recorded one."""
    stored = Path(trace_dir) / TOKENIZER_DIR
    source = str(stored) if stored.is_dir() else args.teacher_model or info.tokenizer
    try:
        return AutoTokenizer.from_pretrained(source)
    except OSError as error:
        raise ValueError(
            "token-level KD for a student with another tokenizer aligns the teacher's top-k by bytes and "
            f"needs the teacher's tokenizer, but {source!r} cannot be loaded ({error.__class__.__name__}): "
            "set teacher_model to a local copy of the teacher, or train sequence-level with kd_weight: 0"
        ) from None


def check_settings(model_args: ModelConfig, args: DistillConfig) -> None:
    """What the two settings objects cannot check alone, and the model paths, before anything loads."""
    if not model_args.model_name_or_path:
        raise ValueError("`model_name_or_path` (the student model directory or hub id) is required")
    check_model_source(
        model_args.model_name_or_path, "model_name_or_path", revision=model_args.model_revision
    )
    if args.lmbda > 0:
        check_model_source(args.teacher_model, "teacher_model")
    if args.save_merged_model and (model_args.load_in_4bit or model_args.load_in_8bit):
        raise ValueError(
            "save_merged_model with a 4/8-bit base would merge into rounded weights: train the adapter, then "
            "`reasondistill quantize` merges it into the full-precision base before quantizing"
        )


def train_unless_done(
    model_args: ModelConfig,
    args: DistillConfig,
    redo: bool = False,
    overwrite: bool = False,
    resume_unfinished: bool = True,
) -> bool:
    """A chain's step: train, unless OUTPUT_DIR holds a finished run of exactly these resolved settings
    (then reused); True if it trained. `redo`: an input changed behind an unchanged path (a rebuilt model,
    regenerated traces), so a run of the same settings is stale. `overwrite`: a run of other settings is
    replaced instead of refused. `resume_unfinished`: an unfinished run of these settings continues from
    its last checkpoint (else it is refused unless resumed explicitly)."""
    check_settings(model_args, args)
    claim = claim_output_dir(model_args, args, redo, overwrite, resume_unfinished)
    if claim.reuse:
        logger.info("reusing %s", args.output_dir)
        return False
    distil(model_args, args, claim)
    return True


def train(model_args: ModelConfig, args: DistillConfig) -> Path:
    """`reasondistill train`: distil into OUTPUT_DIR as the module docstring says (a finished run of the
    same settings is reused); returns the output directory."""
    train_unless_done(model_args, args, resume_unfinished=False)
    return Path(args.output_dir)


def run_train(recipe: Path | None, overrides: list[str]) -> int:
    model_args, args = parse_recipe(recipe, (ModelConfig, DistillConfig), overrides)
    train(model_args, args)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m reasondistill.train RECIPE.yaml [--key value ...]`, or `--config RECIPE.yaml` as TRL's
    scripts take it (the form `accelerate launch` runs)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        recipe, overrides = split_recipe_argument(argv)
    except RecipeError as error:
        sys.stderr.write(f"{USAGE}error: {error}\n")
        return 2
    if recipe is None:
        sys.stderr.write(USAGE)
        return 2
    # `--log_level` is also TrainingArguments' field (transformers' verbosity), so it stays in the overrides
    levels = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    levels.add_argument("--log_level", default="info")
    setup_logging(levels.parse_known_args(overrides)[0].log_level)
    return run_train(Path(recipe), overrides)
