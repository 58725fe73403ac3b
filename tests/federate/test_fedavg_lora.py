"""FedAvg of LoRA adapters (federate/fedavg_lora.py): the average against a brute force and Flower's own
FedAvg aggregation, the reply checks, and a real 2-round run of 3 clients in Flower's simulation with real
PEFT adapters on a tiny student, every message the server sent and received recorded."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

# client i holds SIZES[i] private problems of level i + 1: unequal, so FedAvg's weights are not equal
SIZES = [4, 6, 10]
LORA_NAMES = ("q_proj", "v_proj")  # the tiny run adapts two projections of each of the student's 4 layers


def random_adapters(rng, count: int) -> list[dict[str, np.ndarray]]:
    shapes = {"m.layers.0.q_proj.lora_A.weight": (4, 16), "m.layers.0.q_proj.lora_B.weight": (16, 4)}
    return [{n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()} for _ in range(count)]


def test_fedavg_is_the_average_weighted_by_example_counts():
    """Element by element, sum_c n_c x_c / sum_c n_c; Flower's FedAvg strategy aggregates the same."""
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    from reasondistill.federate.fedavg_lora import fedavg

    rng = np.random.default_rng(0)
    for counts in ([1, 3, 6], [5, 5], [7]):
        adapters = random_adapters(rng, len(counts))
        averaged = fedavg(adapters, counts)
        assert set(averaged) == set(adapters[0])
        for name, tensor in averaged.items():
            assert tensor.dtype == np.float32 and tensor.shape == adapters[0][name].shape
            for index in np.ndindex(tensor.shape):
                expected = 0.0
                for adapter, n in zip(adapters, counts, strict=True):
                    expected += n * float(adapter[name][index])
                assert tensor[index] == pytest.approx(expected / sum(counts), rel=1e-6, abs=1e-7)
        records = [
            RecordDict(
                {
                    "arrays": ArrayRecord({n: Array(t) for n, t in adapter.items()}),
                    "metrics": MetricRecord({"num-examples": n}),
                }
            )
            for adapter, n in zip(adapters, counts, strict=True)
        ]
        flower = aggregate_arrayrecords(records, "num-examples")
        for name, tensor in averaged.items():
            np.testing.assert_allclose(tensor, flower[name].numpy(), rtol=1e-5, atol=1e-6)
    one = random_adapters(rng, 1)[0]
    assert all(np.array_equal(fedavg([one], [3])[n], t) for n, t in one.items())
    with pytest.raises(ValueError, match="positive example count"):
        fedavg(random_adapters(rng, 2), [1, 0])


