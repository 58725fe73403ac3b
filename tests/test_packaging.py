"""The wheel: built from the source, installed into a fresh environment and run outside the checkout, it
brings the benchmark definitions, their problems and license notes, and the demo recipes (package data).

The fresh environment holds only the wheel; its dependencies are this environment's, seen through a .pth
file that lists this site-packages folder (a listed folder's own .pth files, among them the editable
install's, are not run, so the checkout stays out of sight). No network: the wheel is built with this
environment's setuptools.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "README.md", "reasondistill")
# Run by the installed Python: where the package and the benchmarks it finds by name are.
WHERE_FROM = """
import json, reasondistill
from reasondistill.evaluate.benchmark_specs import available_benchmarks, load_benchmark, load_problems

print(json.dumps({
    "package": reasondistill.__file__,
    "benchmarks": {name: str(path) for name, path in available_benchmarks().items()},
    "gsm8k_problems": len(load_problems(load_benchmark("gsm8k"))),
}))
try:
    load_problems(load_benchmark("aime24"))
except ValueError as error:
    print(error)
"""


@dataclass(frozen=True)
class Installation:
    wheel: Path
    source: Path  # the copy of the checkout the wheel was built from
    bin_dir: Path
    site_packages: Path


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installation:
    root = tmp_path_factory.mktemp("packaging")
    # Build from a copy: no build/ or egg-info in the checkout, and no stale build/lib in the wheel.
    source = root / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", "dist", str(source)], root)
    (wheel,) = (root / "dist").glob("reasondistill-*.whl")

    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root)
    python = venv / "bin" / "python"
    run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], root)
    site_packages = Path(
        run([str(python), "-c", "import site; print(site.getsitepackages()[0])"], root).stdout.strip()
    )
    (site_packages / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return Installation(wheel, source, venv / "bin", site_packages)


def test_the_wheel_holds_every_file_of_the_package(installed):
    package = installed.source / "reasondistill"
    source_files = {f"reasondistill/{p.relative_to(package)}" for p in package.rglob("*") if p.is_file()}
    with zipfile.ZipFile(installed.wheel) as wheel:
        missing = source_files - set(wheel.namelist())
    # a new data folder needs a line in pyproject.toml's package-data; AIME's problems may not be shipped
    assert missing == {"reasondistill/evaluate/benchmarks/data/aime24/test.jsonl"}
    assert "reasondistill/evaluate/benchmarks/data/gsm8k/LICENSE" in source_files
    assert "reasondistill/evaluate/benchmarks/data/aime24/README.md" in source_files


def test_the_installed_command_evaluates_a_shipped_benchmark_outside_the_checkout(
    installed, tiny_model_dir, tmp_path
):
    reasondistill = str(installed.bin_dir / "reasondistill")
    assert "evaluate" in run([reasondistill, "--help"], tmp_path).stdout

    where_from, aime_error = run(
        [str(installed.bin_dir / "python"), "-c", WHERE_FROM], tmp_path
    ).stdout.split("\n")[:2]
    found = json.loads(where_from)
    assert "aime24/test.jsonl are not installed" in aime_error  # not redistributed: the fix is named
    assert Path(found["package"]).is_relative_to(installed.site_packages)
    assert sorted(found["benchmarks"]) == ["aime24", "arithmetic", "gsm8k", "math500"]
    assert all(Path(path).is_relative_to(installed.site_packages) for path in found["benchmarks"].values())
    assert found["gsm8k_problems"] == 1319  # the problems came with the definition

    command = [reasondistill, "evaluate", "--benchmark", "arithmetic", "--model", str(tiny_model_dir)]
    command += ["--num_problems", "2", "--num_samples", "1", "--max_tokens", "8", "--backend", "transformers"]
    command += ["--bootstrap_samples", "100", "--output_dir", "report"]
    run(command, tmp_path)
    (result,) = json.loads((tmp_path / "report" / "results.json").read_text())["runs"]
    assert result["benchmark"] == "arithmetic" and result["num_problems"] == 2


def test_the_installed_command_finds_the_demo_recipes_outside_the_checkout(installed, tmp_path):
    reasondistill = str(installed.bin_dir / "reasondistill")
    shown = run([reasondistill, "evaluate", "recipes/demo/evaluate.yaml", "--help"], tmp_path).stdout
    assert "outputs/demo/eval" in shown  # the recipe's output_dir, not the default outputs/eval
