"""Federated distillation measured (issue #17): the global student per round against each client alone,
FedAvg of LoRA adapters (the usual baseline), a student distilled on the union of the clients' data (upper
bound) and one on the public set alone.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/federate_study.py --tokenizer-dir TEACHER_DIR \
        [--federate-recipe recipes/demo/federated.yaml] \
        [--clients-recipe recipes/demo/federated_clients.yaml] \
        [--train-recipe RECIPE] [--fedavg-train-recipe recipes/demo/fedavg_lora_train.yaml] \
        [--seeds 0 1] [--num-rounds N] [--prompts-per-round N] \
        [--dp-noise-multiplier 1.0] [--co-distill-recipe RECIPE] [--forget-client client-1] \
        [--test-problems 100] [--max-new-tokens 400] [--output-dir outputs/federate_study]

Arms (every student arm starts, for a seed, from the same fresh student-size model initialised with that
seed, and trains round by round with the same train recipe, its seed set to the seed: the same budget):
- clients: the demo clients (`demo.federated_clients`, built or reused from --clients-recipe), each trained
  on one difficulty level only; each alone, the same models for every seed.
- federated: `reasondistill federate` (Flower's simulation) with --federate-recipe; the global student after
  every round. Bytes: what the server received, from its round records (`round.json` bytes_received).
- union (upper bound): each round, as many problems as the federation's round names, drawn in equal shares
  from the clients' private training problems (client i's next ones), each labelled with the top-k of the
  client that owns it (the clients' own scoring code, `client_app.soft_labels_for`, with no noise), written
  as a trace dataset by the federation's writer, and distilled with the same recipe. Why this and not
  "the clients' soft labels on the public set, pooled without aggregation": with forward KL that is the same
  objective as their equal-weight average (sum_c KL(p_c || q) = C * CE(mean_c p_c, q) - const), so it
  would bound nothing; the union of the data is the private problems, and the best use of them a central
  trainer has here is each labelled by the model trained on it (a teacher trained on all of them would be
  another model, not built here). It also knows which client is expert on which example, which the
  aggregation cannot. Its bytes: what pooling would move (those labels in the reply encoding plus the
  problems' text).
- public-ce (control, no client): CE only (kd_weight 0) on the federation's consensus datasets, i.e. on
  the public set's completions. The demo's public completions are the task's worked solutions, so CE on
  them already teaches the task; this row shows what the clients' soft labels add beyond them.
- fedavg-lora (baseline): FedAvg of LoRA adapters on Flower (`federate.fedavg_lora`) on the same initial
  student: each round every client trains the global adapter on its own private problems' worked solutions
  (all of them, as text: CE only, with --fedavg-train-recipe) and sends it back; the server averages the
  adapters weighted by the clients' example counts; the global student per round is the student with that
  adapter merged. Budget: the same rounds, and local steps x clients = the server's distillation steps per
  round (3 x 84 against 250, batches of 16 both); it trains only the adapter (LoRA on every projection), on
  far more text (each client's 5,000 problems) than the federation's 128 public prompts a round. Bytes: what
  the clients sent (their adapters; the server's broadcast of the global adapter, as large per client, is
  in federate.json), counted from the messages (`round.json`).
- federated-dp (the privacy option's cost): the same federation with `dp_noise_multiplier` set to
  --dp-noise-multiplier (clients noise their labels before they leave them; federate/privacy.py), scored
  after every round; its row names each client's epsilon at the recipe's delta after the last round.
- co-distill (FedMD-style): the same federation with `co_distill_recipe` set to --co-distill-recipe: the
  server sends each round's consensus back and every client distils its own model on it before it labels
  the next round; scored after every round, and each client's own model after the last round beside the
  client alone. Bytes: what the clients sent (as federated, plus their short answers); the consensus the
  server sent back is in federate.json.
- forget and retrain-without (unlearning, --forget-client, default client-1): `reasondistill federate
  --forget CLIENT` on the federated arm's finished run (the consensus recomputed from the others' stored
  labels, the student retrained from the last round it did not influence), against a federation run from
  scratch without that client's model. Both final students are scored; the unlearning table gives, per
  seed, the share of test problems on which their greedy completions are identical, the largest weight
  difference between them, and each path's cost: training seconds (the students' compute.json), the
  federation's labelling seconds (round.json) and the bytes the clients sent (none for the forget path,
  which asks no client).

Scored by greedy exact match on --test-problems test problems of each client level (test split, seed 1:
no training problem of any arm is among them, the split is a hash of the arithmetic content). The table
gives mean ± sd over seeds with a 95% interval over seeds and problems, per level, bytes, and the final
global student minus the best single client, fedavg-lora, the union and the public-ce control, paired by
seed and problem (`seed_problem_bootstrap`). Finished federations, pooled data, students and their scores are
reused on a rerun, so seeds can run as separate processes side by side (each `--seeds S`, the same
OUTPUT_DIR) and one more call with every seed writes the table.

Writes OUTPUT_DIR/federate.md (the command and the table), federate.json (every model's per-problem
results, the problems' levels, bytes per round) and federate_accuracy.png (accuracy per round).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from reasondistill.compress.merge import merge_adapter
from reasondistill.core.arithmetic_task import Problem, generate_problems
from reasondistill.core.logs import setup_logging
from reasondistill.core.markdown_table import markdown_table
from reasondistill.core.recipe import locate_recipe, parse_recipe
from reasondistill.core.results_writer import write_results
from reasondistill.demo.factory import save_initial_model
from reasondistill.demo.federated_clients import build_clients, private_problems
from reasondistill.demo.federated_clients_config import PRIVATE_SEED_OFFSET, FederatedClientsConfig
from reasondistill.demo.scoring import greedy_completions, is_correct
from reasondistill.demo.students import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, paired_difference
from reasondistill.evaluate.metrics import seed_problem_bootstrap
from reasondistill.federate.client_app import soft_labels_for
from reasondistill.federate.consensus import consensus_records, write_consensus
from reasondistill.federate.fedavg_lora import ADAPTER_DIR, FedAvgRound, fedavg_lora, write_client_text
from reasondistill.federate.fedavg_lora_config import FedAvgLoraConfig
from reasondistill.federate.federate import federate
from reasondistill.federate.federate_config import FederateConfig
from reasondistill.federate.public_set import PublicExample, load_public_set
from reasondistill.federate.rounds import CO_DISTILL_FILE, CONSENSUS_DIR, STUDENT_DIR, RoundRecord, round_dir
from reasondistill.federate.server_app import PublicSide, consensus_info, distil_round
from reasondistill.federate.soft_labels import REQUEST, request_content
from reasondistill.federate.unlearning import FORGET_FILE

logger = logging.getLogger("reasondistill.benchmarks.federate_study")

STUDY = "federate"
TEST_SEED = 1  # the demo students' test problems' seed
FEDERATED, FEDAVG_LORA, UNION, PUBLIC_CE = "federated", "fedavg-lora", "union", "public-ce"
DP, FORGET, RETRAIN = "federated-dp", "forget", "retrain-without"
CO_DISTILL = "co-distill"  # the federation whose clients co-distil (FedMD-style)
POOLED_DIR = "pooled"  # a union round's trace dataset
SCORING_TOKENS = 400  # greedy completions' length, as the demo students are scored
MERGED_DIR = "merged"  # a fedavg-lora round's student: the global adapter merged into the initial student


@dataclass
class Measured:
    """One model's greedy exact match on every test problem, in the order of the study's problems."""

    arm: str  # client-i, federated, fedavg-lora, union, public-ce, federated-dp, forget or retrain-without
    round: int  # the round whose student it is; 0 for a client
    seed: int | None  # None: a client, the same model for every seed
    directory: str
    correct: list[float]


def train_recipe_for(source: str, out: Path, seed: int, **fields: float) -> str:
    """`source` (a train recipe) with `seed` and `fields` set, written under `out`; returns its path."""
    settings = yaml.safe_load(locate_recipe(source).read_text()) | {"seed": seed, **fields}
    name = "-".join(["train", f"seed{seed}", *(f"{key}{value}" for key, value in fields.items())])
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return str(path)


def round_bytes(config: FederateConfig) -> list[int]:
    """Bytes the server received from all clients in each round, as its round records say."""
    return [
        sum(RoundRecord.load(round_dir(config.output_dir, r)).bytes_received.values())
        for r in range(1, config.num_rounds + 1)
    ]


def federation_arm(
    federated: FederateConfig, arm: str, out: Path, seed: int, **fields: object
) -> FederateConfig:
    """The federated arm's federation with `fields` changed, in its own OUTPUT_DIR: run, or reused."""
    config = dataclasses.replace(federated, output_dir=str(out / f"{arm}-seed{seed}"), **fields)
    federate(config)
    return config


