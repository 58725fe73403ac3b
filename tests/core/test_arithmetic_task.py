import re

import pytest

from reasondistill.core.arithmetic_task import (
    CLOSING_SENTENCES,
    LEVELS,
    STEP_CONCLUSIONS,
    column_steps,
    generate_problems,
    split_of,
)

STEP_RESULT = re.compile(r"^so (\d+)([+\-*])(\d+)=(\d+)$")


def test_same_seed_same_problems_other_seed_differs():
    a = generate_problems("train", 50, [1, 2, 3], seed=7)
    assert a == generate_problems("train", 50, [1, 2, 3], seed=7)
    assert a != generate_problems("train", 50, [1, 2, 3], seed=8)


def test_splits_are_disjoint_by_arithmetic_content():
    train = generate_problems("train", 3000, [1, 2, 3], seed=0)
    test = generate_problems("test", 1000, [1, 2, 3], seed=1)
    assert not {p.id for p in train} & {p.id for p in test}
    # The id is the arithmetic content itself; different wording cannot leak a test problem into train.
    assert not {p.id.split("-", 1)[1] for p in train} & {p.id.split("-", 1)[1] for p in test}
    assert len({p.id for p in train}) == len(train)


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_worked_solution_is_correct_arithmetic(level):
    for problem in generate_problems("test", 200, [level], seed=3):
        assert problem.level == level
        results = [
            STEP_RESULT.match(line) for line in problem.reasoning.splitlines() if line.startswith("so ")
        ]
        assert len(results) == LEVELS[level].steps
        value = None
        for match in results:
            a, op, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
            assert value is None or a == value, "each step starts from the previous result"
            assert c == {"+": a + b, "-": a - b, "*": a * b}[op]
            assert 0 <= c < 10 ** LEVELS[level].digits
            value = c
        assert value == problem.answer
        assert problem.solution.endswith(f"\\boxed{{{problem.answer}}}.")
        assert str(problem.answer) in problem.solution


def test_column_lines_show_carries_and_borrows():
    assert column_steps(47, "+", 38) == [
        "ones: 7+8=15, write 5 carry 1",
        "tens: 4+3=7, 7+1=8, write 8",
        "so 47+38=85",
    ]
    assert column_steps(85, "-", 19) == [
        "ones: 5-9 borrow 15-9=6, write 6",
        "tens: 8-1=7, 7-1=6, write 6",
        "so 85-19=66",
    ]
    assert column_steps(67, "*", 3) == [
        "ones: 7*3=21, write 1 carry 2",
        "tens: 6*3=18, 18+2=20, write 0 carry 2",
        "hundreds: carry 2, write 2",
        "so 67*3=201",
    ]
    # paying a borrow from a zero digit borrows again
    assert column_steps(302, "-", 7) == [
        "ones: 2-7 borrow 12-7=5, write 5",
        "tens: 0-1 borrow 10-1=9, 9-0=9, write 9",
        "hundreds: 3-1=2, 2-0=2, write 2",
        "so 302-7=295",
    ]


def test_split_is_a_pure_function_of_content():
    assert split_of(12, [("+", 3)]) == split_of(12, [("+", 3)])
    shares = [split_of(s, [("+", n)]) for s in range(1, 60) for n in range(1, 40)]
    assert 0.1 < shares.count("test") / len(shares) < 0.3


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown split"):
        generate_problems("validation", 1, [1], 0)
    with pytest.raises(ValueError, match="unknown difficulty levels"):
        generate_problems("train", 1, [9], 0)
    with pytest.raises(ValueError, match="too small"):
        generate_problems("test", 10**6, [1], 0)


STEP = re.compile(r"^Step \d+: (\d+)([+\-*])(\d+)$")
CONCLUSION = re.compile(r"^(\w+) (\d+)([+\-*])(\d+)=(\d+)$")


def test_varied_style_writes_other_valid_solutions_to_the_same_problems():
    fixed = generate_problems("train", 600, [1, 2, 3], seed=5)
    varied = generate_problems("train", 600, [1, 2, 3], seed=5, style="varied")
    assert varied == generate_problems("train", 600, [1, 2, 3], seed=5, style="varied")
    assert [(p.id, p.question, p.answer) for p in varied] == [(p.id, p.question, p.answer) for p in fixed]
    additions = swapped = 0
    words, closings = set(), set()
    for one, other in zip(fixed, varied, strict=True):
        fixed_steps = [STEP.match(line) for line in one.reasoning.splitlines() if line.startswith("Step")]
        lines = other.reasoning.splitlines()
        varied_steps = [(i, STEP.match(line)) for i, line in enumerate(lines) if line.startswith("Step")]
        assert len(varied_steps) == len(fixed_steps)
        ends = [i for i, _ in varied_steps[1:]] + [len(lines)]
        for (start, step), end, same in zip(varied_steps, ends, fixed_steps, strict=True):
            a, op, b = int(step[1]), step[2], int(step[3])
            assert op == same[2] and sorted([a, b]) == sorted([int(same[1]), int(same[3])])
            additions += op == "+"
            swapped += (a, b) != (int(same[1]), int(same[3]))
            # the step's column work is that of its own order, and its last line states the fact
            assert lines[start + 1 : end - 1] == column_steps(a, op, b)[:-1]
            word, *fact = CONCLUSION.match(lines[end - 1]).groups()
            assert (int(fact[0]), fact[1], int(fact[2])) == (a, op, b)
            assert int(fact[3]) == {"+": a + b, "-": a - b, "*": a * b}[op]
            words.add(word)
        assert other.solution.endswith(f"\\boxed{{{other.answer}}}.")
        closing = other.solution.split(" The answer is")[0]
        ending = " in the end." if closing.endswith(" in the end.") else ""
        closings.add(("Now " if closing.startswith("Now ") else "") + ending)
    assert 0.4 < swapped / additions < 0.6  # either order, about evenly; never a - or * step
    assert words == set(STEP_CONCLUSIONS)
    assert len(closings) == len(CLOSING_SENTENCES)
    with pytest.raises(ValueError, match="solution style"):
        generate_problems("train", 1, [1], seed=0, style="wild")
