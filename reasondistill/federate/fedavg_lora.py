"""FedAvg of LoRA adapters on Flower: the usual baseline of federated fine-tuning (as Flower's FlowerTune LLM
examples run it), measured beside federated distillation (issue #17; benchmarks/federate_study.py).

    round r:  server ──train: "adapter" (the global LoRA tensors), "config" {round}──► every client
              client: the base student + that adapter, trained on its own trace dataset for the train
                      recipe's max_steps (`DistillTrainer`, the trainer of `reasondistill train`)
              server ◄──reply: "adapter" (its trained LoRA tensors), "meta" {client, round, num-examples}──
              server: validate each reply -> FedAvg -> round-NNN/adapter/ (a PEFT adapter directory)

**What is averaged**: every tensor of the adapter (each adapted module's lora_A and lora_B) on its own,
weighted by the clients' example counts n_c (the size of each client's training set):
theta = sum_c n_c theta_c / sum_c n_c. That is the average of the factors, not of the low-rank updates
(mean B mean A != mean BA), as FlowerTune and Flower's FedAvg strategy average them. The base weights are
frozen and never travel: every party holds the same `student`.

Rounds are kept on disk like the federation's (rounds.py): round.json written last, so a crashed server
resumes after its last completed round from that round's adapter. OUTPUT_DIR:

    fedavg_lora_recipe.yaml           the run's settings (core.run_reuse; partial until it finishes)
    round-001/adapter/                the global adapter after round 1 (adapter_config.json + safetensors)
    round-001/round.json              FedAvgRound: clients averaged (weights, example counts), rejected,
                                      missing, bytes sent and received per client (from the messages)
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.numpy import load_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase, set_seed
from trl import ModelConfig, get_peft_config

from reasondistill.core.engines import LOGPROBS_MODE
from reasondistill.core.recipe import parse_recipe
from reasondistill.core.run_reuse import run_unless_done
from reasondistill.core.traces import TraceInfo, encode_logprobs, fingerprint_settings, tokenizer_fingerprint
from reasondistill.federate.consensus import consensus_records, write_consensus
from reasondistill.federate.fedavg_lora_config import FedAvgLoraConfig
from reasondistill.federate.federate import simulation_backend
from reasondistill.federate.public_set import PublicExample
from reasondistill.federate.rounds import ROUND_FILE, completed_rounds, round_dir, save_round_file
from reasondistill.federate.server_app import (
    FederationError,
    content_bytes,
    gather_replies,
    simulation_server_app,
    wait_for_nodes,
)
from reasondistill.federate.soft_labels import SoftLabels
from reasondistill.train.distill_config import DistillConfig
from reasondistill.train.distill_data import (
    check_tokenizer,
    load_trace_dataset,
)
from reasondistill.train.train import distill_trainer, load_model

logger = logging.getLogger(__name__)

RECIPE_FILE = "fedavg_lora_recipe.yaml"
ADAPTER_DIR, ADAPTER_FILE = "adapter", "adapter_model.safetensors"
ADAPTER, CONFIG, META = "adapter", "config", "meta"  # the records of the messages
REPLY_META = {"client": str, "round": int, "num-examples": int}
CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

Tensors = dict[str, np.ndarray]  # an adapter: PEFT's state-dict names -> float32 arrays


class RejectedAdapter(ValueError):
    """A reply that is not a trained copy of the round's adapter; the message says why."""


def fedavg(adapters: Sequence[Mapping[str, np.ndarray]], num_examples: Sequence[int]) -> Tensors:
    """FedAvg: each tensor's average over the clients weighted by their example counts,
    sum_c n_c theta_c / sum_c n_c (summed in float64, returned in each tensor's dtype)."""
    if not adapters or len(adapters) != len(num_examples) or min(num_examples) <= 0:
        raise ValueError(f"need one positive example count per adapter, got {list(num_examples)}")
    total = sum(num_examples)
    weighted = list(zip(adapters, num_examples, strict=True))
    return {
        name: sum(n / total * adapter[name].astype(np.float64) for adapter, n in weighted).astype(
            tensor.dtype
        )
        for name, tensor in adapters[0].items()
    }


def train_request(round_number: int, adapter: Tensors) -> RecordDict:
    """The server's message: the global adapter and the round."""
    return RecordDict(
        {
            ADAPTER: ArrayRecord({n: Array(t) for n, t in adapter.items()}),
            CONFIG: ConfigRecord({"round": round_number}),
        }
    )


