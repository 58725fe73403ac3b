"""Trace dataset -> student training batches with the teacher's top-k aligned to every label.

A trace record (docs/trace_schema.md) holds the token ids the teacher saw (`prompt_token_ids`, already
rendered with its chat template) and produced (`completion_token_ids`), and for completion token j the
teacher's top-k at the step that produced it. The student reads

    input_ids = prompt_token_ids + completion_token_ids        (length P + C)
    labels[p] = input_ids[p] for p >= P, else -100              (prompt tokens carry no loss)
    topk_*[p] = teacher top-k of completion token p - P         (-inf logprobs elsewhere)

`topk_*[p]` is the teacher's distribution over the token at position p: the same target as `labels[p]`,
and the loss shifts both by one against the student's hidden states (as causal LM losses do).

With `prompt_chat_template: student`, `load_trace_dataset` replaces `prompt_token_ids` by the record's
question rendered with the student's own chat template and the settings the traces record
(`TraceInfo.prompt_render`, schema >= 1.1), leaving the reasoning section open when the teacher's prompt
did; completions and their targets are untouched, so the collator is the same for both.

That alignment is only meaningful when the student's tokenizer IS the teacher's: `check_tokenizer`
refuses anything else for token-level training. Sequence-level training (kd_weight 0) needs only the
text: with `retokenize=True` a student whose tokenizer differs gets each completion's text encoded with
its own tokenizer (plus its end-of-turn token where the teacher's turn ended) and one-hot targets
(`topk_ids` = the label, logprob 0, k = 1), so the collator and the loss are unchanged; a record whose
text the student's tokenizer does not give back unchanged (no byte fallback: unknown characters) is
dropped and counted, never trained on in a changed form. Token-level KD across tokenizers passes
the teacher's tokenizer too: the stored top-k is then moved onto the student's tokens by byte offsets
(train/token_alignment.py: exact, merged, split or fallback targets, counted per kind).

A student whose embedding matrix is smaller than the teacher's (Qwen2.5-0.5B: 151936 rows, Qwen2.5-7B:
152064; the extra rows are padding no tokenizer id reaches) is handled by masking top-k entries at ids
>= the student's vocabulary: their mass moves to the tail bucket.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from reasondistill.core.prompts import load_prompts, render_prompt
from reasondistill.core.traces import (
    TOPK_COLUMNS,
    TraceInfo,
    decode_logprobs,
    encode_logprobs,
    load_traces,
    read_info,
    read_topk,
    tokenizer_fingerprint,
)
from reasondistill.train.losses.distill import IGNORE_INDEX
from reasondistill.train.token_alignment import (
    END_OF_TURN,
    TARGET_KINDS,
    StudentVocab,
    TeacherVocab,
    align_targets,
    exact_target,
    target_rows,
    teacher_alternatives,
)

# The columns the collator reads; the rest of a trace record stays on disk.
TRAIN_COLUMNS = ("prompt_token_ids", "completion_token_ids", "topk_ids", "topk_logprob_codes")
THINK_OPEN = "<think>"
SUBSET_SEED = 0  # one shuffle for every `num_traces`, independent of the training seed


def same_tokenizer(info: TraceInfo, tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether `tokenizer` has the very vocabulary the traces were written with."""
    return tokenizer_fingerprint(tokenizer.get_vocab()) == info.tokenizer_fingerprint


def check_tokenizer(info: TraceInfo, tokenizer: PreTrainedTokenizerBase, student: str) -> None:
    """Refuse a student whose tokenizer differs from the one the traces were written with."""
    if not same_tokenizer(info, tokenizer):
        raise ValueError(
            f"the student {student} has a different tokenizer (fingerprint "
            f"{tokenizer_fingerprint(tokenizer.get_vocab())}) from the traces' teacher {info.teacher} "
            f"(tokenizer {info.tokenizer}, fingerprint {info.tokenizer_fingerprint}). The stored prompt and "
            "top-k ids are in the teacher's vocabulary: pick a student of the teacher's family (e.g. Qwen2.5 "
            "students for R1-Distill-Qwen teachers), or train on the traces' text re-tokenized for this "
            "student with prompt_chat_template: student (kd_weight: 0 for sequence-level training; "
            "kd_weight > 0 aligns the top-k by bytes, with the teacher's tokenizer at hand)."
        )


