"""Settings of `reasondistill federate`: clients, public prompt set, rounds, aggregation, the student."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from reasondistill.core.engines import EngineBackend
from reasondistill.core.recipe import locate_recipe
from reasondistill.core.traces import fingerprint_settings


@dataclass
class FederateConfig:
    """One federated distillation run: each round the server names public prompts, every client sends
    its model's top-k soft labels on their public completions, the server aggregates them into one
    teacher signal (a trace dataset) and distils the global student on it with `reasondistill train`."""

    output_dir: str = field(metadata={"help": "Where the rounds, the consensus traces and the students go."})
    student: str = field(metadata={"help": "Model directory of the global student before round 1."})
    train_recipe: str = field(
        metadata={
            "help": "`reasondistill train` recipe for each round's distillation; its model_name_or_path, "
            "traces and output_dir are set by the federation (previous round's student, this round's "
            "consensus, the round's directory)."
        }
    )
    client_models: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Simulation only: the local model directory of each simulated client (client i runs as "
            "Flower partition i, named client-i). On a real deployment each SuperNode names its own with "
            "--node-config \"model-dir='DIR' client-name='NAME'\"."
        },
    )
    num_rounds: int = field(default=2, metadata={"help": "Federated rounds."})
    prompts_per_round: int = field(
        default=32,
        metadata={"help": "Public prompts the server names in each round (the next ones in order)."},
    )
    # public set: held by the server and every client alike, so only prompt ids travel
    public_prompts: str = field(
        default="task:arithmetic",
        metadata={
            "help": "The public prompt set: task:arithmetic (worked solutions as completions) or a "
            ".jsonl/.parquet file with a completion column (public_completion_field)."
        },
    )
    public_split: str = field(default="train", metadata={"help": "Split of public_prompts to read."})
    public_task_levels: list[int] = field(
        default_factory=lambda: [1, 2, 3],
        metadata={"help": "Difficulty levels of the public problems when public_prompts is task:arithmetic."},
    )
    public_seed: int = field(
        default=7, metadata={"help": "Seed of the public problems (task:arithmetic); clients use the same."}
    )
    public_id_field: str | None = field(
        default=None, metadata={"help": "Column of a public prompt file with unique prompt ids."}
    )
    public_completion_field: str = field(
        default="completion", metadata={"help": "Column of a public prompt file holding the completion."}
    )
    instruction: str | None = field(
        default=None, metadata={"help": "Appended to each public question (see generate's instruction)."}
    )
    # soft labels and aggregation
    k: int = field(
        default=20, metadata={"help": "Top-k entries per token each client sends and the consensus keeps."}
    )
    min_clients: int = field(
        default=2, metadata={"help": "Fewest accepted clients a round needs; fewer stops the run."}
    )
    round_timeout: float | None = field(
        default=None,
        metadata={
            "help": "Seconds the server waits for replies; a client not heard from by then is missing."
        },
    )
    client_backend: EngineBackend = field(
        default="transformers", metadata={"help": "How clients score the public completions."}
    )
    # privacy (federate/privacy.py): Gaussian noise on each client's labels before they leave it
    dp_noise_multiplier: float | None = field(
        default=None,
        metadata={
            "help": "Off when unset. Noise multiplier z of the Gaussian mechanism each client applies to its "
            "soft labels every round (noise std z * dp_clip_norm * sqrt(2 * tokens of the round)); the "
            "server reports each client's (epsilon, dp_delta) in round.json. Client-level DP: "
            "docs/federate.md says what it protects and what not."
        },
    )
    dp_clip_norm: float = field(
        default=1.0,
        metadata={
            "help": "L2 norm each token's probability vector (ids + tail) is clipped to before the noise; "
            ">= 1 never clips a probability vector."
        },
    )
    dp_delta: float = field(
        default=1e-5, metadata={"help": "delta at which the server reports each client's epsilon."}
    )
    co_distill_recipe: str | None = field(
        default=None,
        metadata={
            "help": "Off when unset. A `reasondistill train` recipe the clients distil their own models "
            "with on each round's consensus, which the server then sends them (FedMD-style co-distillation, "
            "federate/co_distillation.py); their next labels come from the co-distilled models. Makes "
            "--forget approximate (docs/federate.md)."
        },
    )
    co_distill_timeout: float | None = field(
        default=None,
        metadata={
            "help": "Seconds the server waits for the clients' co-distillation (training takes far longer "
            "than labelling, and clients train in turn when there are more than CPUs); a client not done by "
            "then keeps its older model. None: wait for every client."
        },
    )
    # after the rounds (round_report.py): not part of the run's recorded settings
    evaluate_recipe: str | None = field(
        default=None,
        metadata={
            "help": "Off when unset. A `reasondistill evaluate` recipe (one benchmark) the initial and every "
            "round's global student are evaluated with once the rounds are done: OUTPUT_DIR/federate.md "
            "(accuracy, clients and bytes per round), federate_accuracy.png and report/."
        },
    )
    evaluate_overrides: list[str] = field(
        default_factory=list, metadata={"help": "Command-line overrides of evaluate_recipe's settings."}
    )
    # simulation (Flower's Simulation Engine, Ray backend)
    num_cpus_per_client: float = field(
        default=1.0, metadata={"help": "CPUs Ray reserves per client process (2 cores: 1 runs two at once)."}
    )
    simulation_num_cpus: int | None = field(
        default=None, metadata={"help": "CPUs Ray may use in all; None = every core of the machine."}
    )
    forget: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Clients to unlearn from a finished run: the consensus is recomputed without them from "
            "the stored contributions and the student retrained from the last one they did not influence "
            "(docs/federate.md); no client is asked anything."
        },
    )
    seed: int = field(default=0, metadata={"help": "Recorded in the consensus traces' metadata."})
    overwrite: bool = field(default=False, metadata={"help": "Clear output_dir if it holds another run."})

    def __post_init__(self) -> None:
        if self.num_rounds < 1 or self.prompts_per_round < 1 or self.k < 1:
            raise ValueError(
                f"num_rounds, prompts_per_round and k must be >= 1, got {self.num_rounds}, "
                f"{self.prompts_per_round}, {self.k}"
            )
        if self.min_clients < 1:
            raise ValueError(f"min_clients must be >= 1, got {self.min_clients}")
        if self.dp_noise_multiplier is not None and not self.dp_noise_multiplier > 0:
            raise ValueError(
                f"dp_noise_multiplier must be > 0 (or unset: no noise), got {self.dp_noise_multiplier}"
            )
        if not self.dp_clip_norm > 0 or not 0 < self.dp_delta < 1:
            raise ValueError(
                f"dp_clip_norm must be > 0 and dp_delta in (0, 1), got {self.dp_clip_norm}, {self.dp_delta}"
            )
        for name in ("round_timeout", "co_distill_timeout"):
            if (seconds := getattr(self, name)) is not None and not seconds > 0:
                raise ValueError(f"{name} must be > 0 seconds (or unset: wait), got {seconds}")

    def recorded_settings(self) -> FederateConfig:
        """The settings OUTPUT_DIR's run record holds: what made the rounds, not what is done with them
        after (`forget`, the evaluation), so that those run on the finished federation."""
        return dataclasses.replace(self, forget=[], evaluate_recipe=None, evaluate_overrides=[])

    @property
    def public_num_prompts(self) -> int:
        """Public prompts the run names over all its rounds."""
        return self.num_rounds * self.prompts_per_round

    def recipe_settings(self) -> dict:
        """What a client needs to rebuild the public set and answer (sent in every request)."""
        return {
            "public-prompts": self.public_prompts,
            "public-split": self.public_split,
            "public-task-levels": list(self.public_task_levels),
            "public-seed": self.public_seed,
            "public-num-prompts": self.public_num_prompts,
            "public-id-field": self.public_id_field or "",
            "public-completion-field": self.public_completion_field,
            "instruction": self.instruction or "",
            "k": self.k,
            "client-backend": self.client_backend,
            "dp-noise-multiplier": self.dp_noise_multiplier or 0.0,  # 0: no noise (a record holds no None)
            "dp-clip-norm": self.dp_clip_norm,
            "co-distill-federation": self.co_distill_federation(),  # "": no co-distillation
        }

    def co_distill_federation(self) -> str:
        """The id under which co-distilling clients keep this federation's models ("" when off): a hash of
        the run's output directory, public set, labels and local recipe, so two federations never share."""
        if self.co_distill_recipe is None:
            return ""
        settings = {
            "output_dir": str(Path(self.output_dir).resolve()),
            "recipe": self.co_distill_recipe_text(),
            "public": [self.public_prompts, self.public_split, self.public_task_levels, self.public_seed],
            "labels": [self.k, self.num_rounds, self.prompts_per_round, self.dp_noise_multiplier, self.seed],
        }
        return fingerprint_settings(settings)

    def co_distill_recipe_text(self) -> str:
        """The clients' local recipe as the server sends it (a packaged demo recipe is found too)."""
        return locate_recipe(self.co_distill_recipe).read_text()
