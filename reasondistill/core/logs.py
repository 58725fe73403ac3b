"""Messages through `logging`, as transformers and accelerate do: one `reasondistill` logger tree,
verbosity set once per process (`--log_level`), quiet on every process but the main one.

Modules write `logger = logging.getLogger(__name__)` and `logger.info(...)`; only the entry points
(the CLI, `python -m reasondistill.train`) call `setup_logging`. Library users who never call it keep
Python's defaults (warnings and errors only), as with any library.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Literal

LogLevel = Literal["debug", "info", "warning", "error"]
LOG_LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# Lines that every start of the CPU stack prints and that a user can do nothing about. Matched as
# `warnings` message prefixes or logger names; each names where it comes from.
QUIET_LOGGERS = {
    "bitsandbytes": logging.ERROR,  # "Failed to load CPU gemm_4bit_forward from kernels-community" (no hub)
    "kernels": logging.ERROR,  # the same hub lookup, from the `kernels` package
    "vllm": logging.WARNING,  # one INFO line per engine setting
    "torch._inductor": logging.ERROR,
    "triton": logging.ERROR,
    "httpx": logging.WARNING,
}


def process_rank() -> int:
    """This process's rank in a `torchrun` / `accelerate launch` run (0 when not distributed)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def setup_logging(level: LogLevel | str = "info") -> None:
    """`reasondistill.*` messages at `level` on the main process, warnings and errors elsewhere;
    third-party chatter (QUIET_LOGGERS) kept down. Idempotent: a second call only changes the level."""
    if level not in LOG_LEVELS:
        raise ValueError(f"log_level is one of {', '.join(LOG_LEVELS)}, got {level!r}")
    chosen = LOG_LEVELS[level] if process_rank() == 0 else max(LOG_LEVELS[level], logging.WARNING)
    root = logging.getLogger("reasondistill")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stdout)
        rank = process_rank()
        prefix = f"[rank {rank}] " if "WORLD_SIZE" in os.environ and os.environ["WORLD_SIZE"] != "1" else ""
        handler.setFormatter(logging.Formatter(prefix + "%(message)s"))
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(chosen)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # vLLM reads it when it is first imported
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning" if chosen <= logging.INFO else level)
    for name, quiet_level in QUIET_LOGGERS.items():
        if chosen > logging.DEBUG:
            logging.getLogger(name).setLevel(quiet_level)
    warnings.filterwarnings("ignore", message="Failed to load CPU gemm_4bit_forward")
