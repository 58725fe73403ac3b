"""Answer grading: pull the final answer out of a model output and compare it with a gold answer.

Used by trace generation (rejection sampling keeps only correct teacher traces) and by evaluation
(GSM8K, MATH-500, AIME 2024, the synthetic arithmetic task). Two steps:

1. `extract_answer` finds the final answer text: the last ``\\boxed{...}`` after the reasoning section,
   else the last "answer is X" / "Answer: X" phrase, else the last ``#### X`` line.
2. `answers_match` compares it with the gold. "integer" (AIME) and "number" (GSM8K, synthetic task)
   answers are compared as exact rationals after stripping formatting (``$``, thousands commas, ``%``)
   and what may follow the number: units ("18 dollars", ``42 cm^2``, ``5\\text{ cm}``, "60 km/h", "90°")
   and an aside without digits ("9 (apples)"). A number followed by text holding another number ("9 apples
   and 3 pears", "12 (9 + 3)") or a multiplier ("5 million", "2 and a half") is not a plain number (no
   guessing which number is meant); such answers, and every "latex" answer (MATH), go through math-verify.

math-verify quirks handled here:

- `parse` finds LaTeX only inside delimiters (``$..$``, ``\\(..\\)``, ``\\boxed{}``). Undelimited,
  ``\\sqrt{5}`` is not found and its plain-number extractor reads ``3\\sqrt{13}`` as 3 (109 of the 500
  MATH-500 golds fail to round-trip from "The answer is GOLD" that way). We extract the answer text
  ourselves and wrap both sides in ``\\boxed{}`` before parsing.
- A bare ``pi`` is parsed as the product ``p*i``; it is rewritten to ``\\pi`` first.
- Its timeouts use ``signal.alarm``, which raises outside the main thread. Off the main thread we pass
  ``parsing_timeout=None`` / ``timeout_seconds=None`` (no timeout: a pathological expression can then
  run long, so callers grading from worker threads should bound them with a process pool if needed).
- Its unanchored plain-expression extractor (`ExprExtractionConfig`) grabs any number in the text, so a
  prediction whose LaTeX fails to parse could match on a stray digit; only `LatexExtractionConfig` is used.
"""

import re
import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from math_verify import LatexExtractionConfig, parse, verify

AnswerType = Literal["number", "integer", "latex"]

MATH_VERIFY_TIMEOUT_S = 5
"""Per-call parse / verify timeout when grading on the main thread (signal-based, main thread only)."""


@dataclass(frozen=True)
class Grade:
    """Outcome of grading one output. `reason` never says "truncated": the caller knows finish_reason."""

    extracted: str | None
    correct: bool
    reason: Literal["correct", "no_answer", "wrong"]


# ---------------------------------------------------------------------------------------------- extraction

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_PHRASE = re.compile(r"\banswer\s*(?:is\b|:)[\s:]*([^\n]+)", re.IGNORECASE)
_HASHES = re.compile(r"^\s*####\s*(.+?)\s*$", re.MULTILINE)
# Math delimiters at the start of a phrase; "\$" inside is an escaped dollar sign, not a delimiter.
_DELIMITED = re.compile(r"^(?:\$\$((?:\\\$|[^$])+?)\$\$|\$((?:\\\$|[^$])+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\])")
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
# Markdown bold around words ("The answer is **9** apples."), not a power: 2**10 and 2**3**4 stay.
_MARKDOWN_BOLD = re.compile(r"(?<!\w)\*\*(\S(?:.*?\S)?)\*\*(?!\w)")


def _balanced(text: str, start: int) -> str | None:
    """Content of the brace group whose "{" is at text[start - 1]; None if it never closes."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{" and text[i - 1] != "\\":
            depth += 1
        elif text[i] == "}" and text[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def _last_box(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...}; None if there is none or it is empty or unclosed
    (an earlier box is an intermediate result, not the final answer)."""
    boxes = list(_BOX.finditer(text))
    if not boxes:
        return None
    content = _balanced(text, boxes[-1].end())
    return content.strip() if content is not None and content.strip() else None


def _clean_phrase(text: str) -> str | None:
    """The answer in the text after "answer is": its first math span, else up to the sentence end."""
    text = _MARKDOWN_BOLD.sub(r"\1", text).strip().strip("*").strip()
    delimited = _DELIMITED.match(text)
    if delimited:
        text = next(group for group in delimited.groups() if group is not None)
    else:
        text = _SENTENCE_END.split(text, maxsplit=1)[0]
    text = text.strip().strip("*").rstrip(".").strip()
    return text or None


def extract_answer(output: str) -> str | None:
    """Final answer in a model output: the content of the LAST \\boxed{...} (balanced braces, also \\fbox),
    else the last 'answer is X' / 'Answer: X' phrase, else the last '#### X' line.

    Only the text after the reasoning section is searched: if the output contains '</think>', only the
    text after the last '</think>'; if it has '<think>' but no '</think>' (reasoning never finished),
    there is no answer. Returns None when nothing is found.
    """
    if "</think>" in output:
        output = output.rsplit("</think>", 1)[1]
    elif "<think>" in output:
        return None
    boxed = _last_box(output)
    if boxed is not None:
        return boxed
    for match in reversed(list(_PHRASE.finditer(output))):
        phrase = _clean_phrase(match[1])
        if phrase is not None:
            return phrase
    hashes = _HASHES.findall(output)
    return _clean_phrase(hashes[-1]) if hashes else None


