"""Trace dataset storage: the written contract between `reasondistill generate` and the trainer.

A trace dataset is a directory of Parquet shards plus a dataset card:

    OUT/README.md                               card: YAML `configs:` header, metadata, totals
    OUT/trace_info.json                         TraceInfo (dataset-level metadata)
    OUT/data/train-00003-of-00010.parquet       one shard: records, TraceInfo and shard stats in its footer
    OUT/data/train-00003-of-00010.parquet.sha256  its sha256 (`sha256sum -c` format), written after it

One record is one (prompt, sample) completion. Columns, dtypes, shapes, the top-k encoding and its
error bound are specified in docs/trace_schema.md (schema version SCHEMA_VERSION). Shards are published
atomically (temp file, fsync, hard link that refuses to overwrite), so a killed writer leaves at most an
ignored temp file, and a resumed run regenerates only the missing shards. Each shard's bytes are checked
against its recorded sha256 when a run resumes and when `load_traces` opens the dataset, so a damaged
shard is named, never counted complete. No vLLM here; `datasets` is imported only by `load_traces`.

One module of ~600 lines on purpose: writer, reader, card and footer checks are the contract, and a
change to one must be read beside the others (docs/trace_schema.md describes the same file).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "1.2"  # major.minor; a reader accepts every minor version of its major
INFO_KEY, SHARD_KEY = b"reasondistill.trace_info", b"reasondistill.shard"  # Parquet footer keys
INFO_FILE, CARD_FILE, DATA_DIR = "trace_info.json", "README.md", "data"
TOKENIZER_DIR = "tokenizer"  # since 1.2: the teacher's tokenizer files, which spell the stored ids
LOGPROBS_MODES, FINISH_REASONS = ("raw_logprobs", "processed_logprobs"), ("stop", "length")
# Top-k logprobs are stored as codes: c = round(-logprob * LOGPROB_SCALE), kept as the difference to the
# previous rank's c (logprobs sorted descending, so differences are >= 0). Error <= 1/2048 nats everywhere.
LOGPROB_SCALE = 1024
MAX_CODE = 65534  # cumulative limit: finite logprobs below LOGPROB_FLOOR are stored as the floor
NEG_INF_CODE = 65535  # -inf at this rank and all later ones (tokens masked by top-p in processed mode)
LOGPROB_FLOOR = -MAX_CODE / LOGPROB_SCALE  # -63.998 nats
POSITIVE_TOLERANCE = 1e-4  # logprobs in (0, 1e-4] (log_softmax rounding) are stored as 0
STALE_TEMP_SECONDS = 3600  # older temp files belong to dead writers and are deleted
ROW_GROUP_RECORDS = 256
SHARD_NAME = re.compile(r"^train-(\d{5})-of-(\d{5})\.parquet$")
TOPK_COLUMNS = ("topk_ids", "topk_logprob_codes")
STRING_COLUMNS = ("prompt_id", "question", "prompt", "finish_reason", "extracted_answer", "gold_answer")
CHECKSUM_SUFFIX = ".sha256"  # train-00003-of-00010.parquet.sha256 beside its shard
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
REDO = "delete it and re-run `reasondistill generate` with the same recipe and output directory"
REPAIR = (
    "re-run `reasondistill generate` with the same recipe and output directory and --repair to regenerate "
    "it (the other shards are kept)"
)
PROMPT_RENDER_KEYS = ("system_prompt", "instruction", "think_prefill")  # render_prompt's settings


class TraceFormatError(ValueError):
    """A shard, record or metadata block that breaks the contract; the message names the file or field
    and the fix."""


class CorruptShardError(TraceFormatError):
    """A published shard whose bytes are damaged (truncated, changed on disk); --repair regenerates it."""

    def __init__(self, path: Path, problem: str) -> None:
        problem = " ".join(problem.split())  # one line, whatever pyarrow's message holds
        super().__init__(f"{path}: {problem}; {REPAIR}")
        self.path, self.problem = path, problem


def trace_schema(k: int) -> pa.Schema:
    """Arrow schema of schema version SCHEMA_VERSION for top-k size k (T = completion tokens)."""
    text, i32 = pa.string(), pa.int32()
    per_token = pa.list_(pa.list_(i32, k)), pa.list_(pa.list_(pa.uint16(), k))  # [T, k]
    return pa.schema(
        [("prompt_id", text), ("sample_index", i32), ("question", text), ("prompt", text)]
        + [("prompt_token_ids", pa.list_(i32)), ("completion", text), ("completion_token_ids", pa.list_(i32))]
        + [("topk_ids", per_token[0]), ("topk_logprob_codes", per_token[1])]
        + [("sampled_logprob", pa.list_(pa.float32())), ("finish_reason", text)]
        + [("extracted_answer", text), ("gold_answer", text), ("correct", pa.bool_())]
    )


# A record (the input of build_table) has the schema's fields, with float logprobs instead of the codes.
RECORD_FIELDS = tuple("topk_logprobs" if n == "topk_logprob_codes" else n for n in trace_schema(1).names)


@dataclass
class TraceInfo:
    """Dataset-level metadata: the same in every shard footer, trace_info.json and the card."""

    teacher: str = field(metadata={"help": "Teacher model directory or hub id."})
    teacher_revision: str | None = field(metadata={"help": "Hub commit, or None for a local directory."})
    tokenizer: str = field(metadata={"help": "Tokenizer directory or hub id."})
    tokenizer_fingerprint: str = field(metadata={"help": "tokenizer_fingerprint(tokenizer.get_vocab())."})
    vocab_size: int = field(metadata={"help": "Teacher logits width; every token id is below it."})
    k: int = field(metadata={"help": "Top-k entries stored per completion token."})
    temperature: float = field(metadata={"help": "Sampling temperature of the completions."})
    top_p: float = field(metadata={"help": "Sampling top-p of the completions."})
    logprobs_mode: str = field(metadata={"help": "raw_logprobs (temperature 1) or processed_logprobs."})
    seed: int = field(metadata={"help": "Sampling seed."})
    backend: str = field(metadata={"help": "Generator and its version, e.g. 'vllm 0.11.0'."})
    recipe_fingerprint: str = field(metadata={"help": "fingerprint_settings(generation settings)."})
    prompt_render: dict | None = field(
        default=None,
        metadata={
            "help": f"render_prompt settings {PROMPT_RENDER_KEYS} the prompts were rendered with; "
            "None = unknown (schema 1.0)."
        },
    )  # added in 1.1
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    schema_version: str = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.k < 1 or self.vocab_size < self.k:
            raise ValueError(f"need 1 <= k <= vocab_size, got k={self.k}, vocab_size={self.vocab_size}")
        if self.logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode={self.logprobs_mode!r} is not one of {LOGPROBS_MODES}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature >= 0, 0 < top_p <= 1; got {self.temperature}, {self.top_p}")
        if self.prompt_render is not None and sorted(self.prompt_render) != sorted(PROMPT_RENDER_KEYS):
            raise ValueError(
                f"prompt_render needs exactly the keys {PROMPT_RENDER_KEYS}, got {self.prompt_render}"
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "trace info") -> TraceInfo:
        """Parse and check metadata; TraceFormatError names `where` and the offending field."""
        try:
            data = json.loads(text)
        except ValueError as e:
            raise TraceFormatError(f"{where}: trace metadata is not valid JSON ({e})") from e
        version = str(data.get("schema_version") if isinstance(data, dict) else None)
        if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise TraceFormatError(
                f"{where}: written with trace schema {version} but this reasondistill reads "
                f"{SCHEMA_VERSION}: use a matching reasondistill version or regenerate the traces"
            )
        names = {f.name for f in fields(cls)}
        defaulted = {
            f.name for f in fields(cls) if f.default is not MISSING or f.default_factory is not MISSING
        }
        same = version == SCHEMA_VERSION
        unknown = sorted(data.keys() - names) if same else []  # newer minors may add fields
        optional = set() if same else defaulted  # an older minor lacks the fields added since (defaulted)
        if bad := sorted(names - data.keys() - optional) + unknown:
            raise TraceFormatError(f"{where}: trace metadata lacks or has unknown field(s) {bad}")
        data = {name: data[name] for name in names & data.keys()}
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise TraceFormatError(f"{where}: {e}") from e

    def check_compatible(self, other: TraceInfo, where: str) -> None:
        """Refuse to mix traces of another recipe, tokenizer or top-k size into one dataset."""
        for name in ("recipe_fingerprint", "tokenizer_fingerprint", "vocab_size", "k"):
            if getattr(self, name) != getattr(other, name):
                raise TraceFormatError(
                    f"{where} has {name}={getattr(other, name)!r} but this run has {getattr(self, name)!r}: "
                    "a changed recipe cannot resume into the same output directory; use a new one"
                )


def fingerprint_settings(settings: Mapping) -> str:
    """Hash of the generation settings (canonical JSON); equal settings give equal fingerprints."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tokenizer_fingerprint(vocab: Mapping[str, int]) -> str:
    """Hash of a tokenizer's vocabulary (`tokenizer.get_vocab()`, added tokens included)."""
    items = sorted(vocab.items(), key=lambda item: (item[1], item[0]))
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()[:16]


