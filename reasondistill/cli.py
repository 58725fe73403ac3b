"""`reasondistill` command line: one sub-command per pipeline stage, each driven by a YAML recipe.

Every stage reads its recipe as TRL's and open-r1's scripts do, `reasondistill STAGE --config RECIPE.yaml`,
or `reasondistill STAGE RECIPE.yaml` for short, and accepts `--key value` overrides of any recipe field.
Run `reasondistill STAGE --help` for a stage's fields; `reasondistill --log_level debug STAGE ...` for more
messages.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import get_args

from reasondistill.core.logs import LogLevel, setup_logging
from reasondistill.core.recipe import RecipeError, locate_recipe, split_recipe_argument

DEFAULT_DEMO_RECIPE = "recipes/demo/teacher.yaml"  # shipped in the package: found from any directory

STAGES = {
    "generate": (
        "Sample chain-of-thought traces from a teacher with vLLM, keep per-token top-k logprobs, "
        "verify answers and write a Hugging Face trace dataset (Parquet shards + card)."
    ),
    "train": (
        "Distil a student (LoRA/QLoRA or full) on a trace dataset with cross-entropy plus token-level "
        "KL against the stored top-k teacher distribution; runs under `accelerate launch`."
    ),
    "evaluate": (
        "Score students, teachers and quantized models on GSM8K, MATH-500, AIME 2024 or the demo task "
        "with verified grading (pass@1 over n samples, maj@k) and write a report with plots."
    ),
    "quantize": (
        "Merge a LoRA adapter, quantize to 4-bit (bitsandbytes NF4, GGUF) and measure size, speed and "
        "accuracy kept."
    ),
    "prune": (
        "Remove decoder layers and MLP channels by their measured effect on calibration sequences: a "
        "smaller model of the same architecture, to distil back from its teacher."
    ),
    "pdq": (
        "Prune -> distil -> quantize a teacher in one run (three stage recipes), with size and accuracy "
        "after each step."
    ),
    "progressive": (
        "Distil through teaching assistants (teacher -> TA -> ... -> student, each on the traces of the one "
        "before), beside the student distilled directly, and evaluate them all."
    ),
    "federate": (
        "Federated distillation on Flower: clients send only top-k soft labels on a public prompt set, the "
        "server aggregates them into one teacher signal per token and distils a global student each round."
    ),
    "demo": (
        "Run the whole pipeline on CPU with models the project builds itself (no model hub): demo "
        "teacher -> vLLM traces -> SFT and KD students -> 4-bit -> prune, distil, quantize the teacher -> "
        "evaluation report."
    ),
}

# The dataclasses each stage's recipe fills, as "module:Class" (imported only when a stage's --help asks).
STAGE_CONFIGS = {
    "generate": ["reasondistill.generate.generate_config:GenerateConfig"],
    "train": ["trl:ModelConfig", "reasondistill.train.distill_config:DistillConfig"],
    "evaluate": ["reasondistill.evaluate.evaluate_config:EvaluateConfig"],
    "quantize": ["reasondistill.compress.quantize_config:QuantizeConfig"],
    "prune": ["reasondistill.compress.prune_config:PruneConfig"],
    "pdq": ["reasondistill.chains.pdq_config:PDQConfig"],
    "progressive": ["reasondistill.chains.progressive_config:ProgressiveConfig"],
    "federate": ["reasondistill.federate.federate_config:FederateConfig"],
    "demo": ["reasondistill.demo.teacher_config:TeacherConfig"],
}

# Stages that also run from command-line flags alone (`reasondistill evaluate --model DIR --benchmark gsm8k`).
RECIPE_OPTIONAL = {"evaluate", "quantize", "prune", "pdq"}


def set_cache_locations(cache_dir: Path) -> None:
    """Keep vLLM's and TorchInductor's caches under the project's cache directory unless the user
    already chose where they go (they default to ~/.cache/vllm and /tmp/torchinductor_*)."""
    os.environ.setdefault("VLLM_CACHE_ROOT", str((cache_dir / "vllm").resolve()))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str((cache_dir / "torchinductor").resolve()))


def stage_usage(stage: str) -> str:
    """`reasondistill STAGE ...`, the recipe in brackets where the stage also runs without one."""
    recipe = "RECIPE.yaml | --config RECIPE.yaml"
    recipe = f"[{recipe}]" if stage in RECIPE_OPTIONAL or stage == "demo" else f"({recipe})"
    default = f" (default recipe: {DEFAULT_DEMO_RECIPE})" if stage == "demo" else ""
    return f"reasondistill {stage} {recipe} [--key value ...] [-h]{default}"


def print_recipe_fields(stage: str, recipe: Path | None) -> None:
    """Every recipe field of the stage with its help and value (the recipe's, else the default); exits."""
    import importlib

    from reasondistill.core.recipe import parse_recipe

    classes = []
    for target in STAGE_CONFIGS[stage]:
        module, name = target.split(":")
        classes.append(getattr(importlib.import_module(module), name))
    print(f"usage: {stage_usage(stage)}\n\n{STAGES[stage]}\n")
    print("Recipe fields (YAML keys; --key value overrides them):")
    parse_recipe(recipe, tuple(classes), ["--help"])  # HfArgumentParser prints them and exits


def run_stage(stage: str, recipe: Path | None, overrides: list[str]) -> int:
    # Imported here so that `--help` and unbuilt stages answer without loading torch.
    if stage == "demo":
        from reasondistill.demo.demo import run_demo

        return run_demo(recipe, overrides)
    if stage == "evaluate":
        from reasondistill.evaluate.evaluate import run_evaluate

        return run_evaluate(recipe, overrides)
    if stage == "quantize":
        from reasondistill.compress.quantize import run_quantize

        return run_quantize(recipe, overrides)
    if stage == "prune":
        from reasondistill.compress.prune import run_prune

        return run_prune(recipe, overrides)
    if stage == "pdq":
        from reasondistill.chains.pdq import run_pdq

        return run_pdq(recipe, overrides)
    if stage == "progressive":
        from reasondistill.chains.progressive import run_progressive_cli

        return run_progressive_cli(recipe, overrides)
    if stage == "federate":
        from reasondistill.federate.federate import run_federate

        return run_federate(recipe, overrides)
    if stage == "train":
        from reasondistill.train.train import run_train

        return run_train(recipe, overrides)
    from reasondistill.generate.generate import run_generate

    return run_generate(recipe, overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reasondistill",
        description="Distil a large reasoning teacher into a small on-device student.",
        epilog="Stages: " + "; ".join(f"{name}: {text}" for name, text in STAGES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log_level",
        choices=get_args(LogLevel),
        default="info",
        # before the stage: after it, --log_level is a recipe field where the stage has one (train's
        # TrainingArguments.log_level, transformers' verbosity)
        help="how much reasondistill reports while a stage runs; give it before the stage (default: info)",
    )
    sub = parser.add_subparsers(dest="stage", metavar="{" + ",".join(STAGES) + "}", required=True)
    for name, text in STAGES.items():
        # -h is ours: it lists the recipe's fields, which argparse does not know about. The recipe and the
        # overrides are left to split_recipe_argument and parse_recipe.
        stage = sub.add_parser(name, help=text, usage=stage_usage(name), add_help=False, allow_abbrev=False)
        stage.add_argument("-h", "--help", action="store_true")
        stage.set_defaults(stage_parser=stage)  # so that main() reports errors as this stage's parser would
    return parser


def main(argv: list[str] | None = None) -> int:
    args, stage_args = build_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    stage, stage_parser = args.stage, args.stage_parser
    try:
        recipe, overrides = split_recipe_argument(stage_args)
        if stage == "demo":
            recipe = recipe or DEFAULT_DEMO_RECIPE
        # located here, not only by parse_recipe: the demo reads the recipes beside its own
        recipe_path = None if recipe is None else locate_recipe(recipe)
        if args.help:
            print_recipe_fields(stage, recipe_path)
        if recipe_path is None and stage not in RECIPE_OPTIONAL:
            raise RecipeError("a recipe is required (--help lists its fields)")
        setup_logging(args.log_level)
        set_cache_locations(Path(".cache/reasondistill"))
        return run_stage(stage, recipe_path, overrides)
    except ValueError as error:  # RecipeError included: bad input, the message names the problem and the fix
        if os.environ.get("REASONDISTILL_DEBUG"):
            raise
        sys.stderr.write(f"{stage_parser.format_usage()}{stage_parser.prog}: error: {error}\n")
        return 2
    except RuntimeError as error:
        # vLLM's engine died or was stopped mid-run: one line, not its traceback. Imported here (loaded
        # already if it raised) so that --help does not load torch.
        from reasondistill.core.engines import EngineStopped

        if not isinstance(error, EngineStopped) or os.environ.get("REASONDISTILL_DEBUG"):
            raise
        sys.stderr.write(f"{stage_parser.prog}: error: {error} (what was written stays: rerun the command)\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
