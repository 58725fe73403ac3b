"""Where the student goes wrong: per-token KL against a brute-force reference, token kinds on hand-made
pieces, and whole runs on tiny local models (pictures, table, the evaluate option, a refused pair)."""

import math

import matplotlib.image
import pytest
import torch

from reasondistill.core.prompts import render_prompt
from reasondistill.evaluate.benchmark_specs import load_benchmark, load_problems
from reasondistill.evaluate.results import ModelSpec
from reasondistill.evaluate.token_divergence import (
    DivergenceSettings,
    SolutionDivergence,
    TokenDivergence,
    answer_span,
    check_same_tokenizer,
    classify,
    divergence_section,
    divergence_students,
    kind_stats,
    load_model,
    per_token_kl,
    plot_solutions,
    solution_divergences,
    token_kind,
)

# ---------------------------------------------------------------------------------------------- the math


def brute_force_kl(teacher: torch.Tensor, student: torch.Tensor) -> list[float]:
    """sum_v p_v (log p_v - log q_v) with Python loops in float64, softmax written out."""
    out = []
    for t_row, s_row in zip(teacher.double().tolist(), student.double().tolist(), strict=True):
        t_max, s_max = max(t_row), max(s_row)
        t_z = sum(math.exp(x - t_max) for x in t_row)
        s_z = sum(math.exp(x - s_max) for x in s_row)
        total = 0.0
        for t, s in zip(t_row, s_row, strict=True):
            p, q = math.exp(t - t_max) / t_z, math.exp(s - s_max) / s_z
            total += p * (math.log(p) - math.log(q))
        out.append(total)
    return out


def test_per_token_kl_matches_brute_force():
    torch.manual_seed(0)
    teacher, student = 3 * torch.randn(7, 50), 3 * torch.randn(7, 50)
    expected = torch.tensor(brute_force_kl(teacher, student), dtype=torch.float64)
    torch.testing.assert_close(per_token_kl(teacher.double(), student.double()), expected)
    torch.testing.assert_close(per_token_kl(teacher, student), expected.float(), rtol=1e-5, atol=1e-6)
    assert per_token_kl(teacher, teacher).abs().max() < 1e-6  # identical rows: 0, never negative
    # a teacher certain of one token (others -inf): KL = -log q(that token)
    certain = torch.full((1, 50), -math.inf)
    certain[0, 3] = 0.0
    minus_log_q = -torch.log_softmax(student[:1], dim=-1)[0, 3]
    torch.testing.assert_close(per_token_kl(certain, student[:1])[0], minus_log_q)


# ------------------------------------------------------------------------------------------- token kinds


@pytest.mark.parametrize(
    ("piece", "kind"),
    [
        ("7", "digit"),
        (" 42", "digit"),
        ("+", "operator"),
        (" =", "operator"),
        ("(", "operator"),
        (" x", "operator"),
        ("Step", "format"),
        (" the", "format"),
        (",", "format"),
        ("\n", "format"),
        ("2nd", "other"),
        ("5,", "other"),
        ("\ufffd", "other"),
    ],
)
def test_token_kind_on_hand_made_pieces(piece, kind):
    assert token_kind(piece) == kind


def test_markers_and_the_answer_span_come_first():
    assert token_kind("<think>", marker=True) == "format"
    assert token_kind("8", in_answer=True) == "answer"
    pieces = [
        "so",
        " 54",
        "+",
        "34",
        "=",
        "88",
        "\n",
        "The",
        " answer",
        " is",
        " \\",
        "boxed",
        "{",
        "8",
        "8",
        "}",
    ]
    pieces += [".", "<|im_end|>"]
    kinds = classify(pieces, [p == "<|im_end|>" for p in pieces])
    assert kinds[:7] == ["format", "digit", "operator", "digit", "operator", "digit", "format"]
    assert kinds[-5:] == ["answer", "answer", "format", "format", "format"]  # 8 8 } . <|im_end|>
    assert kinds.count("answer") == 2


def test_answer_span_follows_the_grader():
    text = "<think>\nso 54+34=88\n</think>\n\nOmar has 88 cards. The answer is \\boxed{88}."
    start, end = answer_span(text)
    assert text[start:end] == "88" and start > text.index("boxed")
    assert answer_span("Reasoning.\nThe answer is 12 apples") is not None
    assert answer_span("<think> still thinking \\boxed{3}") is None
    assert answer_span("no answer here") is None


# ------------------------------------------------------------------------------------------- whole runs


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory, demo_tokenizer):
    """Another student-size model with the same tokenizer and other weights."""
    from reasondistill.demo.factory import build_model

    directory = tmp_path_factory.mktemp("other-student")
    build_model("student", demo_tokenizer, seed=7).save_pretrained(directory)
    demo_tokenizer.save_pretrained(directory)
    return directory


def arithmetic(n: int):
    spec = load_benchmark("arithmetic")
    return spec, load_problems(spec, n)


