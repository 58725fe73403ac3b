"""`reasondistill federate RECIPE.yaml`: federated distillation in Flower's Simulation Engine on one machine.

Phases: read the recipe -> check OUTPUT_DIR (one run per directory; an unfinished run of the same settings
is resumed after its last completed round) -> start Flower's simulation (ServerApp server_app.py, one
ClientApp per `client_models` entry, client_app.py) -> mark the run finished -> with `evaluate_recipe`,
evaluate every round's global student (round_report.py). With `--forget CLIENT`,
no simulation: the finished run's clients are unlearned instead (unlearning.py).

The Simulation Engine runs each ClientApp in a Ray worker process (Flower's only simulation backend);
`num_cpus_per_client` sets how many run at once (2 cores, 1 CPU each: two). The same ServerApp and
ClientApp run unchanged under `flwr run` against a SuperLink (docs/federate.md).
"""

from __future__ import annotations

from pathlib import Path

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from reasondistill.core.recipe import parse_recipe
from reasondistill.core.run_reuse import check_run_dir, run_unless_done
from reasondistill.federate.client_app import build_client_app
from reasondistill.federate.fedavg_lora_config import FedAvgLoraConfig
from reasondistill.federate.federate_config import FederateConfig
from reasondistill.federate.round_report import evaluate_config_of, report_rounds
from reasondistill.federate.server_app import RECIPE_FILE, build_server_app
from reasondistill.federate.unlearning import forget_clients


def simulation_backend(config: FederateConfig | FedAvgLoraConfig) -> dict:
    """Flower's Ray backend settings: CPUs per client process, and in all (federation or FedAvg-LoRA)."""
    init_args = {} if config.simulation_num_cpus is None else {"num_cpus": config.simulation_num_cpus}
    return {
        "client_resources": {"num_cpus": config.num_cpus_per_client, "num_gpus": 0.0},
        "init_args": init_args,
    }


def federate(
    config: FederateConfig, server_app: ServerApp | None = None, client_app: ClientApp | None = None
) -> Path:
    """Run (or resume) the federation of `config`; returns OUTPUT_DIR. `server_app` / `client_app` replace
    the default apps (tests wrap them to watch or fault them)."""
    out = Path(config.output_dir)
    federation = config.recorded_settings()
    if config.forget:
        record = check_run_dir([federation], out / RECIPE_FILE)
        if record.state != "finished" or not record.same:
            raise ValueError(f"{out} holds no finished federation of these settings to forget clients from")
        forget_clients(config)  # asks no client: a deployment's run (no client_models) is unlearned too
        return out
    if len(config.client_models) < config.min_clients:
        raise ValueError(
            f"client_models names {len(config.client_models)} simulated clients, fewer than "
            f"min_clients={config.min_clients}"
        )
    if config.evaluate_recipe is not None:
        evaluate_config_of(config)  # a bad evaluate recipe fails now, not after the rounds
    run_unless_done(
        [federation],
        out / RECIPE_FILE,
        lambda: run_simulation(
            server_app=server_app or build_server_app(config),
            client_app=client_app or build_client_app(config.client_models),
            num_supernodes=len(config.client_models),
            backend_config=simulation_backend(config),
        ),
        overwrite=config.overwrite,
    )
    if config.evaluate_recipe is not None:
        report_rounds(config)
    return out


def run_federate(recipe: Path | None, overrides: list[str]) -> int:
    (config,) = parse_recipe(recipe, (FederateConfig,), overrides)
    federate(config)
    return 0