def retokenize_completions(
    tokenizer: PreTrainedTokenizerBase, completions: list[str], finish_reasons: list[str]
) -> list[list[int] | None]:
    """Each completion's text in the student's token ids, ending with its end-of-turn token (eos) where
    the teacher's turn ended (finish_reason stop); None where decoding the ids does not give the text
    back (characters the student's tokenizer cannot spell)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(
            f"the student tokenizer {tokenizer.name_or_path} has no eos_token to end a re-tokenized turn "
            "with: set eos_token in its tokenizer_config.json"
        )
    encoded = tokenizer(completions, add_special_tokens=False)["input_ids"]
    ids = []
    for text, tokens, finish in zip(completions, encoded, finish_reasons, strict=True):
        survives = tokenizer.decode(tokens, clean_up_tokenization_spaces=False) == text
        ids.append((tokens + [eos] if finish == "stop" else tokens) if survives else None)
    return ids


def align_record(
    record: dict, student_ids: list[int], teacher: TeacherVocab, student: StudentVocab, k: int
) -> tuple[dict[str, list], dict[str, int]] | None:
    """The stored top-k of one record moved onto the student's tokens `student_ids` (its completion text,
    re-tokenized, ending with its eos where the teacher's turn ended), and the count of each target kind;
    None if the teacher's tokens do not spell the text (it cannot be aligned)."""
    teacher_ids = list(record["completion_token_ids"])
    ids, logprobs = read_topk(record)
    sampled = np.asarray(record["sampled_logprob"], dtype=np.float32)
    stop = record["finish_reason"] == "stop"  # the student's ids end with its eos then
    spelled = [teacher.bytes_of[i] if i < len(teacher.bytes_of) else b"" for i in teacher_ids]  # b"": no text
    teacher_eos = stop and bool(teacher_ids) and not spelled[-1]
    # teacher tokens that spell no text (special or padding ids inside the completion) align with nothing
    texts = [t for t, b in enumerate(spelled[:-1] if teacher_eos else spelled) if b]
    teacher_bytes = [spelled[t] for t in texts]
    if b"".join(teacher_bytes) != record["completion"].encode():
        return None
    body = student_ids[:-1] if stop else student_ids
    targets = align_targets(
        teacher_bytes, ids[texts], logprobs[texts], sampled[texts], teacher, body, student, k
    )
    target_ids, target_logprobs = targets.ids, targets.logprobs
    counts = {kind: targets.kinds.count(kind) for kind in TARGET_KINDS}
    counts["teacher_tokens_without_text"] = len(spelled) - len(texts) - int(teacher_eos)
    if stop:  # the end of turn: the teacher's alternatives where it ended (or only "end", certain)
        last = len(teacher_ids) - 1
        ending = (
            exact_target(
                teacher_alternatives(ids[last], logprobs[last], teacher, END_OF_TURN, sampled[last]), student
            )
            if teacher_eos
            else {student.id_of[END_OF_TURN]: 0.0}
        )
        eos_ids, eos_logprobs = target_rows([ending], k)
        target_ids = np.concatenate([target_ids, eos_ids])
        target_logprobs = np.concatenate([target_logprobs, eos_logprobs])
        counts["exact" if teacher_eos else "fallback"] += 1
    columns = {
        "topk_ids": target_ids.tolist(),
        "topk_logprob_codes": encode_logprobs(target_logprobs).tolist(),
    }
    return columns, counts


def one_hot_targets(completions: list[list[int]]) -> dict[str, list]:
    """Top-1 columns that say 'this token, probability 1' for each completion token (k = 1)."""
    certain = int(encode_logprobs(np.zeros((1, 1), dtype=np.float32))[0, 0])
    return {
        "topk_ids": [[[token] for token in ids] for ids in completions],
        "topk_logprob_codes": [[[certain]] * len(ids) for ids in completions],
    }


def gen_temperature(info: TraceInfo) -> float:
    """Temperature the stored logprobs reflect: 1 for vLLM's raw logprobs, else the sampling temperature."""
    if info.logprobs_mode == "raw_logprobs":
        return 1.0
    if info.temperature <= 0:
        raise ValueError("processed logprobs of greedy decoding (temperature 0) are not a distribution")
    return info.temperature


