"""Co-distillation (FedMD-style, `co_distill_recipe`): after a round's consensus is aggregated, the server
sends it back and every client distils its own local model on it, so that the next round's labels come
from clients that have learned from each other. Off by default: then a client never receives anything.

    server ──train: "request" (the round's public prompt ids and settings, as a query's),
                    "soft_labels" + "meta" (the consensus top-k in the reply encoding, client "consensus"),
                    "co_distill" {recipe: the local train recipe's text, federation: the run's id}──► client
           client: checks the consensus against its own public set (validation.check_reply), writes it as a
                   trace dataset, trains its current model on it with the recipe (`reasondistill train`)
    server ◄──reply: "co_distilled" {client, round}──

What the client keeps, all under its state directory (node config `state-dir`; by default
MODEL_DIR-co-distilled beside its model), one folder per federation:

    STATE/<federation>/round-NNN/consensus/   the consensus it received, as a trace dataset
    STATE/<federation>/round-NNN/model/       its model after distilling on it (a `train` output directory)
    STATE/<federation>/round-NNN/co_distilled.json   written last: the round's model is complete

It labels round r with the model of the latest round before r it finished (`current_model`), its own
model if none. The server records who co-distilled in ROUND/co_distill.json (written last, so a resumed
server asks again for a round it did not record; a client reuses a model it finished).

What it costs privacy and unlearning: nothing leaves a client that the reply encoding did not already
carry (the answer is a name and a round), but every client's later labels now depend on the consensus,
so on the other clients' labels: unlearning a client is approximate from then on (unlearning.py).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from flwr.app import ConfigRecord, RecordDict
from transformers import AutoConfig, AutoTokenizer
from trl import ModelConfig

from reasondistill.core.engines import LOGPROBS_MODE
from reasondistill.core.recipe import parse_recipe
from reasondistill.core.traces import (
    TraceInfo,
    decode_logprobs,
    fingerprint_settings,
    read_shard,
    shard_path,
    tokenizer_fingerprint,
)
from reasondistill.federate.consensus import trace_records, write_consensus
from reasondistill.federate.public_set import PublicExample
from reasondistill.federate.soft_labels import META, REQUEST, SOFT_LABELS, SoftLabels, decode_reply
from reasondistill.federate.validation import RoundRequest, check_reply
from reasondistill.train.distill_config import DistillConfig
from reasondistill.train.train import train_unless_done

logger = logging.getLogger(__name__)

CO_DISTILL, CO_DISTILLED = "co_distill", "co_distilled"  # the request's and the answer's record
CONSENSUS_SENDER = "consensus"  # the client name the consensus travels under
DONE_FILE = "co_distilled.json"


def distil_on_traces(train_recipe: str, model: str, traces: Path, out: Path) -> str:
    """Train `model` on the trace dataset `traces` with a `reasondistill train` recipe into `out` (a finished
    run of the same settings is reused, an unfinished one resumed); returns `out`. Full models only: the
    result must be a model the next round can score or distil from."""
    placed = ["--model_name_or_path", model, "--traces", str(traces), "--output_dir", str(out)]
    model_args, args = parse_recipe(train_recipe, (ModelConfig, DistillConfig), placed)
    if model_args.use_peft:
        raise ValueError(f"{train_recipe}: use_peft is not supported in a federation (full models only)")
    train_unless_done(model_args, args, resume_unfinished=True)
    return str(out)


def consensus_labels(consensus: Path, request: RoundRequest) -> SoftLabels:
    """A round's consensus trace dataset (one shard, the request's prompts in order) as soft labels in the
    reply encoding, to send back to the clients."""
    table = read_shard(shard_path(consensus, 0, 1))
    if table["prompt_id"].to_pylist() != list(request.prompt_ids):
        raise ValueError(f"{consensus}: its records are not the round's prompts in order")
    ids, codes = (
        pc.list_flatten(pc.list_flatten(table[n])).to_numpy() for n in ("topk_ids", "topk_logprob_codes")
    )
    return SoftLabels(
        client=CONSENSUS_SENDER,
        round=request.round,
        prompt_set_digest=request.prompt_set_digest,
        k=request.k,
        vocab_size=request.vocab_size,
        tokenizer_fingerprint=request.tokenizer_fingerprint,
        topk_ids=ids.astype(np.int32).reshape(-1, request.k),
        topk_logprob_codes=codes.astype(np.uint16).reshape(-1, request.k),
        sampled_logprob=pc.list_flatten(table["sampled_logprob"]).to_numpy().astype(np.float32),
        token_counts=np.asarray(request.token_counts, dtype=np.int32),
    )


def co_distill_content(
    query: RecordDict, consensus: SoftLabels, recipe_text: str, federation: str
) -> RecordDict:
    """The server's co-distillation message: the round's query (prompt ids, public settings), the
    consensus and the local recipe."""
    content = consensus.to_content()
    return RecordDict(
        {
            REQUEST: query[REQUEST],
            SOFT_LABELS: content[SOFT_LABELS],
            META: content[META],
            CO_DISTILL: ConfigRecord({"recipe": recipe_text, "federation": federation}),
        }
    )


def state_dir(model_dir: str, node_config_state: str | None) -> Path:
    """Where a client keeps its co-distilled models: the node config's `state-dir`, else beside its model."""
    return Path(node_config_state) if node_config_state else Path(f"{model_dir.rstrip('/')}-co-distilled")