def adapter_reply(client: str, round_number: int, adapter: Tensors, num_examples: int) -> RecordDict:
    """A client's message: its trained adapter and its example count (FedAvg's weight), nothing else."""
    meta = ConfigRecord({"client": client, "round": round_number, "num-examples": num_examples})
    return RecordDict({ADAPTER: ArrayRecord({n: Array(t) for n, t in adapter.items()}), META: meta})


@dataclass(frozen=True)
class AdapterReply:
    """A validated reply: who, and the adapter it trained on `num_examples` examples."""

    client: str
    num_examples: int
    adapter: Tensors


def decode_adapter_reply(content: RecordDict, expected: Tensors, round_number: int) -> AdapterReply:
    """A reply as AdapterReply, or RejectedAdapter unless it holds exactly the two records, the round's
    adapter tensors (the same names, dtypes and shapes as `expected`, finite) and the metadata."""
    if set(content.keys()) != {ADAPTER, META}:
        raise RejectedAdapter(f"records {sorted(content.keys())}, expected exactly {[ADAPTER, META]}")
    arrays, meta = content[ADAPTER], content[META]
    if not isinstance(arrays, ArrayRecord) or not isinstance(meta, ConfigRecord):
        raise RejectedAdapter(f"{ADAPTER!r} must be an ArrayRecord and {META!r} a ConfigRecord")
    if set(arrays.keys()) != set(expected):
        raise RejectedAdapter(
            f"tensors {sorted(set(arrays.keys()) ^ set(expected))[:4]} differ from the adapter's"
        )
    adapter = {}
    for name, reference in expected.items():
        tensor = arrays[name].numpy()
        if tensor.dtype != reference.dtype or tensor.shape != reference.shape:
            raise RejectedAdapter(
                f"{name} is {tensor.dtype} {tensor.shape}, expected {reference.dtype} {reference.shape}"
            )
        if not np.isfinite(tensor).all():
            raise RejectedAdapter(f"{name} holds NaN or inf")
        adapter[name] = tensor
    if set(meta.keys()) != set(REPLY_META) or any(type(meta[k]) is not t for k, t in REPLY_META.items()):
        raise RejectedAdapter(f"metadata {dict(meta)}, expected {list(REPLY_META)} as str, int, int")
    if meta["round"] != round_number or meta["num-examples"] < 1 or not CLIENT_NAME.fullmatch(meta["client"]):
        raise RejectedAdapter(
            f"round {meta['round']} (asked {round_number}), num-examples {meta['num-examples']}, "
            f"client {meta['client']!r}: expected this round, >= 1 example and a plain name"
        )
    return AdapterReply(meta["client"], meta["num-examples"], adapter)


def write_client_text(
    out: Path,
    examples: Sequence[PublicExample],
    tokenizer: PreTrainedTokenizerBase,
    vocab_size: int,
    source: str,
) -> Path:
    """A client's private text (its prompts and worked solutions) as the trace dataset its local training
    reads: each completion token its own target at probability 1 (k = 1, no model's labels), written by the
    consensus writer as if one client had sent those one-hot labels."""
    completion = np.concatenate([e.completion_token_ids for e in examples]).astype(np.int32)  # [N]
    fingerprint = tokenizer_fingerprint(tokenizer.get_vocab())
    one_hot = SoftLabels(
        client=source,
        round=0,
        prompt_set_digest="",
        k=1,
        vocab_size=vocab_size,
        tokenizer_fingerprint=fingerprint,
        topk_ids=completion[:, None],  # [N, 1]
        topk_logprob_codes=encode_logprobs(np.zeros((len(completion), 1))),  # log 1
        sampled_logprob=np.zeros(len(completion), dtype=np.float32),
        token_counts=np.asarray([len(e.completion_token_ids) for e in examples], dtype=np.int32),
    )
    info = TraceInfo(
        teacher=f"{source} (text only: one-hot targets)",
        teacher_revision=None,
        tokenizer=tokenizer.name_or_path,
        tokenizer_fingerprint=fingerprint,
        vocab_size=vocab_size,
        k=1,
        temperature=1.0,  # not sampled: the text as given
        top_p=1.0,
        logprobs_mode=LOGPROBS_MODE,
        seed=0,
        backend="text",
        recipe_fingerprint=fingerprint_settings(
            {"source": source, "prompts": [e.prompt_id for e in examples]}
        ),
        prompt_render={"system_prompt": None, "instruction": None, "think_prefill": False},
    )
    records = consensus_records(examples, {source: one_hot}, {source: 1.0}, 1, tokenizer)
    return write_consensus(out, records, info, tokenizer, 1)


