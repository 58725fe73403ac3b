"""Settings of the federated demo's client models (recipes/demo/federated_clients.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from reasondistill.core.arithmetic_task import LEVELS
from reasondistill.demo.factory import MODEL_SIZES, ModelSizeName
from reasondistill.demo.lm_training import BATCH_ORDER_HELP, BatchOrder, build_digest, check_batch_order

# Client i draws its private problems with seed PRIVATE_SEED_OFFSET + seed + i: apart from the federated
# recipe's public_seed (7), so a client's private problems are not drawn as the public ones are.
PRIVATE_SEED_OFFSET = 100


@dataclass
class FederatedClientsConfig:
    """How the demo clients are built: client i is a `size` model trained from scratch on problems of
    difficulty level `client_levels[i]` only (non-IID). Changing any field but `cache_dir` and
    `eval_every` (or the tokenizer) builds new clients in new directories."""

    cache_dir: str = field(
        default=".cache/reasondistill", metadata={"help": "Where built demo models are kept."}
    )
    size: ModelSizeName = field(
        default="student",
        metadata={"help": f"Model shape, one of {sorted(MODEL_SIZES)}; the students' size by default."},
    )
    client_levels: list[int] = field(
        default_factory=lambda: [1, 2, 3],
        metadata={
            "help": "One task difficulty level per client: client i learns level client_levels[i] only."
        },
    )
    private_problems: int = field(
        default=5000, metadata={"help": "Training-split problems of its level each client trains on."}
    )
    steps: int = field(default=600, metadata={"help": "Optimizer steps per client."})
    batch_tokens: int = field(
        default=4096,
        metadata={"help": "Tokens per step: padding included by_length, real tokens when mixed."},
    )
    batch_order: BatchOrder = field(default="by_length", metadata={"help": BATCH_ORDER_HELP})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak AdamW learning rate."})
    warmup_steps: int = field(default=50, metadata={"help": "Linear warm-up, then cosine decay to 10%."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    eval_problems: int = field(
        default=100,
        metadata={
            "help": "Test-split problems of every level of client_levels on which each client's greedy "
            "accuracy is measured after training (0: none)."
        },
    )
    eval_every: int = field(default=100, metadata={"help": "Steps between learning-curve points."})
    seed: int = field(
        default=0,
        metadata={
            "help": "Client i: initialisation and batch order seed + i, private problems "
            f"{PRIVATE_SEED_OFFSET} + seed + i."
        },
    )

    def __post_init__(self) -> None:
        if self.size not in MODEL_SIZES:  # Literal is not checked at runtime
            raise ValueError(f"size={self.size!r} is not one of {sorted(MODEL_SIZES)}")
        if not self.client_levels or any(level not in LEVELS for level in self.client_levels):
            raise ValueError(f"client_levels={self.client_levels} must name levels of {sorted(LEVELS)}")
        check_batch_order(self.batch_order)
        if self.steps < 1 or self.batch_tokens < 64 or self.private_problems < 1:
            raise ValueError("steps, batch_tokens and private_problems must be positive (batch_tokens >= 64)")
        if self.warmup_steps < 0 or self.eval_problems < 0 or self.eval_every < 1:
            raise ValueError("warmup_steps and eval_problems must be >= 0 and eval_every >= 1")

    def directory(self, client: int, tokenizer_id: str) -> Path:
        """Cache directory of client `client`, keyed by its index, every field that changes the result (all
        clients' levels too: it is measured on each) and the tokenizer's content
        (`base_student.tokenizer_fingerprint`): clients of another tokenizer cannot join one federation."""
        digest = build_digest(self, client=client, tokenizer=tokenizer_id)
        return Path(self.cache_dir) / f"demo-client-level{self.client_levels[client]}-{digest}"
