"""Federated distillation in Flower's Simulation Engine (Ray backend) with real clients, server and trainer.

Three clients whose local models were trained on non-IID splits of the demo task (one difficulty level
each), a fresh global student and a two-step train recipe; every test runs a real simulation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

# The demo's client builder on a tiny budget: client-0 learns one-step sums only, client-1 two steps,
# client-2 three; 40 steps each (about 5 s with one thread) make the three clients' top-k differ.
CLIENTS = dict(
    client_levels=[1, 2, 3],
    private_problems=200,
    steps=40,
    batch_tokens=1024,
    learning_rate=3e-3,
    warmup_steps=5,
    weight_decay=0.01,
    eval_problems=0,
    eval_every=40,
)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One thread in this process: on 2 busy cores, 2 threads competing are several times slower
    (docs/architecture.md); Ray gives each client process one thread by itself (num_cpus 1)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def client_models(tmp_path_factory, demo_tokenizer) -> list[str]:
    from reasondistill.demo.federated_clients import build_clients
    from reasondistill.demo.federated_clients_config import FederatedClientsConfig

    root = tmp_path_factory.mktemp("federate-clients")
    demo_tokenizer.save_pretrained(root / "teacher")
    config = FederatedClientsConfig(cache_dir=str(root / "cache"), **CLIENTS)
    return [str(directory) for directory in build_clients(config, root / "teacher")]


@pytest.fixture(scope="module")
def global_student(tmp_path_factory, demo_tokenizer) -> str:
    from reasondistill.demo.factory import save_initial_model

    directory = tmp_path_factory.mktemp("federate-student")
    save_initial_model("student", demo_tokenizer, directory, seed=9)
    return str(directory)


@pytest.fixture(scope="module")
def train_recipe(tmp_path_factory) -> str:
    """Two optimiser steps per round: the mechanics, not a good student."""
    settings = {
        "use_peft": False,
        "only_correct": False,
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "gradient_checkpointing": False,
        "learning_rate": 1e-2,
        "lr_scheduler_type": "constant",
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "seed": 3,
    }
    path = tmp_path_factory.mktemp("federate-train") / "train.yaml"
    path.write_text(json.dumps(settings))  # JSON is YAML
    return str(path)


def federate_config(output_dir: Path, client_models, student, train_recipe, **overrides):
    """2 rounds x 4 public level-1/2 problems, top-8, 3 clients of 1 CPU each on 2 CPUs."""
    from reasondistill.federate.federate_config import FederateConfig

    settings = dict(
        output_dir=str(output_dir),
        student=student,
        train_recipe=train_recipe,
        client_models=list(client_models),
        num_rounds=2,
        prompts_per_round=4,
        public_task_levels=[1, 2],
        k=8,
        min_clients=2,
        num_cpus_per_client=1.0,
        simulation_num_cpus=2,
    )
    return FederateConfig(**{**settings, **overrides})


class RecordingGrid:
    """The simulation's Grid, keeping every reply the server receives."""

    def __init__(self, grid) -> None:
        self.grid, self.replies = grid, []

    def send_and_receive(self, messages, *, timeout=None):
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.replies.extend(replies)
        return replies

    def __getattr__(self, name):
        return getattr(self.grid, name)


def recording_server_app(config, replies: list):
    """The real server (run_server) on a grid that records what it receives into `replies`."""
    from flwr.serverapp import ServerApp

    from reasondistill.federate.server_app import run_server

    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        recording = RecordingGrid(grid)
        try:
            run_server(recording, config)
        finally:
            replies.extend(recording.replies)

    return app


@pytest.fixture(scope="module")
def federation(tmp_path_factory, client_models, global_student, train_recipe):
    """One uninterrupted 2-round federation of the 3 clients, with every reply the server received."""
    from reasondistill.federate.federate import federate

    config = federate_config(
        tmp_path_factory.mktemp("federation") / "run", client_models, global_student, train_recipe
    )
    replies = []
    federate(config, server_app=recording_server_app(config, replies))
    return config, replies


def public_examples(config, round_number):
    from reasondistill.federate.server_app import PublicSide

    public = PublicSide.load(config)
    return [public.examples[p] for p in public.request(config, round_number).prompt_ids]


