"""Where the student goes wrong: per-token KL(teacher || student) on the student's own solutions.

For each problem the student writes its greedy solution; teacher and student then read prompt + solution
in one forward pass each, and every solution token t gets the divergence of the two next-token
distributions at the position that predicts it (`per_token_kl`), the teacher's probability of the token
the student wrote, and a kind (`token_kind`). The report shows a few solutions with each token shaded by
its KL (`plot_solutions`) and the divergence by kind (`plot_kinds`, `kind_stats`).

Entry points:

    divergence_section(student_dir, teacher_dir, problems, out_dir, spec)  one student: a report section
    divergence_students(models, teacher_dir) + divergence_report(...)      `reasondistill evaluate`
    solution_divergences(student, teacher, tokenizer, prompts, problems)   loaded models: the numbers
"""

from __future__ import annotations

import logging
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import matplotlib
import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers import PreTrainedTokenizerBase as Tokenizer

matplotlib.use("Agg")  # files only, as report.py
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.collections import PatchCollection  # noqa: E402
from matplotlib.colors import ListedColormap, LogNorm  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from reasondistill.core.engines import end_at_eos  # noqa: E402
from reasondistill.core.grading import AnswerType, grade  # noqa: E402
from reasondistill.core.markdown_table import markdown_table  # noqa: E402
from reasondistill.core.prompts import PromptRecord, render_prompt  # noqa: E402
from reasondistill.core.traces import tokenizer_fingerprint  # noqa: E402
from reasondistill.evaluate.benchmark_specs import BenchmarkSpec, load_problems  # noqa: E402
from reasondistill.evaluate.evaluate_config import EvaluateConfig  # noqa: E402
from reasondistill.evaluate.results import ModelSpec  # noqa: E402

logger = logging.getLogger(__name__)

TokenKind = Literal["digit", "operator", "answer", "format", "other"]
KINDS: tuple[TokenKind, ...] = ("digit", "operator", "answer", "format", "other")
# Arithmetic symbols; a lone "x" is the demo task's multiplication sign.
OPERATOR_CHARS = frozenset("+-*/=()^<>×÷·−")
HEADING = "## Where the student goes wrong"


@dataclass(frozen=True)
class TokenDivergence:
    """One solution token: its text, id, KL(teacher || student) in nats, the teacher's probability of it."""

    text: str
    token_id: int
    kl: float
    teacher_prob: float
    kind: TokenKind


@dataclass(frozen=True)
class SolutionDivergence:
    """The student's greedy solution to one problem; `correct` is None when no gold answer was given."""

    problem_id: str
    problem: str
    correct: bool | None
    tokens: list[TokenDivergence]


@dataclass(frozen=True)
class KindStat:
    """Divergence of one kind of token: count, mean KL (nats) and share of the summed KL of all tokens."""

    kind: TokenKind
    tokens: int
    mean_kl: float
    share: float


@dataclass(frozen=True)
class DivergenceSettings:
    """What the divergence section covers: the first `num_examples` problems are drawn token by token, the
    first `num_problems` feed the by-kind statistics; solutions stop at `max_new_tokens` (and at the
    benchmark's own max_tokens)."""

    num_examples: int = 4
    num_problems: int = 50
    max_new_tokens: int = 512
    dtype: str = "auto"  # of the models' weights; the KL itself is computed in float32 or wider


# ------------------------------------------------------------------------------------------------ the math


def per_token_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """[T, V] teacher logits, [T, V] student logits -> [T] exact full-vocabulary KL(teacher || student).

    KL_t = sum_v p_v (log p_v - log q_v),  p = softmax(teacher_logits[t]), q = softmax(student_logits[t]),

    in nats. The log-probabilities come from log_softmax (logsumexp, so no overflow); terms with p_v = 0
    count 0 (the limit of p log p), which also covers teacher logits of -inf. Computed in float32 at least.
    """
    dtype = torch.promote_types(teacher_logits.dtype, torch.float32)
    log_p = torch.log_softmax(teacher_logits.to(dtype), dim=-1)
    log_q = torch.log_softmax(student_logits.to(dtype), dim=-1)
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(dim=-1).clamp_min(0.0)  # KL >= 0; rounding can leave -1e-8 for equal rows