def test_a_reply_must_be_the_rounds_adapter_and_its_count_only():
    from flwr.app import ConfigRecord, RecordDict

    from reasondistill.federate.fedavg_lora import RejectedAdapter, adapter_reply, decode_adapter_reply

    rng = np.random.default_rng(1)
    expected, trained = random_adapters(rng, 2)
    reply = decode_adapter_reply(adapter_reply("client-0", 2, trained, 9), expected, 2)
    assert (reply.client, reply.num_examples) == ("client-0", 9)
    assert all(np.array_equal(reply.adapter[n], t) for n, t in trained.items())
    first = next(iter(trained))
    faults = {
        "differ from the adapter's": adapter_reply("client-0", 2, {**trained, "extra": trained[first]}, 9),
        "expected float32 (4, 16)": adapter_reply("client-0", 2, {**trained, first: trained[first][:2]}, 9),
        "NaN or inf": adapter_reply("client-0", 2, {**trained, first: trained[first] * np.nan}, 9),
        "asked 2": adapter_reply("client-0", 1, trained, 9),
        "num-examples 0": adapter_reply("client-0", 2, trained, 0),
        "a plain name": adapter_reply("../x", 2, trained, 9),
    }
    extra = adapter_reply("client-0", 2, trained, 9)
    extra["data"] = ConfigRecord({"question": "what is 2 + 2?"})
    faults["expected exactly"] = extra
    faults["expected exactly ['adapter', 'meta']"] = RecordDict({"meta": extra["meta"]})
    for reason, content in faults.items():
        with pytest.raises(RejectedAdapter, match=re.escape(reason)):
            decode_adapter_reply(content, expected, 2)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One thread in this process: on 2 busy cores, 2 competing threads are several times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fedavg_run(tmp_path_factory, demo_tokenizer, one_torch_thread):
    """2 rounds x 3 clients, 2 local steps each, every message the server sent and received kept."""
    from flwr.serverapp import ServerApp

    from reasondistill.demo.factory import save_initial_model
    from reasondistill.federate.fedavg_lora import fedavg_lora, run_fedavg_server, write_client_text
    from reasondistill.federate.fedavg_lora_config import FedAvgLoraConfig
    from reasondistill.federate.public_set import load_public_set

    root = tmp_path_factory.mktemp("fedavg-lora")
    student = root / "student"
    save_initial_model("student", demo_tokenizer, student, seed=9)
    data = []
    for client, size in enumerate(SIZES):
        settings = {
            "public-prompts": "task:arithmetic",
            "public-split": "train",
            "public-num-prompts": size,
            "public-task-levels": [client + 1],
            "public-seed": 100 + client,
            "instruction": "",
        }
        examples = list(load_public_set(settings, demo_tokenizer).values())
        data.append(
            str(write_client_text(root / f"data-{client}", examples, demo_tokenizer, 512, f"c{client}"))
        )
    recipe = {
        "use_peft": True,
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "lora_target_modules": list(LORA_NAMES),
        "kd_weight": 0.0,
        "only_correct": False,
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-2,
        "lr_scheduler_type": "constant",
        "gradient_checkpointing": False,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "seed": 3,
    }
    (root / "train.yaml").write_text(json.dumps(recipe))  # JSON is YAML
    config = FedAvgLoraConfig(
        output_dir=str(root / "run"),
        student=str(student),
        train_recipe=str(root / "train.yaml"),
        client_data=data,
        num_rounds=2,
        min_clients=2,
        num_cpus_per_client=1.0,
        simulation_num_cpus=2,
        seed=4,
    )
    sent, received = [], []

    class RecordingGrid:
        def __init__(self, grid) -> None:
            self.grid = grid

        def send_and_receive(self, messages, *, timeout=None):
            sent.extend(messages)
            replies = list(self.grid.send_and_receive(messages, timeout=timeout))
            received.extend(replies)
            return replies

        def __getattr__(self, name):
            return getattr(self.grid, name)

    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        run_fedavg_server(RecordingGrid(grid), config)

    fedavg_lora(config, server_app=app)
    return config, sent, received


