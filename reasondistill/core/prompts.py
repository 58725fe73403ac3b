"""Prompt sources for trace generation, and their rendering through the teacher's chat template.

A prompt set is the bundled synthetic task (`task:arithmetic`), a local JSONL or Parquet file, or a
Hugging Face dataset directory (`save_to_disk` output, or a folder of data files). Each row gives a
question and a gold answer; rows get a stable `prompt_id` so resumed runs and independent workers
agree on who does what.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from transformers import PreTrainedTokenizerBase

from reasondistill.core.arithmetic_task import generate_problems
from reasondistill.core.grading import gsm8k_gold

TASK_PREFIX = "task:"
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
FILE_KINDS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}  # loader by file extension
AnswerFormat = Literal["plain", "gsm8k"]  # gsm8k: the gold answer follows the last "#### " of its column


@dataclass(frozen=True)
class PromptRecord:
    prompt_id: str
    question: str
    gold_answer: str
    # scoring mode: an existing completion to score, as text or as token ids (a trace dataset's
    # `completion_token_ids`: scored exactly as stored, without re-tokenizing)
    completion: str | tuple[int, ...] | None = None


def _load_rows(source: str, split: str, subset: str | None) -> list[dict]:
    import datasets

    path = Path(source)
    local = path.exists() or source.startswith((".", "/")) or path.suffix in FILE_KINDS
    if not local and HUB_ID.fullmatch(source):
        # A hub dataset id (e.g. openai/gsm8k with subset main): for machines that reach the hub.
        return list(datasets.load_dataset(source, subset, split=split))
    if not path.exists():
        raise ValueError(
            f"prompt source {source!r} does not exist; give a .jsonl/.parquet file, a Hugging Face "
            f"dataset directory or hub id, or {TASK_PREFIX}arithmetic"
        )
    if path.is_file():
        if path.stat().st_size == 0:
            return []
        kind = FILE_KINDS.get(path.suffix)
        if kind is None:
            raise ValueError(
                f"prompt file {source!r}: unsupported extension {path.suffix!r} (use .jsonl or .parquet)"
            )
        if kind == "json":
            return _json_rows(path)
        return list(datasets.load_dataset(kind, data_files=str(path), split="train"))
    if (path / "dataset_info.json").exists() or (path / "state.json").exists():
        loaded = datasets.load_from_disk(str(path))
    else:
        loaded = datasets.load_dataset(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(
                f"dataset {source!r} has splits {sorted(loaded)}, not {split!r}; set prompt_split"
            )
        loaded = loaded[split]
    return list(loaded)


def _json_rows(path: Path) -> list[dict]:
    """Rows of a JSON Lines file (or a .json file holding one list of objects), parsed here rather than
    by `datasets` so that an error names the file and the line."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")  # a BOM, as some editors write
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"prompt file {path}, line {line}: byte 0x{raw[e.start]:02x} is not UTF-8; save the file as UTF-8"
        ) from e
    if path.suffix == ".json" and text.lstrip().startswith("["):  # one document: a list of rows
        rows = [(f"item {i}", row) for i, row in enumerate(_parse_json(path, text, 1))]
    else:  # split on "\n" only: a JSON string may hold U+2028, which splitlines() would cut at
        lines = enumerate(text.split("\n"), 1)
        rows = [(f"line {i}", _parse_json(path, line, i)) for i, line in lines if line.strip()]
    for place, row in rows:
        if not isinstance(row, dict):
            raise ValueError(
                f"prompt file {path}, {place}: a JSON {type(row).__name__}, not an object; each row must be "
                'an object such as {"question": "...", "answer": "..."}'
            )
    return [row for _, row in rows]


def _parse_json(path: Path, text: str, first_line: int) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"prompt file {path}, line {first_line + e.lineno - 1}: not valid JSON ({e.msg} at column "
            f"{e.colno}); fix that line"
        ) from e


def completion_of(value) -> str | tuple[int, ...]:
    """A completion column's value: token ids stay ids, anything else is text."""
    return tuple(int(t) for t in value) if isinstance(value, list | tuple) else str(value)


def load_prompts(
    source: str,
    *,
    split: str = "train",
    subset: str | None = None,
    limit: int | None = None,
    question_field: str = "question",
    answer_field: str | None = "answer",
    id_field: str | None = None,
    completion_field: str | None = None,
    answer_format: AnswerFormat = "plain",
    task_levels: tuple[int, ...] = (1, 2, 3),
    seed: int = 0,
) -> list[PromptRecord]:
    """Read a prompt set; refuse it with a message naming the field and the fix if it is unusable.

    `source` is task:arithmetic, a .jsonl/.parquet file, a dataset directory, or a hub id (`subset`
    names its configuration). `answer_field` None reads questions only (gold answers left empty).
    """
    if source.startswith(TASK_PREFIX):
        if source != f"{TASK_PREFIX}arithmetic":
            raise ValueError(f"unknown bundled task {source!r}; the bundled task is {TASK_PREFIX}arithmetic")
        problems = generate_problems(split, limit or 1000, list(task_levels), seed)
        return [PromptRecord(p.id, p.question, str(p.answer)) for p in problems]

    rows = _load_rows(source, split, subset)[:limit]
    if not rows:
        raise ValueError(f"prompt source {source!r} has no rows")
    needed = [f for f in (question_field, answer_field, id_field, completion_field) if f]
    for index, row in enumerate(rows):
        missing = [f for f in needed if f not in row or row[f] is None]
        if missing:
            raise ValueError(
                f"prompt source {source!r}, row {index}: missing field(s) {missing}; the rows have "
                f"{sorted(row)}. Set question_field/answer_field/id_field to the right names."
            )
    records = []
    for index, row in enumerate(rows):
        answer = "" if answer_field is None else str(row[answer_field])  # None: questions only
        records.append(
            PromptRecord(
                prompt_id=str(row[id_field]) if id_field else f"row-{index}",
                question=str(row[question_field]),
                gold_answer=gsm8k_gold(answer) if answer_format == "gsm8k" else answer,
                completion=completion_of(row[completion_field]) if completion_field else None,
            )
        )
    ids = [r.prompt_id for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"prompt source {source!r}: id_field {id_field!r} has duplicate values; ids must be unique"
        )
    return records


def render_prompt(
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    system_prompt: str | None,
    instruction: str | None,
    think_prefill: bool,
) -> str:
    """Chat-template text for one question, ending where the teacher starts writing.

    `instruction` is appended to the question (R1-style teachers want the boxed-answer request in
    the user turn, not a system prompt); `think_prefill` opens the reasoning section for teachers
    whose template does not (DeepSeek-R1 sometimes skips thinking otherwise).
    """
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": f"{question}\n{instruction}" if instruction else question})
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if think_prefill and not text.rstrip().endswith("<think>"):
        text += "<think>\n"
    return text