# ------------------------------------------------------------------------------------------- token kinds

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_PHRASE = re.compile(r"\banswer\s*(?:is\b|:)[\s:]*([^\n]*)", re.IGNORECASE)


def answer_span(text: str) -> tuple[int, int] | None:
    """Character range of the final answer in a solution, found where `grading.extract_answer` looks:
    after the last </think> (none if <think> never closes), the content of the last \\boxed{...}, else
    the rest of the line after the last "answer is" / "answer:". None when there is no answer."""
    start = text.rfind("</think>")
    if start >= 0:
        start += len("</think>")
    elif "<think>" in text:
        return None
    start = max(start, 0)
    boxes = list(_BOX.finditer(text, start))
    if boxes:
        depth, open_at = 1, boxes[-1].end()
        for i in range(open_at, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return open_at, i
        return open_at, len(text)  # cut off inside the box: the rest is its content so far
    phrases = list(_PHRASE.finditer(text, start))
    return phrases[-1].span(1) if phrases and phrases[-1][1].strip() else None


def token_kind(text: str, in_answer: bool = False, marker: bool = False) -> TokenKind:
    """The kind of one token, from its decoded text; the first rule that applies wins:

    format    a special or added token (<|im_end|>, <think>): `marker`
    answer    any token overlapping the final answer's span (`answer_span`): `in_answer`
    digit     only digits and whitespace, at least one digit ("7", " 42")
    operator  only arithmetic symbols + - * / = ( ) ^ < > × ÷ and whitespace, or a lone "x"
    format    no digit at all: words, whitespace, punctuation ("Step", " the", ",", "\\n")
    other     the rest: digits mixed with letters or symbols ("2nd", "5,"), partial UTF-8 bytes
    """
    stripped = text.strip()
    if marker:
        return "format"
    if in_answer:
        return "answer"
    if stripped.isdigit():
        return "digit"
    if stripped and (set(stripped) <= OPERATOR_CHARS or stripped.lower() == "x"):
        return "operator"
    if "\ufffd" not in text and not any(c.isdigit() for c in text):
        return "format"
    return "other"


def classify(pieces: Sequence[str], markers: Sequence[bool]) -> list[TokenKind]:
    """Kinds of a solution's tokens, given each token's text and whether it is a special/added token."""
    span = answer_span("".join(pieces))
    kinds, at = [], 0
    for piece, marker in zip(pieces, markers, strict=True):
        end = at + len(piece)
        in_answer = span is not None and at < span[1] and end > span[0]
        kinds.append(token_kind(piece, in_answer, marker))
        at = end
    return kinds


# ------------------------------------------------------------------------------------------ the models


def check_same_tokenizer(student_dir: str, teacher_dir: str) -> None:
    """Refuse a pair whose tokenizers differ: the KL compares distributions over the same token ids."""
    student = tokenizer_fingerprint(AutoTokenizer.from_pretrained(student_dir).get_vocab())
    teacher = tokenizer_fingerprint(AutoTokenizer.from_pretrained(teacher_dir).get_vocab())
    if student != teacher:
        raise ValueError(
            f"the student {student_dir} has a different tokenizer (fingerprint {student}) from the "
            f"divergence teacher {teacher_dir} (fingerprint {teacher}); a per-token KL needs the very same "
            "vocabulary. Give a teacher of the student's family (the one it was distilled from), or leave "
            "divergence_teacher unset for this model."
        )


def load_model(path: str, dtype: str = "auto") -> PreTrainedModel:
    """A causal LM for forward passes, on the GPU when there is one."""
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype="auto" if dtype == "auto" else getattr(torch, dtype)
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.eval().requires_grad_(False).to(device)


def _shared_width(student: PreTrainedModel, teacher: PreTrainedModel, tokenizer: Tokenizer) -> int:
    """Logit columns both distributions are taken over: all of them, or, when the two models pad the
    vocabulary to different widths, the tokenizer's ids (padding rows are ids no text has)."""
    widths = (student.get_output_embeddings().out_features, teacher.get_output_embeddings().out_features)
    if widths[0] == widths[1]:
        return widths[0]
    if min(widths) < len(tokenizer):
        raise ValueError(
            f"the student {student.name_or_path} has {widths[0]} output logits and the teacher "
            f"{teacher.name_or_path} {widths[1]}, fewer than the tokenizer's {len(tokenizer)} tokens: not "
            "the same vocabulary. Give a teacher of the student's family."
        )
    return len(tokenizer)


@torch.no_grad()
def solution_divergences(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: Tokenizer,
    prompts: Sequence[Sequence[int]],
    problems: Sequence[PromptRecord],
    max_new_tokens: int = 512,
    answer_type: AnswerType = "number",
) -> list[SolutionDivergence]:
    """The student's greedy solution to each prompt (chat-rendered token ids) and, per solution token,
    KL(teacher || student), the teacher's probability of the token and its kind. `problems` give each
    prompt's id, text and gold answer (an empty gold: not graded). Both models must share `tokenizer`
    (`check_same_tokenizer` checks two directories); logit widths that cannot be the same vocabulary
    are refused here."""
    width = _shared_width(student, teacher, tokenizer)
    eos = student.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
    markers = set(tokenizer.added_tokens_decoder)  # special tokens and added ones such as <think>
    results = []
    for prompt, problem in zip(prompts, problems, strict=True):
        # one prompt at a time: no padding, so the solution is exactly the unbatched greedy one
        ids = torch.tensor([list(prompt)], device=student.device)
        out = student.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=pad,
            eos_token_id=sorted(eos_ids),
        )
        solution = end_at_eos(out[0, len(prompt) :].tolist(), eos_ids)
        full = torch.tensor([list(prompt) + solution])
        positions = slice(len(prompt) - 1, len(prompt) + len(solution) - 1)  # position t predicts t + 1
        student_logits = student(input_ids=full.to(student.device)).logits[0, positions, :width]
        teacher_logits = teacher(input_ids=full.to(teacher.device)).logits[0, positions, :width]
        teacher_logits = teacher_logits.to(student_logits.device)
        kl = per_token_kl(teacher_logits, student_logits).tolist()
        chosen = torch.tensor(solution, device=teacher_logits.device)[:, None]
        prob = torch.softmax(teacher_logits.float(), dim=-1).gather(-1, chosen)[:, 0].tolist()
        pieces = [tokenizer.decode([t], skip_special_tokens=False) for t in solution]
        kinds = classify(pieces, [t in markers for t in solution])
        correct = None
        if problem.gold_answer:
            text = tokenizer.decode(solution, skip_special_tokens=True)
            correct = grade(text, problem.gold_answer, answer_type).correct
        tokens = [TokenDivergence(*values) for values in zip(pieces, solution, kl, prob, kinds, strict=True)]
        results.append(SolutionDivergence(problem.prompt_id, problem.question, correct, tokens))
    return results


