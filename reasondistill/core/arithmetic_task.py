"""Synthetic multi-step arithmetic word problems with a digit-by-digit chain of thought.

The demo task that lets the whole pipeline run with no model hub. A problem is a short story
("Mia has 47 marbles. She finds 38 more marbles. ...") whose answer takes 1-4 arithmetic steps.
The worked solution spells out every column of every step, with carries and borrows, so that
each token depends only on a few nearby ones; a model of a few million parameters can learn that
in minutes where it cannot learn "47+38=85" in one jump:

    Step 1: 47+38
    ones: 7+8=15, write 5 carry 1
    tens: 4+3=7, 7+1=8, write 8
    so 47+38=85

Splits are disjoint by construction: a problem's arithmetic content (start value, operations,
operands) is hashed and the hash alone decides its split, whatever the seed or the wording.

Solution styles: "fixed" writes one solution per problem, so a teacher trained on it is nearly
certain of every token; "varied" writes each addition in either order (38+47 or 47+38), ends each
step with one of several words and closes with one of several sentences, chosen by the problem's
content hash, so valid solutions differ and a teacher trained on them spreads its probability at those
branch points (the less certain teacher of docs/benchmarks.md). Questions, ids, splits and answers do
not depend on the style.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass

SPLITS = ("train", "test")
SOLUTION_STYLES = ("fixed", "varied")
TEST_SHARE_PERCENT = 20  # share of the arithmetic-content space reserved for the test split


@dataclass(frozen=True)
class Level:
    """A difficulty level: how many steps, how large the numbers, whether multiplication appears."""

    steps: int
    digits: int
    multiply: bool


LEVELS: dict[int, Level] = {
    1: Level(steps=1, digits=2, multiply=False),
    2: Level(steps=2, digits=2, multiply=True),
    3: Level(steps=3, digits=2, multiply=True),
    4: Level(steps=3, digits=3, multiply=True),
    5: Level(steps=4, digits=3, multiply=True),
}


@dataclass(frozen=True)
class Problem:
    """One word problem with its worked reasoning and gold answer.

    `reasoning` is the chain of thought (what a teacher writes inside <think>), `solution` the
    visible answer that follows it, ending in \\boxed{answer}.
    """

    id: str
    level: int
    question: str
    reasoning: str
    solution: str
    answer: int

    def to_record(self) -> dict:
        return asdict(self)


NAMES = [
    ("Mia", "she", "her"),
    ("Leo", "he", "his"),
    ("Ava", "she", "her"),
    ("Sam", "he", "his"),
    ("Zoe", "she", "her"),
    ("Ben", "he", "his"),
    ("Ivy", "she", "her"),
    ("Max", "he", "his"),
    ("Lily", "she", "her"),
    ("Omar", "he", "his"),
    ("Nina", "she", "her"),
    ("Raj", "he", "his"),
]
OBJECTS = ["apples", "marbles", "stickers", "coins", "books", "shells", "cards", "pencils", "stamps", "beads"]
ADD_PHRASES = [
    "{Pron} finds {n} more {obj}.",
    "{Pron} buys {n} more {obj}.",
    "{friend} gives {obj_pron} {n} {obj}.",
    "{Pron} gets {n} more {obj} as a gift.",
]
SUB_PHRASES = [
    "{Pron} gives {n} {obj} to {friend}.",
    "{Pron} loses {n} {obj}.",
    "{Pron} sells {n} {obj}.",
    "{Pron} uses {n} {obj}.",
]
MUL_PHRASES = {
    2: "Then the number of {obj} {pron} has doubles.",
    3: "Then the number of {obj} {pron} has triples.",
    4: "Then {pron} ends up with 4 times as many {obj}.",
    5: "Then {pron} ends up with 5 times as many {obj}.",
}
COLUMN_NAMES = ["ones", "tens", "hundreds", "thousands"]
# The "varied" style's alternatives; the first of each is the "fixed" style's wording.
STEP_CONCLUSIONS = ["so", "thus", "hence"]
CLOSING_SENTENCES = [
    "{name} has {value} {obj}.",
    "Now {name} has {value} {obj}.",
    "{Pron} has {value} {obj} in the end.",
]


def _digits(n: int, width: int) -> list[int]:
    """Digits of n, least significant first, zero-padded to width."""
    return [(n // 10**i) % 10 for i in range(width)]


def carry_steps(a: int, op: str, b: int) -> list[str]:
    """Column addition (op "+") or multiplication by a one-digit b (op "*"), ones column first.

    An incoming carry is added as its own small step, so every line needs only two-operand facts.
    """
    width = len(str(max(a, b)))
    da = _digits(a, width)
    db = _digits(b, width) if op == "+" else [b] * width
    lines, carry = [], 0
    for i in range(width):
        total = da[i] + db[i] if op == "+" else da[i] * db[i]
        work = f"{da[i]}{op}{db[i]}={total}"
        if carry:
            work += f", {total}+{carry}={total + carry}"
            total += carry
        carry = total // 10
        lines.append(f"{COLUMN_NAMES[i]}: {work}, write {total % 10}" + (f" carry {carry}" if carry else ""))
    if carry:
        lines.append(f"{COLUMN_NAMES[width]}: carry {carry}, write {carry}")
    lines.append(f"so {a}{op}{b}={a + b if op == '+' else a * b}")
    return lines


def borrow_steps(a: int, b: int) -> list[str]:
    """Column subtraction (a >= b), ones first; an incoming borrow is paid before subtracting."""
    width = len(str(a))
    da, db = _digits(a, width), _digits(b, width)
    lines, borrow = [], 0
    for i in range(width):
        digit, work = da[i], []
        if borrow and digit == 0:
            work.append("0-1 borrow 10-1=9")  # pays the incoming borrow by borrowing again
            digit, borrow = 9, 1
        elif borrow:
            work.append(f"{digit}-1={digit - 1}")
            digit, borrow = digit - 1, 0
        if digit < db[i]:
            work.append(f"{digit}-{db[i]} borrow {digit + 10}-{db[i]}={digit + 10 - db[i]}")
            digit, borrow = digit + 10, 1
        else:
            work.append(f"{digit}-{db[i]}={digit - db[i]}")
        lines.append(f"{COLUMN_NAMES[i]}: {', '.join(work)}, write {digit - db[i]}")
    lines.append(f"so {a}-{b}={a - b}")
    return lines


def column_steps(a: int, op: str, b: int) -> list[str]:
    """The worked lines of one step `a op b`."""
    return borrow_steps(a, b) if op == "-" else carry_steps(a, op, b)


def _sample_operations(rng: random.Random, level: Level) -> tuple[int, list[tuple[str, int]]]:
    """Draw a start value and (op, operand) steps keeping every intermediate value in range."""
    top = 10**level.digits - 1
    start = value = rng.randint(2, top)
    ops: list[tuple[str, int]] = []
    for _ in range(level.steps):
        choices = ["+", "-"] + (["*"] if level.multiply and value * 2 <= top else [])
        op = rng.choice(choices)
        if op == "+" and value >= top:
            op = "-"
        if op == "-" and value < 2:
            op = "+"
        if op == "+":
            operand = rng.randint(1, top - value)
        elif op == "-":
            operand = rng.randint(1, value - 1)  # keep something left: "has 0 apples" stories read badly
        else:
            operand = rng.randint(2, min(5, top // value))
        ops.append((op, operand))
        value = _apply(value, op, operand)
    return start, ops


def _apply(value: int, op: str, operand: int) -> int:
    return value + operand if op == "+" else value - operand if op == "-" else value * operand


def split_of(start: int, ops: list[tuple[str, int]]) -> str:
    """The split a problem's arithmetic content belongs to; wording plays no part."""
    key = f"{start}|" + "|".join(f"{op}{n}" for op, n in ops)
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % 100
    return "test" if bucket < TEST_SHARE_PERCENT else "train"


