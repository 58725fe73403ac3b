"""GGUF export: the gguf reader and transformers read it back (always); llama.cpp runs it (when installed).

llama-cpp-python is an optional extra (a ~10-minute source build); the llama.cpp tests skip, saying so,
only when it is not installed. The transformers and gguf-reader round trips always run.
"""

import json

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from reasondistill.compress.gguf_export import (
    dequantize_gguf,
    export_gguf,
    load_gguf_transformers,
    tensor_type,
)
from reasondistill.core.llamacpp_engine import llama_cpp_available

QUESTIONS = ["Tom has 12 apples and gets 7 more.", "What is 45 - 18?", "Sam buys 3 boxes of 9 pens."]
needs_llama_cpp = pytest.mark.skipif(
    not llama_cpp_available(), reason="llama-cpp-python not installed: pip install 'reasondistill[llamacpp]'"
)


def chat(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )


@pytest.fixture(scope="module")
def gguf_files(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    return {
        kind: export_gguf(tiny_model_dir, out / f"tiny-{kind}.gguf", kind) for kind in ("F16", "Q8_0", "Q4_0")
    }


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def field_value(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def test_gguf_reader_sees_llama_cpp_names_types_and_tokenizer(gguf_files, tiny_model_dir, demo_tokenizer):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config["num_hidden_layers"])
    expected = {
        names.get_name(name, try_suffixes=(".weight", ".bias"))
        for name in AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
        if name != "lm_head.weight"  # tied: llama.cpp reuses token_embd
    }
    for kind, path in gguf_files.items():
        reader = gguf.GGUFReader(path)
        assert field_value(reader, "general.architecture") == "qwen2"
        assert field_value(reader, "qwen2.block_count") == config["num_hidden_layers"]
        assert field_value(reader, "qwen2.attention.head_count_kv") == config["num_key_value_heads"]
        assert {t.name for t in reader.tensors} == expected
        for tensor in reader.tensors:
            shape = tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists dimensions fastest first
            assert tensor.tensor_type == tensor_type(tensor.name, shape, kind)
        tokens = field_value(reader, "tokenizer.ggml.tokens")
        assert len(tokens) == config["vocab_size"] and tokens[:3] == [
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
        ]
        assert field_value(reader, "tokenizer.ggml.pre") == "qwen2"
        assert field_value(reader, "tokenizer.ggml.eos_token_id") == demo_tokenizer.eos_token_id
        assert field_value(reader, "tokenizer.chat_template") == demo_tokenizer.chat_template
    sizes = {kind: path.stat().st_size for kind, path in gguf_files.items()}
    assert sizes["Q4_0"] < sizes["Q8_0"] < sizes["F16"]


def test_transformers_reads_gguf_back(gguf_files, reference, demo_tokenizer):
    """Tokenizer and chat template survive exactly; weights within each type's rounding."""
    state = reference.state_dict()
    # relative Frobenius error of the matrices: F16 ~1e-3 of a unit, Q8_0 (8 bits per block) and Q4_0 (4 bits)
    bounds = {"F16": 1e-3, "Q8_0": 1e-2, "Q4_0": 0.15}
    for kind, path in gguf_files.items():
        model, tokenizer = load_gguf_transformers(path)
        for question in QUESTIONS:
            text = chat(tokenizer, question)
            assert text == chat(demo_tokenizer, question)
            assert tokenizer(text)["input_ids"] == demo_tokenizer(text)["input_ids"]
        for name, weight in model.state_dict().items():
            if weight.dim() == 2:
                error = (weight - state[name]).norm() / state[name].norm()
                assert error < bounds[kind], (kind, name, float(error))
    ids = demo_tokenizer(chat(demo_tokenizer, QUESTIONS[0]), return_tensors="pt").input_ids
    f16, _ = load_gguf_transformers(gguf_files["F16"])
    with torch.no_grad():
        torch.testing.assert_close(f16(ids).logits, reference(ids).logits, atol=2e-3, rtol=0)


def test_dequantized_gguf_is_a_plain_model_directory(gguf_files, tmp_path):
    out = dequantize_gguf(gguf_files["Q4_0"], tmp_path / "dequantized")
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "qwen2"


def test_export_refuses_other_architectures_and_tokenizers(tmp_path, tiny_model_dir, demo_tokenizer):
    from transformers import MistralConfig, MistralForCausalLM

    mistral = tmp_path / "mistral"
    MistralForCausalLM(
        MistralConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, vocab_size=512
        )
    ).save_pretrained(mistral)
    with pytest.raises(ValueError, match=r"is a mistral model; this exporter writes Qwen2 \(qwen2\), Qwen3"):
        export_gguf(mistral, tmp_path / "x.gguf")
    other = tmp_path / "other-tokenizer"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(other)
    demo_tokenizer.save_pretrained(other)
    tokenizer_json = json.loads((other / "tokenizer.json").read_text())
    tokenizer_json["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\s+"
    (other / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    with pytest.raises(ValueError, match="not a Qwen2-style byte-level BPE"):
        export_gguf(other, tmp_path / "y.gguf")


@needs_llama_cpp
def test_llama_cpp_tokenizes_and_matches_transformers_logits(gguf_files, reference, demo_tokenizer):
    """llama.cpp's tokenizer gives the same ids; its F16 logits match transformers' float32 ones."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_files["F16"]), n_ctx=256, logits_all=True, verbose=False)
    for question in QUESTIONS:
        text = chat(demo_tokenizer, question)
        ids = demo_tokenizer(text)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
        llm.reset()
        llm.eval(ids)
        with torch.no_grad():
            expected = reference(torch.tensor([ids])).logits[0].numpy()
        # F16 weights and llama.cpp's own kernels: a few thousandths of a logit
        np.testing.assert_allclose(llm.scores[: len(ids)], expected, atol=1e-2, rtol=0)
    llm.close()


@needs_llama_cpp
@pytest.mark.parametrize("kind", ["F16", "Q8_0"])
def test_llama_cpp_greedy_matches_transformers(kind, gguf_files, reference, demo_tokenizer):
    """Greedy continuations in llama.cpp equal transformers' on the same GGUF weights, token for token."""
    from reasondistill.core.engines import SamplingConfig
    from reasondistill.core.llamacpp_engine import LlamaCppEngine

    model, _ = load_gguf_transformers(gguf_files[kind])
    prompts = [demo_tokenizer(chat(demo_tokenizer, q))["input_ids"] for q in QUESTIONS]
    engine = LlamaCppEngine(gguf_files[kind], n_ctx=256, threads=1)
    outputs = engine.sample(prompts, SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_tokens=12), [0] * 3)
    engine.close()
    for prompt, (completion,) in zip(prompts, outputs, strict=True):
        with torch.no_grad():
            expected = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[
                0, len(prompt) :
            ]
        expected = expected.tolist()
        eos = demo_tokenizer.eos_token_id
        expected = expected[: expected.index(eos) + 1] if eos in expected else expected
        assert completion.token_ids.tolist() == expected
        assert completion.text == demo_tokenizer.decode(expected, skip_special_tokens=True)