def student_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, questions: list[str], teacher_prompts: list[str], prompt_render: dict
) -> list[list[int]]:
    """Prompt ids of each question under the student's chat template and the traces' `prompt_render`.

    The student's prompt opens the reasoning section exactly when the teacher's did (by its template or
    by think_prefill), so the stored completion continues both from the same point.
    """
    ids = []
    for question, teacher_prompt in zip(questions, teacher_prompts, strict=True):
        opened = teacher_prompt.rstrip().endswith(THINK_OPEN)
        text = render_prompt(tokenizer, question, **{**prompt_render, "think_prefill": opened})
        if text.rstrip().endswith(THINK_OPEN) and not opened:
            raise ValueError(
                f"the student's chat template opens {THINK_OPEN} but the teacher's prompts do not, so the "
                "stored completions cannot continue the student's prompts: use prompt_chat_template: teacher"
            )
        ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids


@dataclass(frozen=True)
class OnPolicyPrompts:
    """Questions for on-policy steps beyond the traces (`on_policy_prompts`), rendered once: the prompt
    ids the student samples after and the ones the teacher scores after, index by index."""

    student: list[list[int]]
    teacher: list[list[int]]


def load_on_policy_prompts(
    source: str,
    split: str,
    limit: int | None,
    question_field: str,
    info: TraceInfo,
    teacher_tokenizer: PreTrainedTokenizerBase,
    student_tokenizer: PreTrainedTokenizerBase | None,
    max_length: int | None,
) -> tuple[OnPolicyPrompts, int]:
    """(prompts, how many were dropped because they fill `max_length`) of a prompt source, rendered as the
    traces' prompts were (`info.prompt_render`) with the teacher's chat template, and with the student's
    when `student_tokenizer` is given (prompt_chat_template: student; else the student reads the
    teacher's ids). Only questions are read: on-policy steps need no answers and no teacher traces."""
    if info.prompt_render is None:
        raise ValueError(
            f"on_policy_prompts are rendered as the traces' prompts were, but these traces (schema "
            f"{info.schema_version}) do not record how: regenerate them with this version, or drop "
            "on_policy_prompts to sample after the traces' own prompts"
        )
    records = load_prompts(source, split=split, limit=limit, question_field=question_field, answer_field=None)
    questions = [record.question for record in records]
    texts = [render_prompt(teacher_tokenizer, q, **info.prompt_render) for q in questions]
    teacher = [teacher_tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    student = (
        teacher
        if student_tokenizer is None
        else student_prompt_ids(student_tokenizer, questions, texts, info.prompt_render)
    )
    keep = [i for i, ids in enumerate(student) if max_length is None or len(ids) < max_length]
    if not keep:
        raise ValueError(f"on_policy_prompts {source!r}: every prompt fills max_length={max_length}")
    return OnPolicyPrompts([student[i] for i in keep], [teacher[i] for i in keep]), len(records) - len(keep)


@dataclass(frozen=True)
class TraceCounts:
    """What `load_trace_dataset` left out, and how it aligned the top-k for a student of another tokenizer."""

    dropped: dict[str, int]  # records left out, per reason
    # token-level KD across tokenizers: student tokens per kind of target (`target_<kind>`) and teacher
    # tokens that spell no text; empty otherwise
    alignment: dict[str, int]


def load_trace_dataset(
    trace_dir: str,
    only_correct: bool,
    max_length: int | None,
    student_tokenizer: PreTrainedTokenizerBase | None = None,
    num_traces: int | None = None,
    retokenize: bool = False,
    teacher_tokenizer: PreTrainedTokenizerBase | None = None,
):
    """(dataset of TRAIN_COLUMNS + length, TraceInfo, TraceCounts) from a complete trace directory.

    `student_tokenizer` (prompt_chat_template: student) re-renders every prompt with its chat template;
    None keeps the stored teacher prompt ids. A `student_tokenizer` unlike the teacher's is refused unless
    `retokenize` (sequence-level training), which re-tokenizes the completions' text for it with one-hot
    targets (k = 1; records whose text does not survive are dropped as `text_not_in_student_vocab`), or,
    given the traces' `teacher_tokenizer`, with the stored top-k aligned to the student's tokens (k kept;
    `TraceCounts.alignment` counts student tokens per kind of target).
    Records longer than `max_length` keep their prompt and lose the end of the completion (the collator
    truncates); records whose prompt alone fills `max_length` are dropped and counted.
    """
    info = read_info(trace_dir)
    cross_tokenizer = False
    if student_tokenizer is not None:
        name = student_tokenizer.name_or_path
        cross_tokenizer = retokenize and not same_tokenizer(info, student_tokenizer)
        if not cross_tokenizer:
            check_tokenizer(info, student_tokenizer, name)
        if info.prompt_render is None:
            raise ValueError(
                f"{trace_dir} (trace schema {info.schema_version}) does not record how its prompts were "
                "rendered, which prompt_chat_template: student needs: regenerate with this version or use "
                "prompt_chat_template: teacher"
            )
        if not student_tokenizer.chat_template:
            raise ValueError(
                f"the student tokenizer {name} has no chat template to render prompts with: set its "
                "chat_template (tokenizer_config.json or chat_template.jinja) or use "
                "prompt_chat_template: teacher"
            )
    dataset = load_traces(trace_dir)
    dropped, alignment = {}, {}
    if only_correct:
        before = len(dataset)
        dataset = dataset.filter(lambda correct: correct, input_columns="correct")
        dropped["incorrect"] = before - len(dataset)
    if student_tokenizer is not None:  # before the max_length filter, which must see the student's prompts
        dataset = dataset.map(
            lambda questions, prompts, teacher_ids: {
                "prompt_token_ids": student_prompt_ids(
                    student_tokenizer, questions, prompts, info.prompt_render
                ),
                "teacher_prompt_token_ids": teacher_ids,  # on-policy steps: the teacher scores its own
            },
            input_columns=["question", "prompt", "prompt_token_ids"],
            batched=True,
        )
    if cross_tokenizer:
        dataset = dataset.map(
            lambda completions, finish: {
                "student_ids": retokenize_completions(student_tokenizer, completions, finish)
            },
            input_columns=["completion", "finish_reason"],
            batched=True,
        )
        before = len(dataset)
        dataset = dataset.filter(lambda ids: ids is not None, input_columns="student_ids")
        dropped["text_not_in_student_vocab"] = before - len(dataset)
        if teacher_tokenizer is None:
            dataset = dataset.map(
                one_hot_targets, input_columns="student_ids", batched=True, remove_columns=list(TOPK_COLUMNS)
            )
        else:
            before = len(dataset)
            dataset, alignment = align_dataset(dataset, info, teacher_tokenizer, student_tokenizer)
            dropped["teacher_tokens_not_the_text"] = before - len(dataset)
        dataset = dataset.remove_columns("completion_token_ids").rename_column(
            "student_ids", "completion_token_ids"
        )
    if max_length is not None:
        before = len(dataset)
        dataset = dataset.filter(lambda ids: len(ids) < max_length, input_columns="prompt_token_ids")
        dropped["prompt_too_long"] = before - len(dataset)
    if len(dataset) == 0:
        raise ValueError(f"{trace_dir}: no training records left (dropped: {dropped}); check the traces")
    if num_traces is not None:
        if num_traces > len(dataset):
            raise ValueError(
                f"num_traces={num_traces} but {trace_dir} has {len(dataset)} usable records (dropped: "
                f"{dropped}): lower num_traces or generate more traces"
            )
        dataset = dataset.shuffle(seed=SUBSET_SEED).select(range(num_traces))
    columns = list(TRAIN_COLUMNS) + (["teacher_prompt_token_ids"] if student_tokenizer is not None else [])
    dataset = dataset.select_columns(columns).map(
        lambda prompts, completions: {
            "length": [len(p) + len(c) for p, c in zip(prompts, completions, strict=True)]
        },
        input_columns=["prompt_token_ids", "completion_token_ids"],
        batched=True,
    )  # for train_sampling_strategy: group_by_length (less padding)
    return dataset, info, TraceCounts(dropped, alignment)


def align_dataset(
    dataset, info: TraceInfo, teacher_tokenizer, student_tokenizer
) -> tuple[object, dict[str, int]]:
    """Every record's stored top-k moved onto its re-tokenized completion (column `student_ids`) by
    `align_record`; records whose teacher tokens do not spell the text are dropped. Returns the dataset
    and, per kind of target, how many student tokens got it (and how many teacher tokens spelled no text)."""
    check_tokenizer(info, teacher_tokenizer, teacher_tokenizer.name_or_path)
    teacher = TeacherVocab.of(teacher_tokenizer)
    student = StudentVocab.of(student_tokenizer)
    kind_columns = [f"target_{kind}" for kind in TARGET_KINDS] + ["teacher_tokens_without_text"]

    def align(record: dict) -> dict:
        result = align_record(record, record["student_ids"], teacher, student, info.k)
        if result is None:
            return {"aligned": False, "topk_ids": [], "topk_logprob_codes": []} | dict.fromkeys(
                kind_columns, 0
            )
        columns, counts = result
        named = {name if name.startswith("teacher") else f"target_{name}": n for name, n in counts.items()}
        return {"aligned": True, **columns} | named

    dataset = dataset.map(align, remove_columns=list(TOPK_COLUMNS)).filter(
        lambda ok: ok, input_columns="aligned"
    )
    counts = {name: int(sum(dataset[name])) for name in kind_columns}
    return dataset.remove_columns(["aligned", *kind_columns]), counts


@dataclass
class TopKCollator:
    """Pads trace records into a batch: input_ids, attention_mask, labels [B, L], topk_ids [B, L, K]
    (int64), topk_logprobs [B, L, K] (float32, -inf = no target), prompt_lengths [B].

    `k` is the stored width; `target_k` (<= k, None = k) keeps the first ranks as targets (K = target_k
    in the batch; the dropped ranks' mass joins the loss's tail bucket).
    Records may carry `topk_logprob_codes` (stored) or float `topk_logprobs` (on-policy scoring). Records
    re-rendered in the student's chat template also pass on `teacher_prompt_token_ids` (a list per row),
    the prompt the teacher scores on-policy samples after.
    """

    pad_token_id: int
    k: int
    student_vocab_size: int
    max_length: int | None = None
    target_k: int | None = None

    def __post_init__(self) -> None:
        if self.target_k is not None and not 1 <= self.target_k <= self.k:
            raise ValueError(
                f"kd_top_k={self.target_k} but the traces store top-{self.k}: choose 1..{self.k} (or null)"
            )

    def _row(self, record: dict) -> tuple[list[int], int, np.ndarray, np.ndarray]:
        prompt, completion = list(record["prompt_token_ids"]), list(record["completion_token_ids"])
        ids = np.asarray(record["topk_ids"], dtype=np.int64).reshape(len(completion), self.k)
        if "topk_logprob_codes" in record:
            codes = np.asarray(record["topk_logprob_codes"], dtype=np.int64).reshape(len(completion), self.k)
            logprobs = decode_logprobs(codes)
        else:
            logprobs = np.asarray(record["topk_logprobs"], dtype=np.float32).reshape(len(completion), self.k)
        ids, logprobs = ids[:, : self.target_k], logprobs[:, : self.target_k]  # ranks are sorted
        if self.max_length is not None:
            keep = max(0, self.max_length - len(prompt))
            completion, ids, logprobs = completion[:keep], ids[:keep], logprobs[:keep]
        if completion and max(completion) >= self.student_vocab_size:
            raise ValueError(
                f"a completion token id {max(completion)} is outside the student's vocabulary "
                f"({self.student_vocab_size} rows): the traces come from another tokenizer"
            )
        outside = ids >= self.student_vocab_size
        if outside.any():  # padding rows of a larger teacher embedding: no student logit; move to the tail
            logprobs = np.where(outside, -math.inf, logprobs)
            order = np.argsort(-logprobs, axis=1, kind="stable")  # masked ranks must trail
            ids, logprobs = (
                np.take_along_axis(np.where(outside, 0, ids), order, 1),
                np.take_along_axis(logprobs, order, 1),
            )
        return prompt + completion, len(prompt), ids, logprobs

    def __call__(self, records: Sequence[dict]) -> dict[str, torch.Tensor | list[list[int]]]:
        rows = [self._row(r) for r in records]
        length = max(len(tokens) for tokens, *_ in rows)
        batch = len(rows)
        input_ids = torch.full((batch, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
        k = self.target_k or self.k
        topk_ids = torch.zeros((batch, length, k), dtype=torch.long)
        topk_logprobs = torch.full((batch, length, k), -math.inf, dtype=torch.float32)
        for b, (tokens, prompt_length, ids, logprobs) in enumerate(rows):
            end = len(tokens)
            input_ids[b, :end] = torch.tensor(tokens)
            attention_mask[b, :end] = 1
            labels[b, prompt_length:end] = input_ids[b, prompt_length:end]
            topk_ids[b, prompt_length:end] = torch.from_numpy(ids)
            topk_logprobs[b, prompt_length:end] = torch.from_numpy(logprobs)
        prompt_lengths = torch.tensor([prompt_length for _, prompt_length, _, _ in rows])
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "topk_ids": topk_ids,
            "topk_logprobs": topk_logprobs,
            "prompt_lengths": prompt_lengths,
        }
        if "teacher_prompt_token_ids" in records[0]:
            batch["teacher_prompt_token_ids"] = [list(r["teacher_prompt_token_ids"]) for r in records]
        return batch