def render_problem(
    rng: random.Random, level_id: int, start: int, ops: list[tuple[str, int]], style: str = "fixed"
) -> Problem:
    """Wrap the arithmetic in a story and write the worked solution in `style` (SOLUTION_STYLES)."""
    name, pron, obj_pron = rng.choice(NAMES)
    friend = rng.choice([n for n, _, _ in NAMES if n != name])
    obj = rng.choice(OBJECTS)
    content_key = f"{start}" + "".join(f"{op}{n}" for op, n in ops)
    # Its own generator: the story's draws, and so the questions of a seed, stay those of "fixed".
    variation = random.Random(content_key) if style == "varied" else None
    sentences = [f"{name} has {start} {obj}."]
    reasoning: list[str] = []
    value = start
    for i, (op, n) in enumerate(ops, start=1):
        template = MUL_PHRASES[n] if op == "*" else rng.choice(ADD_PHRASES if op == "+" else SUB_PHRASES)
        fields = {
            "Pron": pron.capitalize(),
            "pron": pron,
            "obj_pron": obj_pron.replace("his", "him"),
            "n": n,
            "obj": obj,
            "friend": friend,
        }
        sentences.append(template.format(**fields))
        left, right = value, n
        if variation and op == "+" and variation.random() < 0.5:
            left, right = n, value
        lines = column_steps(left, op, right)
        if variation:
            lines[-1] = variation.choice(STEP_CONCLUSIONS) + lines[-1].removeprefix("so")
        reasoning.append(f"Step {i}: {left}{op}{right}")
        reasoning.extend(lines)
        value = _apply(value, op, n)
    sentences.append(f"How many {obj} does {name} have now?")
    closing = variation.choice(CLOSING_SENTENCES) if variation else CLOSING_SENTENCES[0]
    closing = closing.format(name=name, Pron=pron.capitalize(), value=value, obj=obj)
    return Problem(
        id=f"L{level_id}-{content_key}",
        level=level_id,
        question=" ".join(sentences),
        reasoning="\n".join(reasoning),
        solution=f"{closing} The answer is \\boxed{{{value}}}.",
        answer=value,
    )


def generate_problems(
    split: str, count: int, levels: list[int], seed: int, style: str = "fixed"
) -> list[Problem]:
    """`count` distinct problems of `split`, levels drawn round-robin, reproducible from `seed`,
    solutions written in `style`.

    Problems are unique by arithmetic content within the returned list.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if style not in SOLUTION_STYLES:
        raise ValueError(f"unknown solution style {style!r}; choose one of {SOLUTION_STYLES}")
    unknown = [lv for lv in levels if lv not in LEVELS]
    if unknown or not levels:
        raise ValueError(f"unknown difficulty levels {unknown or levels}; choose from {sorted(LEVELS)}")
    rng = random.Random(f"{seed}-{split}")
    problems: list[Problem] = []
    seen: set[str] = set()
    misses = 0  # draws in a row that gave nothing new: the content space is exhausted when large
    while len(problems) < count:
        level_id = levels[len(problems) % len(levels)]
        start, ops = _sample_operations(rng, LEVELS[level_id])
        problem = render_problem(rng, level_id, start, ops, style) if split_of(start, ops) == split else None
        if problem is None or problem.id in seen:
            misses += 1
            if misses > 20000:
                raise ValueError(
                    f"cannot draw {count} distinct {split} problems at levels {levels}: the "
                    "content space is too small; ask for fewer or add harder levels"
                )
            continue
        misses = 0
        seen.add(problem.id)
        problems.append(problem)
    return problems
