"""`reasondistill federate RECIPE.yaml --forget CLIENT ...`: exact unlearning of clients, SISA-style.

A finished federation keeps, for every round, each accepted client's soft labels as received
(rounds.py). To forget clients F:

1. r0 = the first round any client of F was aggregated in. The students before r0 never saw F.
2. For every round r >= r0, the consensus is recomputed from the stored labels of the round's other
   accepted clients, with the federation's weighting rule (equal weights over the clients aggregated).
3. The student is retrained round by round from the student of round r0 - 1 (the initial student if
   r0 = 1) on the recomputed consensus, with the same train recipe.

Guarantee (exact, not approximate, without co-distillation): the result is the student the federation
would have produced had F never taken part, given the same answers from the other clients. It holds
because a round's consensus is a pure function of the aggregated clients' labels and weights, no client
ever receives the consensus or the student (so the other clients' labels carry no trace of F), and the
trainer is seeded (on the same machine and software its weights are reproduced; tests/federate checks them
against a federation run without F). With co_distill_recipe the clients did receive the consensus, so their
labels after r0 carry F's influence: the result is then approximate and forget.json says so (`guarantee`).
What it does not do: delete what the original run wrote. Its rounds from r0 on (consensus, students) and
F's stored contributions still hold F's influence; the log names them, to be deleted once the unlearned
student replaces the original. Cost: the rounds from r0 on are retrained, no client is asked anything.

Output: OUTPUT_DIR/forget-NAMES/round-NNN/{consensus,student} for the recomputed rounds and
OUTPUT_DIR/forget-NAMES/forget.json (who, from which round, what it cost), written last: a finished
unlearning of the same clients is reused, an interrupted one resumed (finished students are reused).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

from reasondistill.federate.federate_config import FederateConfig
from reasondistill.federate.rounds import (
    CONSENSUS_DIR,
    CONTRIBUTIONS_DIR,
    STUDENT_DIR,
    RoundRecord,
    completed_rounds,
    load_contribution,
    round_dir,
)
from reasondistill.federate.server_app import FederationError, PublicSide, distil_round, publish_consensus

logger = logging.getLogger(__name__)

FORGET_FILE = "forget.json"


def guarantee(config: FederateConfig, first: int) -> str:
    """What the unlearned student is: exact, or approximate once clients co-distilled on consensus that
    the forgotten clients were part of (their later labels carry that influence: co_distillation.py)."""
    if config.co_distill_recipe is None or first == config.num_rounds:
        return "exact"
    return (
        f"approximate: the other clients co-distilled on the consensus of round {first} on, which the "
        f"forgotten clients were part of, so their labels of rounds {first + 1}-{config.num_rounds} carry "
        "that influence; exact unlearning would rerun those rounds with the clients' models rolled back"
    )


def forget_clients(config: FederateConfig) -> str:
    """Unlearn `config.forget` from the finished federation in OUTPUT_DIR; returns the unlearned student."""
    forgotten = set(config.forget)
    if completed_rounds(config.output_dir, config.num_rounds) < config.num_rounds:
        raise ValueError(f"{config.output_dir} holds no finished federation of {config.num_rounds} rounds")
    records = [RoundRecord.load(round_dir(config.output_dir, r)) for r in range(1, config.num_rounds + 1)]
    known = {client for record in records for client in record.aggregated}
    if unknown := sorted(forgotten - known):
        raise ValueError(f"no round aggregated {unknown}; the clients aggregated were {sorted(known)}")
    first = min(record.round for record in records if forgotten & set(record.aggregated))
    out = Path(config.output_dir) / f"forget-{'-'.join(sorted(forgotten))}"
    if (out / FORGET_FILE).exists():  # written last: these clients were unlearned, with what it cost
        student = json.loads((out / FORGET_FILE).read_text())["student"]
        logger.info(f"{out}: {sorted(forgotten)} were unlearned before; the unlearned student is {student}")
        return student
    retrain = dataclasses.replace(config, output_dir=str(out))
    student = config.student if first == 1 else str(round_dir(config.output_dir, first - 1) / STUDENT_DIR)
    logger.info(
        f"forgetting {sorted(forgotten)}: first aggregated in round {first}; retraining from {student}"
    )
    started = time.time()
    public = PublicSide.load(config)
    for record in records[first - 1 :]:
        kept = [client for client in record.aggregated if client not in forgotten]
        if not kept:
            raise FederationError(
                f"round {record.round} aggregated only {sorted(record.aggregated)}: nothing is left"
            )
        stored = round_dir(config.output_dir, record.round) / CONTRIBUTIONS_DIR
        contributions = {client: load_contribution(stored / f"{client}.npz") for client in kept}
        consensus = round_dir(out, record.round) / CONSENSUS_DIR
        shutil.rmtree(consensus, ignore_errors=True)  # an interrupted earlier attempt: recomputed whole
        publish_consensus(consensus, retrain, public, record.round, contributions)
        student = distil_round(retrain, record.round, consensus, student)
    influenced = [str(round_dir(config.output_dir, r.round)) for r in records[first - 1 :]]
    summary = {
        "forgotten": sorted(forgotten),
        "guarantee": guarantee(config, first),
        "first_round_influenced": first,
        "retrained_from": str(round_dir(config.output_dir, first - 1) / STUDENT_DIR)
        if first > 1
        else config.student,
        "rounds_retrained": config.num_rounds - first + 1,
        "rounds_total": config.num_rounds,
        "seconds": round(time.time() - started, 1),
        "student": student,
        "still_influenced": influenced,
    }
    (out / FORGET_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    if summary["guarantee"] != "exact":
        logger.warning(f"unlearning of {sorted(forgotten)} is {summary['guarantee']}")
    logger.info(
        f"unlearned student: {student} ({summary['rounds_retrained']} of {config.num_rounds} rounds "
        f"retrained). Still holding the influence of {sorted(forgotten)}: {influenced}"
    )
    return student