def test_kl_is_zero_for_the_same_weights_and_positive_otherwise(
    tiny_model_dir, other_model_dir, demo_tokenizer
):
    _, problems = arithmetic(2)
    texts = [render_prompt(demo_tokenizer, p.question, None, None, False) for p in problems]
    prompts = [demo_tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    student = load_model(str(tiny_model_dir), "float32")
    same = solution_divergences(
        student, load_model(str(tiny_model_dir), "float32"), demo_tokenizer, prompts, problems, 12
    )
    other = solution_divergences(
        student, load_model(str(other_model_dir), "float32"), demo_tokenizer, prompts, problems, 12
    )
    for ours, theirs in zip(same, other, strict=True):
        assert [t.token_id for t in ours.tokens] == [t.token_id for t in theirs.tokens]  # the student's text
        assert len(ours.tokens) == 12 and ours.correct is False  # a random model rambles
        assert max(t.kl for t in ours.tokens) < 1e-5
        assert min(t.kl for t in theirs.tokens) > 0
        assert all(0 < t.teacher_prob <= 1 for t in theirs.tokens)
        assert "".join(t.text for t in ours.tokens) == demo_tokenizer.decode(
            [t.token_id for t in ours.tokens]
        )


def test_divergence_section_writes_pictures_and_a_table_that_adds_up(
    tiny_model_dir, other_model_dir, tmp_path
):
    spec, problems = arithmetic(3)
    settings = DivergenceSettings(num_examples=2, max_new_tokens=16, dtype="float32")
    markdown = divergence_section(tiny_model_dir, other_model_dir, problems, tmp_path, spec, "tiny", settings)
    assert markdown.startswith("## Where the student goes wrong")
    for png in ("divergence__tiny__arithmetic_tokens.png", "divergence__tiny__arithmetic_kinds.png"):
        image = matplotlib.image.imread(tmp_path / png)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 500
        assert f"]({png})" in markdown
    rows = [
        line.split("|")[1:-1] for line in markdown.splitlines() if line.startswith("| ") and "---" not in line
    ]
    header, *body = [[cell.strip() for cell in row] for row in rows]
    assert header == ["kind", "tokens", "mean KL (nats)", "share of total KL"]
    assert [row[0] for row in body] == ["digit", "operator", "answer", "format", "other"]
    assert sum(int(row[1]) for row in body) == 3 * 16  # every completion token once: 3 problems x 16
    assert "the kinds cover the first 3 (48 solution tokens); it solved 0 of them" in markdown


def test_a_mismatched_tokenizer_is_refused_naming_both_models(tiny_model_dir, demo_tokenizer, tmp_path):
    from reasondistill.demo.factory import build_model

    tokenizer = demo_tokenizer.__class__.from_pretrained(tiny_model_dir)
    tokenizer.add_tokens(["<extra>"])
    other = tmp_path / "other-vocab"
    build_model("student", tokenizer, seed=3).save_pretrained(other)
    tokenizer.save_pretrained(other)
    with pytest.raises(
        ValueError, match=rf"student {other} has a different tokenizer.*teacher {tiny_model_dir}"
    ):
        check_same_tokenizer(str(other), str(tiny_model_dir))
    with pytest.raises(ValueError, match="Give a teacher of the student's family"):
        divergence_students([ModelSpec(str(other))], str(tiny_model_dir))


def test_gguf_quantized_and_teacher_models_are_skipped(tiny_model_dir, other_model_dir, tmp_path, info_log):
    gguf = tmp_path / "student-q4.gguf"
    gguf.write_bytes(b"\0" * 10)
    quantized = tmp_path / "nf4"
    quantized.mkdir()
    config = (tiny_model_dir / "config.json").read_text()
    (quantized / "config.json").write_text(
        config.replace("{", '{"quantization_config": {"quant_method": "bitsandbytes"},', 1)
    )
    models = [
        ModelSpec(str(gguf)),
        ModelSpec(str(quantized)),
        ModelSpec(str(tiny_model_dir)),
        ModelSpec(str(other_model_dir), "kd"),
    ]
    assert divergence_students(models, str(tiny_model_dir)) == [models[3]]
    assert sum("divergence picture: skipping" in m for m in info_log.messages) == 3


def test_plot_draws_long_and_empty_solutions(tmp_path):
    tokens = [TokenDivergence("word ", 1, 10 ** (i % 5 - 3), 0.5, "format") for i in range(600)]
    tokens += [TokenDivergence("\n", 2, 0.0, 1.0, "format"), TokenDivergence("", 3, 50.0, 0.0, "other")]
    solutions = [
        SolutionDivergence("a", "Costs $5 and $6: how much? " * 10, True, tokens),
        SolutionDivergence("b", "x", None, tokens[:1]),
    ]
    plot_solutions(solutions, tmp_path / "s.png", "test")
    assert matplotlib.image.imread(tmp_path / "s.png").shape[0] > 300
    stats = kind_stats(solutions)
    assert sum(s.tokens for s in stats) == len(tokens) + 1 and math.isclose(sum(s.share for s in stats), 1.0)


def test_evaluate_adds_the_section_to_the_report(tiny_model_dir, other_model_dir, tmp_path):
    from reasondistill.cli import main

    out = tmp_path / "report"
    argv = ["evaluate", "--model", str(tiny_model_dir), str(other_model_dir), "--model_name", "teacher", "kd"]
    argv += ["--benchmark", "arithmetic", "--num_problems", "3", "--num_samples", "1", "--temperature", "0"]
    argv += [
        "--max_tokens",
        "12",
        "--backend",
        "transformers",
        "--dtype",
        "float32",
        "--bootstrap_samples",
        "50",
    ]
    argv += [
        "--divergence_teacher",
        str(tiny_model_dir),
        "--divergence_examples",
        "2",
        "--output_dir",
        str(out),
    ]
    assert main(argv) == 0
    report = (out / "report.md").read_text()
    assert "## Where the student goes wrong" in report and "### kd on arithmetic" in report
    assert "### teacher on" not in report  # the teacher against itself is skipped
    for png in ("divergence__kd__arithmetic_tokens.png", "divergence__kd__arithmetic_kinds.png"):
        assert (out / png).stat().st_size > 10_000 and f"]({png})" in report
    assert "Greedy solutions of up to 12 tokens" in report and "the kinds cover the first 3 (36" in report
    assert "it solved 0 of them" in report