def consensus_bytes_sent(config: FederateConfig) -> list[int]:
    """Bytes of the consensus the server sent its clients to co-distil on, per round (co_distill.json)."""
    return [
        sum(
            json.loads((round_dir(config.output_dir, r) / CO_DISTILL_FILE).read_text())["bytes_sent"].values()
        )
        for r in range(1, config.num_rounds + 1)
    ]


def private_examples(
    config: FederateConfig,
    clients: FederatedClientsConfig,
    client: int,
    total: int,
    tokenizer: PreTrainedTokenizerBase,
) -> tuple[list[PublicExample], dict]:
    """Client `client`'s first `total` private training problems with their worked solutions, tokenized as
    the public set is, and the settings they were drawn under (checked to be the client's own problems)."""
    settings = config.recipe_settings() | {
        "public-task-levels": [clients.client_levels[client]],
        "public-seed": PRIVATE_SEED_OFFSET + clients.seed + client,
        "public-num-prompts": total,
        "dp-noise-multiplier": 0.0,  # the union arm's labels: the non-private bound
    }
    examples = list(load_public_set(settings, tokenizer).values())
    owned = [p.id for p in private_problems(clients, client)[:total]]
    if [e.prompt_id for e in examples] != owned:  # guards both arms: it must be the clients' own data
        raise RuntimeError(f"client-{client}: the problems drawn are not its private training problems")
    return examples, settings