def train_settings(
    config: FedAvgLoraConfig, traces: str, round_number: int, output_dir: str
) -> tuple[ModelConfig, DistillConfig]:
    """(ModelConfig, DistillConfig) of a client's local training in `round_number` on `traces`: the train
    recipe on the student, its seed offset by the round (a fixed seed would draw the same batches again)."""
    placed = ["--model_name_or_path", config.student, "--traces", traces, "--output_dir", output_dir]
    model_args, args = parse_recipe(config.train_recipe, (ModelConfig, DistillConfig), placed)
    if not model_args.use_peft:
        raise ValueError(f"{config.train_recipe}: FedAvg-LoRA trains a LoRA adapter; set use_peft: true")
    args.seed += round_number
    return model_args, args


def lora_student(config: FedAvgLoraConfig, model_args: ModelConfig) -> PeftModel:
    """The base student with a fresh LoRA adapter of the recipe's shape (only the adapter trains)."""
    return get_peft_model(load_model(config.student, model_args), get_peft_config(model_args))


def set_adapter(model: PeftModel, adapter: Tensors) -> None:
    """Load `adapter`'s tensors into the model's LoRA layers (the base stays as it is)."""
    set_peft_model_state_dict(model, {name: torch.from_numpy(t.copy()) for name, t in adapter.items()})


def adapter_of(model: PeftModel) -> Tensors:
    """The model's LoRA tensors only, by PEFT's state-dict names: what travels."""
    return {name: t.detach().cpu().numpy() for name, t in get_peft_model_state_dict(model).items()}


def local_training(
    config: FedAvgLoraConfig, traces: str, round_number: int, adapter: Tensors
) -> tuple[Tensors, int]:
    """A client's round: the global adapter trained on its trace dataset by `DistillTrainer` as
    `reasondistill train` builds it (collator, loss, schedule), in a scratch directory it keeps nothing of;
    returns the trained adapter and the client's example count."""
    with tempfile.TemporaryDirectory(prefix="fedavg-lora-client-") as scratch:
        model_args, args = train_settings(config, traces, round_number, scratch)
        set_seed(args.seed)
        tokenizer = AutoTokenizer.from_pretrained(config.student)
        dataset, info, _ = load_trace_dataset(traces, args.only_correct, args.max_length)
        check_tokenizer(info, tokenizer, config.student)
        model = lora_student(config, model_args)
        set_adapter(model, adapter)
        trainer = distill_trainer(model, args, tokenizer, info, dataset)
        trainer.train()
        return adapter_of(trainer.model), len(dataset)


def build_fedavg_client_app(config: FedAvgLoraConfig) -> ClientApp:
    """The simulation's ClientApp: partition i trains on `client_data[i]` as client-i."""
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        client, round_number = f"client-{partition}", int(message.content[CONFIG]["round"])
        adapter = {name: array.numpy() for name, array in message.content[ADAPTER].items()}
        trained, count = local_training(config, config.client_data[partition], round_number, adapter)
        logger.info(f"{client}: adapter trained on its {count} examples, round {round_number}")
        return Message(adapter_reply(client, round_number, trained, count), reply_to=message)

    return app


@dataclass(frozen=True)
class FedAvgRound:
    """What a round averaged with which weight, who was refused or missing, and the bytes that travelled."""

    round: int
    aggregated: dict[str, float]  # client -> FedAvg weight n_c / sum n
    num_examples: dict[str, int]  # client -> its example count, as it reported it
    rejected: dict[str, str]  # client -> reason its adapter was refused
    missing: list[str]  # clients (or `node N`) that failed or did not answer in time
    bytes_sent: dict[str, int]  # client -> bytes of the server's message to it (the global adapter)
    bytes_received: dict[str, int]  # client -> bytes of its reply (its adapter and metadata)
    seconds: float

    def save(self, directory: Path) -> None:
        """Write round.json, last: the round's adapter is complete."""
        save_round_file(directory, asdict(self))

    @classmethod
    def load(cls, directory: Path) -> FedAvgRound:
        return cls(**json.loads((directory / ROUND_FILE).read_text()))