# ------------------------------------------------------------------------------------------- pictures

KL_RANGE = (0.01, 10.0)  # nats; the colour scale is log and clips outside, so pictures compare across runs
# YlOrRd without its darkest fifth: pale where the student agrees, red at most, so black text stays legible
COLORMAP = ListedColormap(plt.get_cmap("YlOrRd")(np.linspace(0.0, 0.8, 256)))
LINE_CHARS = 90  # wrap width of a solution, in characters
MAX_LINES = 24  # per solution; the rest is counted, not drawn
FONT_SIZE = 9
CELL = 0.6 * FONT_SIZE / 72  # inches per character of DejaVu Sans Mono (advance 0.6 em)
LINE = 1.45 * FONT_SIZE / 72  # inches per line


def _layout(tokens: Sequence[TokenDivergence]) -> tuple[list[tuple[int, int, int, float]], list[str], int]:
    """Wrap tokens into lines of LINE_CHARS: (line, column, width, kl) boxes, the lines' text, and the
    number of tokens that did not fit in MAX_LINES. A newline shows as "↵" and ends its line; a run of
    newline tokens ends it once (a degenerate run takes a line, not a screenful)."""
    boxes, lines, column = [], [""], 0
    for index, token in enumerate(tokens):
        shown = token.text.replace("\t", " ").replace("\r", "")
        following = tokens[index + 1].text if index + 1 < len(tokens) else ""
        breaks = shown.endswith("\n") and not ("\n" in following and not following.strip())
        shown = shown.replace("\n", "↵")[:LINE_CHARS] or "∅"  # an empty piece still gets a cell
        if column + len(shown) > LINE_CHARS:
            lines.append("")
            column = 0
        if len(lines) > MAX_LINES:
            return boxes, lines[:MAX_LINES], len(tokens) - index
        boxes.append((len(lines) - 1, column, len(shown), token.kl))
        lines[-1] += shown
        column += len(shown)
        if breaks:
            lines.append("")
            column = 0
    return boxes, lines, 0