def gsm8k_gold(solution: str) -> str:
    """Gold answer of a GSM8K solution: the text after the last '#### ', commas removed."""
    if "#### " not in solution:
        raise ValueError(f"GSM8K solution has no '#### ' answer line: {solution[-80:]!r}")
    return solution.rsplit("#### ", 1)[1].strip().replace(",", "")


# ---------------------------------------------------------------------------------------------- comparison

_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
# A word after a number that is a unit ("dollars", "cm"), not a constant (3 pi, 2i, 5e) or a multiplier.
_UNIT_WORD = r"(?!(?i:pi|i|e|half|halves|(?:hundred|thousand|million|billion|trillion|dozen)s?)\b)[A-Za-z]+"
_UNIT_POWER = r"(?:\^(?:-?\d|\{-?\d+\})|[²³])?"  # cm^2, m^{3}, s^{-1}, m²: no other digits after the number
_UNIT = rf"{_UNIT_WORD}{_UNIT_POWER}(?:/{_UNIT_WORD}{_UNIT_POWER})*"  # also per-units: km/h, m/s^2
# A plain number (thousands commas allowed), then at most units ("18 dollars", "5cm", "42 cm^2") and an
# aside without digits ("9 (apples)").
_NUMBER = re.compile(
    r"^(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+)"
    rf"(?:\s*{_UNIT}(?:\s+{_UNIT})*)?"
    r"(?:\s*\([^()\d]*\))?$"
)
# Formatting around a number: currency, percent, degrees, LaTeX spacing ("1\\!000", "1{,}000").
_NUMBER_JUNK = {
    "\\$": "",
    "$": "",
    "\\%": "",
    "%": "",
    "^\\circ": "",
    "^{\\circ}": "",
    "°": "",
    "{,}": ",",
    "\\!": "",
    "\\,": "",
    "\\;": " ",
    "\\ ": " ",
}
_BARE_PI = re.compile(r"(?<![\\A-Za-z])pi(?![A-Za-z])")


def _strip_delimiters(answer: str) -> str:
    """Remove surrounding $..$ / \\(..\\) and a trailing full stop."""
    answer = answer.strip().rstrip(".").strip()
    delimited = _DELIMITED.match(answer)
    if delimited and delimited.end() == len(answer):
        answer = next(group for group in delimited.groups() if group is not None)
    return answer.strip()


def _to_number(answer: str) -> Fraction | None:
    """Exact value of a plain number written with formatting ("\\$1,000.50", "18.00", "10\\%", "x = 5",
    "5 \\text{ cm}", "42 cm^2", "9 (apples)", "025"); None for anything else (fractions, expressions, tuples,
    a number followed by another: "9 apples and 3 pears")."""
    text = _strip_delimiters(answer).replace("\u2212", "-")
    text = text.rsplit("=", 1)[-1]  # "x = 5" -> "5"
    text = _TEXT.sub(r"\1", text)  # "42\\text{ cm}^2" -> "42 cm^2": the unit stays a unit
    for junk, replacement in _NUMBER_JUNK.items():
        text = text.replace(junk, replacement)
    match = _NUMBER.match(text.strip().rstrip(".").strip())
    return Fraction(match[1].replace(",", "")) if match else None


def _main_thread_timeout() -> int | None:
    """math-verify's signal-based timeout works only on the main thread; elsewhere run without one."""
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse_latex(answer: str, timeout: int | None) -> list:
    """math-verify parse of an answer string, wrapped in \\boxed{} so that bare LaTeX is recognised."""
    answer = _BARE_PI.sub(r"\\pi", _strip_delimiters(answer))
    config = [LatexExtractionConfig(boxed_match_priority=0)]
    return parse(f"\\boxed{{{answer}}}", extraction_config=config, parsing_timeout=timeout)


def _math_verify_match(predicted: str, gold: str) -> bool:
    """Equivalence by math-verify (symbolic, numeric to 6 decimals, sets, intervals, matrices)."""
    timeout = _main_thread_timeout()
    gold_parsed = _parse_latex(gold, timeout)
    predicted_parsed = _parse_latex(predicted, timeout)
    if not gold_parsed or not predicted_parsed:
        return False
    return verify(gold_parsed, predicted_parsed, timeout_seconds=timeout)


def answers_match(predicted: str, gold: str, answer_type: AnswerType = "latex") -> bool:
    """Equivalence of two answer strings.

    "integer" / "number": if both are plain numbers (after stripping ``$``, thousands commas, units,
    a digit-free aside, ``%``, leading zeros, a trailing "."), compare them exactly; otherwise fall back
    to math-verify.
    "latex": identical strings (ignoring whitespace) match, otherwise math-verify decides.
    """
    if answer_type not in ("number", "integer", "latex"):
        raise ValueError(f"answer_type must be 'number', 'integer' or 'latex', got {answer_type!r}")
    if answer_type != "latex":
        predicted_value, gold_value = _to_number(predicted), _to_number(gold)
        if predicted_value is not None and gold_value is not None:
            return predicted_value == gold_value
    elif "".join(predicted.split()) == "".join(gold.split()):
        return True
    return _math_verify_match(predicted, gold)


def grade(output: str, gold: str, answer_type: AnswerType = "latex") -> Grade:
    """Extract the answer from output and compare it with gold."""
    extracted = extract_answer(output)
    if extracted is None:
        return Grade(extracted=None, correct=False, reason="no_answer")
    correct = answers_match(extracted, gold, answer_type)
    return Grade(extracted=extracted, correct=correct, reason="correct" if correct else "wrong")
