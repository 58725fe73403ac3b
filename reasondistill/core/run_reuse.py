"""Reuse a finished run: a step whose output directory records exactly its resolved settings is not repeated.

Every stage saves its resolved recipe last (`save_resolved_recipe`), so the file marks a finished run;
`matches_saved_recipe` compares it with the settings at hand (a field the saved recipe lacks matches
when it holds its default). Chains (`pdq`, `progressive`, the demo) run their steps through here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from reasondistill.core.recipe import matches_saved_recipe

logger = logging.getLogger(__name__)


def run_unless_done(
    configs: Sequence[object], recipe_file: Path, run: Callable[[], object], redo: bool = False
) -> bool:
    """Call `run()` unless `recipe_file` records a finished run of exactly `configs`; True if it ran.

    `redo`: an input changed behind an unchanged path (a rebuilt model, regenerated traces), so a
    finished run of the same settings is stale and runs again."""
    if not redo and matches_saved_recipe(configs, recipe_file):
        logger.info("reusing %s", recipe_file.parent)
        return False
    run()
    return True
