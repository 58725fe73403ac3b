"""Token alignment across tokenizers on hand-made vocabularies with known answers, and token bytes of
the demo's real byte-level tokenizers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reasondistill.demo.tokenizer import LLAMA3_SPLIT_PATTERN, train_tokenizer
from reasondistill.train.token_alignment import (
    END_OF_TURN,
    StudentVocab,
    TeacherVocab,
    align_targets,
    common_pieces,
    token_bytes,
)

# id -> bytes; the last id of each is its end-of-turn token (a special token: no bytes)
TEACHER = [b"1", b"2", b"+", b"3", b"12", b"12+", b"13", b"23", END_OF_TURN]
STUDENT = [b"1", b"2", b"3", b"+", b"12", b"23", END_OF_TURN]
T = {b: i for i, b in enumerate(TEACHER)}
S = {b: i for i, b in enumerate(STUDENT)}


def greedy_spelling(text: bytes) -> list[int]:
    """Longest match first: the hand-made student's tokenizer."""
    ids = []
    if text == END_OF_TURN:
        return [S[END_OF_TURN]]
    while text:
        piece = max((b for b in STUDENT if b and text.startswith(b)), key=len)
        ids.append(S[piece])
        text = text[len(piece) :]
    return ids


STUDENT_VOCAB = StudentVocab(STUDENT, S, greedy_spelling)
TEACHER_VOCAB = TeacherVocab(TEACHER, eos=T[END_OF_TURN])


def teacher_step(probabilities: dict[bytes, float], k: int = 3) -> tuple[list[int], list[float]]:
    ranked = sorted(probabilities.items(), key=lambda item: -item[1])[:k]
    ids = [T[b] for b, _ in ranked] + [0] * (k - len(ranked))
    return ids, [math.log(p) for _, p in ranked] + [-math.inf] * (k - len(ranked))


def align(
    teacher_tokens: list[bytes], steps: list[dict[bytes, float]], student_tokens: list[bytes], k: int = 3
):
    rows = [teacher_step(step, k) for step in steps]
    sampled = [math.log(step[b]) for step, b in zip(steps, teacher_tokens, strict=True)]
    return align_targets(
        teacher_tokens,
        np.array([ids for ids, _ in rows]),
        np.array([lps for _, lps in rows]),
        np.array(sampled),
        TEACHER_VOCAB,
        [S[b] for b in student_tokens],
        STUDENT_VOCAB,
        k,
    )


def as_dict(targets, row: int) -> dict[bytes, float]:
    return {
        STUDENT[i]: round(math.exp(lp), 6)
        for i, lp in zip(targets.ids[row], targets.logprobs[row], strict=True)
        if lp > -math.inf
    }


def test_common_pieces_cut_where_both_have_a_boundary():
    assert common_pieces([b"1", b"2", b"+", b"3"], [b"12", b"+", b"3"]) == [
        (range(0, 2), range(0, 1)),
        (range(2, 3), range(1, 2)),
        (range(3, 4), range(2, 3)),
    ]
    assert common_pieces([b"12", b"3"], [b"1", b"23"]) == [(range(0, 2), range(0, 2))]
    with pytest.raises(ValueError, match="do not spell the same bytes"):
        common_pieces([b"1"], [b"2"])
    with pytest.raises(ValueError, match="special token"):
        common_pieces([b"1", b""], [b"1"])


def test_exact_moves_shared_alternatives_and_leaves_the_rest_to_the_tail():
    # the teacher's "+" step: 0.7 "+", 0.2 "12+" (not a student token: tail), 0.1 "3"
    targets = align([b"1", b"+"], [{b"1": 0.9, b"2": 0.1}, {b"+": 0.7, b"12+": 0.2, b"3": 0.1}], [b"1", b"+"])
    assert targets.kinds == ["exact", "exact"]
    assert as_dict(targets, 0) == {b"1": 0.9, b"2": 0.1}
    assert as_dict(targets, 1) == {b"+": 0.7, b"3": 0.1}
    assert targets.ids[1].tolist()[:2] == [S[b"+"], S[b"3"]]  # sorted by probability


