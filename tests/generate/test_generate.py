"""Trace generation with the real vLLM (CPU build) and transformers on a small Qwen2 teacher."""

import copy
import dataclasses
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
import torch
from conftest import LOGPROB_ATOL, STORED_ATOL, forward_logprobs, generate_config

from reasondistill.core.engines import LazyEngine, SamplingConfig
from reasondistill.core.traces import TraceFormatError, load_traces, read_topk
from reasondistill.generate.generate import generate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def traces(tmp_path_factory, vllm_engine, tiny_model_dir):
    out = tmp_path_factory.mktemp("traces") / "ds"
    config = generate_config(tiny_model_dir, out)
    generate(config, engine=vllm_engine)
    return config, out


def test_dataset_schema_and_every_token_has_k_entries(traces):
    config, out = traces
    dataset = load_traces(out)
    assert len(dataset) == config.num_prompts * config.num_samples  # keep=all, nothing dropped
    table = pq.read_table(next((out / "data").glob("*.parquet")))
    types = {f.name: str(f.type) for f in table.schema}
    assert types["completion_token_ids"] == "list<element: int32>"
    assert types["sampled_logprob"] == "list<element: float>"
    assert types["correct"] == "bool" and types["sample_index"] == "int32"
    for row in range(len(dataset)):
        record = dataset[row]
        ids, logprobs = read_topk(record)
        steps = len(record["completion_token_ids"])
        assert ids.shape == logprobs.shape == (steps, config.logprobs)
        assert np.all(np.diff(logprobs, axis=1) <= 0), "top-k sorted by logprob"
        assert record["finish_reason"] in ("stop", "length")
        assert record["gold_answer"].isdigit() and record["prompt"].endswith("<|im_start|>assistant\n")
    assert sorted({(r["prompt_id"], r["sample_index"]) for r in dataset}) == sorted(
        (r["prompt_id"], r["sample_index"]) for r in dataset
    )


def test_stored_logprobs_match_a_transformers_forward_pass(traces, tiny_model_dir):
    _, out = traces
    dataset = load_traces(out)
    for row in (0, 5):
        record = dataset[row]
        reference = forward_logprobs(
            tiny_model_dir, record["prompt_token_ids"], record["completion_token_ids"]
        )
        tokens = torch.tensor(record["completion_token_ids"])
        sampled = reference.gather(1, tokens[:, None])[:, 0]
        np.testing.assert_allclose(record["sampled_logprob"], sampled.numpy(), atol=LOGPROB_ATOL)
        ids, logprobs = read_topk(record)
        np.testing.assert_allclose(logprobs, reference.gather(1, torch.tensor(ids)).numpy(), atol=STORED_ATOL)
        best = reference.topk(ids.shape[1], dim=1).values.numpy()
        np.testing.assert_allclose(logprobs, best, atol=STORED_ATOL)  # they are the top-k, not any k


def test_vllm_and_transformers_agree_on_top_k(vllm_engine, hf_engine, tiny_model_dir):
    prompts = [[1, 2, 3, 4, 5, 6], [7, 8, 9]]
    sampling = SamplingConfig(n=1, temperature=1.0, top_p=1.0, max_tokens=12)
    sampled = [c[0] for c in vllm_engine.sample(prompts, sampling, seeds=[0, 1])]
    completions = [c.token_ids.tolist() for c in sampled]
    for engine_out in (vllm_engine.score(prompts, completions), hf_engine.score(prompts, completions)):
        for from_sampling, scored in zip(sampled, engine_out, strict=True):
            np.testing.assert_array_equal(scored.token_ids, from_sampling.token_ids)
            np.testing.assert_allclose(scored.topk_logprobs, from_sampling.topk_logprobs, atol=LOGPROB_ATOL)
            np.testing.assert_allclose(
                scored.sampled_logprobs, from_sampling.sampled_logprobs, atol=LOGPROB_ATOL
            )
            # Same sets wherever the k-th and (k+1)-th values are not a near tie.
            for position in range(len(scored.token_ids)):
                assert set(scored.topk_ids[position]) == set(from_sampling.topk_ids[position])


def test_transformers_backend_writes_the_same_schema(tmp_path, hf_engine, tiny_model_dir):
    config = generate_config(tiny_model_dir, tmp_path / "hf", backend="transformers", num_prompts=3)
    generate(config, engine=hf_engine)
    dataset = load_traces(tmp_path / "hf")
    assert len(dataset) == 6
    record = dataset[0]
    reference = forward_logprobs(tiny_model_dir, record["prompt_token_ids"], record["completion_token_ids"])
    ids, logprobs = read_topk(record)
    np.testing.assert_allclose(logprobs, reference.gather(1, torch.tensor(ids)).numpy(), atol=STORED_ATOL)


