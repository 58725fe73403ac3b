"""The federated demo's client builder on a tiny budget: real training, real files, real reuse, and each
client's private data one level only (tests/federate/test_federation.py builds its clients with it too)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reasondistill.demo.base_student import tokenizer_fingerprint
from reasondistill.demo.federated_clients import build_clients, main, private_problems
from reasondistill.demo.federated_clients_config import FederatedClientsConfig
from reasondistill.demo.lm_training import BUILD_INFO_FILE

TINY = dict(
    client_levels=[1, 3],
    private_problems=40,
    steps=4,
    batch_tokens=512,
    learning_rate=3e-3,
    warmup_steps=1,
    eval_problems=1,
    eval_every=2,
)


def test_each_client_trains_on_its_own_level_only():
    config = FederatedClientsConfig(client_levels=[1, 2, 3], private_problems=300)
    problems = [private_problems(config, client) for client in range(3)]
    for client, level in enumerate(config.client_levels):
        assert len(problems[client]) == 300 and {p.level for p in problems[client]} == {level}
    # the next seed draws other problems: a client of the same level elsewhere does not share them
    other = private_problems(FederatedClientsConfig(client_levels=[1], private_problems=300, seed=1), 0)
    assert {p.id for p in other} != {p.id for p in problems[0]}
    with pytest.raises(ValueError, match="client_levels"):
        FederatedClientsConfig(client_levels=[6])


@pytest.fixture
def one_torch_thread():
    """2 threads competing on 2 busy cores are several times slower than one (docs/architecture.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_build_trains_saves_and_is_reused(
    tmp_path, tokenizer_dir, demo_tokenizer, info_log, one_torch_thread, monkeypatch
):
    config = FederatedClientsConfig(cache_dir=str(tmp_path / "cache"), **TINY)
    directories = build_clients(config, tokenizer_dir)
    fingerprint = tokenizer_fingerprint(tokenizer_dir)
    assert directories == [config.directory(client, fingerprint) for client in range(2)]
    for client, directory in enumerate(directories):
        info = json.loads((directory / BUILD_INFO_FILE).read_text())
        assert info["client"] == f"client-{client}" and info["level"] == TINY["client_levels"][client]
        assert [p["step"] for p in info["learning_curve"]] == [2, 4] and info["private_problems"] == 40
        assert set(info["heldout_accuracy"]) == {"level_1", "level_3"}
        assert info["tokenizer"]["fingerprint"] == fingerprint
        # an ordinary model directory of the student size with the teacher's tokenizer
        model = AutoModelForCausalLM.from_pretrained(directory)
        assert model.config.hidden_size == 128 and info["parameters"] == model.num_parameters()
        assert AutoTokenizer.from_pretrained(directory).get_vocab() == demo_tokenizer.get_vocab()
    assert directories[0].name.startswith("demo-client-level1-")
    assert directories[1].name.startswith("demo-client-level3-")

    weights_mtime = [(d / "model.safetensors").stat().st_mtime_ns for d in directories]
    info_log.clear()
    assert build_clients(config, tokenizer_dir) == directories
    assert info_log.messages == [f"reusing demo client-{c} at {d}" for c, d in enumerate(directories)]
    # the command line builds the same clients from the recipe and its overrides: reused too
    overrides = []  # --client_levels 1 3 --steps 4 ...
    for name, value in TINY.items():
        overrides += [f"--{name}", *map(str, value if isinstance(value, list) else [value])]
    info_log.clear()
    # setup_logging's handler would keep this test's stdout for the rest of the session (and stop the
    # messages reaching info_log)
    monkeypatch.setattr("reasondistill.demo.federated_clients.setup_logging", lambda: None)
    assert main(["--tokenizer_dir", str(tokenizer_dir), "--cache_dir", config.cache_dir, *overrides]) == 0
    assert any(f"--client_models {directories[0]} {directories[1]}" in m for m in info_log.messages)
    assert [(d / "model.safetensors").stat().st_mtime_ns for d in directories] == weights_mtime

    # keyed by what changes a client: its level, its seed, its training, the tokenizer ...
    changes = (
        {"client_levels": [2, 3]},
        {"seed": 1},
        {"steps": 5},
        {"private_problems": 41},
        {"batch_order": "mixed"},
    )
    for changed in changes:
        assert FederatedClientsConfig(cache_dir=config.cache_dir, **{**TINY, **changed}).directory(
            0, fingerprint
        ) not in (directories)
    assert config.directory(0, "another-tokenizer") != directories[0]
    # ... not by how often the curve is sampled
    same = FederatedClientsConfig(cache_dir=config.cache_dir, **{**TINY, "eval_every": 1})
    assert same.directory(0, fingerprint) == directories[0]