def _title(index: int, solution: SolutionDivergence) -> tuple[str, str]:
    """The problem as at most two lines, marked correct (green) or wrong (red)."""
    verdict = {True: "correct", False: "wrong", None: "not graded"}[solution.correct]
    # bold sans runs a little wider than the monospace grid: wrap a few characters earlier
    lines = textwrap.wrap(f"{index}. [{verdict}] {solution.problem}", LINE_CHARS - 6)
    text = "\n".join(lines[:2]) + ("…" if len(lines) > 2 else "")
    return text, {True: "tab:green", False: "tab:red", None: "black"}[solution.correct]


def plot_solutions(solutions: Sequence[SolutionDivergence], path: Path, title: str) -> None:
    """The solutions as wrapped monospace text, each token's background shaded by its KL on a log
    scale clipped to KL_RANGE (below: lightest, above: darkest), the problem above each in bold."""
    norm, cmap = LogNorm(*KL_RANGE, clip=True), COLORMAP
    laid_out = [_layout(s.tokens) for s in solutions]
    # each solution: a 2-line title, its lines, a line saying what was cut, a blank line
    rows = sum(len(lines) + 4 for _, lines, _ in laid_out)
    width, height = LINE_CHARS * CELL, rows * LINE  # inches of the text area
    fig_w, fig_h = width + 0.6, height + 1.1  # margins: sides, title above, colour bar below

    def inches(left: float, bottom: float, w: float, h: float) -> tuple[float, float, float, float]:
        return left / fig_w, bottom / fig_h, w / fig_w, h / fig_h

    fig = plt.figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes(inches(0.3, 0.8, width, height))  # x: characters, y: lines (top down)
    ax.set_xlim(0, LINE_CHARS)
    ax.set_ylim(rows, 0)
    ax.axis("off")
    plain = dict(fontsize=FONT_SIZE, parse_math=False)  # "$" in a problem is a dollar, not maths
    top = 0
    for index, (solution, (boxes, lines, cut)) in enumerate(zip(solutions, laid_out, strict=True), 1):
        text, colour = _title(index, solution)
        ax.text(0, top + 0.1, text, va="top", fontweight="bold", color=colour, **plain)
        top += 2
        # inset a little: a thin white gap shows where one token ends and the next begins
        cells = [Rectangle((col + 0.06, top + line + 0.05), size - 0.12, 0.9) for line, col, size, _ in boxes]
        colours = [cmap(norm(max(kl, KL_RANGE[0]))) for *_, kl in boxes]
        ax.add_collection(PatchCollection(cells, facecolors=colours, edgecolors="none"))
        for line, content in enumerate(lines):  # one string per line: the cells follow the monospace grid
            ax.text(0, top + line + 0.5, content, va="center", family="DejaVu Sans Mono", **plain)
        top += len(lines)
        if cut:
            ax.text(0, top + 0.5, f"... {cut} more tokens not drawn", va="center", color="grey", **plain)
        top += 2
    bar = fig.add_axes(inches(0.3, 0.5, width, 0.12))
    fig.colorbar(ScalarMappable(norm, cmap), cax=bar, orientation="horizontal")
    bar.set_xlabel(
        f"KL(teacher || student) at each token, nats, log scale: below {KL_RANGE[0]:g} palest, above "
        f"{KL_RANGE[1]:g} reddest",
        fontsize=FONT_SIZE,
    )
    fig.suptitle(f"Where the student goes wrong: {title}", y=1 - 0.06 / fig_h, va="top")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_kinds(stats: Sequence[KindStat], path: Path, title: str) -> None:
    """Two panels of bars per kind: mean KL per token, and the kind's share of the summed KL; the
    token counts are under the bars."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.4))
    labels = [f"{s.kind}\n({s.tokens} tokens)" for s in stats]
    for ax, values, ylabel, fmt in (
        (left, [s.mean_kl for s in stats], "mean KL per token (nats)", "{:.3f}"),
        (right, [100 * s.share for s in stats], "share of total KL (%)", "{:.1f}"),
    ):
        ax.bar(range(len(stats)), values, color="tab:red", alpha=0.8)
        for x, (value, stat) in enumerate(zip(values, stats, strict=True)):
            ax.text(x, value, fmt.format(value) if stat.tokens else "-", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(stats)), labels, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.margins(y=0.15)  # room for the numbers above the bars
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------- stats and report


def kind_stats(solutions: Sequence[SolutionDivergence]) -> list[KindStat]:
    """Count, mean KL and share of the total KL of every kind (sums first, then divided)."""
    tokens = [token for solution in solutions for token in solution.tokens]
    total = sum(t.kl for t in tokens)
    stats = []
    for kind in KINDS:
        kls = [t.kl for t in tokens if t.kind == kind]
        mean = sum(kls) / len(kls) if kls else 0.0
        stats.append(KindStat(kind, len(kls), mean, sum(kls) / total if total > 0 else 0.0))
    return stats


def section_intro(teacher: str) -> str:
    """The section's heading and what its pictures show."""
    return (
        f"{HEADING}\n\n"
        f"Each student writes its greedy solution; then the teacher (`{teacher}`) and the student read "
        "prompt + solution, and every solution token gets KL(teacher || student) = sum_v p_v (log p_v - "
        "log q_v) over the whole vocabulary, p and q the two models' next-token distributions at the "
        "position that predicts the token (nats; 0: the student predicts exactly what the teacher does). "
        "Token kinds: digit; operator (`+ - x / = ( )` ...); answer (the final answer, inside the last "
        '`\\boxed{}` or after "answer is"); format (words, whitespace, punctuation, special tokens such as '
        "`<think>`); other (digits mixed with letters or symbols).\n"
    )


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