def weights(directory) -> dict:
    from safetensors.torch import load_file

    return load_file(Path(directory) / "model.safetensors")


@pytest.mark.slow
def test_two_rounds_three_clients_end_to_end(federation, client_models, global_student):
    """Each round's consensus is the aggregate of what the clients' own models say on the public
    completions (recomputed here, outside Flower), stored as a trace dataset the trainer read; the
    student was distilled round after round."""
    import torch

    from reasondistill.core.engines import EngineConfig, TransformersEngine
    from reasondistill.core.traces import decode_logprobs, encode_logprobs, load_traces, read_topk
    from reasondistill.federate.aggregation import aggregate_topk, mix_logprobs
    from reasondistill.federate.rounds import RoundRecord, round_dir

    config, _ = federation
    engines = [
        TransformersEngine(EngineConfig(teacher=m, backend="transformers", logprobs=8)) for m in client_models
    ]
    asked = []
    for round_number in (1, 2):
        directory = round_dir(config.output_dir, round_number)
        record = RoundRecord.load(directory)
        assert record.aggregated == {f"client-{i}": pytest.approx(1 / 3) for i in range(3)}
        assert record.rejected == {} and record.missing == []
        examples = public_examples(config, round_number)
        assert record.prompt_ids == [e.prompt_id for e in examples]
        asked += record.prompt_ids
        consensus = load_traces(directory / "consensus", cache_dir=str(directory / "hf-cache"))
        assert consensus["prompt_id"] == record.prompt_ids
        for row, example in zip(consensus, examples, strict=True):
            prompt, completion = example.prompt_token_ids, example.completion_token_ids
            assert row["completion_token_ids"] == completion
            scored = [engine.score([prompt], [completion])[0] for engine in engines]
            # the server aggregates what travelled: the clients' logprobs through the trace encoding
            expected_ids, expected_lp = aggregate_topk(
                [s.topk_ids for s in scored],
                [decode_logprobs(encode_logprobs(s.topk_logprobs)) for s in scored],
                [1, 1, 1],
                k=8,
            )
            ids, lp = read_topk(row)
            np.testing.assert_array_equal(ids, expected_ids)
            np.testing.assert_allclose(lp, decode_logprobs(encode_logprobs(expected_lp)), atol=2e-3)
            sampled = mix_logprobs([s.sampled_logprobs for s in scored], [1, 1, 1])
            np.testing.assert_allclose(row["sampled_logprob"], sampled, atol=1e-4)
        # the student of each round was distilled on that round's consensus from the one before
        train_recipe = yaml.safe_load((directory / "student" / "train_recipe.yaml").read_text())
        assert train_recipe["traces"] == str(directory / "consensus")
        before = global_student if round_number == 1 else str(round_dir(config.output_dir, 1) / "student")
        assert train_recipe["model_name_or_path"] == before
        changed = [not torch.equal(a, weights(before)[n]) for n, a in weights(directory / "student").items()]
        assert any(changed)
    assert len(set(asked)) == 8  # each round names new public prompts


