"""benchmarks/federate_study.py end to end on tiny clients (10 steps each), 1 seed, 2 rounds of 3 public
prompts, 2 training steps per round (1 local step per client for fedavg-lora) and 2 test problems per level:
the table, the bytes it reads from the federation's and FedAvg-LoRA's round records, the plot, and what the
union and fedavg-lora arms trained on; the accuracies mean nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "federate_study.py"

# tests/federate/test_federation.py's clients, shorter: one level each, 10 steps, not measured
CLIENTS = dict(
    client_levels=[1, 2, 3],
    private_problems=50,
    steps=10,
    batch_tokens=1024,
    learning_rate=3e-3,
    warmup_steps=5,
    eval_problems=0,
    eval_every=10,
)
TRAIN = dict(
    use_peft=False,
    only_correct=False,
    max_steps=2,
    per_device_train_batch_size=4,
    learning_rate=1e-2,
    lr_scheduler_type="constant",
    save_strategy="no",
    report_to="none",
    disable_tqdm=True,
)
FEDAVG_TRAIN = TRAIN | dict(
    use_peft=True,
    lora_r=2,
    lora_alpha=4,
    lora_dropout=0.0,
    kd_weight=0.0,
    max_steps=1,
    per_device_train_batch_size=2,
)


@pytest.fixture
def study(tmp_path, tokenizer_dir):
    """The script's run on tiny recipes; returns (output directory, stdout)."""
    recipes = {
        "clients.yaml": {"cache_dir": str(tmp_path / "cache"), **CLIENTS},
        "train.yaml": TRAIN,
        "fedavg.yaml": FEDAVG_TRAIN,
        "federated.yaml": {
            "output_dir": "set by the study",
            "student": "set by the study",
            "train_recipe": str(tmp_path / "train.yaml"),
            "num_rounds": 2,
            "prompts_per_round": 3,
            "k": 8,
            "min_clients": 2,
            "num_cpus_per_client": 1.0,
            "simulation_num_cpus": 2,
        },
    }
    for name, settings in recipes.items():
        (tmp_path / name).write_text(json.dumps(settings))  # JSON is YAML
    out = tmp_path / "study"
    command = [sys.executable, str(SCRIPT), "--tokenizer-dir", str(tokenizer_dir), "--seeds", "0"]
    command += ["--federate-recipe", str(tmp_path / "federated.yaml")]
    command += ["--clients-recipe", str(tmp_path / "clients.yaml"), "--test-problems", "2"]
    command += ["--fedavg-train-recipe", str(tmp_path / "fedavg.yaml"), "--output-dir", str(out)]
    command += ["--co-distill-recipe", str(tmp_path / "train.yaml")]  # the clients' steps: the server's
    command += ["--max-new-tokens", "32"]  # untrained models: 400 tokens each would be most of the test
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 busy cores: one thread each is the fast setting
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return out, run.stdout