def model_divergence(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: Tokenizer,
    spec: BenchmarkSpec,
    problems: Sequence[PromptRecord],
    out_dir: str | Path,
    label: str,
    settings: DivergenceSettings,
) -> str:
    """Pictures (PNG in `out_dir`) and Markdown for one student on one benchmark's problems."""
    problems = list(problems[: settings.num_problems])
    prompts = [
        tokenizer(
            render_prompt(
                tokenizer, spec.user_turn(p.question), spec.system_prompt, None, spec.think_prefill
            ),
            add_special_tokens=False,
        )["input_ids"]
        for p in problems
    ]
    max_new_tokens = min(settings.max_new_tokens, spec.max_tokens)
    logger.info(f"divergence of {label} on {spec.name}: {len(problems)} greedy solutions")
    solutions = solution_divergences(
        student, teacher, tokenizer, prompts, problems, max_new_tokens, spec.answer_type
    )
    examples = solutions[: settings.num_examples]
    stats = kind_stats(solutions)
    stem = f"divergence__{_safe(label)}__{_safe(spec.name or 'problems')}"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_solutions(examples, out / f"{stem}_tokens.png", f"{label} on {spec.name}")
    kinds_title = f"{label} on {spec.name}: divergence by kind of token, first {len(problems)} problems"
    plot_kinds(stats, out / f"{stem}_kinds.png", kinds_title)
    solved = sum(bool(s.correct) for s in solutions)
    graded = f"; it solved {solved} of them" if all(s.correct is not None for s in solutions) else ""
    rows = [
        [s.kind, s.tokens, f"{s.mean_kl:.3f}" if s.tokens else "-", f"{100 * s.share:.1f} %"] for s in stats
    ]
    total = sum(s.tokens for s in stats)
    return "\n".join(
        [
            f"### {label} on {spec.name}",
            "",
            f"Greedy solutions of up to {max_new_tokens} tokens. The picture shows the first {len(examples)} "
            f"problems; the kinds cover the first {len(problems)} ({total} solution tokens){graded}.",
            "",
            f"![{label}: solution tokens shaded by KL(teacher || student)]({stem}_tokens.png)",
            "",
            f"![{label}: divergence by kind of token]({stem}_kinds.png)",
            "",
            markdown_table(
                ["kind", "tokens", "mean KL (nats)", "share of total KL"], rows, numeric=(1, 2, 3)
            ),
            "",
        ]
    )