@pytest.mark.slow
def test_the_server_receives_only_soft_labels(federation, client_models):
    """Every message the server received: exactly the four soft-label arrays (their shapes fixed by the
    public completions' token counts and k) and six metadata fields; nothing else fits in the bytes."""
    from transformers import AutoModelForCausalLM

    from reasondistill.federate.soft_labels import META, REPLY_ARRAYS, SOFT_LABELS

    config, replies = federation
    assert len(replies) == 2 * 3
    parameters = AutoModelForCausalLM.from_pretrained(client_models[0]).num_parameters()
    for reply in replies:
        assert not reply.has_error()
        round_number = int(reply.metadata.group_id)
        examples = public_examples(config, round_number)
        tokens = [len(e.completion_token_ids) for e in examples]
        assert set(reply.content.keys()) == {SOFT_LABELS, META}
        assert list(reply.content.array_records) == [SOFT_LABELS]
        assert list(reply.content.config_records) == [META] and not reply.content.metric_records
        arrays = {name: array.numpy() for name, array in reply.content[SOFT_LABELS].items()}
        shapes = {name: (a.dtype, a.shape) for name, a in arrays.items()}
        n = sum(tokens)
        assert shapes == {
            "topk_ids": (np.dtype(np.int32), (n, 8)),
            "topk_logprob_codes": (np.dtype(np.uint16), (n, 8)),
            "sampled_logprob": (np.dtype(np.float32), (n,)),
            "token_counts": (np.dtype(np.int32), (len(examples),)),
        }
        assert set(arrays) == set(REPLY_ARRAYS) and arrays["token_counts"].tolist() == tokens
        payload = sum(a.nbytes for a in arrays.values())
        assert payload == n * 8 * (4 + 2) + n * 4 + len(examples) * 4
        assert payload < 0.01 * parameters * 4  # the weights would be 100x more: they are not there
        meta = dict(reply.content[META])
        assert set(meta) == {
            "client",
            "round",
            "prompt_set_digest",
            "k",
            "vocab_size",
            "tokenizer_fingerprint",
        }
        assert re.fullmatch(r"client-[0-2]", meta["client"]) and meta["round"] == round_number
        assert re.fullmatch(r"[0-9a-f]{64}", meta["prompt_set_digest"])
        assert re.fullmatch(r"[0-9a-f]{16}", meta["tokenizer_fingerprint"])
        assert (meta["k"], meta["vocab_size"]) == (8, 512)
        # no text: neither the public prompts and completions nor any word of the task is in the bytes
        sent = b"".join(a.tobytes() for a in arrays.values()) + json.dumps(meta).encode()
        for example in examples:
            assert example.question[:20].encode() not in sent
        assert b"marbles" not in sent and b"Step 1" not in sent and b"carry" not in sent


def client_app_failing_to_co_distil(models, client: str, round_number: int):
    """The real ClientApp's two handlers, except that `client` fails while it co-distils `round_number`."""
    from flwr.clientapp import ClientApp

    from reasondistill.federate.client_app import answer_co_distill, answer_query, client_identity

    app = ClientApp()
    app.query()(lambda message, context: answer_query(message, context, models))

    @app.train()
    def co_distill(message, context):
        asked = message.content["request"]["round"]
        if client_identity(context, models)[1] == client and asked == round_number:
            raise MemoryError(f"{client} ran out of memory while co-distilling")
        return answer_co_distill(message, context, models)

    return app