def test_federate_study_measures_every_arm_with_the_federations_bytes(study, tokenizer_dir):
    from reasondistill.core.engines import EngineConfig, TransformersEngine
    from reasondistill.core.traces import decode_logprobs, encode_logprobs, load_traces, read_topk
    from reasondistill.demo.federated_clients import private_problems
    from reasondistill.demo.federated_clients_config import FederatedClientsConfig
    from reasondistill.federate.aggregation import aggregate_topk
    from reasondistill.federate.rounds import RoundRecord, round_dir

    out, stdout = study
    table = (out / "federate.md").read_text()
    assert table.startswith("Command: `.venv/bin/python benchmarks/federate_study.py --tokenizer-dir")
    for row in (
        "| client-0 alone | 1 |",
        "| client-2 alone | 1 |",
        "| federated, round 1 | 1 |",
        "| federated, round 2 | 1 |",
        "| fedavg-lora, round 1 | 1 |",
        "| fedavg-lora, round 2 | 1 |",
        "| federated − fedavg-lora (paired) | 1 |",
        "| union of the clients' data, round 2 | 1 |",
        "| public-ce (no client), round 2 | 1 |",
        "| federated − union (paired) | 1 |",
        "| federated − public-ce (paired) | 1 |",
        "| federated-dp z=1 (ε ≤ 6.57 at δ=1e-05), round 2 | 1 |",
        "| federated-dp − federated (paired) | 1 |",
        "| forget client-1 (unlearned), round 2 | 1 |",
        "| retrained without client-1, round 2 | 1 |",
        "| forget − retrain-without (paired) | 1 | +0.0 pts [+0.0, +0.0] |",
        "| federated − retrain-without (paired) | 1 |",
        "| co-distill, round 2 | 1 |",
        "| co-distill − federated (paired) | 1 |",
        "| client-0 after co-distilling | 1 |",
        "| client-2 after co-distilling − alone (paired) | 1 |",
    ):
        assert row in table and row in stdout
    assert "| federated − best client (client-" in table
    assert (out / "federate_accuracy.png").stat().st_size > 1000

    results = json.loads((out / "federate.json").read_text())
    assert [p["level"] for p in results["problems"]] == [1, 1, 2, 2, 3, 3]
    models = {(m["arm"], m["round"]): m for m in results["models"]}
    assert set(models) == {(f"client-{i}", 0) for i in range(3)} | {
        ("federated", 1),
        ("federated", 2),
        ("fedavg-lora", 1),
        ("fedavg-lora", 2),
        ("union", 2),
        ("public-ce", 2),
        ("federated-dp", 1),
        ("federated-dp", 2),
        ("forget", 2),
        ("retrain-without", 2),
        ("co-distill", 1),
        ("co-distill", 2),
    } | {(f"client-{i} co-distilled", 2) for i in range(3)}
    for model in models.values():
        assert len(model["correct"]) == 6 and 0.0 <= np.mean(model["correct"]) <= 1.0

    # bytes per round: the sum of what the server recorded receiving from every client in that round
    federation = out / "federated-seed0"
    recorded = [sum(RoundRecord.load(round_dir(federation, r)).bytes_received.values()) for r in (1, 2)]
    assert results["bytes_per_round"]["federated"]["0"] == recorded and min(recorded) > 0
    assert f"| {recorded[1]:,} | {sum(recorded):,} |" in table

    # the union arm trained, round by round, on every client's own private problems, each labelled by
    # that client's model (its top-k as it would send it)
    clients = FederatedClientsConfig(cache_dir="unused", **CLIENTS)
    owners = {p.id: i for i in range(3) for p in private_problems(clients, i)}
    student = str(out / "init-student-seed0")
    for r in (1, 2):
        pooled = round_dir(out / "union-data", r) / "pooled"
        rows = load_traces(pooled, cache_dir=str(out / "hf-cache"))
        assert sorted(owners[p] for p in rows["prompt_id"]) == [0, 1, 2]  # one problem of each client
        trained = yaml.safe_load(
            (round_dir(out / "union-seed0", r) / "student" / "train_recipe.yaml").read_text()
        )
        assert (trained["traces"], trained["model_name_or_path"]) == (str(pooled), student)
        student = str(round_dir(out / "union-seed0", r) / "student")
    client_dirs = [Path(m["directory"]) for m in results["models"] if m["arm"].startswith("client-")]
    for row in rows:
        owner = Path(client_dirs[owners[row["prompt_id"]]])
        engine = TransformersEngine(EngineConfig(teacher=str(owner), backend="transformers", logprobs=8))
        scored = engine.score([row["prompt_token_ids"]], [row["completion_token_ids"]])[0]
        # one client at weight 1: its own top-k through the encoding, ties ordered as aggregation orders them
        expected_ids, expected_logprobs = aggregate_topk(
            [scored.topk_ids], [decode_logprobs(encode_logprobs(scored.topk_logprobs))], [1.0], k=8
        )
        ids, logprobs = read_topk(row)
        np.testing.assert_array_equal(ids, expected_ids)
        np.testing.assert_allclose(logprobs, expected_logprobs, atol=2e-3)

    # fedavg-lora: each client trained on the text of all its private problems; the bytes are the round
    # records' (the clients' adapters); each round's student is the initial one with that round's adapter
    from reasondistill.federate.fedavg_lora import FedAvgRound

    for i in range(3):
        text = load_traces(out / "fedavg-lora-data" / f"client-{i}", cache_dir=str(out / "hf-cache"))
        assert text["prompt_id"] == [p.id for p in private_problems(clients, i)]
        for row in text:  # text only: each completion token is its own target (k = 1, probability 1)
            ids, logprobs = read_topk(row)
            np.testing.assert_array_equal(ids[:, 0], row["completion_token_ids"])
            assert ids.shape[1] == 1 and np.all(logprobs == 0)
    fedavg = out / "fedavg-lora-seed0"
    records = [FedAvgRound.load(round_dir(fedavg, r)) for r in (1, 2)]
    assert [r.num_examples for r in records] == [{f"client-{i}": 50 for i in range(3)}] * 2
    sent = [sum(r.bytes_received.values()) for r in records]
    assert results["bytes_per_round"]["fedavg-lora"]["0"]["clients_sent"] == sent and min(sent) > 0
    assert f"| {sent[1]:,} | {sum(sent):,} |" in table
    for r in (1, 2):
        assert models[("fedavg-lora", r)]["directory"] == str(round_dir(fedavg, r) / "merged")
        adapter = json.loads((round_dir(fedavg, r) / "adapter" / "adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == str(out / "init-student-seed0")
    local = yaml.safe_load((out / "recipes" / "fedavg-lora" / "train-seed0.yaml").read_text())
    assert local["use_peft"] and local["max_steps"] == 1 and local["seed"] == 0

    # the privacy arm: the same federation with noised labels, its budget from the accountant
    from reasondistill.federate.privacy import epsilon_spent

    noised = RoundRecord.load(round_dir(out / "federated-dp-seed0", 2)).privacy
    assert noised["noise_multiplier"] == 1.0
    spent = epsilon_spent(1.0, 2, 1e-5)  # 6.57: two rounds of z = 1
    assert results["privacy"]["0"]["epsilon"] == {f"client-{i}": spent for i in range(3)}

    # unlearning: --forget client-1 on the federated run equals a federation of the other two run from
    # scratch (their models as its partitions 0 and 1), and costs no client anything
    retrain = out / "retrain-without-seed0"
    recipe = yaml.safe_load((retrain / "federate_recipe.yaml").read_text())
    assert recipe["client_models"] == [str(client_dirs[0]), str(client_dirs[2])]
    unlearning = results["unlearning"]["0"]
    assert unlearning["identical_completions"] == 1.0 and unlearning["largest_weight_difference"] == 0.0
    retrain_bytes = sum(sum(RoundRecord.load(round_dir(retrain, r)).bytes_received.values()) for r in (1, 2))
    assert unlearning["retrain_bytes"] == retrain_bytes > 0
    assert models[("forget", 2)]["correct"] == models[("retrain-without", 2)]["correct"]
    assert models[("forget", 2)]["directory"] == str(federation / "forget-client-1" / "round-002" / "student")
    assert "| 0 | 2 | 100.0% | 0.00e+00 |" in table and f"| {retrain_bytes:,} |" in table

    # co-distill: the federation whose clients distilled their own models on each round's consensus; its
    # clients are scored after the last round as their state directories hold them
    from reasondistill.federate.rounds import CO_DISTILL_FILE

    co_distilling = out / "co-distill-seed0"
    for r in (1, 2):
        record = json.loads((round_dir(co_distilling, r) / CO_DISTILL_FILE).read_text())
        assert record["co_distilled"] == [f"client-{i}" for i in range(3)]
    server_sent = results["bytes_per_round"]["co-distill"]["0"]["server_sent"]
    assert min(server_sent) > 0
    for i in range(3):
        after = Path(models[(f"client-{i} co-distilled", 2)]["directory"])
        assert after.parent.parent.parent == Path(f"{client_dirs[i]}-co-distilled") and after.name == "model"
        assert json.loads((after.parent / "co_distilled.json").read_text())["round"] == 2

    # the control: CE only, on the federation's own consensus
    control = yaml.safe_load(
        (round_dir(out / "public-ce-seed0", 2) / "student" / "train_recipe.yaml").read_text()
    )
    assert control["kd_weight"] == 0.0
    assert control["traces"] == str(round_dir(federation, 2) / "consensus")