def divergence_section(
    student_dir: str | Path,
    teacher_dir: str | Path,
    problems: Sequence[PromptRecord],
    out_dir: str | Path,
    spec: BenchmarkSpec,
    label: str = "student",
    settings: DivergenceSettings | None = None,
) -> str:
    """One student against its teacher on `problems` (rendered and graded as `spec` says, e.g.
    `load_benchmark("arithmetic")`): writes the two PNGs into `out_dir` and returns the Markdown section
    (heading, explanation, pictures, table) to put in a report in that directory."""
    settings = settings or DivergenceSettings()
    check_same_tokenizer(str(student_dir), str(teacher_dir))
    teacher = load_model(str(teacher_dir), settings.dtype)
    student = load_model(str(student_dir), settings.dtype)
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    block = model_divergence(student, teacher, tokenizer, spec, problems, out_dir, label, settings)
    return section_intro(str(teacher_dir)) + "\n" + block


def divergence_students(models: Sequence[ModelSpec], teacher_dir: str) -> list[ModelSpec]:
    """The evaluated models a divergence picture can be drawn for: full-precision transformers models,
    not GGUF files, quantized directories or the teacher itself (each skipped with the reason logged).
    A model with another tokenizer than the teacher's is refused (`check_same_tokenizer`), before any run."""
    kept = []
    for model in models:
        if Path(model.path).is_file():
            reason = "a single-file (GGUF) model, which transformers does not run"
        elif Path(model.path).resolve() == Path(teacher_dir).resolve():
            reason = "it is the divergence teacher"
        elif getattr(AutoConfig.from_pretrained(model.path), "quantization_config", None) is not None:
            reason = "quantized weights: its logits are not the full-precision model's"
        else:
            check_same_tokenizer(model.path, teacher_dir)
            kept.append(model)
            continue
        logger.info(f"divergence picture: skipping {model.label} ({reason})")
    return kept


def divergence_settings(config: EvaluateConfig) -> DivergenceSettings:
    """`reasondistill evaluate`'s divergence_* fields, kept within its num_problems and max_tokens."""
    return DivergenceSettings(
        num_examples=config.divergence_examples,
        num_problems=min(config.divergence_problems, config.num_problems or config.divergence_problems),
        max_new_tokens=min(config.divergence_max_tokens, config.max_tokens or config.divergence_max_tokens),
        dtype=config.dtype,
    )


def divergence_report(
    models: Sequence[ModelSpec],
    teacher_dir: str,
    benchmarks: Sequence[BenchmarkSpec],
    out_dir: str | Path,
    settings: DivergenceSettings,
) -> str:
    """The section for every model (from `divergence_students`, at least one) on every benchmark."""
    teacher = load_model(teacher_dir, settings.dtype)
    blocks = [section_intro(teacher_dir)]
    for model in models:
        student = load_model(model.path, settings.dtype)
        tokenizer = AutoTokenizer.from_pretrained(model.path)
        for spec in benchmarks:
            problems = load_problems(spec, settings.num_problems)
            blocks.append(
                model_divergence(student, teacher, tokenizer, spec, problems, out_dir, model.label, settings)
            )
        del student  # one student in memory at a time
    return "\n".join(blocks)