def lora_shapes(config) -> dict[str, tuple[int, ...]]:
    """The names and shapes of the recipe's LoRA adapter on the student, built outside Flower."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(config.student)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=list(LORA_NAMES)))
    return {name: tuple(t.shape) for name, t in get_peft_model_state_dict(model).items()}


@pytest.mark.slow
def test_fedavg_lora_two_rounds_three_clients(fedavg_run, demo_tokenizer):
    """Only adapter tensors and an example count travel; each round's global adapter is the example-weighted
    average of what the clients sent; round 2 starts from round 1's; bytes are the messages' sizes."""
    from flwr.app import MessageType
    from safetensors.numpy import load_file

    from reasondistill.federate.fedavg_lora import FedAvgRound
    from reasondistill.federate.rounds import round_dir
    from reasondistill.federate.server_app import content_bytes

    config, sent, received = fedavg_run
    shapes = lora_shapes(config)
    assert len(shapes) == 4 * len(LORA_NAMES) * 2  # 4 layers, A and B of each adapted projection
    parameters = sum(int(np.prod(s)) for s in shapes.values())
    assert len(sent) == len(received) == 2 * 3
    assert all(m.metadata.message_type == MessageType.TRAIN for m in sent)
    global_adapter = {}
    for round_number in (1, 2):
        replies = [r for r in received if int(r.metadata.group_id) == round_number]
        requests = [m for m in sent if int(m.metadata.group_id) == round_number]
        for message in requests:  # the server sends the global adapter of the round before, and the round
            assert set(message.content.keys()) == {"adapter", "config"}
            assert dict(message.content["config"]) == {"round": round_number}
            start = {n: a.numpy() for n, a in message.content["adapter"].items()}
            assert {n: a.shape for n, a in start.items()} == shapes
            if round_number == 2:
                assert all(np.array_equal(start[n], global_adapter[n]) for n in shapes)
        counts, adapters = {}, {}
        for reply in replies:
            assert not reply.has_error()
            assert list(reply.content.array_records) == ["adapter"]
            assert list(reply.content.config_records) == ["meta"] and not reply.content.metric_records
            meta = dict(reply.content["meta"])
            assert set(meta) == {"client", "round", "num-examples"} and meta["round"] == round_number
            client = meta["client"]
            counts[client] = meta["num-examples"]
            arrays = {n: a.numpy() for n, a in reply.content["adapter"].items()}
            assert {n: (a.dtype, a.shape) for n, a in arrays.items()} == {
                n: (np.dtype(np.float32), s) for n, s in shapes.items()
            }
            adapters[client] = arrays
            # trained locally: LoRA's B (zero at the start) moved from what the server sent
            assert all(not np.array_equal(arrays[n], start[n]) for n in shapes if "lora_B" in n)
            # no data: the tensors' bytes are the adapter's parameters, and no problem text is among them
            assert sum(a.nbytes for a in arrays.values()) == 4 * parameters
            payload = b"".join(a.tobytes() for a in arrays.values()) + json.dumps(meta).encode()
            assert b"Step 1" not in payload and b"\\boxed" not in payload
        assert counts == {f"client-{i}": size for i, size in enumerate(SIZES)}
        record = FedAvgRound.load(round_dir(config.output_dir, round_number))
        total = sum(SIZES)
        assert record.aggregated == {f"client-{i}": pytest.approx(s / total) for i, s in enumerate(SIZES)}
        assert record.num_examples == counts and record.rejected == {} and record.missing == []
        assert record.bytes_received == {
            r.content["meta"]["client"]: content_bytes(r.content) for r in replies
        }
        assert sum(record.bytes_sent.values()) == sum(content_bytes(m.content) for m in requests)
        for size in (*record.bytes_sent.values(), *record.bytes_received.values()):
            assert 4 * parameters < size < 4 * parameters + 200 * len(shapes)  # names and .npy headers
        # the global adapter: each tensor's average over the clients, weighted by their example counts
        saved = load_file(
            round_dir(config.output_dir, round_number) / "adapter" / "adapter_model.safetensors"
        )
        assert set(saved) == set(shapes)
        for name in shapes:
            expected = sum(counts[c] * adapters[c][name].astype(np.float64) for c in counts) / total
            np.testing.assert_allclose(saved[name], expected, rtol=1e-5, atol=1e-7)
        global_adapter = saved
    adapter_config = json.loads(
        (round_dir(config.output_dir, 2) / "adapter" / "adapter_config.json").read_text()
    )
    assert adapter_config["base_model_name_or_path"] == config.student


@pytest.mark.slow
def test_a_finished_fedavg_lora_run_is_reused_and_its_adapter_merges(fedavg_run, info_log, tmp_path):
    """The same settings again start no simulation; the global adapter merges into the student as
    `reasondistill quantize` merges adapters, for scoring."""
    from reasondistill.compress.merge import merge_adapter
    from reasondistill.federate.fedavg_lora import fedavg_lora
    from reasondistill.federate.rounds import round_dir

    config, _, _ = fedavg_run
    assert fedavg_lora(config) == Path(config.output_dir)
    assert any(m.startswith("reusing ") for m in info_log.messages)
    merged = merge_adapter(round_dir(config.output_dir, 2) / "adapter", tmp_path / "merged")
    assert (merged / "model.safetensors").is_file() and (merged / "tokenizer.json").is_file()
