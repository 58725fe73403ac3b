"""`reasondistill federate` on a real Flower deployment on this machine: a SuperLink, two SuperNodes that
each name their own client model and client name (--node-config), and `flwr run` of the Flower App that
`federate/flower_app.py` writes, all as subprocesses of flwr's own commands, insecure, on free local ports,
each with its own FLWR_HOME and working directory as on separate machines. The ServerApp and ClientApp are
the module objects `flwr run` names (server_app:app, client_app:app), not the simulation's.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent  # flwr's commands, and the app runners they start, beside this Python
SITES = {"site-a": 1, "site-b": 2}  # client name -> the one difficulty level its model was trained on
CONNECTION = "local-test"  # the SuperLink connection's name in the CLI's config.toml


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    """Until something listens on `port` (the SuperLink's Control API is up), or fail with its log."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"nothing listens on {port}:\n{log.read_text()[-3000:]}")


class Fleet:
    """flwr's long-running processes, each in its own session (so its app runners die with it), logged."""

    def __init__(self, root: Path) -> None:
        self.root, self.processes = root, {}

    def env(self, name: str) -> dict[str, str]:
        home = self.root / name / "flwr-home"  # apps, config and credentials of this "machine"
        home.mkdir(parents=True, exist_ok=True)
        path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "FLWR_HOME": str(home), "PATH": path, "OMP_NUM_THREADS": "1"}

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        with open(self.root / f"{name}.log", "w") as log:
            self.processes[name] = subprocess.Popen(
                command,
                cwd=self.root / name,
                env=self.env(name),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.processes[name]

    def stop(self) -> list[str]:
        """SIGTERM every session (flwr shuts down cleanly), SIGKILL what is left after 15 s; returns the
        processes of these sessions still alive after that (none expected)."""
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        sessions = {process.pid for process in self.processes.values()}
        time.sleep(1)  # app runners whose SuperExec just died
        ps = subprocess.run(
            ["ps", "-eo", "pid=,sid=,stat=,args="], capture_output=True, text=True, check=True
        )
        return [
            line
            for line in ps.stdout.splitlines()
            if int(line.split()[1]) in sessions and not line.split()[2].startswith("Z")
        ]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, demo_tokenizer):
    """2 rounds of 4 public prompts, the 2 SuperNodes' clients, a 2-step distillation per round; returns
    (config, client models by name, `flwr run --stream` output, the run as `flwr ls` reports it)."""
    import torch

    from reasondistill.core.recipe import locate_recipe
    from reasondistill.demo.factory import save_initial_model
    from reasondistill.demo.federated_clients import build_clients
    from reasondistill.demo.federated_clients_config import FederatedClientsConfig
    from reasondistill.federate.federate_config import FederateConfig
    from reasondistill.federate.flower_app import write_flower_app

    root = tmp_path_factory.mktemp("deployment")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 busy cores (docs/architecture.md)
    demo_tokenizer.save_pretrained(root / "teacher")
    clients = FederatedClientsConfig(
        cache_dir=str(root / "clients"),
        client_levels=list(SITES.values()),
        private_problems=200,
        steps=10,  # the transport is under test, not the labels' quality
        batch_tokens=1024,
        eval_problems=0,
    )
    models = dict(zip(SITES, map(str, build_clients(clients, root / "teacher")), strict=True))
    save_initial_model("student", demo_tokenizer, root / "student", seed=9)
    torch.set_num_threads(threads)

    # the server's side: the shipped round recipe at 2 steps, and the federation's recipe
    train = yaml.safe_load(locate_recipe("recipes/demo/federated_train.yaml").read_text())
    (root / "train.yaml").write_text(json.dumps({**train, "max_steps": 2, "per_device_train_batch_size": 4}))
    settings = dict(
        output_dir=str(root / "server" / "run"),
        student=str(root / "student"),
        train_recipe=str(root / "train.yaml"),
        num_rounds=2,
        prompts_per_round=4,
        public_task_levels=[1, 2],
        k=8,
        min_clients=len(SITES),  # the server waits for both SuperNodes before round 1
        round_timeout=300.0,
    )
    recipe = root / "federated.yaml"
    recipe.write_text(json.dumps(settings))  # JSON is YAML

    fleet = Fleet(root)
    fleet_api, serverappio, control = free_port(), free_port(), free_port()
    try:
        superlink = fleet.start(
            "server",
            [str(BIN / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation"]
            + ["--fleet-api-address", f"127.0.0.1:{fleet_api}"]
            + ["--serverappio-api-address", f"127.0.0.1:{serverappio}"]
            + ["--control-api-address", f"127.0.0.1:{control}"],
        )
        for site, model in models.items():
            fleet.start(
                site,
                [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{fleet_api}"]
                + ["--clientappio-api-address", f"127.0.0.1:{free_port()}"]
                + ["--node-config", f"model-dir='{model}' client-name='{site}'"],
            )
        wait_for_port(control, superlink, root / "server.log")

        # the user's side: the App and the SuperLink connection
        write_flower_app(root / "user" / "app", str(recipe))
        user = fleet.env("user")
        connection = f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{control}"\ninsecure = true\n'
        (Path(user["FLWR_HOME"]) / "config.toml").write_text(connection)
        flwr = [str(BIN / "flwr")]
        run = subprocess.run(
            [*flwr, "run", str(root / "user" / "app"), CONNECTION, "--stream"],  # returns when the run ends
            env=user,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        run_id = re.search(r"Successfully started run (\d+)", run.stdout).group(1)
        listed = subprocess.run(
            [*flwr, "ls", CONNECTION, "--run-id", run_id, "--format", "json"],
            env=user,
            capture_output=True,
            text=True,
            timeout=60,
        )
        (status,) = json.loads(listed.stdout)["runs"]
        yield FederateConfig(**settings), models, run.stdout, status
    finally:
        assert fleet.stop() == [], "flwr processes outlived the test"


def test_a_deployment_runs_the_federation_of_its_supernodes(deployment):
    """The run completes; each round aggregated both SuperNodes under the names their node configs give,
    each site's stored labels are what its own model says (recomputed here, outside Flower), the student was
    distilled round after round, and OUTPUT_DIR's run record is finished (reuse, resume, --forget)."""
    import torch
    from safetensors.torch import load_file

    from reasondistill.core.engines import EngineConfig, TransformersEngine
    from reasondistill.core.run_reuse import inspect_run_dir
    from reasondistill.core.traces import decode_logprobs, encode_logprobs
    from reasondistill.federate.rounds import RoundRecord, load_contribution, round_dir
    from reasondistill.federate.server_app import RECIPE_FILE, PublicSide

    config, models, log, status = deployment
    assert status["status"] == "finished:completed", log[-3000:]
    assert "round 1: consensus of ['site-a', 'site-b'] on 4 prompts" in log  # the ServerApp's own log
    assert f"federated student after 2 rounds: {round_dir(config.output_dir, 2) / 'student'}" in log

    public = PublicSide.load(config)
    engines = {
        site: TransformersEngine(EngineConfig(teacher=model, backend="transformers", logprobs=8))
        for site, model in models.items()
    }
    before = load_file(Path(config.student) / "model.safetensors")
    asked = []
    for round_number in (1, 2):
        directory = round_dir(config.output_dir, round_number)
        record = RoundRecord.load(directory)
        assert record.aggregated == {"site-a": 0.5, "site-b": 0.5}
        assert record.rejected == {} and record.missing == [] and set(record.bytes_received) == set(SITES)
        request = public.request(config, round_number)
        assert record.prompt_ids == list(request.prompt_ids)
        asked += record.prompt_ids
        examples = [public.examples[p] for p in request.prompt_ids]
        for site, engine in engines.items():
            labels = load_contribution(directory / "contributions" / f"{site}.npz")
            scored = engine.score(
                [e.prompt_token_ids for e in examples], [e.completion_token_ids for e in examples]
            )
            ids = np.concatenate([s.topk_ids for s in scored]).reshape(-1, 8)
            np.testing.assert_array_equal(labels.topk_ids, ids, err_msg=site)
            logprobs = np.concatenate([s.topk_logprobs for s in scored]).reshape(-1, 8)
            np.testing.assert_allclose(
                decode_logprobs(labels.topk_logprob_codes),
                decode_logprobs(encode_logprobs(logprobs)),
                atol=2e-3,
            )
        assert (directory / "consensus").is_dir()
        student = directory / "student"
        train_recipe = yaml.safe_load((student / "train_recipe.yaml").read_text())
        assert train_recipe["traces"] == str(directory / "consensus")
        after = load_file(student / "model.safetensors")
        assert any(not torch.equal(after[name], tensor) for name, tensor in before.items())
        before = after
    assert len(set(asked)) == 8  # each round named new public prompts
    record = inspect_run_dir([config], Path(config.output_dir) / RECIPE_FILE)
    assert record.state == "finished" and record.same