def test_one_lazy_engine_serves_two_runs_and_loads_only_for_missing_shards(tmp_path, tiny_model_dir):
    config = generate_config(tiny_model_dir, tmp_path / "train", backend="transformers", num_prompts=3)
    heldout = dataclasses.replace(config, output_dir=str(tmp_path / "heldout"), prompt_split="test")
    engine = LazyEngine(config)
    assert engine.loaded is None
    generate(config, engine)
    first = engine.loaded
    generate(heldout, engine)
    assert first is not None and engine.loaded is first  # one load for both runs
    assert len(load_traces(tmp_path / "heldout")) == 6
    engine.close()
    again = LazyEngine(config)
    generate(config, again)
    generate(heldout, again)
    assert again.loaded is None  # every shard already written: no engine start


def test_scoring_mode_scores_existing_completions(tmp_path, vllm_engine, tiny_model_dir):
    rows = [
        {
            "question": "Mia has 3 coins. How many coins does Mia have now?",
            "answer": "3",
            "completion": "<think>\nStep 1\n</think>\n\nThe answer is \\boxed{3}.",
        },
        {
            "question": "Leo has 5 cards. He loses 2 cards. How many cards does Leo have now?",
            "answer": "3",
            "completion": "The answer is \\boxed{4}.",
        },
    ]
    source = tmp_path / "given.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = generate_config(
        tiny_model_dir,
        tmp_path / "scored",
        prompts=str(source),
        num_prompts=None,
        mode="score",
        completion_field="completion",
        keep="correct",
    )
    generate(config, engine=vllm_engine)
    dataset = load_traces(tmp_path / "scored")
    assert len(dataset) == 1 and dataset[0]["correct"] and dataset[0]["extracted_answer"] == "3"
    record = dataset[0]
    assert record["completion_token_ids"][-1] == 2 or record["completion"].endswith("\\boxed{3}.")
    reference = forward_logprobs(tiny_model_dir, record["prompt_token_ids"], record["completion_token_ids"])
    sampled = reference.gather(1, torch.tensor(record["completion_token_ids"])[:, None])[:, 0]
    np.testing.assert_allclose(record["sampled_logprob"], sampled.numpy(), atol=LOGPROB_ATOL)


def test_changed_recipe_is_refused_and_nothing_is_touched(traces, tiny_model_dir):
    config, out = traces
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    changed = generate_config(tiny_model_dir, out, temperature=0.5)
    with pytest.raises(ValueError, match=r"other settings \(temperature: .* -> 0\.5\)"):
        generate(changed)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_bad_input_is_refused_before_anything_is_written(tmp_path, tiny_model_dir, demo_tokenizer):
    other_tokenizer = copy.deepcopy(demo_tokenizer)
    other_tokenizer.add_tokens([f"<extra_{i}>" for i in range(200)])  # ids beyond the teacher's 512 logits
    other_tokenizer.save_pretrained(tmp_path / "other-tokenizer")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    bad_field = tmp_path / "bad.jsonl"
    bad_field.write_text(json.dumps({"problem": "x", "answer": "1"}) + "\n")
    cases = [
        (dict(prompts=str(bad_field), num_prompts=None), "missing field"),
        (dict(prompts=str(tmp_path / "nope.jsonl")), "does not exist"),
        (dict(logprobs=100000), "exceeds the teacher's vocabulary"),
        (dict(prompts=str(empty), num_prompts=None), "has no rows"),
        (dict(tokenizer=str(tmp_path / "other-tokenizer")), "do not belong together"),
    ]
    for overrides, message in cases:
        out = tmp_path / f"out-{len(message)}"
        with pytest.raises(Exception, match=message):
            generate(generate_config(tiny_model_dir, out, **overrides))
        assert not out.exists()


def test_sigkill_mid_run_then_restart_gives_every_record_once(tmp_path, tiny_model_dir):
    out = tmp_path / "killed"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"teacher: {tiny_model_dir}\ndtype: float32\nmax_model_len: 512\ngpu_memory_utilization: 0.2\n"
        f"enforce_eager: true\n"
        f"logprobs: 4\nprompts: task:arithmetic\nnum_prompts: 40\ninstruction: null\nnum_samples: 2\n"
        f"temperature: 1.0\ntop_p: 1.0\nmax_tokens: 16\nanswer_type: number\nkeep: all\n"
        f"drop_truncated: false\n"
        f"output_dir: {out}\nshard_size: 2\nbatch_prompts: 2\n"
    )
    command = [str(Path(sys.executable).parent / "reasondistill"), "generate", str(recipe)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 400
    while len(list((out / "data").glob("*.parquet"))) < 3 and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the CLI and vLLM's engine process, mid-run
    first.wait()
    written = len(list((out / "data").glob("*.parquet")))
    assert 3 <= written < 20, "killed after some shards, before the end"
    assert "INCOMPLETE" in (out / "README.md").read_text()
    with pytest.raises(TraceFormatError, match="incomplete"):
        load_traces(out)

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{written} done" in second.stdout or f"{written + 1} done" in second.stdout
    dataset = load_traces(out)
    keys = [(r["prompt_id"], r["sample_index"]) for r in dataset]
    assert len(keys) == len(set(keys)) == 40 * 2
    assert {k[1] for k in keys} == {0, 1}
