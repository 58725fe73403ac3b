"""Trace dataset storage (reasondistill/core/traces.py): real files in tmp_path, no mocks."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from reasondistill.core import traces
from reasondistill.core.traces import TraceFormatError, TraceInfo

ROOT = Path(__file__).resolve().parents[2]
QWEN_VOCAB = 151936  # Qwen2/2.5 logits width: the realistic id range


def realistic_logprobs(rng: np.random.Generator, T: int, k: int, confident: float = 0.8) -> np.ndarray:
    """[T, k] sorted top-k logprobs shaped like an LLM's (see docs/trace_schema.md, "Measurements").

    The top-k logits below the first are the upper order statistics of a Gumbel-tailed vocabulary
    (Renyi spacings E_j / j, scaled per token); a `confident` share of tokens has its first logit
    6-14 nats ahead (the demo teacher: median rank-2 logprob -10.9, rank-20 -13.7), the others ~1 nat
    (forking tokens). The rest of the vocabulary adds 50-5000 times the rank-k mass.
    """
    scale = rng.uniform(0.6, 1.6, size=(T, 1))
    gaps = rng.exponential(size=(T, k - 1)) / np.arange(1, k) * scale
    lead = np.where(rng.random(T) < confident, rng.uniform(6, 14, T), rng.exponential(1.0, T))[:, None]
    logits = np.concatenate([np.zeros((T, 1)), -lead - np.cumsum(gaps, axis=1)], axis=1)
    rest = logits[:, -1:] + np.log(rng.uniform(50, 5000, size=(T, 1)))
    total = np.logaddexp(np.log(np.exp(logits).sum(axis=1, keepdims=True)), rest)
    return (logits - total).astype(np.float32)


def zipf_ids(rng: np.random.Generator, T: int, k: int, vocab: int, order: np.ndarray) -> np.ndarray:
    """[T, k] distinct ids per row, token frequency Zipf(1.05); order[r] is the id of frequency rank r."""
    cdf = np.cumsum(1.0 / np.arange(1, vocab + 1) ** 1.05)
    draw = lambda n: np.searchsorted(cdf, rng.random((n, k)) * cdf[-1]).clip(0, vocab - 1)  # noqa: E731
    ranks = draw(T)
    while (dup := (np.diff(np.sort(ranks, axis=1), axis=1) == 0).any(axis=1)).any():
        ranks[dup] = draw(int(dup.sum()))
    return order[ranks]


def make_records(rng, k, vocab, prompts=3, samples=2, mean_T=40, order=None) -> list[dict]:
    """Records as `reasondistill generate` hands them over: sampled tokens drawn from the top-k."""
    order = rng.permutation(vocab) if order is None else order
    words = lambda ids: "".join(f" w{i}" for i in ids)  # noqa: E731
    records = []
    for p in range(prompts):
        prompt_ids = order[rng.integers(0, min(vocab, 3000), 60)]
        for s in range(samples):
            T = int(rng.integers(mean_T // 2, mean_T * 3 // 2))
            lps = realistic_logprobs(rng, T, k)
            ids = zipf_ids(rng, T, k, vocab, order)
            probs = np.exp(lps.astype(np.float64))
            pick = (probs.cumsum(1) / probs.sum(1, keepdims=True) < rng.random((T, 1))).sum(1)
            pick = pick.clip(0, k - 1)
            tokens, sampled = ids[np.arange(T), pick], lps[np.arange(T), pick]
            records.append(
                {
                    "prompt_id": f"demo-{p}",
                    "sample_index": s,
                    "question": f"What is {p} + {s}?",
                    "prompt": "<|im_start|>user" + words(prompt_ids),
                    "prompt_token_ids": prompt_ids,
                    "completion": words(tokens),
                    "completion_token_ids": tokens,
                    "topk_ids": ids,
                    "topk_logprobs": lps,
                    "sampled_logprob": sampled,
                    "finish_reason": ["stop", "length"][s % 2],
                    "extracted_answer": None if s == 1 else str(p + s),
                    "gold_answer": str(p + s),
                    "correct": s == 0,
                }
            )
    return records


def make_info(k: int, vocab: int, **changes) -> TraceInfo:
    fields = {
        "teacher": "/models/teacher",
        "teacher_revision": None,
        "tokenizer": "/models/teacher",
        "tokenizer_fingerprint": traces.tokenizer_fingerprint({"a": 0, "b": 1}),
        "vocab_size": vocab,
        "k": k,
        "temperature": 1.0,
        "top_p": 1.0,
        "logprobs_mode": "raw_logprobs",
        "seed": 0,
        "backend": "test",
        "recipe_fingerprint": traces.fingerprint_settings({"k": k, "n": 2}),
    }
    return TraceInfo(**{**fields, **changes})


@pytest.fixture
def dataset(tmp_path):
    """A complete 2-shard dataset (k=8, vocab 1000) with its card, and the records it holds."""
    rng = np.random.default_rng(0)
    info = make_info(8, 1000)
    shards = [make_records(rng, 8, 1000), make_records(rng, 8, 1000, prompts=2)]
    for i, records in enumerate(shards):
        traces.write_shard(tmp_path, i, 2, records, info, {"dropped_no_answer": i + 1})
    traces.write_card(tmp_path, info)
    return tmp_path, info, shards


@pytest.mark.parametrize("k", [1, 6])
def test_round_trip_is_exact_within_the_stated_logprob_error(tmp_path, k):
    records = make_records(np.random.default_rng(1), k, 1000)
    edge = [1e-5, -0.25, -9.9999, -70.0, -np.inf, -np.inf]  # rounding > 0, below the floor, masked by top-p
    records[0]["topk_logprobs"][0] = edge[:k]
    records[1]["topk_logprobs"][1] = records[1]["topk_logprobs"][1, -1]  # ties
    empty = {
        "completion": "",
        "completion_token_ids": [],
        "topk_ids": [],
        "topk_logprobs": [],
        "sampled_logprob": [],
    }
    records.append({**records[0], "sample_index": 9, **empty})
    table = traces.read_shard(traces.write_shard(tmp_path, 0, 1, records, make_info(k, 1000), {}))
    assert table.num_rows == len(records)
    for row, record in enumerate(records):
        ids, decoded = traces.read_topk(table, row)
        assert ids.dtype == np.int64 and decoded.dtype == np.float32 and ids.shape == decoded.shape
        np.testing.assert_array_equal(ids, np.reshape(record["topk_ids"], (-1, k)))
        original = np.reshape(record["topk_logprobs"], (-1, k)).astype(np.float32)
        expected = np.clip(original, traces.LOGPROB_FLOOR, 0.0)
        for t, j in np.ndindex(*original.shape):  # brute force, element by element
            if np.isneginf(original[t, j]):
                assert np.isneginf(decoded[t, j])
            else:
                assert abs(float(decoded[t, j]) - float(expected[t, j])) <= 1 / 2048 + 1e-6
        stored = table.slice(row, 1).to_pylist()[0]
        for name in ("prompt_id", "sample_index", "question", "prompt", "completion", "finish_reason"):
            assert stored[name] == record[name]
        for name in ("extracted_answer", "gold_answer", "correct"):
            assert stored[name] == record[name]
        for name in ("prompt_token_ids", "completion_token_ids"):
            assert stored[name] == np.asarray(record[name]).tolist()
        assert stored["sampled_logprob"] == np.asarray(record["sampled_logprob"], np.float32).tolist()


def test_empty_shard_counts_as_done(tmp_path):
    info = make_info(4, 1000)
    path = traces.write_shard(tmp_path, 0, 1, [], info, {"dropped_wrong_answer": 12})
    assert traces.read_shard(path).num_rows == 0
    assert traces.completed_shards(tmp_path, 1, info) == {0}
    traces.write_card(tmp_path, info)
    assert "| stats.dropped_wrong_answer | 12 |" in (tmp_path / "README.md").read_text()


def test_shards_filtered_to_nothing_are_skipped_and_an_empty_dataset_is_named(tmp_path):
    """keep=correct on a hard benchmark can empty a whole shard; datasets cannot read 0-row Parquet."""
    info = make_info(4, 1000)
    traces.write_shard(tmp_path, 0, 2, [], info, {"dropped_wrong_answer": 6})
    with pytest.raises(traces.TraceFormatError, match="incomplete"):
        traces.load_traces(tmp_path)
    traces.write_shard(tmp_path, 1, 2, make_records(np.random.default_rng(0), 4, 1000), info, {})
    traces.write_card(tmp_path, info)
    assert traces.load_traces(tmp_path).num_rows == 6
    empty = tmp_path / "empty"
    traces.write_shard(empty, 0, 1, [], info, {"dropped_wrong_answer": 6})
    traces.write_card(empty, info)
    with pytest.raises(traces.TraceFormatError, match="no records: every sample was filtered out"):
        traces.load_traces(empty)


def test_logprob_codes_error_bound_on_every_rank():
    rng = np.random.default_rng(2)
    lps = -np.sort(rng.exponential(8.0, size=(20000, 20)), axis=1).astype(np.float32)
    decoded = traces.decode_logprobs(traces.encode_logprobs(lps))
    inside = lps >= traces.LOGPROB_FLOOR
    error = np.abs(decoded.astype(np.float64) - lps)
    assert error[inside].max() <= 1 / 2048 + 1e-6  # 4.9e-4 nats, also for logprob > -10
    assert (decoded[~inside] == np.float32(traces.LOGPROB_FLOOR)).all()


def test_datasets_opens_the_documented_columns(dataset, tmp_path_factory):
    datasets = pytest.importorskip("datasets")
    out_dir, info, shards = dataset
    cache = str(tmp_path_factory.mktemp("hf-cache"))
    files = [str(traces.shard_path(out_dir, i, 2)) for i in range(2)]
    by_files = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=cache)
    by_card = datasets.load_dataset(str(out_dir), split="train", cache_dir=cache)
    by_loader = traces.load_traces(out_dir, cache_dir=cache)
    for ds in (by_files, by_card, by_loader):
        assert ds.column_names == traces.trace_schema(info.k).names
        assert len(ds) == sum(len(s) for s in shards)
    assert by_card.features["topk_ids"] == datasets.List(datasets.List(datasets.Value("int32"), length=8))
    assert by_card.features["topk_logprob_codes"].feature.length == 8
    row = by_loader.with_format("numpy")[0]
    ids, lps = traces.read_topk(row)
    np.testing.assert_array_equal(ids, shards[0][0]["topk_ids"])
    np.testing.assert_allclose(lps, shards[0][0]["topk_logprobs"], atol=1 / 2048 + 1e-6)
    np.testing.assert_array_equal(traces.read_topk(by_loader[1])[0], shards[0][1]["topk_ids"])


def test_card_and_info_carry_metadata_and_totals(dataset):
    out_dir, info, shards = dataset
    card = (out_dir / "README.md").read_text()
    assert card.startswith("---\nconfigs:\n") and "path: data/train-*.parquet" in card
    assert "complete, 2 shards" in card and f"| recipe_fingerprint | {info.recipe_fingerprint} |" in card
    assert f"| records | {sum(len(s) for s in shards)} |" in card
    assert "| stats.dropped_no_answer | 3 |" in card  # 1 + 2, summed over shards
    assert traces.read_info(out_dir) == info
    for path in (out_dir / "data").glob("*.parquet"):
        assert TraceInfo.from_json(pq.read_metadata(path).metadata[traces.INFO_KEY]) == info


def test_incomplete_dataset_is_refused(tmp_path):
    info = make_info(4, 1000)
    traces.write_shard(tmp_path, 1, 3, make_records(np.random.default_rng(3), 4, 1000), info, {})
    traces.write_card(tmp_path, info)
    assert "INCOMPLETE: 1 of 3 shards" in (tmp_path / "README.md").read_text()
    with pytest.raises(TraceFormatError, match=r"incomplete: 2 of 3 shards are missing \(first: \[0, 2\]\)"):
        traces.load_traces(tmp_path)
    assert traces.completed_shards(tmp_path, 3, info) == {1}


def test_killed_writer_leaves_no_partial_shard(tmp_path):
    script = f"""