@pytest.mark.slow
def test_co_distilling_clients_label_the_next_round_with_the_model_they_distilled(
    tmp_path, client_models, global_student, train_recipe
):
    """With co_distill_recipe, the server sends each round's consensus back: every client checks it,
    distils its own model on it (in its state directory, not the server's) and labels the next round with
    that model (recomputed here outside Flower); what the server receives for it is a name and a round;
    the message it sent is the consensus it aggregated. client-2 fails to co-distil round 1: the round
    records it missing, the run goes on, and client-2 labels round 2 with the model it started with.
    Forgetting a client is then approximate."""
    from flwr.app import ConfigRecord

    from reasondistill.core.traces import load_traces, read_topk
    from reasondistill.federate.client_app import soft_labels_for
    from reasondistill.federate.co_distillation import CO_DISTILLED, DONE_FILE
    from reasondistill.federate.federate import federate
    from reasondistill.federate.rounds import CO_DISTILL_FILE, load_contribution, round_dir
    from reasondistill.federate.soft_labels import REQUEST, request_content
    from reasondistill.federate.unlearning import FORGET_FILE

    config = federate_config(
        tmp_path / "run", client_models, global_student, train_recipe, co_distill_recipe=train_recipe
    )
    federation = config.co_distill_federation()
    assert re.fullmatch(r"[0-9a-f]{16}", federation)
    replies = []
    federate(
        config,
        server_app=recording_server_app(config, replies),
        client_app=client_app_failing_to_co_distil(client_models, "client-2", 1),
    )
    co_distilled = [r for r in replies if not r.has_error() and CO_DISTILLED in r.content]
    assert len(co_distilled) == 2 * 3 - 1 and len(replies) == 2 * 3 * 2
    for reply in co_distilled:  # all the server hears back: who and which round
        assert list(reply.content.keys()) == [CO_DISTILLED] and not reply.content.array_records
        assert set(reply.content[CO_DISTILLED].keys()) == {"client", "round"}
    started_with = {}  # client -> the model it labels round 2 with
    for round_number in (1, 2):
        directory = round_dir(config.output_dir, round_number)
        record = json.loads((directory / CO_DISTILL_FILE).read_text())
        expected = ["client-0", "client-1"] + ["client-2"] * (round_number == 2)
        assert record["co_distilled"] == expected and record["missing"] == ["client-2"] * (round_number == 1)
        assert len(set(record["bytes_sent"].values())) == 1 and min(record["bytes_sent"].values()) > 0
        server = load_traces(directory / "consensus", cache_dir=str(tmp_path / "hf-cache"))
        for i, model in enumerate(client_models):
            folder = Path(f"{model}-co-distilled") / federation / f"round-{round_number:03d}"
            if round_number == 1 and i == 2:
                assert not (folder / DONE_FILE).exists()
                started_with[f"client-{i}"] = model
                continue
            done = json.loads((folder / DONE_FILE).read_text())
            # round 2 continues from the model distilled in round 1 (client-2: from its own)
            started = str(folder.parent / "round-001" / "model") if round_number == 2 and i < 2 else model
            assert done["client"] == f"client-{i}" and done["from"] == started
            if round_number == 1:
                started_with[f"client-{i}"] = str(folder / "model")
            received = load_traces(folder / "consensus", cache_dir=str(tmp_path / "hf-cache"))
            for mine, theirs in zip(received, server, strict=True):  # what it trained on: the consensus
                assert mine["completion_token_ids"] == theirs["completion_token_ids"]
                np.testing.assert_array_equal(read_topk(mine)[0], read_topk(theirs)[0])
                np.testing.assert_allclose(read_topk(mine)[1], read_topk(theirs)[1], atol=2e-3)
            assert any(
                not np.allclose(t.numpy(), weights(started)[n].numpy())
                for n, t in weights(folder / "model").items()
            )
    # round 2's labels come from each client's round-1 model (client-2: the one it started with)
    prompt_ids = json.loads((round_dir(config.output_dir, 2) / "round.json").read_text())["prompt_ids"]
    request = request_content(2, prompt_ids, config.recipe_settings())[REQUEST]
    assert isinstance(request, ConfigRecord)
    for i, model in enumerate(client_models):
        sent = load_contribution(round_dir(config.output_dir, 2) / "contributions" / f"client-{i}.npz")
        expected = soft_labels_for(request, started_with[f"client-{i}"], f"client-{i}")
        np.testing.assert_array_equal(sent.topk_ids, expected.topk_ids)
        np.testing.assert_array_equal(sent.topk_logprob_codes, expected.topk_logprob_codes)
        if i < 2:
            original = soft_labels_for(request, model, f"client-{i}")
            assert not np.array_equal(sent.topk_logprob_codes, original.topk_logprob_codes)
    federate(dataclasses.replace(config, forget=["client-1"]))
    summary = json.loads((Path(config.output_dir) / "forget-client-1" / FORGET_FILE).read_text())
    assert summary["guarantee"].startswith("approximate")


@pytest.mark.slow
def test_a_finished_federation_is_evaluated_round_by_round(federation, tmp_path):
    """evaluate_recipe on the finished 2-round run: its rounds are reused untouched, and the initial and
    each round's student are evaluated with evaluate's code (round 2 again here, alone: the same
    pass@1), beside the round records' clients and bytes, in federate.md / .json, a plot and a report;
    a second call reuses the evaluation."""
    from reasondistill.evaluate.evaluate import evaluate_models
    from reasondistill.federate.federate import federate
    from reasondistill.federate.round_report import evaluate_config_of
    from reasondistill.federate.rounds import RoundRecord, round_dir

    config, _ = federation
    demo = Path(__file__).resolve().parents[2] / "reasondistill/recipes/demo"
    evaluated = dataclasses.replace(
        config,
        evaluate_recipe=str(demo / "evaluate.yaml"),
        evaluate_overrides=["--backend", "transformers", "--num_problems", "3", "--num_samples", "1"],
    )
    out = Path(config.output_dir)
    rounds = {p: p.stat().st_mtime_ns for p in out.glob("round-*/**/*") if p.is_file()}
    federate(evaluated)
    assert {p: p.stat().st_mtime_ns for p in rounds} == rounds  # the federation was not run again
    data = json.loads((out / "federate.json").read_text())
    students = [config.student] + [str(round_dir(out, r) / "student") for r in (1, 2)]
    assert data["students"] == students and [row["round"] for row in data["rounds"]] == [0, 1, 2]
    total = 0
    for row in data["rounds"][1:]:
        record = RoundRecord.load(round_dir(out, row["round"]))
        total += sum(record.bytes_received.values())
        assert row["aggregated"] == ["client-0", "client-1", "client-2"] and row["missing"] == []
        assert row["bytes_received"] == sum(record.bytes_received.values())
        assert row["bytes_received_total"] == total
    (alone,) = evaluate_models([students[2]], ["arithmetic"], evaluate_config_of(evaluated))
    assert data["rounds"][2]["pass@1"] == alone.metrics["pass@1"]["value"]
    table = (out / "federate.md").read_text()
    assert table.startswith("| round | pass@1 on arithmetic [95% CI] |") and "initial student" in table
    assert (out / "federate_accuracy.png").stat().st_size > 0
    assert (out / "report" / "report.md").exists()
    written = (out / "federate.json").stat().st_mtime_ns
    federate(evaluated)
    assert (out / "federate.json").stat().st_mtime_ns == written


