"""n-gram decontamination check, on real benchmark files and a real trace dataset."""

import json
from pathlib import Path

from reasondistill.evaluate.decontaminate import check_contamination, main, ngrams

GSM8K = Path(__file__).resolve().parents[2] / "reasondistill/evaluate/benchmarks/data/gsm8k/test.jsonl"


def gsm8k_questions(count: int) -> list[str]:
    with open(GSM8K, encoding="utf-8") as f:
        return [json.loads(line)["question"] for line, _ in zip(f, range(count), strict=False)]


def test_ngrams_ignore_case_punctuation_and_markup():
    assert ngrams("The $x$ IS, \\frac{1}{2}!", 3) == {
        ("the", "x", "is"),
        ("x", "is", "frac"),
        ("is", "frac", "1"),
        ("frac", "1", "2"),
    }
    assert ngrams("too short", 3) == set()


def test_copied_benchmark_problems_are_flagged_and_others_are_not():
    first, second = gsm8k_questions(2)
    copied = "Here is a question: " + first.upper().replace(".", " ;")  # reworded punctuation and case
    fresh = "A farmer has seven cows and buys three more; how many cows does the farmer own in total now?"
    short = " ".join(second.split()[:7])  # fewer words than one 8-gram
    result = check_contamination([fresh, copied, short], "gsm8k")
    assert (result.num_prompts, result.num_problems, result.num_contaminated) == (3, 1319, 1)
    assert result.examples[0]["prompt_index"] == 1 and result.examples[0]["problem_id"] == "row-0"
    assert tuple(result.examples[0]["ngram"].split()) in ngrams(first, 8)
    assert check_contamination(gsm8k_questions(40), "math500").num_contaminated == 0


def test_cli_on_a_trace_dataset(tmp_path, tiny_model_dir, hf_engine, capsys):
    """A real trace dataset (transformers engine) of the demo task's training split against its test split:
    disjoint arithmetic, but the shared sentence templates give 8-gram overlaps; GSM8K shares none."""
    from reasondistill.generate.generate import generate
    from reasondistill.generate.generate_config import GenerateConfig

    traces = tmp_path / "traces"
    config = GenerateConfig(
        teacher=str(tiny_model_dir),
        backend="transformers",
        dtype="float32",
        logprobs=8,
        num_prompts=8,
        instruction=None,
        temperature=1.0,
        max_tokens=4,
        keep="all",
        drop_truncated=False,
        output_dir=str(traces),
    )
    generate(config, engine=hf_engine)
    assert main([str(traces), "--benchmark", "gsm8k"]) == 0
    assert "gsm8k: 0 of 8 prompts" in capsys.readouterr().out
    assert main([str(traces), "--benchmark", "arithmetic", "gsm8k"]) == 1
    out = capsys.readouterr().out
    assert "arithmetic:" in out and "of 8 prompts share a 8-gram with its 300 problems" in out