def encode_logprobs(logprobs: np.ndarray) -> np.ndarray:
    """[..., k] logprobs sorted descending -> [..., k] uint16 rank-delta codes (see LOGPROB_SCALE)."""
    lp = np.asarray(logprobs, dtype=np.float64)
    cumulative = np.minimum(np.rint(np.maximum(-lp, 0.0) * LOGPROB_SCALE), MAX_CODE)  # -inf -> MAX_CODE
    cumulative = np.maximum.accumulate(cumulative, axis=-1)  # float-noise ties give delta 0, never -1
    codes = np.diff(cumulative, axis=-1, prepend=0.0)
    return np.where(np.isneginf(lp), NEG_INF_CODE, codes).astype(np.uint16)


def decode_logprobs(codes: np.ndarray) -> np.ndarray:
    """[..., k] codes -> [..., k] float32 logprobs, -inf where masked (padded batches work too)."""
    codes = np.asarray(codes)
    masked = codes == NEG_INF_CODE
    cumulative = np.cumsum(np.where(masked, 0, codes).astype(np.int64), axis=-1)
    return np.where(masked, -np.inf, -cumulative / LOGPROB_SCALE).astype(np.float32)


def invalid_logprob_codes(codes: np.ndarray) -> bool:
    """Whether [T, k] codes break the encoding: a masked rank before an unmasked one, or a cumulative code
    past MAX_CODE (the floor). Shards are checked with it on read, and federated clients' replies."""
    masked = codes == NEG_INF_CODE
    cumulative = np.cumsum(np.where(masked, 0, codes).astype(np.int64), axis=1)
    return bool((np.diff(masked.astype(np.int8), axis=1) < 0).any() or (cumulative > MAX_CODE).any())


