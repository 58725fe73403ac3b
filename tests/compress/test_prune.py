"""Depth and width pruning of the tiny Qwen2: exact checks on planted redundancy, transformers and vLLM."""

import copy
import json

import pytest
import torch
from conftest import plant_redundancy
from transformers import AutoModelForCausalLM, AutoTokenizer

from reasondistill.cli import main
from reasondistill.compress.prune import (
    calibration_batches,
    choose_layers_to_drop,
    continuation_kl,
    keep_layers,
    prune_model,
    reference_topk,
)
from reasondistill.compress.prune_config import PruneConfig

PROMPT = "<|im_start|>user\nTom has 12 apples and gets 7 more.<|im_end|>\n<|im_start|>assistant\n"
CALIBRATION = ["--num_calibration", "8", "--calibration_tokens", "8", "--batch_size", "4"]


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids).logits


@pytest.fixture(scope="module")
def planted_dir(tiny_model_dir, tmp_path_factory, demo_tokenizer):
    """The tiny model with layer 2 the identity and MLP channels 0-31 dead (conftest.plant_redundancy)."""
    return plant_redundancy(tiny_model_dir, demo_tokenizer, 2, tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="module")
def pruned_dir(planted_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned")
    args = [
        "--model",
        str(planted_dir),
        "--output_dir",
        str(out),
        "--num_layers",
        "3",
        "--intermediate_size",
        "352",
    ]
    assert main(["prune", *args, *CALIBRATION]) == 0
    return out


def test_pruning_removes_exactly_the_planted_redundancy(planted_dir, pruned_dir, demo_tokenizer):
    info = json.loads((pruned_dir / "prune_info.json").read_text())
    assert info["kept_layers"] == [0, 1, 3] and info["depth_criterion"] == "kl"
    scores = info["depth_rounds"][0]["scores"]
    assert scores["2"] < 1e-6 < min(v for k, v in scores.items() if k != "2")
    original = AutoModelForCausalLM.from_pretrained(planted_dir)
    pruned = AutoModelForCausalLM.from_pretrained(pruned_dir)
    ids = demo_tokenizer(PROMPT, return_tensors="pt").input_ids
    # only an identity layer and zero channels went, so the function is unchanged up to float rounding
    torch.testing.assert_close(logits(pruned, ids), logits(original, ids), atol=1e-5, rtol=1e-5)
    for layer in pruned.model.layers:
        assert layer.mlp.up_proj.weight.abs().sum(dim=1).min() > 0  # no dead channel survived


@pytest.mark.parametrize("criterion", ["kl", "cosine"])
def test_both_depth_criteria_find_the_identity_layer(planted_dir, criterion):
    """Bypassing the planted identity layer changes nothing: its score is 0 (no KL to the unpruned model's
    distribution, no cosine distance), and every other layer's is clearly above it."""
    model = AutoModelForCausalLM.from_pretrained(planted_dir).eval()
    config = PruneConfig(model=str(planted_dir), num_calibration=8, calibration_tokens=8, batch_size=4)
    batches = calibration_batches(model, AutoTokenizer.from_pretrained(planted_dir), config)
    (first,) = choose_layers_to_drop(model, batches, 1, criterion)
    assert first["dropped"] == 2
    assert abs(first["scores"][2]) < 1e-6 < 1e-3 < min(v for k, v in first["scores"].items() if k != 2)


def test_continuation_kl_equals_the_exact_kl_to_the_model_without_those_layers(tiny_model_dir):
    """Brute-force reference: the layers physically removed (keep_layers), each sequence run alone without
    its padding, and KL(unpruned || pruned) summed over the whole vocabulary token by token at the
    continuation's positions (after the prompt, up to and including the end of turn); top_k = vocabulary
    size, so the criterion's top-k + tail buckets are the full distribution."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = PruneConfig(model=str(tiny_model_dir), num_calibration=6, calibration_tokens=10, batch_size=4)
    batches = calibration_batches(model, tokenizer, config)
    vocab = model.config.vocab_size
    measured = continuation_kl(model, batches, reference_topk(model, batches, top_k=vocab), skip={1, 2})
    smaller = copy.deepcopy(model)
    keep_layers(smaller, [0, 3])
    total, count = 0.0, 0
    for batch in batches:
        for row in range(batch["input_ids"].shape[0]):
            real = batch["attention_mask"][row].bool()
            ids, labels = batch["input_ids"][row][real], batch["labels"][row][real]
            with torch.no_grad():
                p = torch.log_softmax(model(ids[None]).logits[0].double(), -1)
                q = torch.log_softmax(smaller(ids[None]).logits[0].double(), -1)
            for t in range(1, len(ids)):
                if labels[t] != -100:
                    total += sum(
                        p[t - 1, v].exp().item() * (p[t - 1, v] - q[t - 1, v]).item() for v in range(vocab)
                    )
                    count += 1
    assert count >= 6 * 5 and total / count > 1e-3  # every sequence contributes; removal changes something
    assert measured == pytest.approx(total / count, rel=1e-3)


def test_pruned_model_loads_in_transformers_with_expected_shapes(pruned_dir, tiny_model_dir):
    config = json.loads((pruned_dir / "config.json").read_text())
    assert config["num_hidden_layers"] == 3 and config["intermediate_size"] == 352
    assert len(config["layer_types"]) == 3
    model = AutoModelForCausalLM.from_pretrained(pruned_dir)
    hidden = model.config.hidden_size
    for index, layer in enumerate(model.model.layers):
        assert layer.self_attn.layer_idx == index  # KV-cache slots renumbered
        assert layer.mlp.gate_proj.weight.shape == layer.mlp.up_proj.weight.shape == (352, hidden)
        assert layer.mlp.down_proj.weight.shape == (hidden, 352)
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).num_parameters()
    assert model.num_parameters() < before
    out = model.generate(torch.tensor([[1, 5, 6]]), max_new_tokens=4, do_sample=False)  # KV cache works
    assert out.shape == (1, 7)


def test_prune_refuses_bad_sizes(tiny_model_dir, capsys):
    with pytest.raises(ValueError, match="multiple of 32"):
        PruneConfig(model="m", intermediate_size=100)
    with pytest.raises(ValueError, match="set calibration_tokens .* or depth_criterion: cosine"):
        PruneConfig(model="m", num_layers=2, calibration_tokens=0)
    with pytest.raises(ValueError, match="depth_criterion must be one of"):
        PruneConfig(model="m", depth_criterion="random")
    with pytest.raises(ValueError, match="must not exceed"):
        prune_model(PruneConfig(model=str(tiny_model_dir), num_layers=9))
    assert main(["prune", "--model", str(tiny_model_dir), "--num_layers", "0"]) == 2
    assert "num_layers must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_pruned_model_runs_in_vllm(pruned_dir, demo_tokenizer):
    """One vLLM engine on the pruned model: it loads the new shapes and decodes like transformers."""
    from conftest import engine_config

    from reasondistill.core.engines import SamplingConfig, TransformersEngine, VllmEngine

    prompt = demo_tokenizer(PROMPT)["input_ids"]
    sampling = SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_tokens=12)
    engine = VllmEngine(engine_config(pruned_dir))
    try:
        hf_config = engine.llm.llm_engine.model_config.hf_config
        assert (hf_config.num_hidden_layers, hf_config.intermediate_size) == (3, 352)
        (vllm_out,) = engine.sample([prompt], sampling, [0])
    finally:
        engine.close()
    (hf_out,) = TransformersEngine(engine_config(pruned_dir, backend="transformers")).sample(
        [prompt], sampling, [0]
    )
    assert vllm_out[0].token_ids.tolist() == hf_out[0].token_ids.tolist()
