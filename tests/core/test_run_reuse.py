"""One run per output directory: recorded when it starts, finished when it ends, another run refused."""

from dataclasses import dataclass

import pytest

from reasondistill.core.recipe import save_resolved_recipe
from reasondistill.core.run_reuse import (
    RunDirError,
    check_run_dir,
    inspect_run_dir,
    partial_recipe,
    run_in_dir,
    run_unless_done,
)


@dataclass
class Settings:
    steps: int = 3
    rate: float = 0.5
    output_dir: str = "out"
    overwrite: bool = False


def test_runs_until_a_finished_run_of_the_same_settings_is_saved(tmp_path, info_log):
    recipe_file = tmp_path / "run" / "recipe.yaml"
    runs = []

    def step(settings: Settings, **flags: bool) -> bool:
        return run_unless_done([settings], recipe_file, lambda: runs.append(settings.steps), **flags)

    assert step(Settings())  # nothing there yet
    assert recipe_file.is_file() and not partial_recipe(recipe_file).exists()
    assert not step(Settings()) and info_log.messages == [f"reusing {recipe_file.parent}"]
    with pytest.raises(RunDirError, match=r"holds a finished run of other settings \(steps: 3 -> 4\)"):
        step(Settings(steps=4))
    (recipe_file.parent / "old-output").write_text("of steps 3")
    assert step(Settings(steps=4), overwrite=True)  # replaced: cleared first
    assert not (recipe_file.parent / "old-output").exists()
    assert step(Settings(steps=4), redo=True)  # the same settings, but an input changed behind a path
    assert runs == [3, 4, 4]


def test_a_started_run_is_recorded_and_stays_unfinished_when_it_fails(tmp_path):
    recipe_file = tmp_path / "run" / "recipe.yaml"
    with pytest.raises(RuntimeError), run_in_dir([Settings()], recipe_file):
        assert partial_recipe(recipe_file).is_file() and not recipe_file.exists()
        raise RuntimeError("killed")
    assert inspect_run_dir([Settings()], recipe_file).state == "unfinished"
    with pytest.raises(RunDirError, match=r"holds an unfinished run of other settings \(rate: 0.5 -> 0.25\)"):
        check_run_dir([Settings(rate=0.25)], recipe_file)
    with run_in_dir([Settings()], recipe_file):  # the same settings: redone in place
        (recipe_file.parent / "output").write_text("done")
    assert inspect_run_dir([Settings()], recipe_file).state == "finished"
    with run_in_dir([Settings(rate=0.25, overwrite=True)], recipe_file, overwrite=True):
        assert not (recipe_file.parent / "output").exists()
    assert inspect_run_dir([Settings(rate=0.25)], recipe_file).same


def test_refusals_name_the_directory_every_change_and_the_fixes(tmp_path):
    recipe_file = tmp_path / "run" / "recipe.yaml"
    recipe_file.parent.mkdir()
    save_resolved_recipe([Settings(output_dir="elsewhere")], recipe_file)
    # where it was written and whether --overwrite was given are not settings of the run
    assert check_run_dir([Settings(overwrite=True)], recipe_file).same
    with pytest.raises(RunDirError) as refused:
        check_run_dir([Settings(steps=30, rate=1e-4)], recipe_file)
    message = str(refused.value)
    assert "\n" not in message and str(recipe_file.parent) in message
    assert "steps: 3 -> 30, rate: 0.5 -> 0.0001" in message
    assert "--overwrite" in message and "another output_dir" in message and str(recipe_file) in message


def test_a_directory_of_no_recorded_run_is_never_cleared(tmp_path):
    (tmp_path / "mine.txt").write_text("not a run")
    for overwrite in (False, True):
        with pytest.raises(RunDirError, match="is not empty and records no run"):
            run_unless_done([Settings()], tmp_path / "recipe.yaml", lambda: None, overwrite=overwrite)
    assert (tmp_path / "mine.txt").exists()
    assert inspect_run_dir([Settings()], tmp_path / "empty" / "recipe.yaml").state == "empty"
