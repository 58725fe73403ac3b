"""Merge, bitsandbytes quantization, hardware profiles and the quantize stage, on real tiny models."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from reasondistill.compress.bnb_quantize import quantize_bnb
from reasondistill.compress.hardware_profiles import PROFILES, get_profile
from reasondistill.compress.merge import load_merged, merge_adapter
from reasondistill.compress.quantize_config import QuantizeConfig
from reasondistill.core.recipe import RecipeError, parse_recipe

PROMPT = "<|im_start|>user\nTom has 12 apples and gets 7 more.<|im_end|>\n<|im_start|>assistant\n"


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids).logits


@pytest.fixture(scope="module")
def prompt_ids(demo_tokenizer):
    return demo_tokenizer(PROMPT, return_tensors="pt").input_ids


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory, prompt_ids):
    """A LoRA adapter on the tiny model with non-zero B matrices, and the PEFT model's logits."""
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:  # freshly initialised B is zero, which would make the merge trivially right
                parameter.normal_(std=0.05)
    directory = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(directory)
    return directory, logits(peft_model, prompt_ids)


def test_merge_equals_base_plus_adapter(adapter, tmp_path, prompt_ids, tiny_model_dir):
    adapter_dir, expected = adapter
    merged_dir = merge_adapter(adapter_dir, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert not (merged_dir / "adapter_config.json").exists()
    # float32 merge: W + (alpha/r) B A folded into W differs from the two-path sum only by rounding
    torch.testing.assert_close(logits(merged, prompt_ids), expected, atol=1e-4, rtol=1e-4)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert (logits(base, prompt_ids) - expected).abs().max() > 1e-2  # the adapter really changes outputs
    assert (merged_dir / "tokenizer.json").exists()


def test_merge_refuses_quantized_base_and_bad_dirs(adapter, tmp_path, tiny_model_dir):
    adapter_dir, _ = adapter
    nf4 = quantize_bnb(tiny_model_dir, tmp_path / "nf4")
    with pytest.raises(ValueError, match="already quantized"):
        load_merged(adapter_dir, base_model=str(nf4))
    with pytest.raises(ValueError, match="neither config.json"):
        load_merged(tmp_path)


@pytest.mark.parametrize("bits", [4, 8])
def test_bnb_quantized_model_reloads_and_generates(bits, tiny_model_dir, tmp_path, prompt_ids):
    """Quantize, save, reload: the reloaded model equals the in-memory one and generates."""
    from reasondistill.compress.bnb_quantize import bnb_config

    out = quantize_bnb(tiny_model_dir, tmp_path / f"q{bits}", bits=bits)
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["load_in_4bit" if bits == 4 else "load_in_8bit"]
    if bits == 4:
        assert config["bnb_4bit_quant_type"] == "nf4" and config["bnb_4bit_use_double_quant"]
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    in_memory = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, quantization_config=bnb_config(bits), dtype=torch.float32, device_map="cpu"
    )
    torch.testing.assert_close(logits(reloaded, prompt_ids), logits(in_memory, prompt_ids), atol=0, rtol=0)
    full = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert (logits(reloaded, prompt_ids) - logits(full, prompt_ids)).abs().max() > 0  # really quantized
    generated = reloaded.generate(prompt_ids, max_new_tokens=5, do_sample=False)
    assert generated.shape == (1, prompt_ids.shape[1] + 5)
    weight_bytes = (out / "model.safetensors").stat().st_size
    assert weight_bytes < (tiny_model_dir / "model.safetensors").stat().st_size / (3 if bits == 4 else 2)


def test_bnb_refuses_quantized_source(tiny_model_dir, tmp_path):
    nf4 = quantize_bnb(tiny_model_dir, tmp_path / "nf4")
    with pytest.raises(ValueError, match="already quantized"):
        quantize_bnb(nf4, tmp_path / "again")


def test_profiles_and_config_checks(tmp_path):
    assert {"gguf-q4", "nf4", "int8"} <= set(PROFILES)
    assert get_profile("gguf-q4").artifact == "model-Q4_0.gguf"
    with pytest.raises(ValueError, match="unknown hardware profile 'gguf-q3'; choose from"):
        QuantizeConfig(model="m", profiles=["gguf-q3"])
    recipe = tmp_path / "q.yaml"
    recipe.write_text("model: some/dir\nprofiles: [nf4]\nspeed_tokens: 0\n")
    with pytest.raises(RecipeError, match="speed_tokens must be at least 1"):
        parse_recipe(recipe, (QuantizeConfig,))


def test_measurement_table():
    from reasondistill.compress.quantize import format_table

    row = {"artifact": "nf4", "runtime": "transformers", "size_mb": 1.234, "size_vs_bf16": 0.4}
    row |= {"peak_rss_mb": 550.4, "model_rss_mb": 67.6, "tokens_per_s": 299.5, "pass@1": 0.25}
    assert format_table([row, row | {"pass@1": None, "accuracy_kept": 0.5}]).splitlines() == [
        "| artifact | runtime | size MB | % of bf16 | peak RSS MB | model RSS MB | tokens/s | pass@1 "
        "| accuracy kept |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        "| nf4 | transformers | 1.23 | 40% | 550 | 68 | 300 | 25.0% | - |",
        "| nf4 | transformers | 1.23 | 40% | 550 | 68 | 300 | - | 50.0% |",
    ]


def test_quantize_stage_builds_and_measures(adapter, tmp_path, tiny_model_dir):
    """The whole stage from an adapter: merge, one GGUF and one NF4 artifact, size/speed/accuracy rows."""
    from reasondistill.compress.quantize import run_quantize

    adapter_dir, _ = adapter
    out = tmp_path / "quantized"
    overrides = ["--model", str(adapter_dir), "--output_dir", str(out), "--profiles", "gguf-q4", "nf4"]
    overrides += ["--num_problems", "2", "--max_tokens", "16", "--speed_tokens", "8", "--threads", "1"]
    assert run_quantize(None, overrides) == 0
    rows = json.loads((out / "measurements.json").read_text())
    assert [row["artifact"] for row in rows] == ["reference", "gguf-q4", "nf4"]
    assert all(row["tokens_per_s"] > 0 and row["peak_rss_mb"] > 0 for row in rows)
    assert rows[1]["size_vs_bf16"] < 0.5 and rows[2]["size_vs_bf16"] < 0.6  # tiny model: embedding-heavy
    assert all(0 <= row["pass@1"] <= 1 for row in rows)
    assert (out / "merged" / "config.json").exists() and (out / "eval" / "report.md").exists()
    assert "| gguf-q4 |" in (out / "measurements.md").read_text()