def client_text_data(
    config: FederateConfig, clients: FederatedClientsConfig, client_count: int, out: Path
) -> list[str]:
    """The fedavg-lora arm's client data: each client's private problems (all it trained on) with their
    worked solutions, as text only (`write_client_text`), written once and reused."""
    tokenizer = AutoTokenizer.from_pretrained(config.student)
    vocab_size = AutoConfig.from_pretrained(config.student).vocab_size
    datasets = []
    for client in range(client_count):
        directory = out / f"client-{client}"
        if not (directory / "README.md").exists():  # the card is written last: the dataset is complete
            examples, _ = private_examples(config, clients, client, clients.private_problems, tokenizer)
            write_client_text(directory, examples, tokenizer, vocab_size, f"client-{client}")
        datasets.append(str(directory))
    return datasets


def fedavg_students(config: FedAvgLoraConfig) -> list[Path]:
    """Each round's global student of a finished FedAvg-LoRA run: its adapter merged into the initial
    student (reused once merged; the tokenizer is written last)."""
    students = []
    for r in range(1, config.num_rounds + 1):
        merged = round_dir(config.output_dir, r) / MERGED_DIR
        if not (merged / "tokenizer_config.json").exists():
            merge_adapter(round_dir(config.output_dir, r) / ADAPTER_DIR, merged)
        students.append(merged)
    return students


def fedavg_bytes(config: FedAvgLoraConfig) -> dict[str, list[int]]:
    """Bytes the clients sent (their adapters) and the server sent (the global adapter) in each round, as
    the round records counted them from the messages."""
    records = [FedAvgRound.load(round_dir(config.output_dir, r)) for r in range(1, config.num_rounds + 1)]
    return {
        "clients_sent": [sum(record.bytes_received.values()) for record in records],
        "server_sent": [sum(record.bytes_sent.values()) for record in records],
    }


def pool_private_data(
    config: FederateConfig, clients: FederatedClientsConfig, client_dirs: list[Path], out: Path
) -> tuple[list[Path], list[int]]:
    """The union arm's data: per round a trace dataset of prompts_per_round private problems in equal shares
    of the clients, each labelled by its owner's model; returns the datasets and the bytes pooling moves."""
    tokenizer = AutoTokenizer.from_pretrained(config.student)
    count = len(client_dirs)
    shares = [
        config.prompts_per_round // count + (i < config.prompts_per_round % count) for i in range(count)
    ]
    datasets, sent = [], [0] * config.num_rounds
    records_by_round: list[list[dict]] = [[] for _ in range(config.num_rounds)]
    for client, (model_dir, share) in enumerate(zip(client_dirs, shares, strict=True)):
        name = f"client-{client}"
        examples, settings = private_examples(config, clients, client, share * config.num_rounds, tokenizer)
        for r in range(config.num_rounds):
            chosen = examples[r * share : (r + 1) * share]
            request = request_content(r + 1, [e.prompt_id for e in chosen], settings)[REQUEST]
            labels = soft_labels_for(request, str(model_dir), name)
            records = consensus_records(chosen, {name: labels}, {name: 1.0}, config.k, tokenizer)
            text = sum(len(x["prompt"].encode()) + len(x["completion"].encode()) for x in records)
            sent[r] += sum(record.count_bytes() for record in labels.to_content().values()) + text
            records_by_round[r] += records
    public = PublicSide({}, tokenizer, AutoConfig.from_pretrained(config.student).vocab_size)
    for r, records in enumerate(records_by_round, start=1):
        directory = round_dir(out, r) / POOLED_DIR
        if not (directory / "README.md").exists():  # the card is written last: the dataset is complete
            weights = {f"client-{i}": 1.0 for i in range(count)}
            info = dataclasses.replace(
                consensus_info(config, public, r, weights),
                teacher=f"each example's owner among {', '.join(weights)} (union arm, round {r})",
            )
            write_consensus(directory, records, info, tokenizer, count)
        datasets.append(directory)
    return datasets, sent