def _column(values: list, dtype: pa.DataType) -> pa.Array:
    """A column of trace_schema from per-record values (flat numpy arrays for the list columns)."""
    if not pa.types.is_list(dtype):
        return pa.array(values, dtype)
    item = dtype.value_type  # int32/float32, or fixed_size_list<.., k> for the [T, k] columns
    k = item.list_size if pa.types.is_fixed_size_list(item) else None
    flat = pa.array(np.concatenate(values) if values else [], item if k is None else item.value_type)
    items = flat if k is None else pa.FixedSizeListArray.from_arrays(flat, k)
    offsets = np.concatenate([[0], np.cumsum([len(v) // (k or 1) for v in values])]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), items)


def _check_record(record: Mapping, where: str, k: int, vocab_size: int) -> dict[str, np.ndarray]:
    """Validate one record; return its array fields as flat numpy arrays (top-k logprobs encoded)."""
    if bad := sorted(set(RECORD_FIELDS) ^ set(record)):
        raise TraceFormatError(f"{where}: missing or unknown field(s) {bad}; the fields are {RECORD_FIELDS}")
    tokens = np.asarray(record["completion_token_ids"], dtype=np.int64).reshape(-1)
    ids, lps = np.asarray(record["topk_ids"]), np.asarray(record["topk_logprobs"], dtype=np.float32)
    ids, lps = (a.reshape(0, k) if a.size == 0 else a for a in (ids, lps))  # T = 0 as a plain []
    sampled = np.asarray(record["sampled_logprob"], dtype=np.float32).reshape(-1)
    if not np.issubdtype(ids.dtype, np.integer) and ids.size:
        raise TraceFormatError(f"{where}: field 'topk_ids' must hold integers, not {ids.dtype}")
    for name, arr in (("topk_ids", ids), ("topk_logprobs", lps), ("sampled_logprob", sampled[:, None])):
        if arr.ndim != 2 or arr.shape[1] != (1 if name == "sampled_logprob" else k):
            shape = "[T]" if name == "sampled_logprob" else f"[T, k={k}]"
            raise TraceFormatError(f"{where}: field {name!r} has shape {arr.shape}, expected {shape}")
        if arr.shape[0] != len(tokens):
            raise TraceFormatError(
                f"{where}: field {name!r} has {arr.shape[0]} tokens, 'completion_token_ids' {len(tokens)}"
            )
    if np.isnan(lps).any() or np.isposinf(lps).any() or (lps > POSITIVE_TOLERANCE).any():
        raise TraceFormatError(f"{where}: field 'topk_logprobs' holds NaN, +inf or positive values")
    if not np.isfinite(sampled).all() or (sampled > POSITIVE_TOLERANCE).any():
        raise TraceFormatError(f"{where}: field 'sampled_logprob' must be finite and <= 0")
    masked = np.isneginf(lps)
    if (np.diff(masked.astype(np.int8), axis=1) < 0).any():
        raise TraceFormatError(f"{where}: field 'topk_logprobs' has a finite value after -inf")
    if (np.diff(np.where(masked, 1e30, -lps), axis=1) < -0.5 / LOGPROB_SCALE).any():
        raise TraceFormatError(
            f"{where}: field 'topk_logprobs' is not sorted descending per token; sort ids and logprobs "
            "together (order = np.argsort(-logprobs, axis=1))"
        )
    prompt_ids = np.asarray(record["prompt_token_ids"], dtype=np.int64).reshape(-1)
    for name, arr in (("prompt_token_ids", prompt_ids), ("completion_token_ids", tokens), ("topk_ids", ids)):
        if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
            raise TraceFormatError(f"{where}: field {name!r} has ids outside [0, vocab_size={vocab_size})")
    if (np.diff(np.sort(np.where(masked, -1 - np.arange(k), ids), axis=1), axis=1) == 0).any():
        raise TraceFormatError(f"{where}: field 'topk_ids' repeats an id within one token")
    if isinstance(record["sample_index"], bool) or not isinstance(record["sample_index"], int | np.integer):
        raise TraceFormatError(f"{where}: field 'sample_index' must be an integer")
    if not isinstance(record["correct"], bool | np.bool_):
        raise TraceFormatError(f"{where}: field 'correct' must be a bool")
    if record["finish_reason"] not in FINISH_REASONS:
        raise TraceFormatError(f"{where}: field 'finish_reason' must be one of {FINISH_REASONS}")
    for name in ("prompt_id", "question", "prompt", "completion", "gold_answer", "extracted_answer"):
        if not isinstance(record[name], str) and not (name == "extracted_answer" and record[name] is None):
            raise TraceFormatError(f"{where}: field {name!r} must be a string")
    return {
        "prompt_token_ids": prompt_ids,
        "completion_token_ids": tokens,
        "topk_ids": ids.reshape(-1),
        "topk_logprob_codes": encode_logprobs(lps).reshape(-1),
        "sampled_logprob": sampled,
    }


def build_table(records: Sequence[Mapping], k: int, vocab_size: int) -> pa.Table:
    """Validate records (keys RECORD_FIELDS) and encode them as a Table of trace_schema(k).

    topk_ids and topk_logprobs are [T, k] arrays sorted by logprob descending; topk_logprobs may hold
    -inf only as trailing entries (tokens masked by top-p); NaN, +inf and positive values are refused.
    """
    schema, seen = trace_schema(k), set()
    arrays: dict[str, list] = {name: [] for name in schema.names}
    for i, record in enumerate(records):
        key = (record.get("prompt_id"), record.get("sample_index"))
        where = f"record {i} (prompt_id, sample_index = {key})"
        checked = _check_record(record, where, k, vocab_size)
        if key in seen:
            raise TraceFormatError(f"{where}: duplicate (prompt_id, sample_index) in one shard")
        seen.add(key)
        for name in schema.names:
            arrays[name].append(checked[name] if name in checked else record[name])
    columns = [_column(arrays[f.name], f.type) for f in schema]
    return pa.table(columns, schema=schema)


def shard_path(out_dir: str | Path, shard_index: int, num_shards: int) -> Path:
    """OUT/data/train-00003-of-00010.parquet (the name lets `datasets` infer the 'train' split)."""
    return Path(out_dir) / DATA_DIR / f"train-{shard_index:05d}-of-{num_shards:05d}.parquet"


def _temp_path(final: Path) -> Path:
    """Hidden, in the same directory (atomic rename), never matched by `data/train-*.parquet`."""
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checksum_path(shard: Path) -> Path:
    """Where a shard's sha256 is recorded: beside it, outside the `train-*.parquet` pattern."""
    return shard.with_name(shard.name + CHECKSUM_SUFFIX)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _record_checksum(shard: Path, digest: str) -> None:
    _atomic_write_text(checksum_path(shard), f"{digest}  {shard.name}\n")  # sha256sum -c reads it


def _atomic_write_text(path: Path, text: str) -> None:
    temp = _temp_path(path)
    with open(temp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    _fsync_dir(path.parent)


def write_shard(
    out_dir: str | Path,
    shard_index: int,
    num_shards: int,
    records: Sequence[Mapping],
    info: TraceInfo,
    stats: Mapping[str, int],
) -> Path:
    """Validate, encode and atomically publish one shard; return its path.

    stats: the generator's counters for this shard, e.g. {"dropped_no_answer": 3}; stored in the footer
    and summed in the card. An existing shard is never overwritten (FileExistsError). Its sha256 is
    recorded after it is published (checksum_path): a writer killed in between leaves a shard without
    one, which `completed_shards` validates in full and records; a shard and its checksum never disagree.
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index={shard_index} is outside [0, num_shards={num_shards})")
    if any(not isinstance(v, int) or v < 0 for v in stats.values()):
        raise ValueError(f"stats must map reasons to non-negative integer counts, got {dict(stats)}")
    final = shard_path(out_dir, shard_index, num_shards)
    exists = f"{final} exists and shards are never overwritten; delete it first to regenerate it"
    if final.exists():
        raise FileExistsError(exists)
    table = build_table(records, info.k, info.vocab_size)
    tokens = pc.sum(pc.list_value_length(table["completion_token_ids"])).as_py() or 0
    shard = {
        "shard_index": shard_index,
        "num_shards": num_shards,
        "records": table.num_rows,
        "completion_tokens": tokens,
        "correct": pc.sum(table["correct"]).as_py() or 0,
        "stats": dict(stats),
    }
    table = table.replace_schema_metadata({INFO_KEY: info.to_json(), SHARD_KEY: json.dumps(shard)})
    split = {
        f"{name}.list.element": "BYTE_STREAM_SPLIT" for name in ("completion_token_ids", "sampled_logprob")
    }
    split |= {f"{name}.list.element.list.element": "BYTE_STREAM_SPLIT" for name in TOPK_COLUMNS}
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_path(final)
    try:
        with open(temp, "wb") as f:
            pq.write_table(
                table,
                f,
                row_group_size=ROW_GROUP_RECORDS,
                compression="zstd",
                compression_level=9,
                use_dictionary=list(STRING_COLUMNS),
                column_encoding=split,
                write_page_checksum=True,
            )
            f.flush()
            os.fsync(f.fileno())
        read_shard(temp)  # never publish a shard that the reader would refuse
        digest = _sha256(temp)
        if (stale := checksum_path(final)).exists():  # left by a deleted shard: it must not judge this one
            stale.unlink()
            _fsync_dir(final.parent)
        try:
            os.link(temp, final)  # atomic, and unlike os.replace it refuses to overwrite
        except FileExistsError as e:
            raise FileExistsError(exists) from e
        except OSError as e:  # a filesystem without hard links
            if final.exists():
                raise FileExistsError(exists) from e
            os.replace(temp, final)
        _fsync_dir(final.parent)
    finally:
        temp.unlink(missing_ok=True)
    _record_checksum(final, digest)
    return final


def _footer(path: Path) -> tuple[TraceInfo, dict, pq.FileMetaData]:
    """TraceInfo, shard metadata and Parquet metadata of a shard (reads no data pages)."""
    try:
        metadata = pq.read_metadata(path)
    except (OSError, pa.ArrowException) as e:
        raise CorruptShardError(path, f"not a readable Parquet shard, truncated or corrupt ({e})") from e
    kv = metadata.metadata or {}
    if INFO_KEY not in kv or SHARD_KEY not in kv:
        raise TraceFormatError(f"{path}: no reasondistill trace metadata, not a trace shard; move it away")
    info = TraceInfo.from_json(kv[INFO_KEY], where=str(path))
    shard = json.loads(kv[SHARD_KEY])
    name = SHARD_NAME.match(path.name)
    if name and (shard["shard_index"], shard["num_shards"]) != (int(name[1]), int(name[2])):
        raise TraceFormatError(
            f"{path}: its footer says shard {shard['shard_index']} of {shard['num_shards']}"
        )
    return info, shard, metadata


def _shards(out_dir: str | Path) -> tuple[dict[int, Path], int | None]:
    """Published shards by index, and their common shard count (None when there are none)."""
    found, counts, data = {}, set(), Path(out_dir) / DATA_DIR
    for path in sorted(data.glob("train-*.parquet")):
        match = SHARD_NAME.match(path.name)
        if not match or int(match[1]) >= int(match[2]):
            raise TraceFormatError(
                f"{path}: not a shard name train-IIIII-of-NNNNN.parquet, I < N; move it away"
            )
        found[int(match[1])] = path
        counts.add(int(match[2]))
    if len(counts) > 1:
        raise TraceFormatError(f"{data} mixes shard counts {sorted(counts)}; keep one run's shards only")
    return found, counts.pop() if counts else None


def verify_shard(path: str | Path) -> bool:
    """Check a published shard's bytes against the sha256 recorded when it was written; True if it had one.

    A shard without a recorded checksum (written before reasondistill recorded them, or by a writer killed
    between the shard and its checksum) is read and validated in full instead (read_shard: page CRCs,
    schema, codes) and False is returned. A damaged shard raises CorruptShardError naming it and the fix.
    """
    path = Path(path)
    try:
        line = checksum_path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        read_shard(path)
        return False
    recorded = line.split()[0] if line.split() else ""
    if not SHA256_HEX.match(recorded):
        raise CorruptShardError(path, f"its checksum file {checksum_path(path).name} holds no sha256")
    if _sha256(path) != recorded:
        raise CorruptShardError(
            path, f"its bytes changed since it was written (sha256 differs from {checksum_path(path).name})"
        )
    return True


def _delete_shard(path: Path) -> None:
    path.unlink()
    checksum_path(path).unlink(missing_ok=True)
    _fsync_dir(path.parent)


def completed_shards(
    out_dir: str | Path, num_shards: int, info: TraceInfo | None = None, repair: bool = False
) -> set[int]:
    """Indices of the published, intact shards of a `num_shards` split, for resuming.

    Temp files are ignored; those older than STALE_TEMP_SECONDS are deleted (younger ones may belong to a
    live worker writing into the same directory). Every shard is checked against its recorded sha256
    (verify_shard); shards without one are validated in full and their checksums recorded now. A corrupt
    shard raises CorruptShardError, or with `repair` is deleted (with its checksum) and left out, so the
    caller regenerates it. With `info`, shards and trace_info.json of another recipe, tokenizer or k are
    refused.
    """
    found, count = _shards(out_dir)
    for temp in (Path(out_dir) / DATA_DIR).glob(".train-*.tmp-*"):
        if time.time() - temp.stat().st_mtime > STALE_TEMP_SECONDS:
            temp.unlink(missing_ok=True)
    if count is not None and count != num_shards:
        raise TraceFormatError(
            f"{Path(out_dir) / DATA_DIR} holds shards of a {count}-shard split but this run has "
            f"num_shards={num_shards}: use num_shards={count} or a new output directory"
        )
    if info is not None and (Path(out_dir) / INFO_FILE).exists():
        info.check_compatible(read_info(out_dir), str(Path(out_dir) / INFO_FILE))
    intact, unchecked = set(), []
    for index, path in found.items():
        try:
            if not verify_shard(path):
                unchecked.append(path)
        except CorruptShardError as error:
            if not repair:
                raise
            logger.warning(f"{path}: {error.problem}; deleted it to regenerate it (--repair)")
            _delete_shard(path)
            continue
        if info is not None:
            info.check_compatible(_footer(path)[0], str(path))
        intact.add(index)
    for path in unchecked:
        _record_checksum(path, _sha256(path))
    if unchecked:
        logger.info(
            f"{len(unchecked)} shard(s) in {Path(out_dir) / DATA_DIR} had no recorded checksum (written "
            "before reasondistill recorded them, or just before a crash): validated in full, checksums "
            "recorded now"
        )
    return intact


def read_shard(path: str | Path) -> pa.Table:
    """Read a whole shard and validate it (page checksums, schema, shapes, codes, id ranges)."""
    path = Path(path)
    info = _footer(path)[0]
    try:
        table = pq.read_table(path, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as e:
        raise CorruptShardError(path, f"corrupt data pages ({e})") from e
    for f in trace_schema(info.k):
        if f.name not in table.column_names:
            raise TraceFormatError(f"{path}: missing field {f.name!r}; {REDO}")
        if table.schema.field(f.name).type != f.type:
            raise TraceFormatError(
                f"{path}: field {f.name!r} is {table.schema.field(f.name).type}, not {f.type}; {REDO}"
            )
        if f.name != "extracted_answer" and table[f.name].null_count:
            raise TraceFormatError(f"{path}: field {f.name!r} has nulls; {REDO}")
    lengths = pc.list_value_length(table["completion_token_ids"])
    for name in ("topk_ids", "topk_logprob_codes", "sampled_logprob"):
        if pc.any(pc.not_equal(pc.list_value_length(table[name]), lengths)).as_py():
            raise TraceFormatError(f"{path}: {name!r} and 'completion_token_ids' differ in length; {REDO}")
    flat = {
        name: pc.list_flatten(table[name]).to_numpy() for name in ("prompt_token_ids", "completion_token_ids")
    }
    flat |= {name: pc.list_flatten(pc.list_flatten(table[name])).to_numpy() for name in TOPK_COLUMNS}
    ids = np.concatenate([flat["prompt_token_ids"], flat["completion_token_ids"], flat["topk_ids"]])
    if ids.size and (ids.min() < 0 or ids.max() >= info.vocab_size):
        raise TraceFormatError(f"{path}: token ids outside [0, vocab_size={info.vocab_size}); {REDO}")
    if invalid_logprob_codes(flat["topk_logprob_codes"].reshape(-1, info.k)):
        raise TraceFormatError(f"{path}: field 'topk_logprob_codes' holds invalid codes; {REDO}")
    if not np.isfinite(pc.list_flatten(table["sampled_logprob"]).to_numpy()).all():
        raise TraceFormatError(f"{path}: field 'sampled_logprob' holds NaN or inf; {REDO}")
    return table


def read_topk(source: pa.Table | Mapping, row: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Decoded top-k of one record: ids [T, k] int64 and logprobs [T, k] float32 (-inf = masked).

    source: a shard Table (then `row` picks the record) or one record as `datasets` returns it.
    """
    if isinstance(source, pa.Table):
        k = source.schema.field("topk_ids").type.value_type.list_size
        ids, codes = (pc.list_flatten(source[name][row].values).to_numpy() for name in TOPK_COLUMNS)
        return ids.astype(np.int64).reshape(-1, k), decode_logprobs(codes.reshape(-1, k))
    ids = np.asarray(source["topk_ids"], dtype=np.int64)
    codes = np.asarray(source["topk_logprob_codes"], dtype=np.int64)
    if ids.size == 0:  # T = 0; a python-format row does not carry k
        ids, codes = ids.reshape(0, 0), codes.reshape(0, 0)
    return ids, decode_logprobs(codes)


def read_info(out_dir: str | Path) -> TraceInfo:
    """TraceInfo from trace_info.json, or from the first shard's footer before the card is written."""
    if (path := Path(out_dir) / INFO_FILE).exists():
        return TraceInfo.from_json(path.read_text(encoding="utf-8"), where=str(path))
    if not (found := _shards(out_dir)[0]):
        raise TraceFormatError(f"{out_dir}: no {INFO_FILE} and no shards in {DATA_DIR}/; not a trace dataset")
    return _footer(found[min(found)])[0]


def bytes_per_token(source: str | Path, columns: Sequence[str] | None = None) -> float:
    """On-disk bytes per completion token of one shard file or of a whole dataset directory.

    columns=None counts whole files (footers included); otherwise only the compressed column chunks of
    the named columns, e.g. TOPK_COLUMNS for the top-k payload.
    """
    source = Path(source)
    total_bytes = tokens = 0
    for path in [source] if source.is_file() else _shards(source)[0].values():
        _, shard, metadata = _footer(path)
        tokens += shard["completion_tokens"]
        if columns is None:
            total_bytes += path.stat().st_size
            continue
        for g in range(metadata.num_row_groups):
            for c in range(metadata.num_columns):
                chunk = metadata.row_group(g).column(c)
                total_bytes += chunk.total_compressed_size * (chunk.path_in_schema.split(".")[0] in columns)
    return total_bytes / max(tokens, 1)


def trace_totals(out_dir: str | Path, info: TraceInfo | None = None) -> dict[str, float]:
    """Totals over the published shards: records, completion tokens, correct, every generator counter
    as `stats.<name>`, and on-disk bytes per completion token (all columns, and top-k columns only)."""
    found, _ = _shards(out_dir)
    totals: dict[str, float] = {"records": 0, "completion_tokens": 0, "correct": 0}
    for path in found.values():
        shard_info, shard, _ = _footer(path)
        if info is not None:
            info.check_compatible(shard_info, str(path))
        for key in ("records", "completion_tokens", "correct"):
            totals[key] += shard[key]
        for key, value in shard["stats"].items():
            totals[f"stats.{key}"] = totals.get(f"stats.{key}", 0) + value
    if found:
        totals["bytes_per_completion_token"] = round(bytes_per_token(out_dir), 1)
        totals["topk_bytes_per_completion_token"] = round(bytes_per_token(out_dir, TOPK_COLUMNS), 1)
    return totals


def write_card(out_dir: str | Path, info: TraceInfo) -> None:
    """Write trace_info.json and README.md (YAML `configs:` header, metadata, totals), atomically each."""
    out_dir = Path(out_dir)
    found, count = _shards(out_dir)
    totals = trace_totals(out_dir, info)
    state = f"complete, {count} shards"
    if not found or len(found) < count:
        state = f"INCOMPLETE: {len(found)} of {count or '?'} shards; load_traces() refuses it for now"
    rows = "\n".join(f"| {key} | {value} |" for key, value in [*asdict(info).items(), *totals.items()])
    card = f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: {DATA_DIR}/train-*.parquet
tags:
- reasondistill
- distillation
---

# Teacher traces of {info.teacher}

Written by `reasondistill generate` ({state}). Trace schema {info.schema_version}: one row per (prompt,
sample) completion with the teacher's top-{info.k} token ids and logprobs for every completion token.
`topk_logprob_codes` are not logprobs: logprobs = -cumsum(codes, axis=-1) / {LOGPROB_SCALE}, code
{NEG_INF_CODE} = -inf from that rank on; `reasondistill.core.traces.read_topk` decodes them. Columns, shapes
and error bounds: docs/trace_schema.md in reasondistill.

| field | value |
| --- | --- |
{rows}
"""
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(out_dir / INFO_FILE, info.to_json() + "\n")
    _atomic_write_text(out_dir / CARD_FILE, card)


def load_traces(out_dir: str | Path, **load_kwargs) -> datasets.Dataset:
    """The complete trace dataset as a `datasets.Dataset` (split 'train').

    Refuses an incomplete dataset (missing shards), shards of different recipes and a shard whose bytes
    differ from the checksum recorded when it was written (CorruptShardError; verify_shard). load_kwargs
    go to `datasets.load_dataset` (e.g. cache_dir, or streaming=True to skip the Arrow cache copy).
    """
    import datasets

    found, count = _shards(out_dir)
    if not found:
        raise TraceFormatError(f"{out_dir}: no shards in {DATA_DIR}/; run `reasondistill generate` first")
    if missing := sorted(set(range(count)) - set(found)):
        raise TraceFormatError(
            f"{out_dir} is incomplete: {len(missing)} of {count} shards are missing (first: {missing[:5]}); "
            "re-run `reasondistill generate` with the same recipe and output directory to finish them"
        )
    info = read_info(out_dir)
    files, unchecked = [], 0
    for i in range(count):
        unchecked += not verify_shard(found[i])
        shard_info, shard, _ = _footer(found[i])
        info.check_compatible(shard_info, str(found[i]))
        if shard["records"]:  # a shard whose samples were all filtered out is valid but has no rows to read
            files.append(str(found[i]))
    if unchecked:  # read-only here: the next generate run on this directory records them
        logger.info(
            f"{unchecked} of {count} shards of {out_dir} have no recorded checksum (written before "
            "reasondistill recorded them): validated in full instead; re-run `reasondistill generate` with "
            "the same recipe and output directory to record them"
        )
    if not files:
        raise TraceFormatError(
            f"{out_dir} holds no records: every sample was filtered out (counts by reason in its README.md); "
            "generate from more prompts, or relax keep / drop_truncated / max_tokens"
        )
    return datasets.load_dataset("parquet", data_files=files, split="train", **load_kwargs)
