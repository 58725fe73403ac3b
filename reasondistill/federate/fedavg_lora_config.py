"""Settings of the FedAvg-LoRA baseline (fedavg_lora.py): clients fine-tune one shared LoRA adapter on their
own data and the server averages what they send back, weighted by their example counts."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FedAvgLoraConfig:
    """One FedAvg-LoRA run in Flower's simulation: each round the server sends the global LoRA adapter of
    `student` to every client, each client trains it on its own trace dataset for the train recipe's
    max_steps, and the server averages the returned adapters weighted by each client's example count."""

    output_dir: str = field(metadata={"help": "Where each round's global adapter and record go."})
    student: str = field(
        metadata={"help": "Base model every party holds; only the LoRA adapter on it is trained and travels."}
    )
    train_recipe: str = field(
        metadata={
            "help": "`reasondistill train` recipe of each client's local training: use_peft and the lora_* "
            "fields shape the adapter, max_steps is the local steps per round; its model_name_or_path, "
            "traces and output_dir are set per round (the student, the client's data, a scratch "
            "directory) and its seed is offset by the round, so each round draws other batches."
        }
    )
    client_data: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Simulation: the private trace dataset of each simulated client (client i runs as Flower "
            "partition i, named client-i). With kd_weight 0 only its text is read."
        },
    )
    num_rounds: int = field(default=4, metadata={"help": "Federated rounds."})
    min_clients: int = field(
        default=2, metadata={"help": "Fewest accepted adapters a round needs; fewer stops the run."}
    )
    round_timeout: float | None = field(
        default=None,
        metadata={
            "help": "Seconds the server waits for replies; a client not heard from by then is missing."
        },
    )
    num_cpus_per_client: float = field(
        default=1.0, metadata={"help": "CPUs Ray reserves per client process (2 cores: 1 runs two at once)."}
    )
    simulation_num_cpus: int | None = field(
        default=None, metadata={"help": "CPUs Ray may use in all; None = every core of the machine."}
    )
    seed: int = field(default=0, metadata={"help": "Seeds the initial adapter (LoRA's A matrices)."})
    overwrite: bool = field(default=False, metadata={"help": "Clear output_dir if it holds another run."})

    def __post_init__(self) -> None:
        if self.num_rounds < 1 or self.min_clients < 1:
            raise ValueError(
                f"num_rounds and min_clients must be >= 1, got {self.num_rounds}, {self.min_clients}"
            )
        if self.round_timeout is not None and not self.round_timeout > 0:
            raise ValueError(f"round_timeout must be > 0 seconds (or unset: wait), got {self.round_timeout}")
