"""Teacher top-k targets for a student with another tokenizer, aligned over the bytes both spell.

A completion is one byte string; the teacher's tokens t_1..t_m and the student's s_1..s_n both spell
it. Cut it at every byte offset where both have a token boundary: each piece between two cuts holds m'
teacher tokens and n' student tokens, and each student token gets one kind of target:

    exact    m' = n' = 1   the same bytes. Every teacher alternative a (top-k, and the sampled token
                           with its own logprob) whose bytes are one student token v gives p(a) to v;
                           the rest of the mass is the tail bucket.
    merged   m' > 1 = n'   the student token covers several teacher tokens. By the chain rule its
                           probability is prod_i p_T(t_i | t_<i), the teacher's sampled logprobs
                           summed: target {s: that}, the rest tail (the alternatives of the later
                           teacher tokens belong to other prefixes, so none is a student token).
    split    m' = 1 < n'   one teacher token covers several student tokens. Each alternative a is
                           spelled in student tokens u(a) = (u_1..u_r) and the j-th piece gets
                               P(v | s_<j) = sum_{a: u(a)_<j = s_<j, u(a)_j = v} p(a)
                                             / sum_{a: u(a)_<j = s_<j} p(a)
                           (j = 1: the denominator is 1); alternatives that end before j keep their
                           mass in the denominator, i.e. in the tail.
    fallback m', n' > 1    boundaries cross: one-hot on the student's token (its CE), counted.

Spelling an alternative alone (u(a)) ignores how the student would merge it with the next bytes:
an approximation, as in TRL's GOLD trainer, which the split kind's share tells the size of.
Targets come out as the trace format's columns: ids and logprobs [n, K], sorted, -inf padded.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from transformers import PreTrainedTokenizerBase

TargetKind = Literal["exact", "merged", "split", "fallback"]
TARGET_KINDS: tuple[TargetKind, ...] = ("exact", "merged", "split", "fallback")
# The key of "the turn ends here" among a step's alternatives: each side's eos token, whatever its name
# (<|im_end|>, <|eot_id|>); no other special token has one.
END_OF_TURN = b""


def token_bytes(tokenizer: PreTrainedTokenizerBase) -> list[bytes]:
    """The bytes every id of a byte-level BPE `tokenizer` spells (GPT-2, Llama 3, Qwen, the demo's);
    b"" for special tokens."""
    decoder = type(tokenizer.backend_tokenizer.decoder).__name__ if tokenizer.is_fast else "slow"
    if decoder != "ByteLevel":
        raise ValueError(
            f"{tokenizer.name_or_path}: token-level KD across tokenizers needs byte-level BPE vocabularies "
            f"(decoder ByteLevel, got {decoder}); train this student sequence-level (kd_weight: 0)"
        )
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    special = set(tokenizer.all_special_tokens)
    vocab = tokenizer.get_vocab()
    spelled = [b""] * (max(vocab.values()) + 1)
    for token, index in vocab.items():
        if token not in special:
            spelled[index] = (
                bytes(byte_of[c] for c in token) if all(c in byte_of for c in token) else token.encode()
            )
    return spelled


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the alphabet of byte-level BPE)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


@dataclass(frozen=True)
class TeacherVocab:
    """The bytes of each teacher id (b"" for special ones) and its end-of-turn id."""

    bytes_of: list[bytes]
    eos: int

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase) -> TeacherVocab:
        return cls(token_bytes(tokenizer), tokenizer.eos_token_id)


@dataclass(frozen=True)
class StudentVocab:
    """What alignment needs of the student: the bytes of each id, the id of each byte string (its eos for
    END_OF_TURN), and how it spells bytes as ids."""

    bytes_of: list[bytes]
    id_of: dict[bytes, int]
    spell: Callable[[bytes], list[int]]

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase) -> StudentVocab:
        spelled = token_bytes(tokenizer)
        cache: dict[bytes, list[int]] = {}

        def spell(text: bytes) -> list[int]:
            if text == END_OF_TURN:
                return [tokenizer.eos_token_id]
            if text not in cache:
                cache[text] = tokenizer(text.decode("utf-8", "replace"), add_special_tokens=False)[
                    "input_ids"
                ]
            return cache[text]

        id_of = {b: i for i, b in enumerate(spelled) if b} | {END_OF_TURN: tokenizer.eos_token_id}
        return cls(spelled, id_of, spell)


@dataclass
class AlignedTargets:
    ids: np.ndarray  # [n, K] int64 student ids, by probability descending (0 where padded)
    logprobs: np.ndarray  # [n, K] float32, -inf where padded
    kinds: list[TargetKind]  # [n]


def common_pieces(teacher: Sequence[bytes], student: Sequence[bytes]) -> list[tuple[range, range]]:
    """(teacher token indices, student token indices) of each piece between common byte boundaries."""
    if b"".join(teacher) != b"".join(student):
        raise ValueError("the teacher's and the student's tokens do not spell the same bytes")
    if not all(teacher) or not all(student):
        raise ValueError("a token without bytes (a special token) cannot be aligned by offsets")
    teacher_end = {int(end): i + 1 for i, end in enumerate(np.cumsum([len(b) for b in teacher]))}
    student_end = {int(end): j + 1 for j, end in enumerate(np.cumsum([len(b) for b in student]))}
    pieces, i, j = [], 0, 0
    for cut in sorted(teacher_end.keys() & student_end.keys()):
        pieces.append((range(i, teacher_end[cut]), range(j, student_end[cut])))
        i, j = teacher_end[cut], student_end[cut]
    return pieces


def align_targets(
    teacher_bytes: Sequence[bytes],
    topk_ids: np.ndarray,
    topk_logprobs: np.ndarray,
    sampled_logprobs: np.ndarray,
    teacher: TeacherVocab,
    student_ids: Sequence[int],
    student: StudentVocab,
    k: int,
) -> AlignedTargets:
    """Targets for the student's tokens `student_ids` of a completion the teacher wrote as tokens of
    bytes `teacher_bytes`, with top-k ids and logprobs [m, k] and sampled logprobs [m]; `teacher` spells
    the teacher's ids; K = `k` entries per student token.

    Neither side may hold special tokens (strip a trailing end-of-turn before, and align it apart).
    """
    targets: list[dict[int, float]] = []
    kinds: list[TargetKind] = []
    student_bytes = [student.bytes_of[i] for i in student_ids]
    for t_range, s_range in common_pieces(teacher_bytes, student_bytes):
        pieces = [student_ids[s] for s in s_range]
        if len(t_range) == 1:
            t = t_range[0]
            alternatives = teacher_alternatives(
                topk_ids[t], topk_logprobs[t], teacher, teacher_bytes[t], float(sampled_logprobs[t])
            )
            if len(pieces) == 1:
                targets.append(exact_target(alternatives, student))
                kinds.append("exact")
            else:
                for j, target in enumerate(split_targets(alternatives, pieces, student)):
                    targets.append(target or {pieces[j]: 0.0})
                    kinds.append("split" if target else "fallback")
        elif len(pieces) == 1:  # chain rule over the teacher tokens the student token covers
            targets.append({pieces[0]: float(np.sum(sampled_logprobs[t_range.start : t_range.stop]))})
            kinds.append("merged")
        else:
            targets += [{piece: 0.0} for piece in pieces]
            kinds += ["fallback"] * len(pieces)
    return AlignedTargets(*target_rows(targets, k), kinds)


def target_rows(targets: list[dict[int, float]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """{student id: logprob} per token -> ids [n, k] and logprobs [n, k], most likely first, -inf padded."""
    ids = np.zeros((len(targets), k), dtype=np.int64)
    logprobs = np.full((len(targets), k), -math.inf, dtype=np.float32)
    for row, target in enumerate(targets):
        ranked = sorted(target.items(), key=lambda item: -item[1])[:k]
        ids[row, : len(ranked)] = [i for i, _ in ranked]
        logprobs[row, : len(ranked)] = [lp for _, lp in ranked]
    return ids, logprobs


def teacher_alternatives(
    ids: np.ndarray, logprobs: np.ndarray, teacher: TeacherVocab, sampled: bytes, sampled_logprob: float
) -> dict[bytes, float]:
    """The teacher's probability of each byte string (END_OF_TURN for its eos) at one step: its top-k,
    and the sampled token (which may lie outside the top-k). Other special and padding ids are left out:
    their mass joins the tail."""
    out = {}
    for i, lp in zip(ids.tolist(), logprobs.tolist(), strict=True):
        spelled = (
            END_OF_TURN if i == teacher.eos else teacher.bytes_of[i] if i < len(teacher.bytes_of) else b""
        )
        if lp > -math.inf and (spelled or i == teacher.eos):
            out[spelled] = math.exp(lp)
    out.setdefault(sampled, math.exp(sampled_logprob))
    return out


def exact_target(alternatives: dict[bytes, float], student: StudentVocab) -> dict[int, float]:
    """Alternatives whose bytes are one student token, as {student id: logprob}."""
    return {student.id_of[b]: math.log(p) for b, p in alternatives.items() if b in student.id_of and p > 0}


def split_targets(
    alternatives: dict[bytes, float], pieces: list[int], student: StudentVocab
) -> list[dict[int, float]]:
    """Per student piece j, {v: log P(v | pieces[:j])} from the alternatives spelled in student tokens;
    {} where no alternative spells pieces[:j] (the student merged across the piece's end)."""
    spelled = {b: student.spell(b) for b in alternatives}
    targets = []
    for j in range(len(pieces)):
        mass: dict[int, float] = defaultdict(float)
        prefix_mass = 0.0
        for b, p in alternatives.items():
            if spelled[b][:j] == pieces[:j]:
                prefix_mass += p
                if len(spelled[b]) > j:
                    mass[spelled[b][j]] += p
        denominator = prefix_mass if j > 0 else 1.0
        targets.append(
            {v: math.log(m / denominator) for v, m in mass.items() if m > 0} if prefix_mass > 0 else {}
        )
    return targets
