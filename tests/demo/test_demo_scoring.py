"""The demo's finer measures: exact match and step accuracy on worked arithmetic solutions."""

from reasondistill.core.arithmetic_task import generate_problems
from reasondistill.demo.scoring import is_correct, step_accuracy


def completion(reasoning: str, solution: str) -> str:
    return f"<think>\n{reasoning}\n</think>\n\n{solution}"


def test_gold_solutions_score_full_marks_on_every_level():
    for problem in generate_problems("test", 300, [1, 2, 3, 4, 5], seed=4):
        text = completion(problem.reasoning, problem.solution)
        assert is_correct(text, problem) and step_accuracy(text, problem) == 1.0, problem


def test_each_wrong_or_missing_fact_costs_its_share():
    problem = next(p for p in generate_problems("test", 50, [2], seed=0) if "carry" not in p.reasoning)
    lines = problem.reasoning.split("\n")
    facts = sum("=" in line for line in lines)
    # one column fact wrong: the others still count
    wrong = [line.replace("=", "=1", 1) if line.startswith("ones") else line for line in lines]
    assert step_accuracy(completion("\n".join(wrong), ""), problem) == (facts - 2) / facts  # 2 ones lines
    # stopping after the first step: the unstated facts count as missing
    first = lines[: lines.index(next(line for line in lines if line.startswith("Step 2")))]
    assert step_accuracy(completion("\n".join(first), ""), problem) == sum("=" in x for x in first) / facts
    # right facts stated twice are still right; wrong extra facts would count against
    assert step_accuracy(completion("\n".join(lines * 2), ""), problem) == 1.0
    assert not is_correct(completion(problem.reasoning, "The answer is \\boxed{0}."), problem)
    assert step_accuracy("no reasoning at all", problem) == 0.0