def current_model(model_dir: str, state: Path, federation: str, round_number: int) -> str:
    """The model a client labels `round_number` with: its model after the latest round before it that it
    co-distilled on (finished), else its own model."""
    for earlier in range(round_number - 1, 0, -1):
        folder = state / federation / f"round-{earlier:03d}"
        if (folder / DONE_FILE).exists():
            return str(folder / "model")
    return model_dir


@dataclass(frozen=True)
class CoDistilled:
    """A client's answer: it distilled its model on the round's consensus."""

    client: str
    round: int

    def to_content(self) -> RecordDict:
        return RecordDict({CO_DISTILLED: ConfigRecord({"client": self.client, "round": self.round})})

    @classmethod
    def from_content(cls, content: RecordDict) -> CoDistilled:
        record = content[CO_DISTILLED] if set(content.keys()) == {CO_DISTILLED} else None
        if not isinstance(record, ConfigRecord) or set(record.keys()) != {"client", "round"}:
            raise ValueError(
                f"a co-distillation answer holds one {CO_DISTILLED!r} record of client and round"
            )
        return cls(str(record["client"]), int(record["round"]))


def co_distill_locally(
    content: RecordDict,
    model_dir: str,
    client: str,
    state: Path,
    public: dict[str, PublicExample],
) -> CoDistilled:
    """The client's side: check the consensus against its own public set, write it as a trace dataset and
    distil its current model on it (module docstring). Raises ValueError naming what is wrong."""
    query, settings = content[REQUEST], content[CO_DISTILL]
    round_number = int(query["round"])
    prompt_ids = tuple(query["prompt-ids"])
    if unknown := [pid for pid in prompt_ids if pid not in public]:
        raise KeyError(f"{client}: prompt ids not in its public set: {unknown[:5]}")
    examples = [public[pid] for pid in prompt_ids]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    consensus = decode_reply(RecordDict({SOFT_LABELS: content[SOFT_LABELS], META: content[META]}))
    own = RoundRequest(
        round=round_number,
        prompt_ids=prompt_ids,
        prompt_set_digest=consensus.prompt_set_digest,
        token_counts=tuple(len(e.completion_token_ids) for e in examples),
        k=int(query["k"]),
        vocab_size=AutoConfig.from_pretrained(model_dir).vocab_size,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer.get_vocab()),
    )
    check_reply(consensus, own)  # the server's consensus is checked like any client's labels
    federation = str(settings["federation"])
    folder = state / federation / f"round-{round_number:03d}"
    if (folder / DONE_FILE).exists():
        return CoDistilled(client, round_number)
    started = time.time()
    start_model = current_model(model_dir, state, federation, round_number)
    traces = folder / "consensus"
    shutil.rmtree(traces, ignore_errors=True)  # an interrupted earlier attempt: written again whole
    records = trace_records(  # as received: re-aggregating would reorder the ranks its codes tie
        examples,
        consensus.topk_ids,
        decode_logprobs(consensus.topk_logprob_codes),
        consensus.sampled_logprob,
        consensus.token_counts,
        tokenizer,
    )
    info = TraceInfo(
        teacher=f"federated consensus (round {round_number}), as {client} received it",
        teacher_revision=None,
        tokenizer=model_dir,
        tokenizer_fingerprint=own.tokenizer_fingerprint,
        vocab_size=own.vocab_size,
        k=own.k,
        temperature=1.0,
        top_p=1.0,
        logprobs_mode=LOGPROBS_MODE,
        seed=0,
        backend="flwr",
        recipe_fingerprint=fingerprint_settings({"federation": federation, "round": round_number}),
        prompt_render={
            "system_prompt": None,
            "instruction": query["instruction"] or None,
            "think_prefill": False,
        },
    )
    write_consensus(traces, records, info, tokenizer, 1)
    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / "co_distill_train.yaml"
    recipe.write_text(str(settings["recipe"]))
    distil_on_traces(str(recipe), start_model, traces, folder / "model")
    done = {
        "client": client,
        "round": round_number,
        "from": start_model,
        "seconds": round(time.time() - started, 1),
    }
    (folder / DONE_FILE).write_text(json.dumps(done, indent=2) + "\n")
    logger.info(f"{client}: co-distilled {start_model} on the consensus of round {round_number}")
    return CoDistilled(client, round_number)