def fedavg_round(
    grid: Grid, config: FedAvgLoraConfig, round_number: int, adapter: Tensors, names: dict
) -> tuple[Tensors, FedAvgRound]:
    """Send the global adapter to every connected client, validate the replies and average the accepted;
    `names` (node id -> client name, from earlier replies) names the missing and is updated."""
    started = time.time()
    nodes = wait_for_nodes(grid, config.min_clients)
    messages = [
        Message(
            train_request(round_number, adapter),
            dst_node_id=node,
            message_type=MessageType.TRAIN,
            group_id=str(round_number),
        )
        for node in nodes
    ]
    sent = {node: content_bytes(m.content) for node, m in zip(nodes, messages, strict=True)}
    replies = gather_replies(
        grid,
        messages,
        round_number,
        config.round_timeout,
        names,
        lambda content: decode_adapter_reply(content, adapter, round_number),
        lambda _: None,  # decoding checked the adapter against the one sent
        (RejectedAdapter,),
        "adapter",
    )
    accepted = replies.accepted
    if len(accepted) < config.min_clients:
        raise FederationError(
            f"round {round_number}: the adapters of {len(accepted)} clients were accepted "
            f"({sorted(accepted)}), min_clients is {config.min_clients}; "
            f"rejected: {replies.rejected or 'none'}, missing: {replies.missing or 'none'}"
        )
    clients = sorted(accepted)
    counts = {c: accepted[c].num_examples for c in clients}
    averaged = fedavg([accepted[c].adapter for c in clients], [counts[c] for c in clients])
    record = FedAvgRound(
        round=round_number,
        aggregated={c: counts[c] / sum(counts.values()) for c in clients},
        num_examples=counts,
        rejected=replies.rejected,
        missing=replies.missing,
        bytes_sent={names.get(node, f"node {node}"): size for node, size in sent.items()},
        bytes_received=replies.bytes_received,
        seconds=round(time.time() - started, 1),
    )
    return averaged, record


def run_fedavg_server(grid: Grid, config: FedAvgLoraConfig) -> Path:
    """Every round from the first not completed on; returns the final global adapter's directory."""
    model_args, _ = train_settings(config, "unused", 0, str(Path(config.output_dir) / "unused"))
    set_seed(config.seed)  # the initial adapter: LoRA's A random, B zero (the base model unchanged)
    model = lora_student(config, model_args)
    adapter = adapter_of(model)
    done = completed_rounds(config.output_dir, config.num_rounds)
    if done:
        logger.info(f"{config.output_dir}: rounds 1-{done} completed before; resuming after round {done}")
        adapter = load_file(round_dir(config.output_dir, done) / ADAPTER_DIR / ADAPTER_FILE)
    names: dict[int, str] = {}
    for round_number in range(done + 1, config.num_rounds + 1):
        adapter, record = fedavg_round(grid, config, round_number, adapter, names)
        directory = round_dir(config.output_dir, round_number)
        set_adapter(model, adapter)
        model.save_pretrained(directory / ADAPTER_DIR)  # adapter_config.json names the student as its base
        record.save(directory)
        logger.info(
            f"round {round_number}: averaged the adapters of {sorted(record.aggregated)}, "
            f"{sum(record.bytes_sent.values()):,} bytes sent, "
            f"{sum(record.bytes_received.values()):,} received"
        )
    return round_dir(config.output_dir, config.num_rounds) / ADAPTER_DIR


def fedavg_lora(
    config: FedAvgLoraConfig, server_app: ServerApp | None = None, client_app: ClientApp | None = None
) -> Path:
    """Run (or resume, or reuse) the FedAvg-LoRA run of `config` in Flower's simulation; returns OUTPUT_DIR.
    `server_app` / `client_app` replace the default apps (tests wrap them to watch the messages)."""
    if len(config.client_data) < config.min_clients:
        raise ValueError(
            f"client_data names {len(config.client_data)} clients, "
            f"fewer than min_clients={config.min_clients}"
        )
    out = Path(config.output_dir)

    def run() -> None:
        run_simulation(
            server_app=server_app or simulation_server_app(lambda grid: run_fedavg_server(grid, config)),
            client_app=client_app or build_fedavg_client_app(config),
            num_supernodes=len(config.client_data),
            backend_config=simulation_backend(config),
        )
        if completed_rounds(out, config.num_rounds) < config.num_rounds:  # the server failed inside Flower
            raise FederationError(
                f"{out}: the FedAvg-LoRA server stopped before round {config.num_rounds}; see the log"
            )

    run_unless_done([config], out / RECIPE_FILE, run, overwrite=config.overwrite)
    return out
