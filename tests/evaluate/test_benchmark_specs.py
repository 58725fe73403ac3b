"""Finding benchmarks by name: the working directory's eval/ first, then the definitions in the package.

Reading and checking a definition, and grading every shipped gold, are tested in test_evaluate.py.
"""

import json
from pathlib import Path

import yaml

from reasondistill.evaluate.benchmark_specs import (
    SHIPPED_BENCHMARKS_DIR,
    available_benchmarks,
    load_benchmark,
    load_problems,
)


def test_benchmarks_in_the_working_directory_eval_folder_come_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    user_dir = tmp_path / "eval"
    user_dir.mkdir()
    redefined = {"data": "task:arithmetic", "num_problems": 5, "answer_type": "number"}
    (user_dir / "arithmetic.yaml").write_text(yaml.safe_dump(redefined))
    (user_dir / "mine.yaml").write_text(yaml.safe_dump({"data": "mine.jsonl", "answer_type": "number"}))
    (user_dir / "mine.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")

    found = available_benchmarks()
    assert found["arithmetic"] == Path("eval/arithmetic.yaml") and found["mine"] == Path("eval/mine.yaml")
    assert found["gsm8k"] == SHIPPED_BENCHMARKS_DIR / "gsm8k.yaml"  # the others still come from the package
    assert load_benchmark("arithmetic").num_problems == 5
    (problem,) = load_problems(load_benchmark("mine"))  # its data beside it, wherever run from
    assert problem.gold_answer == "2"


def test_shipped_benchmarks_read_their_data_from_the_package():
    spec = load_benchmark("gsm8k")
    assert Path(spec.data) == SHIPPED_BENCHMARKS_DIR / "data" / "gsm8k" / "test.jsonl"
    assert (SHIPPED_BENCHMARKS_DIR / "data" / "gsm8k" / "LICENSE").is_file()
