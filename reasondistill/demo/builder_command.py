"""The `python -m` command line of a demo model builder (base student, federated clients):
`[RECIPE.yaml] --tokenizer_dir DIR [--key value ...] [-h]`, the recipe parsed into the builder's config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TypeVar

from reasondistill.core.recipe import RecipeError, parse_recipe, split_recipe_argument

Config = TypeVar("Config")


def parse_builder_command(
    argv: list[str] | None, prog: str, description: str, config_class: type[Config], default_recipe: str
) -> tuple[Config, Path]:
    """(config, tokenizer directory) from the command line; `-h` lists the recipe's fields and exits, and
    a bad recipe or a missing --tokenizer_dir exits with argparse's usage error."""
    parser = argparse.ArgumentParser(
        prog=prog,
        usage="%(prog)s [RECIPE.yaml] --tokenizer_dir DIR [--key value ...] [-h]",
        description=description,
        epilog=f"RECIPE.yaml defaults to {default_recipe}; --key value flags override its fields.",
        add_help=False,
    )
    parser.add_argument(
        "--tokenizer_dir", type=Path, help="a model directory whose tokenizer it uses (the demo teacher's)"
    )
    parser.add_argument("-h", "--help", action="store_true", help="list the recipe's fields and exit")
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        recipe, overrides = split_recipe_argument(rest)
        if args.help:
            parser.print_help()
            parse_recipe(recipe or default_recipe, (config_class,), ["--help"])  # prints and exits
        if args.tokenizer_dir is None:
            raise RecipeError("--tokenizer_dir is required (the demo teacher's directory)")
        (config,) = parse_recipe(recipe or default_recipe, (config_class,), overrides)
    except RecipeError as error:
        parser.error(str(error))
    return config, args.tokenizer_dir
