"""The Flower ServerApp: each round it names public prompts, collects every client's soft labels, rejects
malformed ones, aggregates the rest into a consensus trace dataset and distils the global student on it.

Rounds are written to disk as they complete (rounds.py), so a server that crashed resumes after its last
completed round: the rounds before are neither asked nor aggregated again, their students are reused.
A client that fails or does not answer within `round_timeout` is recorded as missing and the round goes on
with the others, as long as `min_clients` remain.

On a real deployment (`flwr run` against a SuperLink: docs/federate.md) `app` is the ServerApp and the
Flower App's run config names the recipe, a path on the server machine (flower_app.py writes the App):
    [tool.flwr.app.config] recipe = "/srv/federation/federated.yaml"
Both paths keep OUTPUT_DIR's run record (`core.run_reuse.run_unless_done`), so a deployment's run is
reused, resumed and unlearned (`--forget`) like a simulated one.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import flwr
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from reasondistill.core.engines import LOGPROBS_MODE
from reasondistill.core.logs import setup_logging
from reasondistill.core.recipe import parse_recipe
from reasondistill.core.run_reuse import run_unless_done
from reasondistill.core.traces import TraceInfo, fingerprint_settings, tokenizer_fingerprint
from reasondistill.federate.co_distillation import (
    CoDistilled,
    co_distill_content,
    consensus_labels,
    distil_on_traces,
)
from reasondistill.federate.consensus import consensus_records, write_consensus
from reasondistill.federate.federate_config import FederateConfig
from reasondistill.federate.privacy import epsilon_spent
from reasondistill.federate.public_set import PublicExample, load_public_set
from reasondistill.federate.round_report import evaluate_config_of, report_rounds
from reasondistill.federate.rounds import (
    CO_DISTILL_FILE,
    CONSENSUS_DIR,
    CONTRIBUTIONS_DIR,
    STUDENT_DIR,
    RoundRecord,
    completed_rounds,
    round_dir,
    save_contribution,
    save_round_file,
)
from reasondistill.federate.soft_labels import (
    MalformedReply,
    SoftLabels,
    decode_reply,
    prompt_set_digest,
    request_content,
)
from reasondistill.federate.validation import RejectedReply, RoundRequest, check_reply

logger = logging.getLogger(__name__)

NODE_WAIT_SECONDS = 600  # a deployment's SuperNodes may connect after the run starts
RECIPE_FILE = "federate_recipe.yaml"  # OUTPUT_DIR's record of the run's settings (core.run_reuse)


class FederationError(ValueError):
    """A round that cannot go on (too few clients' labels accepted); the message says who and why, and the
    completed rounds stay for a rerun of the same command to resume after."""


@dataclass(frozen=True)
class PublicSide:
    """What the server holds of the public set: the examples and the tokenizer they are spelled in."""

    examples: dict[str, PublicExample]
    tokenizer: PreTrainedTokenizerBase
    vocab_size: int

    @classmethod
    def load(cls, config: FederateConfig) -> PublicSide:
        tokenizer = AutoTokenizer.from_pretrained(config.student)
        examples = load_public_set(config.recipe_settings(), tokenizer)
        return cls(examples, tokenizer, AutoConfig.from_pretrained(config.student).vocab_size)

    def request(self, config: FederateConfig, round_number: int) -> RoundRequest:
        """The round's request: the next prompts_per_round public prompts, in order."""
        start = (round_number - 1) * config.prompts_per_round
        prompt_ids = tuple(list(self.examples)[start : start + config.prompts_per_round])
        return RoundRequest(
            round=round_number,
            prompt_ids=prompt_ids,
            prompt_set_digest=prompt_set_digest(prompt_ids),
            token_counts=tuple(len(self.examples[p].completion_token_ids) for p in prompt_ids),
            k=config.k,
            vocab_size=self.vocab_size,
            tokenizer_fingerprint=tokenizer_fingerprint(self.tokenizer.get_vocab()),
        )


class ClientReply(Protocol):
    client: str  # the name the client gives itself


Reply = TypeVar("Reply", bound=ClientReply)


@dataclass
class RoundReplies(Generic[Reply]):
    """One round's answers, sorted: accepted replies by client, rejections with reasons, the missing."""

    accepted: dict[str, Reply]
    rejected: dict[str, str]
    missing: list[str]
    bytes_received: dict[str, int]


def value_bytes(value: object) -> int:
    """A config entry's bytes as Flower's `ConfigRecord.count_bytes` counts them (bool 1, int and float 8,
    str and bytes their length, a list its elements'), except that an empty string is 0 bytes, not an
    error (flwr 1.32 raises on it; the requests hold empty strings for unset settings)."""
    if isinstance(value, list):
        return sum(value_bytes(element) for element in value)
    if isinstance(value, str | bytes):
        return len(value)
    return 1 if isinstance(value, bool) else 8


def content_bytes(content: RecordDict) -> int:
    """Bytes of a message's records as Flower counts them (array data and names, config entries)."""
    return sum(
        sum(len(key) + value_bytes(value) for key, value in record.items())
        if isinstance(record, ConfigRecord)
        else record.count_bytes()
        for record in content.values()
    )


def gather_replies(
    grid: Grid,
    messages: list[Message],
    round_number: int,
    timeout: float,
    names: dict[int, str],
    read: Callable[[RecordDict], Reply],
    check: Callable[[Reply], None],
    refusals: tuple[type[Exception], ...],
    what: str,
) -> RoundReplies[Reply]:
    """Send one round's `messages` and sort the replies that come within `timeout`: failed or unanswered
    nodes are missing; a reply that `read` (decoding) or `check` (against the request, once the client
    is named) refuses by raising one of `refusals`, or that takes a client name another node already
    answered under, is rejected with its reason; `names` (node id -> client name,
    from earlier replies) names the missing and is updated. `what` is what a reply holds, for the log."""
    replies: RoundReplies[Reply] = RoundReplies({}, {}, [], {})
    answered = set()
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        answered.add(node)
        who = names.get(node, f"node {node}")
        if reply.has_error():
            logger.warning(f"round {round_number}: {who} failed and is missing ({reply.error.reason})")
            replies.missing.append(who)
            continue
        try:
            accepted = read(reply.content)
            who = names[node] = accepted.client
            if accepted.client in replies.accepted:
                raise RejectedReply("another node already answered under this client name")
            check(accepted)
        except (*refusals, RejectedReply) as reason:
            logger.warning(f"round {round_number}: rejected the {what} of {who}: {reason}")
            replies.rejected[who] = str(reason)
            continue
        replies.accepted[accepted.client] = accepted
        replies.bytes_received[accepted.client] = content_bytes(reply.content)
    for node in sorted({message.metadata.dst_node_id for message in messages} - answered):
        who = names.get(node, f"node {node}")
        logger.warning(f"round {round_number}: no answer from {who} within round_timeout; missing")
        replies.missing.append(who)
    return replies


def wait_for_nodes(grid: Grid, min_clients: int) -> list[int]:
    """The connected SuperNodes' ids, once at least `min_clients` are there (simulation: at once)."""
    deadline = time.monotonic() + NODE_WAIT_SECONDS
    while len(nodes := sorted(grid.get_node_ids())) < min_clients:
        if time.monotonic() > deadline:
            raise FederationError(
                f"{len(nodes)} SuperNodes connected in {NODE_WAIT_SECONDS} s; need {min_clients}"
            )
        time.sleep(1)
    return nodes


def collect_round(
    grid: Grid, config: FederateConfig, request: RoundRequest, names: dict[int, str]
) -> RoundReplies[SoftLabels]:
    """Ask every connected client for its soft labels and sort the replies; `names` (node id -> client
    name, from earlier replies) names the missing and is updated."""
    nodes = wait_for_nodes(grid, config.min_clients)
    messages = [
        Message(
            request_content(request.round, request.prompt_ids, config.recipe_settings()),
            dst_node_id=node,
            message_type=MessageType.QUERY,
            group_id=str(request.round),
        )
        for node in nodes
    ]
    return gather_replies(
        grid,
        messages,
        request.round,
        config.round_timeout,
        names,
        decode_reply,
        lambda labels: check_reply(labels, request),
        (MalformedReply, RejectedReply),
        "soft labels",
    )


def consensus_info(config: FederateConfig, public: PublicSide, round_number: int, weights: dict) -> TraceInfo:
    """The consensus dataset's metadata: the federation stands where `generate` names the teacher."""
    return TraceInfo(
        teacher=f"federated consensus of {', '.join(weights)} (round {round_number})",
        teacher_revision=None,
        tokenizer=config.student,
        tokenizer_fingerprint=tokenizer_fingerprint(public.tokenizer.get_vocab()),
        vocab_size=public.vocab_size,
        k=config.k,
        temperature=1.0,  # the completions were not sampled: scored as given
        top_p=1.0,
        logprobs_mode=LOGPROBS_MODE,
        seed=config.seed,
        backend=f"flwr {flwr.__version__}",
        recipe_fingerprint=fingerprint_settings(
            {**config.recipe_settings(), "round": round_number, **weights}
        ),
        prompt_render={"system_prompt": None, "instruction": config.instruction, "think_prefill": False},
    )


def publish_consensus(
    directory: Path,
    config: FederateConfig,
    public: PublicSide,
    round_number: int,
    contributions: dict[str, SoftLabels],
) -> dict[str, float]:
    """Aggregate a round's contributions (client -> accepted labels), equally weighted, into the
    consensus trace dataset `directory`; returns the weights."""
    weights = {client: 1.0 / len(contributions) for client in sorted(contributions)}
    examples = [public.examples[p] for p in public.request(config, round_number).prompt_ids]
    ordered = {client: contributions[client] for client in weights}
    records = consensus_records(examples, ordered, weights, config.k, public.tokenizer)
    info = consensus_info(config, public, round_number, weights)
    write_consensus(directory, records, info, public.tokenizer, len(weights))
    return weights


def privacy_report(config: FederateConfig, round_number: int, released: set[str]) -> dict | None:
    """Each client's privacy budget after `round_number`, None without noise. A client spends one Gaussian
    mechanism (privacy.py) in every round it sent labels in, accepted or rejected alike (both left it):
    `released` in this round, the aggregated and rejected of the round records before it."""
    if config.dp_noise_multiplier is None:
        return None
    rounds = Counter(released)
    for earlier in range(1, round_number):
        record = RoundRecord.load(round_dir(config.output_dir, earlier))
        rounds.update(set(record.aggregated) | set(record.rejected))
    z, delta = config.dp_noise_multiplier, config.dp_delta
    return {
        "mechanism": "Gaussian on each client's clipped probabilities (ids + tail), client-level",
        "noise_multiplier": z,
        "clip_norm": config.dp_clip_norm,
        "delta": delta,
        "accountant": f"PLD, dp-accounting {version('dp-accounting')}",
        "rounds_released": dict(sorted(rounds.items())),
        "epsilon": {client: epsilon_spent(z, count, delta) for client, count in sorted(rounds.items())},
    }


def label_round(
    grid: Grid, config: FederateConfig, public: PublicSide, round_number: int, names: dict
) -> None:
    """Collect, validate and aggregate one round; write its contributions, consensus and record."""
    started = time.time()
    request = public.request(config, round_number)
    replies = collect_round(grid, config, request, names)
    if len(replies.accepted) < config.min_clients:
        raise FederationError(
            f"round {round_number}: the labels of {len(replies.accepted)} clients were accepted "
            f"({sorted(replies.accepted)}), min_clients is {config.min_clients}; rejected: "
            f"{replies.rejected or 'none'}, missing: {replies.missing or 'none'}; rerun the command to "
            f"resume after round {round_number - 1}"
        )
    directory = round_dir(config.output_dir, round_number)
    for labels in replies.accepted.values():
        save_contribution(directory / CONTRIBUTIONS_DIR, labels)
    weights = publish_consensus(directory / CONSENSUS_DIR, config, public, round_number, replies.accepted)
    privacy = privacy_report(config, round_number, set(replies.accepted) | set(replies.rejected))
    RoundRecord(
        round=round_number,
        prompt_ids=list(request.prompt_ids),
        aggregated=weights,
        rejected=replies.rejected,
        missing=replies.missing,
        bytes_received=replies.bytes_received,
        seconds=round(time.time() - started, 1),
        privacy=privacy,
    ).save(directory)
    spent = ", ".join(f"{client} {eps:.3g}" for client, eps in (privacy or {}).get("epsilon", {}).items())
    logger.info(
        f"round {round_number}: consensus of {sorted(weights)} on {len(request.prompt_ids)} prompts"
        + (f"; missing {replies.missing}" if replies.missing else "")
        + (f"; rejected {sorted(replies.rejected)}" if replies.rejected else "")
        + (f"; epsilon at delta={config.dp_delta}: {spent}" if privacy else "")
    )


def distil_round(config: FederateConfig, round_number: int, consensus: Path, student: str) -> str:
    """Distil `student` on a round's consensus with the train recipe into the round's student directory."""
    out = round_dir(config.output_dir, round_number) / STUDENT_DIR
    return distil_on_traces(config.train_recipe, student, consensus, out)


@dataclass(frozen=True)
class CoDistillRecord:
    """Who distilled their own model on a round's consensus (co_distill.json, written last), who did not,
    and the bytes each way."""

    round: int
    co_distilled: list[str]
    rejected: dict[str, str]
    missing: list[str]
    bytes_sent: dict[str, int]  # client -> bytes of the consensus message it was sent
    bytes_received: dict[str, int]
    seconds: float


def co_distill_round(
    grid: Grid, config: FederateConfig, public: PublicSide, round_number: int, names: dict
) -> None:
    """Send a round's consensus to every connected client to distil its own model on (co_distillation.py)
    and record who did; a client that fails or is late keeps its older model, the federation goes on."""
    started = time.time()
    directory = round_dir(config.output_dir, round_number)
    request = public.request(config, round_number)
    query = request_content(round_number, request.prompt_ids, config.recipe_settings())
    consensus = consensus_labels(directory / CONSENSUS_DIR, request)
    content = co_distill_content(
        query, consensus, config.co_distill_recipe_text(), config.co_distill_federation()
    )
    nodes = wait_for_nodes(grid, config.min_clients)
    messages = [
        Message(content, dst_node_id=node, message_type=MessageType.TRAIN, group_id=str(round_number))
        for node in nodes
    ]

    def check(answer: CoDistilled) -> None:
        if answer.round != round_number:
            raise RejectedReply(f"answers round {answer.round}, not {round_number}")

    replies = gather_replies(
        grid,
        messages,
        round_number,
        config.co_distill_timeout,
        names,
        CoDistilled.from_content,
        check,
        (ValueError,),
        "co-distillation answer",
    )
    sent = content_bytes(content)
    record = CoDistillRecord(
        round=round_number,
        co_distilled=sorted(replies.accepted),
        rejected=replies.rejected,
        missing=replies.missing,
        bytes_sent={names.get(node, f"node {node}"): sent for node in nodes},
        bytes_received=replies.bytes_received,
        seconds=round(time.time() - started, 1),
    )
    save_round_file(directory, asdict(record), CO_DISTILL_FILE)
    logger.info(
        f"round {round_number}: {record.co_distilled} co-distilled on the consensus"
        + (f"; missing {record.missing}" if record.missing else "")
        + (f"; rejected {sorted(record.rejected)}" if record.rejected else "")
    )


def run_server(grid: Grid, config: FederateConfig) -> str:
    """Every round from the first not completed on; returns the final student's directory."""
    public = PublicSide.load(config)
    done = completed_rounds(config.output_dir, config.num_rounds)
    if done:
        logger.info(f"{config.output_dir}: rounds 1-{done} completed before; resuming after round {done}")
    names: dict[int, str] = {}
    student = config.student
    for round_number in range(1, config.num_rounds + 1):
        if round_number > done:
            label_round(grid, config, public, round_number, names)
        recorded = (round_dir(config.output_dir, round_number) / CO_DISTILL_FILE).exists()
        if config.co_distill_recipe is not None and not recorded:
            co_distill_round(grid, config, public, round_number, names)
        consensus = round_dir(config.output_dir, round_number) / CONSENSUS_DIR
        student = distil_round(config, round_number, consensus, student)
    logger.info(f"federated student after {config.num_rounds} rounds: {student}")
    return student


def simulation_server_app(serve: Callable[[Grid], object]) -> ServerApp:
    """The simulation's ServerApp, whose run's settings are known: `serve(grid)` runs every round."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid)

    return app


def build_server_app(config: FederateConfig) -> ServerApp:
    """The ServerApp of a federation whose settings are known (the simulation)."""
    return simulation_server_app(lambda grid: run_server(grid, config))


app = ServerApp()  # `flwr run` deployments: serverapp = "reasondistill.federate.server_app:app"


@app.main()
def deployment_main(grid: Grid, context: Context) -> None:
    """One federation of the SuperNodes connected (each names its own model), with the recipe that the run
    config's `recipe` names: absolute, relative to the SuperLink's working directory, or a packaged one."""
    setup_logging()  # a fresh `flwr-serverapp` process; its output is the run's log (`flwr log RUN_ID`)
    (config,) = parse_recipe(str(context.run_config["recipe"]), (FederateConfig,))
    if config.forget:
        raise ValueError("forget asks no client: run `reasondistill federate RECIPE --forget CLIENT` instead")
    # OUTPUT_DIR's run record as in the simulation: a finished federation reused, an unfinished one resumed
    if config.evaluate_recipe is not None:
        evaluate_config_of(config)  # a bad evaluate recipe fails now, not after the rounds
    run_unless_done(
        [config.recorded_settings()],
        Path(config.output_dir) / RECIPE_FILE,
        lambda: run_server(grid, config),
        overwrite=config.overwrite,
    )
    if config.evaluate_recipe is not None:  # on the server's machine, which holds the students
        report_rounds(config)