def faulty_client_app(models):
    """The real ClientApp, except that client-1 sends token ids outside the vocabulary in round 1 and
    client-2 fails in the middle of round 2 (its process raises while it scores)."""
    from flwr.app import Message
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.query()
    def answer(message, context):
        import dataclasses

        from reasondistill.federate.client_app import client_identity, soft_labels_for

        model_dir, client = client_identity(context, models)
        request = message.content["request"]
        if client == "client-2" and request["round"] == 2:
            raise ConnectionError("client-2 lost its connection mid-round")
        labels = soft_labels_for(request, model_dir, client)
        if client == "client-1" and request["round"] == 1:
            labels = dataclasses.replace(labels, topk_ids=labels.topk_ids + 1000)
        return Message(labels.to_content(), reply_to=message)

    return app


@pytest.mark.slow
def test_dropout_and_malformed_labels_leave_the_round_to_the_others(
    tmp_path, client_models, global_student, train_recipe, info_log
):
    from reasondistill.federate.federate import federate
    from reasondistill.federate.rounds import RoundRecord, round_dir

    config = federate_config(tmp_path / "faulty", client_models, global_student, train_recipe)
    federate(config, client_app=faulty_client_app(client_models))
    first, second = (RoundRecord.load(round_dir(config.output_dir, r)) for r in (1, 2))
    assert sorted(first.aggregated) == ["client-0", "client-2"] and first.missing == []
    assert list(first.rejected) == ["client-1"]
    assert "token ids outside [0, vocab_size=512)" in first.rejected["client-1"]
    assert any("rejected the soft labels of client-1: token ids outside" in m for m in info_log.messages)
    assert sorted(second.aggregated) == ["client-0", "client-1"] and second.rejected == {}
    assert second.missing == ["client-2"]  # named: the server knows it from round 1
    assert any("client-2 failed and is missing" in m for m in info_log.messages)
    assert (round_dir(config.output_dir, 2) / "student" / "train_recipe.yaml").exists()


def assert_same_rounds(run_a, run_b, cache_dir, rounds=(1, 2)) -> None:
    """Two runs' rounds hold the same consensus top-k (bit for bit) and the same students (to 1e-6)."""
    from reasondistill.core.traces import load_traces, read_topk
    from reasondistill.federate.rounds import round_dir

    for round_number in rounds:
        a, b = (round_dir(run, round_number) for run in (run_a, run_b))
        rows_a = load_traces(a / "consensus", cache_dir=str(cache_dir))
        rows_b = load_traces(b / "consensus", cache_dir=str(cache_dir))
        for row_a, row_b in zip(rows_a, rows_b, strict=True):
            for x, y in zip(read_topk(row_a), read_topk(row_b), strict=True):
                np.testing.assert_array_equal(x, y)
        weights_b = weights(b / "student")
        for name, tensor in weights(a / "student").items():
            np.testing.assert_allclose(tensor.numpy(), weights_b[name].numpy(), atol=1e-6, err_msg=name)


def session_processes(session: int) -> list[str]:
    """Processes of a session (the killed server and whatever it started), from ps."""
    ps = subprocess.run(["ps", "-eo", "pid=,sid=,comm="], capture_output=True, text=True, check=True)
    return [line for line in ps.stdout.splitlines() if int(line.split()[1]) == session]


