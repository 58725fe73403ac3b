"""The federated demo's clients: one local model per client, each trained on its own slice of the task.

`reasondistill federate recipes/demo/federated.yaml` (docs/federate.md) needs clients whose private data
differ (non-IID): client i is a student-size Qwen2 trained from scratch on problems of one difficulty
level only (`client_levels[i]`: one-step, two-step, three-step problems), so each knows what the others do
not. Every client uses the demo teacher's tokenizer: the parties of a federation must spell tokens alike
(its fingerprint is checked on every reply), and the global student, built from the same tokenizer, reads
the consensus' token ids.

Each client is trained by the loop of `lm_training.py` that builds the teacher (loss on the answer only,
`teacher.tokenize_example`), and cached like the other demo models: its directory is keyed by every
setting that changes it, its level and the tokenizer's content; `demo_build.json`, written last, holds its
learning curve and its greedy accuracy on held-out problems of every client's level, and marks it reusable.

    python -m reasondistill.demo.federated_clients [RECIPE] --tokenizer_dir DIR [--key value ...]

builds (or reuses) them (recipe: recipes/demo/federated_clients.yaml) and logs, last, their directories in
client order as `--client_models DIR0 DIR1 ...` for `reasondistill federate`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from reasondistill.core.arithmetic_task import Problem, generate_problems
from reasondistill.core.logs import setup_logging
from reasondistill.demo.base_student import tokenizer_fingerprint
from reasondistill.demo.builder_command import parse_builder_command
from reasondistill.demo.factory import build_model, count_parameters
from reasondistill.demo.federated_clients_config import PRIVATE_SEED_OFFSET, FederatedClientsConfig
from reasondistill.demo.lm_training import BUILD_INFO_FILE, LMTrainingSettings, train_causal_lm
from reasondistill.demo.scoring import task_scores
from reasondistill.demo.teacher import tokenize_example

logger = logging.getLogger("reasondistill.demo.federated_clients")  # not __name__: it also runs as __main__

DEFAULT_RECIPE = "recipes/demo/federated_clients.yaml"


def private_problems(config: FederatedClientsConfig, client: int) -> list[Problem]:
    """Client `client`'s private training problems: all of its level, drawn with its own seed."""
    level = config.client_levels[client]
    return generate_problems(
        "train", config.private_problems, [level], PRIVATE_SEED_OFFSET + config.seed + client
    )


def heldout_accuracy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: FederatedClientsConfig
) -> dict[str, float]:
    """Greedy exact match on `eval_problems` test problems of each client's level: high on its own level,
    low on the others' is what makes the clients non-IID."""
    return {
        f"level_{level}": task_scores(
            model, tokenizer, generate_problems("test", config.eval_problems, [level], config.seed)
        )[0]
        for level in sorted(set(config.client_levels))
    }


def build_client(config: FederatedClientsConfig, client: int, tokenizer_dir: Path, fingerprint: str) -> Path:
    """Build (or reuse) client `client`'s model with `tokenizer_dir`'s tokenizer; return its directory."""
    out_dir = config.directory(client, fingerprint)
    if (out_dir / BUILD_INFO_FILE).exists():
        logger.info("reusing demo client-%d at %s", client, out_dir)
        return out_dir
    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    examples = [tokenize_example(tokenizer, problem) for problem in private_problems(config, client)]
    model = build_model(config.size, tokenizer, seed=config.seed + client)
    level = config.client_levels[client]
    logger.info(
        "client-%d: %.2fM parameters, %d problems of level %d only, %.0f tokens each on average",
        client,
        count_parameters(model) / 1e6,
        len(examples),
        level,
        sum(len(t) for t, _ in examples) / len(examples),
    )
    settings = dataclasses.replace(LMTrainingSettings.of(config), seed=config.seed + client)
    curve = train_causal_lm(model, examples, tokenizer.pad_token_id, settings, started=started)
    accuracy = heldout_accuracy(model, tokenizer, config) if config.eval_problems else {}

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {
        "config": asdict(config),
        "client": f"client-{client}",
        "level": level,
        "tokenizer": {"source": str(tokenizer_dir), "fingerprint": fingerprint},
        "parameters": count_parameters(model),
        "private_problems": len(examples),
        "heldout_accuracy": accuracy,
        "heldout_problems_per_level": config.eval_problems,
        "learning_curve": curve,
        "build_seconds": round(time.time() - started),
    }
    (out_dir / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2))
    logger.info(
        "client-%d (level %d) built in %d s, held-out accuracy %s: %s",
        client,
        level,
        info["build_seconds"],
        {name: round(value, 3) for name, value in accuracy.items()} or "not measured",
        out_dir,
    )
    return out_dir


def build_clients(config: FederatedClientsConfig, tokenizer_dir: str | Path) -> list[Path]:
    """Build (or reuse) every client's model, in client order; `tokenizer_dir` is a model directory whose
    tokenizer they use (the demo teacher's)."""
    tokenizer_dir = Path(tokenizer_dir)
    fingerprint = tokenizer_fingerprint(tokenizer_dir)
    return [
        build_client(config, client, tokenizer_dir, fingerprint)
        for client in range(len(config.client_levels))
    ]


def main(argv: list[str] | None = None) -> int:
    config, tokenizer_dir = parse_builder_command(
        argv,
        "python -m reasondistill.demo.federated_clients",
        "Build (or reuse) the federated demo's client models, each trained on one difficulty "
        "level of the task with another model's tokenizer, and log their directories.",
        FederatedClientsConfig,
        DEFAULT_RECIPE,
    )
    setup_logging()
    directories = build_clients(config, tokenizer_dir)
    logger.info("for reasondistill federate: --client_models %s", " ".join(map(str, directories)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