def distil_rounds(config: FederateConfig, datasets: list[Path]) -> Path:
    """The student of `config` distilled round by round on `datasets` from config.student; the last one."""
    student = config.student
    for r, dataset in enumerate(datasets, start=1):
        student = distil_round(config, r, dataset, student)
    return Path(student)


@dataclass(frozen=True)
class Scorer:
    """Greedy scoring of models on the study's test problems, each result kept in `cache` (a file per model
    and measure, keyed by its weights file and the problems) so that a rerun, or another seed's run beside
    this one, computes it once."""

    tokenizer: PreTrainedTokenizerBase
    problems: list[Problem]
    cache: Path
    max_new_tokens: int = SCORING_TOKENS

    def per_problem(self, directory: Path, what: str) -> list:
        """Greedy exact match (`what` = "exact_match") or greedy completion ("completions") per problem."""
        weights = directory / "model.safetensors"
        key = json.dumps([str(weights.resolve()), weights.stat().st_mtime_ns, [p.id for p in self.problems]])
        if what != "exact_match":  # the first measure's files keep their names
            key += what
        if self.max_new_tokens != SCORING_TOKENS:
            key += f"max_new_tokens={self.max_new_tokens}"
        path = self.cache / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
        if path.exists():
            return json.loads(path.read_text())
        model = AutoModelForCausalLM.from_pretrained(directory)
        texts = greedy_completions(model, self.tokenizer, self.problems, max_new_tokens=self.max_new_tokens)
        if what == "exact_match":
            values = [float(is_correct(text, p)) for text, p in zip(texts, self.problems, strict=True)]
        else:
            values = texts
        self.cache.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(f".{os.getpid()}.tmp")
        temp.write_text(json.dumps(values))
        os.replace(temp, path)  # whole or absent: two runs may score side by side
        return values

    def exact_match(self, directory: Path) -> list[float]:
        return self.per_problem(directory, "exact_match")

    def rounds(self, arm: str, config: FederateConfig, seed: int) -> list[Measured]:
        """Every round's global student of a finished federation, scored."""
        students = [round_dir(config.output_dir, r) / STUDENT_DIR for r in range(1, config.num_rounds + 1)]
        return [
            Measured(arm, r, seed, str(student), self.exact_match(student))
            for r, student in enumerate(students, start=1)
        ]


def largest_weight_difference(a: Path, b: Path) -> float:
    """max |w_a - w_b| over every weight of two models of the same shape."""
    first = AutoModelForCausalLM.from_pretrained(a).state_dict()
    second = AutoModelForCausalLM.from_pretrained(b).state_dict()
    return max(float((first[name] - second[name]).abs().max()) for name in first)


def train_seconds(output_dir: str | Path, rounds: range) -> float:
    """Training seconds of a run's students of `rounds`, as each student's compute.json recorded them."""
    return sum(
        json.loads((round_dir(output_dir, r) / STUDENT_DIR / "compute.json").read_text())["train_seconds"]
        for r in rounds
    )


def unlearning_costs(
    federated: FederateConfig,
    retrain: FederateConfig,
    forgotten: str,
    scorer: Scorer,
) -> dict:
    """The forget path against the retrain from scratch, for one seed: agreement of their final students
    and what each path cost (module docstring)."""
    unlearned = Path(federated.output_dir) / f"forget-{forgotten}"
    summary = json.loads((unlearned / FORGET_FILE).read_text())
    rounds = federated.num_rounds
    first = summary["first_round_influenced"]
    records = [RoundRecord.load(round_dir(retrain.output_dir, r)) for r in range(1, rounds + 1)]
    unlearned_student, retrained = (
        Path(summary["student"]),
        round_dir(retrain.output_dir, rounds) / STUDENT_DIR,
    )
    same = [
        a == b
        for a, b in zip(
            scorer.per_problem(unlearned_student, "completions"),
            scorer.per_problem(retrained, "completions"),
            strict=True,
        )
    ]
    return {
        "rounds_retrained": summary["rounds_retrained"],
        "identical_completions": sum(same) / len(same),
        "largest_weight_difference": largest_weight_difference(unlearned_student, retrained),
        "forget_seconds": summary["seconds"],
        "forget_train_seconds": train_seconds(unlearned, range(first, rounds + 1)),
        "retrain_train_seconds": train_seconds(retrain.output_dir, range(1, rounds + 1)),
        "retrain_labelling_seconds": sum(record.seconds for record in records),
        "retrain_bytes": sum(sum(record.bytes_received.values()) for record in records),
    }