@pytest.mark.slow
def test_a_killed_server_resumes_after_its_last_completed_round(tmp_path, federation):
    """`reasondistill federate` is SIGKILLed (with the Ray processes it started) as soon as round 1 is
    complete; run again, it asks no client about round 1, leaves its files as they were, and ends with
    the same consensus and student as the uninterrupted run."""
    from reasondistill.federate.federate import federate
    from reasondistill.federate.rounds import ROUND_FILE, round_dir

    uninterrupted, _ = federation
    config = dataclasses.replace(uninterrupted, output_dir=str(tmp_path / "run"))
    recipe = tmp_path / "federated.yaml"
    recipe.write_text(json.dumps(dataclasses.asdict(config)))
    first_round = round_dir(config.output_dir, 1) / ROUND_FILE
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "reasondistill.cli", "federate", str(recipe)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the Ray processes it starts die with it
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        deadline = time.monotonic() + 300
        while not first_round.exists() and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    assert first_round.exists(), (tmp_path / "server.log").read_text()[-3000:]
    assert not (round_dir(config.output_dir, 2) / ROUND_FILE).exists(), "killed too late: round 2 finished"
    for _ in range(50):  # the process group is gone within a few seconds
        if not session_processes(server.pid):
            break
        time.sleep(0.1)
    assert session_processes(server.pid) == []
    round_one = {p: p.stat().st_mtime_ns for p in round_dir(config.output_dir, 1).rglob("*") if p.is_file()}
    round_one = {p: t for p, t in round_one.items() if "student" not in p.parts}  # labels, not training

    replies = []
    federate(config, server_app=recording_server_app(config, replies))
    assert {reply.metadata.group_id for reply in replies} == {"2"} and len(replies) == 3
    assert {p: p.stat().st_mtime_ns for p in round_one} == round_one
    assert_same_rounds(config.output_dir, uninterrupted.output_dir, tmp_path / "hf-cache")


@pytest.mark.slow
def test_forgetting_a_client_gives_the_student_of_a_federation_without_it(
    tmp_path, federation, client_models, global_student, train_recipe
):
    """--forget client-1 on the 3-client run recomputes both rounds' consensus from the stored labels of
    client-0 and client-2 and retrains from the initial student: the same consensus and the same student
    as a federation that never had client-1 (run here for real), without asking any client."""
    from reasondistill.federate.federate import federate
    from reasondistill.federate.rounds import round_dir
    from reasondistill.federate.unlearning import FORGET_FILE

    config, _ = federation
    federate(dataclasses.replace(config, forget=["client-1"]))
    unlearned = Path(config.output_dir) / "forget-client-1"
    summary = json.loads((unlearned / FORGET_FILE).read_text())
    assert summary["first_round_influenced"] == 1 and summary["retrained_from"] == global_student
    assert summary["rounds_retrained"] == 2
    written = (unlearned / FORGET_FILE).stat().st_mtime_ns
    federate(dataclasses.replace(config, forget=["client-1"]))  # done before: reused, nothing redone
    assert (unlearned / FORGET_FILE).stat().st_mtime_ns == written
    # the retrain: a federation of client-0's and client-2's models only (partitions 0 and 1 there)
    without = federate_config(
        tmp_path / "without", [client_models[0], client_models[2]], global_student, train_recipe
    )
    federate(without)
    assert_same_rounds(unlearned, without.output_dir, tmp_path / "hf-cache")
    # ... and it differs from the student that learned from client-1
    original = weights(round_dir(config.output_dir, 2) / "student")
    assert any(
        not np.allclose(t.numpy(), original[n].numpy())
        for n, t in weights(unlearned / "round-002" / "student").items()
    )
    with pytest.raises(ValueError, match="no round aggregated \\['client-9'\\]"):
        federate(dataclasses.replace(config, forget=["client-9"]))


