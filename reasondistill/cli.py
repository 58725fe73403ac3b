"""`reasondistill` command line: one sub-command per pipeline stage, each driven by a YAML recipe.

Every stage reads `RECIPE.yaml` and accepts `--key value` overrides of any recipe field, as TRL's
scripts do. Run `reasondistill STAGE --help` for a stage's fields.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from reasondistill.core.recipe import RecipeError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEMO_RECIPE = "recipes/demo/teacher.yaml"

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
    "prune": ["reasondistill.compress.prune:PruneConfig"],
    "pdq": ["reasondistill.chains.pdq:PDQConfig"],
    "progressive": ["reasondistill.chains.progressive:ProgressiveConfig"],
    "demo": ["reasondistill.demo.teacher:TeacherConfig"],
}

# Stages that also run from command-line flags alone (`reasondistill evaluate --model DIR --benchmark gsm8k`).
RECIPE_OPTIONAL = {"evaluate", "quantize", "prune", "pdq"}


def set_cache_locations(cache_dir: Path) -> None:
    """Keep vLLM's and TorchInductor's caches under the project's cache directory unless the user
    already chose where they go (they default to ~/.cache/vllm and /tmp/torchinductor_*)."""
    os.environ.setdefault("VLLM_CACHE_ROOT", str((cache_dir / "vllm").resolve()))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str((cache_dir / "torchinductor").resolve()))


def resolve_demo_recipe(path: str) -> Path:
    """A relative recipe path is looked up in the working directory, then in the source checkout."""
    candidate = Path(path)
    if candidate.exists() or candidate.is_absolute():
        return candidate
    return REPO_ROOT / path


def print_recipe_fields(stage: str, recipe: str | None) -> None:
    """Every recipe field of the stage with its help and value (the recipe's, else the default); exits."""
    import importlib

    from reasondistill.core.recipe import parse_recipe

    classes = []
    for target in STAGE_CONFIGS[stage]:
        module, name = target.split(":")
        classes.append(getattr(importlib.import_module(module), name))
    print(f"{STAGES[stage]}\n\nRecipe fields (YAML keys; --key value overrides them):")
    parse_recipe(recipe, tuple(classes), ["--help"])  # HfArgumentParser prints them and exits


def run_stage(stage: str, recipe: str | None, overrides: list[str]) -> int:
    # Imported here so that `--help` and unbuilt stages answer without loading torch.
    if stage == "demo":
        from reasondistill.demo.demo import run_demo

        return run_demo(resolve_demo_recipe(recipe), overrides)
    if stage == "evaluate":
        from reasondistill.evaluate.evaluate import run_evaluate

        return run_evaluate(recipe and Path(recipe), overrides)
    if stage == "quantize":
        from reasondistill.compress.quantize import run_quantize

        return run_quantize(recipe and Path(recipe), overrides)
    if stage == "prune":
        from reasondistill.compress.prune import run_prune

        return run_prune(recipe, overrides)
    if stage == "pdq":
        from reasondistill.chains.pdq import run_pdq

        return run_pdq(recipe and Path(recipe), overrides)
    if stage == "progressive":
        from reasondistill.chains.progressive import run_progressive_cli

        return run_progressive_cli(Path(recipe), overrides)
    if stage == "train":
        from reasondistill.train.train import run_train

        return run_train(Path(recipe), overrides)
    from reasondistill.generate.generate import run_generate

    return run_generate(Path(recipe), overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reasondistill",
        description="Distil a large reasoning teacher into a small on-device student.",
        epilog="Stages: " + "; ".join(f"{name}: {text}" for name, text in STAGES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="stage", metavar="{" + ",".join(STAGES) + "}", required=True)
    for name, text in STAGES.items():
        # -h is ours: it lists the recipe's fields, which argparse does not know about
        stage = sub.add_parser(name, help=text, description=text, add_help=False)
        stage.add_argument(
            "-h",
            "--help",
            action="store_true",
            help="list the recipe fields (with RECIPE: its values) and exit",
        )
        default = DEFAULT_DEMO_RECIPE if name == "demo" else None
        stage.add_argument(
            "recipe",
            nargs="?",  # required unless optional, but checked after parsing so that --help works alone
            default=default,
            help="YAML recipe"
            + (f" (default: {default})" if default else "")
            + (" (optional: --key value flags alone also work)" if name in RECIPE_OPTIONAL else ""),
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, overrides = build_parser().parse_known_args(argv)
    if args.stage in RECIPE_OPTIONAL and argv[1:2] and argv[1].startswith("-"):
        # No recipe: argparse would otherwise take the first flag's value ("--model DIR") for one.
        args.recipe, overrides = None, argv[1:]
    if args.help:
        recipe = args.recipe and (resolve_demo_recipe(args.recipe) if args.stage == "demo" else args.recipe)
        print_recipe_fields(args.stage, recipe)
    if args.recipe is None and args.stage not in RECIPE_OPTIONAL:
        print(
            f"usage: reasondistill {args.stage} RECIPE.yaml [--key value ...]\n"
            f"reasondistill {args.stage}: error: a recipe is required (--help lists its fields)",
            file=sys.stderr,
        )
        return 2
    set_cache_locations(Path(".cache/reasondistill"))
    try:
        return run_stage(args.stage, args.recipe, overrides)
    except (RecipeError, ValueError) as error:  # bad input: the message names the problem and the fix
        if os.environ.get("REASONDISTILL_DEBUG"):
            raise
        print(f"reasondistill {args.stage}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
