"""Per-round artifacts on disk: what makes a crashed server resume from its last completed round and
what `--forget` recomputes the consensus from.

    OUTPUT_DIR/federate_recipe.yaml               the run's settings (core.run_reuse)
    OUTPUT_DIR/round-001/contributions/NAME.npz   each accepted client's soft labels, as received
    OUTPUT_DIR/round-001/consensus/               the consensus trace dataset (consensus.py)
    OUTPUT_DIR/round-001/round.json               RoundRecord, written last: the round's labels are complete
    OUTPUT_DIR/round-001/co_distill.json          with co_distill_recipe: who distilled on the consensus
    OUTPUT_DIR/round-001/student/                 the student distilled on the consensus (`train`)

A round directory without round.json is an interrupted round: it is deleted and the round asked again.
The student's directory is a `reasondistill train` output directory, so an interrupted distillation is
resumed (or restarted, if it saved no checkpoint) and a finished one reused.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from reasondistill.federate.soft_labels import REPLY_ARRAYS, SoftLabels

ROUND_FILE = "round.json"
CO_DISTILL_FILE = "co_distill.json"  # with co_distill_recipe: who distilled on the round's consensus
CONTRIBUTIONS_DIR, CONSENSUS_DIR, STUDENT_DIR = "contributions", "consensus", "student"


def round_dir(output_dir: str | Path, round_number: int) -> Path:
    return Path(output_dir) / f"round-{round_number:03d}"


@dataclass(frozen=True)
class RoundRecord:
    """What a round asked, who answered, what was aggregated with which weight, and who was not."""

    round: int
    prompt_ids: list[str]
    aggregated: dict[str, float]  # client -> weight in the consensus
    rejected: dict[str, str]  # client -> reason its labels were refused
    missing: list[str]  # clients (or `node N`, if never heard of) that did not answer: dropped out, failed
    bytes_received: dict[str, int]  # client -> bytes of its reply's arrays and metadata
    seconds: float
    privacy: dict | None = None  # with dp_noise_multiplier: each client's epsilon so far (privacy_report)

    def save(self, directory: Path) -> None:
        """Write round.json: its presence marks the round's labels complete."""
        save_round_file(directory, asdict(self))

    @classmethod
    def load(cls, directory: Path) -> RoundRecord:
        return cls(**json.loads((directory / ROUND_FILE).read_text()))


def save_round_file(directory: Path, record: dict, name: str = ROUND_FILE) -> None:
    """Write a round's record (round.json, co_distill.json) atomically: written last, it marks what it
    records complete."""
    temp = directory / f".{name}.tmp"
    temp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(temp, directory / name)


def completed_rounds(output_dir: str | Path, num_rounds: int) -> int:
    """How many rounds, from round 1 on, have complete labels; an interrupted round after them is deleted."""
    done = 0
    while done < num_rounds and (round_dir(output_dir, done + 1) / ROUND_FILE).exists():
        done += 1
    if done < num_rounds and round_dir(output_dir, done + 1).exists():
        shutil.rmtree(round_dir(output_dir, done + 1))  # interrupted while its labels were collected
    return done


def save_contribution(directory: Path, labels: SoftLabels) -> None:
    """Keep a client's accepted labels as received (unlearning recomputes the consensus without it)."""
    directory.mkdir(parents=True, exist_ok=True)
    meta = {name: value for name, value in asdict(labels).items() if name not in REPLY_ARRAYS}
    with open(directory / f"{labels.client}.npz", "wb") as f:
        np.savez(f, meta=json.dumps(meta), **{name: getattr(labels, name) for name in REPLY_ARRAYS})


def load_contribution(path: Path) -> SoftLabels:
    with np.load(path) as saved:
        return SoftLabels(**json.loads(str(saved["meta"])), **{name: saved[name] for name in REPLY_ARRAYS})