def unlearning_table(costs: dict[int, dict], forgotten: str) -> str:
    """Per seed: how alike the unlearned and the retrained student are, and what each path cost."""
    header = ["seed", "rounds retrained", "identical greedy completions", "largest |weight difference|"]
    header += ["forget: seconds (training)", "retrain: training s", "retrain: labelling s"]
    header += ["retrain: bytes from clients"]
    rows = [
        [
            seed,
            c["rounds_retrained"],
            f"{c['identical_completions']:.1%}",
            f"{c['largest_weight_difference']:.2e}",
            f"{c['forget_seconds']:.0f} ({c['forget_train_seconds']:.0f})",
            f"{c['retrain_train_seconds']:.0f}",
            f"{c['retrain_labelling_seconds']:.0f}",
            f"{c['retrain_bytes']:,}",
        ]
        for seed, c in sorted(costs.items())
    ]
    title = f"Unlearning {forgotten}: `--forget {forgotten}` against a federation run without it\n\n"
    return title + markdown_table(header, rows, numeric=range(len(header)))


def cell(scores: np.ndarray, interval: bool = True) -> str:
    """'mean ± sd over seeds [95% CI over seeds and problems]' of per-problem scores [seeds, problems]."""
    per_seed = scores.mean(axis=1)
    sd = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
    text = f"{per_seed.mean():.1%} ± {sd:.1%}"
    if interval:
        _, low, high = seed_problem_bootstrap(scores, BOOTSTRAP_SEED, BOOTSTRAP_RESAMPLES)
        text += f" [{low:.1%}, {high:.1%}]"
    return text


def scores_of(measured: list[Measured], arm: str, round_number: int, seeds: list[int]) -> np.ndarray:
    """[seeds, problems] of one model; a client's single run repeated for every seed (for pairing)."""
    runs = {m.seed: m.correct for m in measured if m.arm == arm and m.round == round_number}
    return np.array([runs[None] if None in runs else runs[s] for s in seeds])


def summary_table(
    measured: list[Measured],
    problem_levels: np.ndarray,
    seeds: list[int],
    rounds: int,
    sent: dict[str, list[float]],
    names: dict[str, str],
) -> str:
    """Each model's exact match overall and per level and the bytes it cost (per round: the last round's),
    then the final global student minus the best client, fedavg-lora, the union and the public-ce control,
    paired by seed and problem; with the optional arms, federated-dp − federated, forget − retrain-without
    and federated − retrain-without. `names`: how an arm's rows name it."""
    levels = sorted(set(problem_levels.tolist()))
    header = ["model", "seeds", "exact match ± sd [95% CI]", *(f"level {lv}" for lv in levels)]
    header += ["bytes sent, round", "bytes sent, total"]

    def row(name: str, scores: np.ndarray, per_round: str, total: str) -> list[object]:
        by_level = [cell(scores[:, problem_levels == lv], interval=False) for lv in levels]
        return [name, len(scores), cell(scores), *by_level, per_round, total]

    def paired(name: str, a: np.ndarray, b: np.ndarray) -> list[object]:
        by_level = [
            paired_difference(a[:, problem_levels == lv], b[:, problem_levels == lv]) for lv in levels
        ]
        return [f"{name} (paired)", len(a), paired_difference(a, b), *by_level, "-", "-"]

    clients = sorted({m.arm for m in measured if m.seed is None})
    rows = []
    for client in clients:  # a client alone sends nothing
        rows.append(row(f"{client} alone", scores_of(measured, client, 0, seeds[:1]), "0", "0"))
    present = {m.arm for m in measured}
    for arm in (a for a in (FEDERATED, DP, CO_DISTILL, FEDAVG_LORA) if a in present):
        for r in range(1, rounds + 1):
            rows.append(
                row(
                    f"{names.get(arm, arm)}, round {r}",
                    scores_of(measured, arm, r, seeds),
                    f"{sent[arm][r - 1]:,.0f}",
                    f"{sum(sent[arm][:r]):,.0f}",
                )
            )
    union = scores_of(measured, UNION, rounds, seeds)
    rows.append(
        row(
            f"union of the clients' data, round {rounds}",
            union,
            f"{sent[UNION][-1]:,.0f}",
            f"{sum(sent[UNION]):,.0f}",
        )
    )
    public_ce = scores_of(measured, PUBLIC_CE, rounds, seeds)
    rows.append(row(f"public-ce (no client), round {rounds}", public_ce, "0", "0"))
    for arm in (a for a in (FORGET, RETRAIN) if a in present):
        total = f"{sum(sent[arm]):,.0f}"
        rows.append(row(f"{names[arm]}, round {rounds}", scores_of(measured, arm, rounds, seeds), "-", total))
    best = max(clients, key=lambda c: float(scores_of(measured, c, 0, seeds[:1]).mean()))
    final = scores_of(measured, FEDERATED, rounds, seeds)
    rows.append(paired(f"federated − best client ({best})", final, scores_of(measured, best, 0, seeds)))
    rows.append(paired("federated − fedavg-lora", final, scores_of(measured, FEDAVG_LORA, rounds, seeds)))
    rows.append(paired("federated − union", final, union))
    rows.append(paired("federated − public-ce", final, public_ce))
    if DP in present:
        rows.append(paired("federated-dp − federated", scores_of(measured, DP, rounds, seeds), final))
    if CO_DISTILL in present:
        co_distilled = scores_of(measured, CO_DISTILL, rounds, seeds)
        rows.append(paired("co-distill − federated", co_distilled, final))
        for client in (c for c in clients if f"{client} co-distilled" in present):
            rows.append(
                row(
                    f"{client} after co-distilling",
                    scores_of(measured, f"{client} co-distilled", rounds, seeds),
                    "-",
                    "-",
                )
            )
            rows.append(
                paired(
                    f"{client} after co-distilling − alone",
                    scores_of(measured, f"{client} co-distilled", rounds, seeds),
                    scores_of(measured, client, 0, seeds),
                )
            )
    if FORGET in present:
        retrained = scores_of(measured, RETRAIN, rounds, seeds)
        rows.append(paired("forget − retrain-without", scores_of(measured, FORGET, rounds, seeds), retrained))
        rows.append(paired("federated − retrain-without", final, retrained))
    return markdown_table(header, rows, numeric=range(1, len(header)))


