"""The Flower ClientApp: a client scores the public completions the server names with its own local model
and replies with their top-k soft labels only (soft_labels.py); its data and weights stay where they are.

Which model a client runs, and its name, come from its SuperNode's node config:

    flower-supernode ... --node-config "model-dir='/data/my-model' client-name='hospital-a'"

(and, with co-distillation, `state-dir='/data/co-distilled'`: where it keeps its co-distilled models.)

In Flower's simulation (`reasondistill federate`), client i is partition i and runs the i-th of the
recipe's `client_models`, named client-i. A Flower simulation process serves several clients in turn, so
models, engines and public sets are cached per process, keyed by what they depend on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from reasondistill.core.engines import EngineConfig, ScoringEngine, load_engine
from reasondistill.core.traces import encode_logprobs, tokenizer_fingerprint
from reasondistill.federate.co_distillation import co_distill_locally, current_model, state_dir
from reasondistill.federate.privacy import LabelNoise, noised_labels
from reasondistill.federate.public_set import PublicExample, load_public_set
from reasondistill.federate.soft_labels import REQUEST, SoftLabels, prompt_set_digest

logger = logging.getLogger(__name__)


@cache
def _tokenizer(model_dir: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(model_dir)


@lru_cache(maxsize=4)  # co-distilling clients score with a new model each round: old ones are let go
def _engine(model_dir: str, backend: str, k: int) -> ScoringEngine:
    return load_engine(EngineConfig(teacher=model_dir, backend=backend, logprobs=k), scoring=True)


@cache
def _public_set(model_dir: str, settings_json: str) -> dict[str, PublicExample]:
    return load_public_set(json.loads(settings_json), _tokenizer(model_dir))


def public_settings(request: ConfigRecord) -> str:
    """The request's public-set settings as a cache key (what every round of a federation shares)."""
    settings = {key: value for key, value in request.items() if key not in ("round", "prompt-ids")}
    return json.dumps(settings, sort_keys=True)


def soft_labels_for(request: ConfigRecord, model_dir: str, client: str) -> SoftLabels:
    """This client's answer to a round's request: its model's top-k on each named public completion, through
    the Gaussian mechanism of privacy.py first if the request sets a noise multiplier."""
    settings = json.loads(public_settings(request))
    prompt_ids = list(request["prompt-ids"])
    public = _public_set(model_dir, public_settings(request))
    if unknown := [pid for pid in prompt_ids if pid not in public]:
        raise KeyError(f"{client}: prompt ids not in its public set: {unknown[:5]}")
    examples = [public[pid] for pid in prompt_ids]
    k = int(settings["k"])
    scored = _engine(model_dir, settings["client-backend"], k).score(
        [e.prompt_token_ids for e in examples], [e.completion_token_ids for e in examples]
    )
    topk_ids = np.concatenate([s.topk_ids for s in scored]).reshape(-1, k).astype(np.int32)  # [N, k]
    topk_logprobs = np.concatenate([s.topk_logprobs for s in scored]).reshape(-1, k)  # [N, k]
    sampled_logprob = np.concatenate([s.sampled_logprobs for s in scored]).astype(np.float32)  # [N]
    vocab_size = AutoConfig.from_pretrained(model_dir).vocab_size
    if settings["dp-noise-multiplier"] > 0:
        noise = LabelNoise(float(settings["dp-noise-multiplier"]), float(settings["dp-clip-norm"]))
        completion_ids = np.concatenate([e.completion_token_ids for e in examples])
        topk_ids, topk_logprobs, sampled_logprob = noised_labels(
            topk_ids,
            topk_logprobs,
            completion_ids,
            sampled_logprob,
            vocab_size,
            noise,
            np.random.default_rng(),
        )  # default_rng(): fresh entropy from the OS each round, no seed the server could know
    return SoftLabels(
        client=client,
        round=int(request["round"]),
        prompt_set_digest=prompt_set_digest(prompt_ids),
        k=k,
        vocab_size=vocab_size,
        tokenizer_fingerprint=tokenizer_fingerprint(_tokenizer(model_dir).get_vocab()),
        topk_ids=topk_ids,
        topk_logprob_codes=encode_logprobs(topk_logprobs),
        sampled_logprob=sampled_logprob,
        token_counts=np.asarray([len(e.completion_token_ids) for e in examples], dtype=np.int32),
    )


def labelling_model(request: ConfigRecord, model_dir: str, context: Context) -> str:
    """The model that answers a round: with co-distillation, the client's latest co-distilled one."""
    federation = str(request["co-distill-federation"])
    if not federation:
        return model_dir
    state = state_dir(model_dir, context.node_config.get("state-dir"))
    return current_model(model_dir, state, federation, int(request["round"]))


def client_identity(context: Context, simulated_models: Sequence[str]) -> tuple[str, str]:
    """(model directory, client name) from the node config: named by a deployment, or by the partition."""
    node = context.node_config
    if "model-dir" in node:
        return str(node["model-dir"]), str(node.get("client-name", Path(str(node["model-dir"])).name))
    if "partition-id" in node and int(node["partition-id"]) < len(simulated_models):
        partition = int(node["partition-id"])
        return simulated_models[partition], f"client-{partition}"
    raise ValueError("this SuperNode names no model: start it with --node-config \"model-dir='DIR'\"")


def answer_query(message: Message, context: Context, models: Sequence[str]) -> Message:
    """A round's request -> this client's soft labels (with co-distillation: from its latest model)."""
    model_dir, client = client_identity(context, models)
    request = message.content[REQUEST]
    labels = soft_labels_for(request, labelling_model(request, model_dir, context), client)
    logger.info(f"{client}: soft labels for {len(labels.token_counts)} prompts, round {labels.round}")
    return Message(labels.to_content(), reply_to=message)


def answer_co_distill(message: Message, context: Context, models: Sequence[str]) -> Message:
    """A round's consensus -> this client distils its own model on it and says so (co_distillation.py)."""
    model_dir, client = client_identity(context, models)
    public = _public_set(model_dir, public_settings(message.content[REQUEST]))
    state = state_dir(model_dir, context.node_config.get("state-dir"))
    answer = co_distill_locally(message.content, model_dir, client, state, public)
    return Message(answer.to_content(), reply_to=message)


def build_client_app(simulated_models: Sequence[str] = ()) -> ClientApp:
    """The ClientApp; `simulated_models[i]` is the model of simulated partition i (deployments: none)."""
    app = ClientApp()
    models = tuple(simulated_models)
    app.query()(lambda message, context: answer_query(message, context, models))
    app.train()(lambda message, context: answer_co_distill(message, context, models))
    return app


app = build_client_app()  # `flwr run` deployments: clientapp = "reasondistill.federate.client_app:app"
