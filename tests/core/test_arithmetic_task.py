import re

import pytest

from reasondistill.core.arithmetic_task import LEVELS, column_steps, generate_problems, split_of

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