def test_merged_is_the_chain_rule_product_of_the_sampled_steps():
    targets = align([b"1", b"2"], [{b"1": 0.8, b"2": 0.2}, {b"2": 0.5, b"3": 0.5}], [b"12"])
    assert targets.kinds == ["merged"] and as_dict(targets, 0) == {b"12": 0.4}


def test_split_conditions_each_piece_on_the_pieces_before_it():
    # one teacher token "12+" (0.6) with alternatives "12" (0.3) and "13" (0.1); the student writes 12, +
    targets = align([b"12+"], [{b"12+": 0.6, b"12": 0.3, b"13": 0.1}], [b"12", b"+"])
    assert targets.kinds == ["split", "split"]
    # first piece: "12+" and "12" start with student "12", "13" with student "1"
    assert as_dict(targets, 0) == {b"12": 0.9, b"1": 0.1}
    # second piece, given "12": "12+" continues with "+", "12" ends there (its mass is the tail)
    assert as_dict(targets, 1) == {b"+": round(0.6 / 0.9, 6)}


def test_the_teachers_end_of_turn_is_the_students():
    targets = align([b"1"], [{b"1": 0.6, END_OF_TURN: 0.4}], [b"1"])
    assert as_dict(targets, 0) == {b"1": 0.6, END_OF_TURN: 0.4}
    assert targets.ids[0].tolist()[:2] == [S[b"1"], S[END_OF_TURN]]


def test_crossing_boundaries_fall_back_to_the_students_own_token():
    targets = align([b"12", b"3"], [{b"12": 1.0}, {b"3": 1.0}], [b"1", b"23"])
    assert targets.kinds == ["fallback", "fallback"]
    assert as_dict(targets, 0) == {b"1": 1.0} and as_dict(targets, 1) == {b"23": 1.0}


def test_the_sampled_token_outside_the_top_k_still_counts():
    # top-1 only: "2" sampled at 0.1 lies outside it but its logprob is stored
    targets = align([b"2"], [{b"1": 0.9, b"2": 0.1}], [b"2"], k=1)
    assert as_dict(targets, 0) == {b"1": 0.9}  # K = 1 keeps the most likely
    wider = align([b"2"], [{b"1": 0.9, b"2": 0.1}], [b"2"], k=2)
    assert as_dict(wider, 0) == {b"1": 0.9, b"2": 0.1}


def test_token_bytes_of_real_byte_level_tokenizers_spell_what_they_decode(demo_tokenizer):
    from reasondistill.core.arithmetic_task import generate_problems
    from reasondistill.demo.teacher import render_conversation

    other = train_tokenizer(
        [render_conversation(p) for p in generate_problems("train", 500, [1, 2, 3], seed=0)],
        vocab_size=512,
        split_pattern=LLAMA3_SPLIT_PATTERN,
    )
    for tokenizer in (demo_tokenizer, other):
        spelled = token_bytes(tokenizer)
        text = "Lily has 128 cards.\n<think>\nStep 1: 12+345\n</think>"
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert b"".join(spelled[i] for i in ids) == text.encode()
        assert spelled[tokenizer.convert_tokens_to_ids(tokenizer.eos_token)] == b""
    teacher_ids = demo_tokenizer(" 128", add_special_tokens=False)["input_ids"]
    student = StudentVocab.of(other)
    student_ids = other(" 128", add_special_tokens=False)["input_ids"]
    assert len(student_ids) < len(teacher_ids)  # the student's number runs merge what the teacher splits
    spelled = token_bytes(demo_tokenizer)
    assert common_pieces([spelled[i] for i in teacher_ids], [student.bytes_of[i] for i in student_ids])
