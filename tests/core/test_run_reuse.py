"""Reusing a finished run: the saved resolved recipe decides, `redo` overrides it."""

from dataclasses import dataclass

from reasondistill.core.recipe import save_resolved_recipe
from reasondistill.core.run_reuse import run_unless_done


@dataclass
class Settings:
    steps: int = 3
    output_dir: str = "out"


def test_runs_until_a_finished_run_of_the_same_settings_is_saved(tmp_path, info_log):
    recipe_file = tmp_path / "recipe.yaml"
    runs = []

    def step(settings: Settings) -> bool:
        return run_unless_done([settings], recipe_file, lambda: runs.append(settings.steps))

    assert step(Settings())  # nothing saved yet
    save_resolved_recipe([Settings()], recipe_file)  # what a stage writes when it finishes
    assert not step(Settings()) and info_log.messages == [f"reusing {tmp_path}"]
    assert step(Settings(steps=4))  # other settings: not that run
    assert run_unless_done([Settings()], recipe_file, lambda: runs.append("redo"), redo=True)
    assert runs == [3, 4, "redo"]