import numpy as np
from reasondistill.core import traces
k, T = 20, 3000
info = traces.TraceInfo(teacher="t", teacher_revision=None, tokenizer="t", tokenizer_fingerprint="f",
    vocab_size=50000, k=k, temperature=1.0, top_p=1.0, logprobs_mode="raw_logprobs", seed=0, backend="test",
    recipe_fingerprint="r")
rng = np.random.default_rng(0)
ids = np.argsort(rng.random((T, 200)), axis=1)[:, :k] * 250
lps = -np.sort(rng.exponential(5.0, (T, k)), axis=1)
records = [dict(prompt_id="p", sample_index=i, question="q", prompt="p", prompt_token_ids=[1, 2],
    completion="c", completion_token_ids=ids[:, 0], topk_ids=ids, topk_logprobs=lps,
    sampled_logprob=lps[:, 0], finish_reason="stop", extracted_answer="1", gold_answer="1", correct=True)
    for i in range(30)]
for shard in range(1000):
    traces.write_shard({str(tmp_path)!r}, shard, 1000, records, info, {{}})
"""
    writer = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    data, seen_temp, deadline = tmp_path / "data", None, time.time() + 60
    while seen_temp is None and writer.poll() is None and time.time() < deadline:
        shards = list(data.glob("train-*.parquet")) if data.is_dir() else []
        temps = list(data.glob(".train-*.tmp-*")) if shards else []  # wait for one finished shard first
        seen_temp = temps[0] if temps else None
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert seen_temp is not None, "the writer was not caught mid-write"
    published = sorted(data.glob("train-*.parquet"))
    done = traces.completed_shards(tmp_path, 1000)
    assert done == {int(p.name[6:11]) for p in published} and done
    for path in published:
        traces.read_shard(path)  # every published shard is whole
    temps = list(data.glob(".train-*.tmp-*"))
    for temp in temps:  # a leftover temp file is ignored, and deleted once stale
        os.utime(temp, (time.time() - 2 * traces.STALE_TEMP_SECONDS,) * 2)
    assert traces.completed_shards(tmp_path, 1000) == done
    assert not list(data.glob(".train-*.tmp-*"))


def test_fresh_temp_file_of_a_live_writer_is_ignored_not_deleted(dataset):
    out_dir, _, _ = dataset
    temp = out_dir / "data" / ".train-00000-of-00002.parquet.tmp-1-abc"
    temp.write_bytes(b"PAR1 half a shard")
    assert traces.completed_shards(out_dir, 2) == {0, 1}
    assert temp.exists()


def flip_data_bytes(path: Path, count: int = 64) -> None:
    """Invert `count` bytes inside the first top-k data page, footer intact (what a bad disk does)."""
    chunk = pq.read_metadata(path).row_group(0).column(traces.trace_schema(8).names.index("topk_ids"))
    raw = bytearray(path.read_bytes())
    start = chunk.data_page_offset + 64
    raw[start : start + count] = bytes(b ^ 0xFF for b in raw[start : start + count])
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_shard_is_named_with_the_fix(dataset, damage):
    out_dir, _, _ = dataset
    path = traces.shard_path(out_dir, 1, 2)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # caught by the page checksums
        flip_data_bytes(path)
    problem = "not a readable Parquet shard" if damage == "truncate" else "corrupt data pages"
    message = rf"^{path}: {problem}.*re-run `reasondistill generate` with the same recipe .* and --repair"
    with pytest.raises(traces.CorruptShardError, match=message):
        traces.read_shard(path)
    message = rf"^{path}: its bytes changed since it was written .*--repair to regenerate it"
    with pytest.raises(traces.CorruptShardError, match=message):  # the checksum catches both on resume
        traces.completed_shards(out_dir, 2)


def _broken(record: dict, case: str) -> dict:
    record = {**record}
    T, k = record["topk_ids"].shape
    if case == "nan":
        record["topk_logprobs"] = record["topk_logprobs"].copy()
        record["topk_logprobs"][3, 2] = np.nan
    elif case == "length":
        record["topk_logprobs"] = record["topk_logprobs"][:-1]
    elif case == "k":
        record["topk_ids"] = record["topk_ids"][:, :-1]
    elif case == "missing":
        del record["gold_answer"]
    elif case == "unsorted":
        record["topk_logprobs"] = record["topk_logprobs"][:, ::-1]
    elif case == "vocab":
        record["completion_token_ids"] = np.full(T, 1000)
    elif case == "inf_then_finite":
        record["topk_logprobs"] = record["topk_logprobs"].copy()
        record["topk_logprobs"][0, 0] = -np.inf
    return record


@pytest.mark.parametrize(
    ("case", "field"),
    [
        ("nan", "topk_logprobs"),
        ("length", "topk_logprobs"),
        ("k", "topk_ids"),
        ("missing", "gold_answer"),
        ("unsorted", "topk_logprobs"),
        ("vocab", "completion_token_ids"),
        ("inf_then_finite", "topk_logprobs"),
    ],
)
def test_invalid_records_are_refused_naming_the_field(tmp_path, case, field):
    records = make_records(np.random.default_rng(4), 8, 1000)
    records[1] = _broken(records[1], case)
    with pytest.raises(TraceFormatError, match=rf"record 1 .*'?{field}'?"):
        traces.write_shard(tmp_path, 0, 1, records, make_info(8, 1000), {})
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing published, no temp file left


def test_checksum_is_recorded_and_a_damaged_shard_is_never_counted_complete(dataset):
    out_dir, info, _ = dataset
    good, bad = traces.shard_path(out_dir, 0, 2), traces.shard_path(out_dir, 1, 2)
    for path in (good, bad):  # `sha256sum -c` reads it
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert traces.checksum_path(path).read_text() == f"{digest}  {path.name}\n"
    assert traces.verify_shard(good)
    good_bytes = good.read_bytes()
    flip_data_bytes(bad)
    message = rf"^{bad}: its bytes changed since it was written \(sha256 differs from {bad.name}.sha256\); "
    message += r"re-run `reasondistill generate` with the same recipe and output directory and --repair"
    with pytest.raises(traces.CorruptShardError, match=message):
        traces.completed_shards(out_dir, 2, info)
    with pytest.raises(traces.CorruptShardError, match=message):  # what the trainer calls
        traces.load_traces(out_dir)
    assert traces.completed_shards(out_dir, 2, info, repair=True) == {0}
    assert not bad.exists() and not traces.checksum_path(bad).exists()
    assert good.read_bytes() == good_bytes and traces.checksum_path(good).exists()


def test_shards_without_checksums_load_after_a_full_check_and_get_them_on_resume(dataset, info_log):
    out_dir, info, shards = dataset
    sidecars = {p: p.read_text() for p in (out_dir / "data").glob("*.sha256")}
    for path in sidecars:  # a dataset written before checksums were recorded
        path.unlink()
    assert len(traces.load_traces(out_dir)) == sum(map(len, shards))
    assert any("2 of 2 shards" in m and "no recorded checksum" in m for m in info_log.messages)
    assert not list((out_dir / "data").glob("*.sha256"))  # loading writes nothing
    flip_data_bytes(traces.shard_path(out_dir, 1, 2))  # still caught, by the page checksums
    with pytest.raises(traces.CorruptShardError, match=r"train-00001-of-00002.parquet: corrupt data pages"):
        traces.load_traces(out_dir)
    assert traces.completed_shards(out_dir, 2, info, repair=True) == {0}  # resume records the intact one
    (intact,) = (out_dir / "data").glob("*.sha256")
    assert sidecars[intact] == intact.read_text()


def test_a_stale_checksum_never_judges_a_regenerated_shard(dataset):
    out_dir, info, _ = dataset
    path = traces.shard_path(out_dir, 1, 2)
    path.unlink()  # deleted by hand, its checksum left behind
    traces.write_shard(out_dir, 1, 2, make_records(np.random.default_rng(7), 8, 1000), info, {})
    assert traces.completed_shards(out_dir, 2, info) == {0, 1}
    assert traces.verify_shard(path)


def test_existing_shard_is_never_overwritten(dataset):
    out_dir, info, _ = dataset
    path = traces.shard_path(out_dir, 0, 2)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(FileExistsError, match="never overwritten"):
        traces.write_shard(out_dir, 0, 2, make_records(np.random.default_rng(5), 8, 1000), info, {})
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_resume_refuses_another_recipe_or_shard_count(dataset):
    out_dir, info, _ = dataset
    assert traces.completed_shards(out_dir, 2, info) == {0, 1}
    changed = make_info(8, 1000, recipe_fingerprint=traces.fingerprint_settings({"k": 8, "n": 4}))
    with pytest.raises(TraceFormatError, match="recipe_fingerprint=.*use a new one"):
        traces.completed_shards(out_dir, 2, changed)
    with pytest.raises(TraceFormatError, match="2-shard split but this run has num_shards=4"):
        traces.completed_shards(out_dir, 4, info)


def test_trace_info_json_is_checked():
    info = make_info(20, QWEN_VOCAB, teacher_revision="abc123")
    assert TraceInfo.from_json(info.to_json()) == info
    data = info.to_json().replace('"seed": 0', '"sed": 0')
    with pytest.raises(TraceFormatError, match=r"trace_info.json: .*\['seed', 'sed'\]"):
        TraceInfo.from_json(data, where="trace_info.json")
    newer_minor = json.loads(info.to_json()) | {"schema_version": "1.9", "added_in_1_9": 1}
    assert TraceInfo.from_json(json.dumps(newer_minor)).k == 20  # a newer minor version only adds
    with pytest.raises(TraceFormatError, match="trace schema 2.0 .* regenerate"):
        TraceInfo.from_json(info.to_json().replace(f'"{traces.SCHEMA_VERSION}"', '"2.0"'))
    with pytest.raises(ValueError, match="logprobs_mode"):
        make_info(20, QWEN_VOCAB, logprobs_mode="logits")


def test_schema_1_0_info_reads_without_prompt_render_and_unknown_fields_stay_refused():
    render = {"system_prompt": None, "instruction": "Box it.", "think_prefill": True}
    info = make_info(20, QWEN_VOCAB, prompt_render=render)
    assert traces.SCHEMA_VERSION == "1.2" and TraceInfo.from_json(info.to_json()) == info
    old = json.loads(info.to_json()) | {"schema_version": "1.0"}
    del old["prompt_render"]  # as a 1.0 writer wrote it
    parsed = TraceInfo.from_json(json.dumps(old))
    assert parsed.prompt_render is None and parsed.schema_version == "1.0" and parsed.k == 20
    del old["seed"]
    with pytest.raises(TraceFormatError, match=r"\['seed'\]"):
        TraceInfo.from_json(json.dumps(old))
    with pytest.raises(TraceFormatError, match=r"\['added'\]"):
        TraceInfo.from_json(json.dumps(json.loads(info.to_json()) | {"added": 1}))
    current = json.loads(info.to_json())
    del current["prompt_render"]  # a 1.1 writer always writes it
    with pytest.raises(TraceFormatError, match=r"\['prompt_render'\]"):
        TraceInfo.from_json(json.dumps(current))
    with pytest.raises(ValueError, match="prompt_render needs exactly the keys"):
        make_info(20, QWEN_VOCAB, prompt_render={"instruction": None})


def test_k20_traces_with_a_qwen_size_vocab_fit_80_bytes_per_token(tmp_path):
    rng = np.random.default_rng(6)
    records = make_records(rng, 20, QWEN_VOCAB, prompts=6, samples=8, mean_T=300)  # ids: random order
    path = traces.write_shard(tmp_path, 0, 1, records, make_info(20, QWEN_VOCAB), {})
    whole, topk = traces.bytes_per_token(path), traces.bytes_per_token(path, traces.TOPK_COLUMNS)
    print(f"k=20, vocab {QWEN_VOCAB}: {whole:.1f} bytes/token on disk, top-k columns {topk:.1f}")
    assert topk < whole <= 80
    assert traces.bytes_per_token(tmp_path) == whole