def plot_rounds(measured: list[Measured], seeds: list[int], rounds: int, path: Path) -> None:
    """The global student's exact match per round, federated and fedavg-lora (mean, 95% interval over seeds
    and problems), beside the final union and public-ce students and each client alone (flat lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4))
    x = list(range(1, rounds + 1))
    arms = [(FEDERATED, "federated global student"), (FEDAVG_LORA, "fedavg-lora global student")]
    arms += [(DP, "federated, noised labels")] if any(m.arm == DP for m in measured) else []
    arms += (
        [(CO_DISTILL, "federated, clients co-distil")] if any(m.arm == CO_DISTILL for m in measured) else []
    )
    for arm, label in arms:
        points = [
            seed_problem_bootstrap(scores_of(measured, arm, r, seeds), BOOTSTRAP_SEED, BOOTSTRAP_RESAMPLES)
            for r in x
        ]
        means, lows, highs = (100 * np.array(column) for column in zip(*points, strict=True))
        axes.plot(x, means, marker="o", label=label)
        axes.fill_between(x, lows, highs, alpha=0.2)
    references = [(UNION, rounds, "--", "C2", "union of the clients' data (final)")]
    references.append((PUBLIC_CE, rounds, ":", "C3", "public-ce, no client (final)"))
    clients = sorted({m.arm for m in measured if m.seed is None})
    references += [(arm, 0, "-.", "grey", f"{arm} alone") for arm in clients]
    for arm, r, style, color, label in references:
        level = 100 * scores_of(measured, arm, r, seeds).mean()
        axes.axhline(level, linestyle=style, color=color, linewidth=1, label=label)
    axes.set_xticks(x)
    axes.set_xlabel("round")
    axes.set_ylabel("exact match on every level, % (95% CI)")
    axes.set_title("Federated distillation: accuracy per round")
    axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside: lines span the plot
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizer-dir", required=True, help="the demo teacher's directory (its tokenizer)")
    parser.add_argument("--federate-recipe", default="recipes/demo/federated.yaml")
    parser.add_argument("--clients-recipe", default="recipes/demo/federated_clients.yaml")
    parser.add_argument("--train-recipe", help="every arm's train recipe; default: the federate recipe's")
    parser.add_argument(
        "--fedavg-train-recipe",
        default="recipes/demo/fedavg_lora_train.yaml",
        help="the fedavg-lora clients' local training (use_peft; max_steps per round)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--num-rounds", type=int, help="default: the federate recipe's")
    parser.add_argument("--prompts-per-round", type=int, help="default: the federate recipe's")
    parser.add_argument("--test-problems", type=int, default=100, help="test problems per client level")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=SCORING_TOKENS,
        help="greedy completions' length in scoring (the demo's 400; tests use fewer on untrained models)",
    )
    parser.add_argument(
        "--dp-noise-multiplier",
        type=float,
        default=1.0,
        help="the federated-dp arm's noise multiplier; 0: no such arm",
    )
    parser.add_argument(
        "--co-distill-recipe",
        default="recipes/demo/federated_co_distill.yaml",
        help="the co-distill arm's clients' local recipe (the federation with co_distill_recipe); '': none",
    )
    parser.add_argument(
        "--forget-client", default="client-1", help="the forget and retrain-without arms' client; '': none"
    )
    parser.add_argument("--output-dir", default="outputs/federate_study")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging("info")
    out = Path(args.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_dir)
    (clients,) = parse_recipe(args.clients_recipe, (FederatedClientsConfig,))
    client_dirs = build_clients(clients, args.tokenizer_dir)
    overrides = ["--client_models", *map(str, client_dirs)]
    for flag, value in (("--num_rounds", args.num_rounds), ("--prompts_per_round", args.prompts_per_round)):
        overrides += [flag, str(value)] if value is not None else []
    (recipe,) = parse_recipe(args.federate_recipe, (FederateConfig,), overrides)
    recipe = dataclasses.replace(recipe, evaluate_recipe=None)  # every arm is scored here, the same way
    train_recipe, rounds = args.train_recipe or recipe.train_recipe, recipe.num_rounds
    levels = sorted(set(clients.client_levels))
    problems = [p for lv in levels for p in generate_problems("test", args.test_problems, [lv], TEST_SEED)]
    scorer = Scorer(tokenizer, problems, out / "scores", args.max_new_tokens)

    measured = [
        Measured(f"client-{i}", 0, None, str(d), scorer.exact_match(d)) for i, d in enumerate(client_dirs)
    ]
    union_data: list[Path] | None = None
    union_bytes: list[int] = []
    federated_bytes: dict[int, list[int]] = {}  # seed -> bytes the server received per round
    fedavg_sent: dict[int, dict[str, list[int]]] = {}  # seed -> bytes each way per round
    client_text: list[str] | None = None
    dp_bytes: dict[int, list[int]] = {}
    co_distill_bytes: dict[int, dict[str, list[int]]] = {}  # seed -> labels up, consensus down
    privacy: dict[int, dict] = {}  # seed -> the dp arm's last round's privacy report
    forget_bytes: dict[int, list[int]] = {}  # seed -> the retrain's bytes per round (the forget path: none)
    unlearning: dict[int, dict] = {}
    forgotten = args.forget_client
    if forgotten and forgotten not in {f"client-{i}" for i in range(len(client_dirs))}:
        last = len(client_dirs) - 1
        raise SystemExit(f"--forget-client {forgotten}: the clients are client-0 .. client-{last}")
    for seed in args.seeds:
        init = out / f"init-student-seed{seed}"
        save_initial_model("student", tokenizer, init, seed)
        recipes = out / "recipes"
        federated = dataclasses.replace(
            recipe,
            output_dir=str(out / f"{FEDERATED}-seed{seed}"),
            student=str(init),
            train_recipe=train_recipe_for(train_recipe, recipes, seed),
            seed=seed,
        )
        federate(federated)
        federated_bytes[seed] = round_bytes(federated)
        if union_data is None:  # the clients' labels do not depend on the seed: pooled once
            union_data, union_bytes = pool_private_data(federated, clients, client_dirs, out / "union-data")
        union = dataclasses.replace(federated, output_dir=str(out / f"{UNION}-seed{seed}"))
        public_ce = dataclasses.replace(
            federated,
            output_dir=str(out / f"{PUBLIC_CE}-seed{seed}"),
            train_recipe=train_recipe_for(train_recipe, recipes, seed, kd_weight=0.0),
        )
        if client_text is None:  # the clients' own text does not depend on the seed: written once
            client_text = client_text_data(federated, clients, len(client_dirs), out / "fedavg-lora-data")
        fedavg = FedAvgLoraConfig(
            output_dir=str(out / f"{FEDAVG_LORA}-seed{seed}"),
            student=str(init),
            train_recipe=train_recipe_for(args.fedavg_train_recipe, recipes / FEDAVG_LORA, seed),
            client_data=client_text,
            num_rounds=rounds,
            min_clients=recipe.min_clients,
            round_timeout=recipe.round_timeout,
            num_cpus_per_client=recipe.num_cpus_per_client,
            simulation_num_cpus=recipe.simulation_num_cpus,
            seed=seed,
        )
        fedavg_lora(fedavg)
        fedavg_sent[seed] = fedavg_bytes(fedavg)
        for r, student in enumerate(fedavg_students(fedavg), start=1):
            measured.append(Measured(FEDAVG_LORA, r, seed, str(student), scorer.exact_match(student)))
        consensus = [round_dir(federated.output_dir, r) / CONSENSUS_DIR for r in range(1, rounds + 1)]
        finals = {
            UNION: distil_rounds(union, union_data),
            PUBLIC_CE: distil_rounds(public_ce, consensus),
        }
        measured += scorer.rounds(FEDERATED, federated, seed)

        if args.dp_noise_multiplier:
            noised = federation_arm(federated, DP, out, seed, dp_noise_multiplier=args.dp_noise_multiplier)
            measured += scorer.rounds(DP, noised, seed)
            dp_bytes[seed] = round_bytes(noised)
            privacy[seed] = RoundRecord.load(round_dir(noised.output_dir, rounds)).privacy
        if args.co_distill_recipe:
            co_distilling = federation_arm(
                federated, CO_DISTILL, out, seed, co_distill_recipe=args.co_distill_recipe
            )
            measured += scorer.rounds(CO_DISTILL, co_distilling, seed)
            co_distill_bytes[seed] = {
                "clients_sent": round_bytes(co_distilling),
                "server_sent": consensus_bytes_sent(co_distilling),
            }
            federation_id = co_distilling.co_distill_federation()
            for i, model in enumerate(client_dirs):  # each client's own model after the last round
                after = Path(f"{model}-co-distilled") / federation_id / f"round-{rounds:03d}" / "model"
                arm = f"client-{i} co-distilled"
                measured.append(Measured(arm, rounds, seed, str(after), scorer.exact_match(after)))
        if forgotten:
            federate(dataclasses.replace(federated, forget=[forgotten]))
            kept = [str(d) for i, d in enumerate(client_dirs) if f"client-{i}" != forgotten]
            retrain = dataclasses.replace(
                federated, output_dir=str(out / f"{RETRAIN}-seed{seed}"), client_models=kept
            )
            federate(retrain)
            forget_bytes[seed] = round_bytes(retrain)
            finals |= {
                FORGET: round_dir(Path(federated.output_dir) / f"forget-{forgotten}", rounds) / STUDENT_DIR,
                RETRAIN: round_dir(retrain.output_dir, rounds) / STUDENT_DIR,
            }
            unlearning[seed] = unlearning_costs(federated, retrain, forgotten, scorer)
        for arm, student in finals.items():
            measured.append(Measured(arm, rounds, seed, str(student), scorer.exact_match(student)))
        logger.info("seed %d measured", seed)

    problem_levels = np.array([p.level for p in problems])
    sent = {
        FEDERATED: list(np.mean(list(federated_bytes.values()), axis=0)),
        FEDAVG_LORA: list(np.mean([b["clients_sent"] for b in fedavg_sent.values()], axis=0)),
        UNION: union_bytes,
    }
    names = {}
    if privacy:
        sent[DP] = list(np.mean(list(dp_bytes.values()), axis=0))
        report = next(iter(privacy.values()))
        epsilon = max(max(p["epsilon"].values()) for p in privacy.values())
        z, delta = report["noise_multiplier"], report["delta"]
        names[DP] = f"federated-dp z={z:g} (ε ≤ {epsilon:.3g} at δ={delta:g})"
    if co_distill_bytes:
        sent[CO_DISTILL] = list(np.mean([b["clients_sent"] for b in co_distill_bytes.values()], axis=0))
    if unlearning:
        sent[FORGET] = [0] * rounds  # the forget path asks no client
        sent[RETRAIN] = list(np.mean(list(forget_bytes.values()), axis=0))
        names[FORGET] = f"forget {forgotten} (unlearned)"
        names[RETRAIN] = f"retrained without {forgotten}"
    table = summary_table(measured, problem_levels, args.seeds, rounds, sent, names)
    if unlearning:
        table += "\n\n" + unlearning_table(unlearning, forgotten)
    command = shlex.join(
        [".venv/bin/python", "benchmarks/federate_study.py", *(sys.argv[1:] if argv is None else argv)]
    )
    text = f"Command: `{command}`\n\n{table}"
    data = {
        "problems": [{"id": p.id, "level": p.level} for p in problems],
        "bytes_per_round": {
            FEDERATED: federated_bytes,
            FEDAVG_LORA: fedavg_sent,
            UNION: union_bytes,
            DP: dp_bytes,
            CO_DISTILL: co_distill_bytes,
            RETRAIN: forget_bytes,
        },
        "privacy": privacy,
        "unlearning": unlearning,
        "models": [dataclasses.asdict(m) for m in measured],
    }
    write_results(out, STUDY, data, text)
    plot_rounds(measured, args.seeds, rounds, out / f"{STUDY}_accuracy.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
