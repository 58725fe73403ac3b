"""benchmarks/heldout_by_kind.py: per-byte held-out cross-entropy by kind of text, checked against
transformers' own loss, on a tiny trained teacher's traces read by a student of its tokenizer and one of
another (Llama 3's digit runs)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import generate_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from reasondistill.demo.architectures import save_tiny_model
from reasondistill.generate.generate import generate
from reasondistill.train.distill_data import load_trace_dataset

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "heldout_by_kind.py"


def script():
    spec = importlib.util.spec_from_file_location("heldout_by_kind", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def heldout(trained_teacher_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("heldout") / "ds"
    config = generate_config(
        trained_teacher_dir, out, backend="transformers", prompt_split="test", max_tokens=48
    )
    return str(generate(config))


def test_sums_are_transformers_loss_and_bytes_of_the_same_text(
    heldout, trained_teacher_dir, llama3_tokenizer, tmp_path
):
    module = script()
    other_dir = save_tiny_model("llama", llama3_tokenizer, tmp_path / "llama")
    sizes = {}
    for directory in (trained_teacher_dir, other_dir):
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(directory)
        sums = module.completion_nats_by_kind(model, tokenizer, heldout, records=5)
        # brute force: transformers' mean CE over the completion tokens, times their count
        dataset, _, counts = load_trace_dataset(
            heldout, only_correct=False, max_length=None, student_tokenizer=tokenizer, retokenize=True
        )
        assert not any(counts.dropped.values())  # the same records for both tokenizers
        total = 0.0
        for record in dataset.select(range(5)):
            prompt, completion = list(record["prompt_token_ids"]), list(record["completion_token_ids"])
            labels = torch.tensor([[-100] * len(prompt) + completion])
            with torch.no_grad():
                loss = model(torch.tensor([prompt + completion]), labels=labels).loss
            total += loss.item() * len(completion)
        assert sums[module.ALL][0] == pytest.approx(total, rel=1e-4)
        kinds = [kind for kind in sums if kind != module.ALL]
        assert "digit" in kinds and "format" in kinds
        assert sum(sums[kind][0] for kind in kinds) == pytest.approx(sums[module.ALL][0], rel=1e-6)
        assert sum(sums[kind][1] for kind in kinds) == sums[module.ALL][1]
        sizes[directory] = {kind: size for kind, (_, size) in sums.items()}
    # the same text in two tokenizations: as many bytes in all, and in digits (both split digits from
    # everything else, one at a time or in runs of up to 3)
    ours, theirs = sizes.values()
    assert ours[module.ALL] == theirs[module.ALL] and ours["digit"] == theirs["digit"]


def test_cli_reads_the_students_of_a_study_and_prints_the_table(heldout, tiny_model_dir, tmp_path, capsys):
    study = tmp_path / "study.json"
    students = [{"method": "sft", "seed": seed, "directory": str(tiny_model_dir)} for seed in (0, 1)]
    study.write_text(json.dumps({"students": students}))
    out = tmp_path / "by_kind.json"
    args = [str(study), "--heldout", heldout, "--records", "3", "--output", str(out)]
    assert script().main(args) == 0
    table = capsys.readouterr().out
    assert table.startswith("| method | seeds | digit |") and "| sft | 2 |" in table
    assert "share of bytes" in table
    assert len(json.loads(out.read_text())["students"]) == 2
