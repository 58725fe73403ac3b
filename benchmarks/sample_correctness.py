"""What a student samples on the prompts it trained on, and on questions it never saw (issue #14).

    .venv/bin/python benchmarks/sample_correctness.py --traces DIR --num-traces 256 \
        --students DIR [DIR ...] [--prompts 256] [--recipe recipes/demo/train.yaml] [--seed 0]

On-policy steps after SFT gained 4 points sampling after the 256 traces' own prompts and 21 points after
4,096 new questions (docs/benchmarks.md, "On-policy prompts beyond the traces"). The proposed reason: on
prompts whose teacher answers it trained on dozens of times the student mostly reproduces a memorised
answer, so the teacher's per-token scores of its samples have little left to correct. This measures it.

For each student, one completion per prompt at the on-policy sampler's settings (the recipe's
on_policy_temperature and on_policy_max_new_tokens, `TransformersSampler`) on two prompt sets of the
task's training split, rendered as the traces' prompts were (as `on_policy_prompts` renders them):
- traces: `--prompts` of the questions of the first `--num-traces` traces (the subset `num_traces`
  trains on);
- new: as many training-split questions that no trace answers.
Per set: the share of samples with the right final answer and the share identical to one of the
teacher's traces of that question (the memorised answer; 0 for new questions by construction), each with
a 95% interval over prompts, and the mean number of sampled tokens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import ModelConfig

from reasondistill.core.arithmetic_task import generate_problems
from reasondistill.core.markdown_table import markdown_table
from reasondistill.core.recipe import PACKAGE_DIR, parse_recipe
from reasondistill.core.traces import load_traces, read_info
from reasondistill.demo.scoring import is_correct
from reasondistill.evaluate.metrics import seed_problem_bootstrap
from reasondistill.train.distill_config import DistillConfig
from reasondistill.train.distill_data import load_on_policy_prompts, load_trace_dataset
from reasondistill.train.on_policy import TransformersSampler

HEADER = ("student", "prompts", "n", "correct [95% CI]", "identical to a teacher trace [95% CI]", "tokens")
BOOTSTRAP_SEED, BOOTSTRAP_RESAMPLES = 0, 2000


def share(values: list[float]) -> str:
    mean, low, high = seed_problem_bootstrap(np.array([values]), BOOTSTRAP_SEED, BOOTSTRAP_RESAMPLES)
    return f"{mean:.1%} [{low:.1%}, {high:.1%}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--traces", required=True, help="the teacher's verified training traces")
    parser.add_argument("--num-traces", type=int, required=True, help="the subset the students trained on")
    parser.add_argument("--students", nargs="+", required=True, help="student model directories")
    parser.add_argument("--prompts", type=int, default=256, help="prompts per set")
    parser.add_argument("--recipe", default=str(PACKAGE_DIR / "recipes" / "demo" / "train.yaml"))
    parser.add_argument("--pool", type=int, default=4096, help="training-split questions to draw from")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    (_, train_args) = parse_recipe(Path(args.recipe), (ModelConfig, DistillConfig))
    tokenizer = AutoTokenizer.from_pretrained(args.students[0])
    info = read_info(args.traces)
    # the questions `on_policy_prompts: task:arithmetic` draws from, in its order (generate's defaults)
    problems = generate_problems("train", args.pool, [1, 2, 3], 0)
    rendered, dropped = load_on_policy_prompts(
        "task:arithmetic", "train", args.pool, "question", info, tokenizer, None, None
    )
    assert dropped == 0  # no max_length: every question is kept, index i is problems[i]
    index_of = {tuple(ids): i for i, ids in enumerate(rendered.student)}
    # the subset the recipe trains on (the same filters before the same shuffle)
    subset, _, _ = load_trace_dataset(
        args.traces, train_args.only_correct, train_args.max_length, num_traces=args.num_traces
    )
    trained = sorted({index_of[tuple(ids)] for ids in subset["prompt_token_ids"]})
    # the teacher's answers per question the recipe trains on, every sample (what a student may memorise)
    traces = load_traces(args.traces)
    if train_args.only_correct:
        traces = traces.filter(lambda correct: correct, input_columns="correct")
    answers: dict[str, set[str]] = {}
    for question, completion in zip(traces["question"], traces["completion"], strict=True):
        answers.setdefault(question, set()).add(completion.strip())
    answered = {problems[i].question for i in range(len(problems))} & set(answers)
    new = [i for i, p in enumerate(problems) if p.question not in answered][: args.prompts]
    sets = {"traces": trained[: args.prompts], "new": new}

    sampler = TransformersSampler(train_args.student_sampling(), tokenizer.pad_token_id)
    rows = []
    for directory in args.students:
        model = AutoModelForCausalLM.from_pretrained(directory)
        for name, indices in sets.items():
            completions = sampler.sample(model, [rendered.student[i] for i in indices], args.seed)
            texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
            correct = [float(is_correct(t, problems[i])) for t, i in zip(texts, indices, strict=True)]
            memorised = [
                float(t.strip() in answers.get(problems[i].question, ()))
                for t, i in zip(texts, indices, strict=True)
            ]
            tokens = np.mean([len(c) for c in completions])
            rows.append([directory, name, len(indices), share(correct), share(memorised), f"{tokens:.0f}"])
            print(markdown_table(HEADER, rows[-1:], numeric=(2, 5)), flush=True)
    print(f"\n{markdown_table(HEADER, rows, numeric=(2, 5))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