@pytest.mark.slow
def test_too_few_accepted_clients_stop_the_run_so_that_it_can_resume(
    tmp_path, client_models, global_student, train_recipe
):
    from reasondistill.federate.federate import RECIPE_FILE, federate
    from reasondistill.federate.rounds import ROUND_FILE, round_dir
    from reasondistill.federate.server_app import FederationError

    config = federate_config(tmp_path / "strict", client_models, global_student, train_recipe, min_clients=3)
    with pytest.raises(FederationError, match=r"round 1: the labels of 2 clients were accepted .*client-1"):
        federate(config, client_app=faulty_client_app(client_models))
    assert not (round_dir(config.output_dir, 1) / ROUND_FILE).exists()
    assert (Path(config.output_dir) / RECIPE_FILE.replace(".yaml", ".partial.yaml")).exists()


@pytest.mark.slow
def test_noised_labels_travel_validate_and_aggregate_with_their_budget(
    tmp_path, client_models, global_student, train_recipe
):
    """With dp_noise_multiplier set, the server receives the clients' labels through the Gaussian mechanism
    (federate/privacy.py), not what their models say, in the same layout; it accepts and aggregates them
    and records each client's epsilon: dp_accounting's for the rounds that client sent labels in."""
    from reasondistill.core.engines import EngineConfig, TransformersEngine
    from reasondistill.federate.federate import federate
    from reasondistill.federate.privacy import epsilon_spent
    from reasondistill.federate.rounds import RoundRecord, round_dir
    from reasondistill.federate.soft_labels import decode_reply

    config = federate_config(
        tmp_path / "private", client_models[:2], global_student, train_recipe, dp_noise_multiplier=1.0
    )
    replies = []
    federate(config, server_app=recording_server_app(config, replies))
    engines = [
        TransformersEngine(EngineConfig(teacher=m, backend="transformers", logprobs=8))
        for m in client_models[:2]
    ]
    assert len(replies) == 2 * 2
    for reply in replies:
        labels = decode_reply(reply.content)  # the soft-label layout, nothing added
        examples = public_examples(config, labels.round)
        engine = engines[int(labels.client.removeprefix("client-"))]
        scored = engine.score(
            [e.prompt_token_ids for e in examples], [e.completion_token_ids for e in examples]
        )
        model_top = np.concatenate([s.topk_ids for s in scored]).reshape(-1, 8)
        assert labels.topk_ids.shape == model_top.shape
        # noise of std sqrt(2 N) ~ 20 per coordinate against probabilities <= 1: the model's top-1 is no
        # longer what decides the top-1 that travels
        assert np.mean(labels.topk_ids[:, 0] == model_top[:, 0]) < 0.5
    for round_number in (1, 2):
        record = RoundRecord.load(round_dir(config.output_dir, round_number))
        assert sorted(record.aggregated) == ["client-0", "client-1"] and record.rejected == {}
        budget = epsilon_spent(1.0, round_number, 1e-5)
        assert record.privacy["rounds_released"] == {"client-0": round_number, "client-1": round_number}
        assert record.privacy["epsilon"] == {"client-0": budget, "client-1": budget}
        assert (round_dir(config.output_dir, round_number) / "student" / "train_recipe.yaml").exists()
    assert epsilon_spent(1.0, 2, 1e-5) > epsilon_spent(1.0, 1, 1e-5)


def test_the_demo_federation_recipes_parse_with_co_distillation_and_evaluation():
    """The shipped recipes/demo/federated.yaml with its commented options switched on, and the clients'
    co-distillation recipe as a client parses it: full models, the demo students' objective."""
    from trl import ModelConfig

    from reasondistill.core.recipe import parse_recipe
    from reasondistill.federate.federate_config import FederateConfig
    from reasondistill.federate.round_report import evaluate_config_of
    from reasondistill.train.distill_config import DistillConfig

    options = ["--co_distill_recipe", "recipes/demo/federated_co_distill.yaml"]
    (config,) = parse_recipe("recipes/demo/federated.yaml", (FederateConfig,), options)
    assert config.evaluate_recipe is not None and evaluate_config_of(config).benchmark == ["arithmetic"]
    assert config.recorded_settings().evaluate_recipe is None  # not part of the run's record
    assert len(config.co_distill_federation()) == 16 and config.recipe_settings()["co-distill-federation"]
    placed = ["--model_name_or_path", "m", "--traces", "t", "--output_dir", "o"]
    model_args, args = parse_recipe(config.co_distill_recipe, (ModelConfig, DistillConfig), placed)
    assert not model_args.use_peft and args.kd_weight == 1.0 and args.max_steps == 100
