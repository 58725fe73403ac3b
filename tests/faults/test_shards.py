"""Faults in a trace dataset's shards as a user meets them: a damaged shard on rerun, on training and
under --repair, and a dataset written before checksums were recorded. Real generation (the transformers
engine on the tiny teacher), real Parquet files, the real command line."""

import dataclasses
from pathlib import Path

import pytest
import yaml
from conftest import generate_config

from reasondistill import cli
from reasondistill.core.traces import (
    CorruptShardError,
    checksum_path,
    load_traces,
    shard_path,
    verify_shard,
)
from reasondistill.generate.generate import generate
from reasondistill.train.distill_data import load_trace_dataset


def flip_64_bytes(path: Path) -> None:
    """Invert the 64 bytes after Parquet's leading magic: the first data page; the footer stays intact."""
    raw = bytearray(path.read_bytes())
    raw[4:68] = bytes(b ^ 0xFF for b in raw[4:68])
    path.write_bytes(bytes(raw))


def files(out: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture
def traces(tmp_path, hf_engine, tiny_model_dir):
    """A finished 2-shard dataset (6 prompts x 2 samples) and its recipe."""
    config = generate_config(tiny_model_dir, tmp_path / "ds", backend="transformers")
    generate(config, engine=hf_engine)
    return config, tmp_path / "ds"


def test_a_damaged_shard_is_named_on_rerun_and_training_and_repair_regenerates_only_it(
    traces, hf_engine, tmp_path, capsys, monkeypatch, info_log
):
    config, out = traces
    good, bad = shard_path(out, 0, 2), shard_path(out, 1, 2)
    flip_64_bytes(bad)
    before = files(out)
    named = rf"{bad}: its bytes changed since it was written .*--repair to regenerate it"
    with pytest.raises(CorruptShardError, match=f"^{named}"):
        generate(config, engine=hf_engine)
    # the command line: one line naming the shard and the fix, no traceback, nothing rewritten
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(dataclasses.asdict(config)))
    monkeypatch.setattr(cli, "setup_logging", lambda level: None)  # its handler would keep capsys's stderr
    assert cli.main(["generate", str(recipe)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("reasondistill generate: error: ") and "Traceback" not in error
    assert str(bad) in error and "--repair" in error
    assert files(out) == before
    with pytest.raises(CorruptShardError, match=f"^{named}"):  # what `reasondistill train` loads with
        load_trace_dataset(str(out), False, None)

    generate(dataclasses.replace(config, repair=True), engine=hf_engine)
    assert any(
        f"{bad}: its bytes changed" in m and "deleted it to regenerate it" in m for m in info_log.messages
    )
    assert (
        good.read_bytes() == before[good] and checksum_path(good).read_bytes() == before[checksum_path(good)]
    )
    assert verify_shard(bad) and bad.read_bytes() != before[bad]
    keys = [(r["prompt_id"], r["sample_index"]) for r in load_traces(out)]
    assert len(keys) == len(set(keys)) == config.num_prompts * config.num_samples


def test_a_dataset_without_checksums_loads_and_a_rerun_records_them(traces, hf_engine, info_log):
    config, out = traces
    sidecars = {p: p.read_text() for p in (out / "data").glob("*.sha256")}
    assert len(sidecars) == 2
    for path in sidecars:  # as a reasondistill before checksums left it
        path.unlink()
    shards = files(out / "data")
    assert len(load_traces(out)) == config.num_prompts * config.num_samples
    assert any("have no recorded checksum" in m and "to record them" in m for m in info_log.messages)
    generate(config, engine=hf_engine)  # nothing to generate: verifies every shard and records its checksum
    assert any("no recorded checksum" in m and "checksums recorded now" in m for m in info_log.messages)
    assert {p: p.read_text() for p in (out / "data").glob("*.sha256")} == sidecars
    assert all(p.read_bytes() == data for p, data in shards.items())
