"""One run per output directory: a stage records its resolved recipe when it starts and marks it finished
when it ends, and refuses a directory that holds another run.

A stage writing OUTPUT_DIR with recipe file NAME.yaml (`train_recipe.yaml`, ...) writes NAME.partial.yaml
before its first output (`start_run`) and renames it to NAME.yaml after its last (`finish_run`), so NAME.yaml
still marks a finished run, as it did when it was saved last. `check_run_dir` says what the directory holds:
nothing, a finished or unfinished run of these settings, or another run, which it refuses naming each
setting that differs (`recipe_changes`) and the fixes, unless the caller may overwrite it. `run_in_dir` is
that protocol around a stage's work; chains (`pdq`, `progressive`, the demo) reuse a finished step of the
same settings with `run_unless_done`.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reasondistill.core.recipe import recipe_changes, save_resolved_recipe

logger = logging.getLogger(__name__)

RunState = Literal["empty", "finished", "unfinished", "unrecorded"]


class RunDirError(ValueError):
    """OUTPUT_DIR holds another run; the message names the directory, what differs and the fixes."""


@dataclass(frozen=True)
class RunRecord:
    """What a stage's output directory holds: `state`, and for a recorded run the settings in which it
    differs from the ones at hand ("key: old -> new")."""

    directory: Path
    state: RunState
    changes: tuple[str, ...] = ()

    @property
    def same(self) -> bool:
        """A recorded run, finished or not, of exactly these settings."""
        return self.state in ("finished", "unfinished") and not self.changes


def partial_recipe(recipe_file: Path) -> Path:
    """Where a started run records its settings until it finishes: NAME.partial.yaml beside NAME.yaml."""
    return recipe_file.with_name(f"{recipe_file.stem}.partial{recipe_file.suffix}")


def inspect_run_dir(configs: Sequence[object], recipe_file: str | os.PathLike) -> RunRecord:
    """What `recipe_file`'s directory holds for a run of `configs`; reads only."""
    recipe_file = Path(recipe_file)
    directory = recipe_file.parent
    # the partial record first: a rerun writes it before it removes the old finished one
    for state, record in (("unfinished", partial_recipe(recipe_file)), ("finished", recipe_file)):
        if record.is_file():
            return RunRecord(directory, state, tuple(recipe_changes(configs, record)))
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        return RunRecord(directory, "unrecorded")
    return RunRecord(directory, "empty")


def check_run_dir(
    configs: Sequence[object], recipe_file: str | os.PathLike, overwrite: bool = False, resume: bool = False
) -> RunRecord:
    """`inspect_run_dir`, refusing a directory that holds another run: one of other settings unless
    `overwrite` (then the caller clears it: `start_run(..., clear=True)`), and files of no recorded run
    unless `resume` (an explicit resume of what is there: a checkpoint copied in, a run from before runs
    were recorded). --overwrite never deletes a directory no stage recorded, such as a mistyped `.`.

    Raises:
        RunDirError: one line naming the directory, the settings that differ (old -> new) and the fixes.
    """
    record = inspect_run_dir(configs, recipe_file)
    if record.state == "unrecorded" and not resume:
        raise RunDirError(
            f"output_dir {record.directory} is not empty and records no run (no {Path(recipe_file).name}); "
            "nothing was changed. Choose another output_dir, or empty it yourself"
        )
    if overwrite or record.state in ("empty", "unrecorded") or record.same:
        return record
    if record.state == "finished":
        held, recorded, keep = "a finished", Path(recipe_file), "reuse"
    else:
        held, recorded, keep = "an unfinished", partial_recipe(Path(recipe_file)), "resume"
    raise RunDirError(
        f"output_dir {record.directory} holds {held} run of other settings ({', '.join(record.changes)}); "
        "nothing was changed. Pass --overwrite to clear it, choose another output_dir, or "
        f"{keep} it with its recorded settings ({recorded})"
    )


def clear_dir(directory: str | os.PathLike) -> None:
    """Remove `directory` and everything in it, if it exists (a chain's parts rewritten whole per run)."""
    if Path(directory).exists():
        shutil.rmtree(directory)


def start_run(configs: Sequence[object], recipe_file: str | os.PathLike, clear: bool = False) -> None:
    """Record a run of `configs` as started in `recipe_file`'s directory, emptied first if `clear`."""
    recipe_file = Path(recipe_file)
    directory = recipe_file.parent
    if clear:
        clear_dir(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_resolved_recipe(configs, partial_recipe(recipe_file))
    recipe_file.unlink(missing_ok=True)  # a rerun in place is unfinished until it finishes again


def finish_run(recipe_file: str | os.PathLike) -> None:
    """Mark the run started in `recipe_file`'s directory finished (atomically: one rename)."""
    recipe_file = Path(recipe_file)
    os.replace(partial_recipe(recipe_file), recipe_file)


@contextmanager
def run_in_dir(
    configs: Sequence[object], recipe_file: str | os.PathLike, overwrite: bool = False
) -> Iterator[RunRecord]:
    """Run a stage's work (the `with` body) in `recipe_file`'s directory: refused if it holds another run
    (unless `overwrite`, which clears it first), redone in place over a run of the same settings (whose
    outputs have the same names), marked finished if the body returns."""
    record = check_run_dir(configs, recipe_file, overwrite)
    start_run(configs, recipe_file, clear=overwrite and record.state != "empty")
    yield record
    finish_run(recipe_file)


def run_unless_done(
    configs: Sequence[object],
    recipe_file: str | os.PathLike,
    run: Callable[[], object],
    redo: bool = False,
    overwrite: bool = False,
) -> bool:
    """A chain's step: call `run()` in `recipe_file`'s directory unless it holds a finished run of exactly
    `configs` (then reused); True if it ran. Another run there is refused, or with `overwrite` cleared.

    `redo`: an input changed behind an unchanged path (a rebuilt model, regenerated traces), so a run of
    the same settings is stale: cleared and run again."""
    record = check_run_dir(configs, recipe_file, overwrite)
    if record.state == "finished" and record.same and not redo:
        logger.info("reusing %s", record.directory)
        return False
    start_run(configs, recipe_file, clear=record.state != "empty" and (redo or not record.same))
    run()
    finish_run(recipe_file)
    return True
