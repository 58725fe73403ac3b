"""GGUF export, llama.cpp and pruning on tiny Llama 3.2-style, Qwen3 and Gemma 3 models.

tests/compress/test_gguf.py and test_prune.py do the same for Qwen2. The llama.cpp tests skip, saying so,
when llama-cpp-python (an optional ~10-minute source build) is not installed.
"""

import json

import gguf
import numpy as np
import pytest
import torch
from conftest import plant_redundancy
from transformers import AutoModelForCausalLM, Phi3Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from reasondistill.cli import main
from reasondistill.compress.gguf_export import export_gguf, load_gguf_transformers, tensor_type
from reasondistill.compress.prune import prune_model
from reasondistill.compress.prune_config import PruneConfig
from reasondistill.core.llamacpp_engine import llama_cpp_available
from reasondistill.demo.architectures import tiny_config

QUESTIONS = ["Tom has 12 apples and gets 7 more.", "What is 45 - 18?", "Sam buys 3 boxes of 9 pens."]
KINDS = ("F16", "Q8_0", "Q4_0")
GGUF_ARCH = {"llama": "llama", "qwen3": "qwen3", "gemma3_text": "gemma3"}
CALIBRATION = ["--num_calibration", "8", "--calibration_tokens", "8", "--batch_size", "4"]
needs_llama_cpp = pytest.mark.skipif(
    not llama_cpp_available(), reason="llama-cpp-python not installed: pip install 'reasondistill[llamacpp]'"
)


def chat(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )


def prompt_ids(tokenizer) -> list[list[int]]:
    return [tokenizer(chat(tokenizer, q))["input_ids"] for q in QUESTIONS]


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.tensor([ids])).logits[0]


@pytest.fixture(scope="module")
def gguf_files(tiny):
    arch, directory, _ = tiny
    return {kind: export_gguf(directory, directory.parent / f"{arch}-{kind}.gguf", kind) for kind in KINDS}


@pytest.fixture(scope="module")
def gguf_weights_models(tiny, gguf_files):
    """Per type: the original model (its own config) holding the weights transformers reads from the GGUF
    file, the reference llama.cpp must match. transformers 5.19's GGUF reader gets the weights right for
    all three but not every setting: it drops Llama 3's RoPE scaling and Gemma 3's query_pre_attn_scalar,
    layer types and RoPE settings, so its own model would compute something else."""
    _, directory, _ = tiny
    models = {}
    for kind, path in gguf_files.items():
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        model.load_state_dict(load_gguf_transformers(path)[0].state_dict())
        models[kind] = model
    return models


def field_value(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def test_gguf_holds_llama_cpp_names_metadata_and_tokenizer(tiny, gguf_files):
    arch, directory, tokenizer = tiny
    config = tiny_config(arch, tokenizer)
    name = GGUF_ARCH[arch]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[name.upper()], config.num_hidden_layers)
    expected = {
        names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        for hf_name in AutoModelForCausalLM.from_pretrained(directory).state_dict()
        if hf_name != "lm_head.weight"  # tied: llama.cpp reuses token_embd
    }
    if arch == "llama":
        expected.add("rope_freqs.weight")  # Llama 3's RoPE scaling, as a tensor of frequency divisors
    for kind, path in gguf_files.items():
        reader = gguf.GGUFReader(path)
        assert field_value(reader, "general.architecture") == name
        assert {t.name for t in reader.tensors} == expected
        for tensor in reader.tensors:
            shape = tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists dimensions fastest first
            assert tensor.tensor_type == tensor_type(tensor.name, shape, kind)
        assert field_value(reader, f"{name}.attention.head_count_kv") == config.num_key_value_heads
        assert field_value(reader, f"{name}.attention.key_length") == config.head_dim
        assert field_value(reader, "tokenizer.ggml.pre") == ("llama-bpe" if arch == "llama" else "qwen2")
        assert field_value(reader, "tokenizer.ggml.add_bos_token") is False
        assert field_value(reader, "tokenizer.chat_template") == tokenizer.chat_template
    sizes = {kind: path.stat().st_size for kind, path in gguf_files.items()}
    assert sizes["Q4_0"] < sizes["Q8_0"] < sizes["F16"]

    reader = gguf.GGUFReader(gguf_files["F16"])
    tensors = {t.name: t for t in reader.tensors}
    if arch == "llama":  # divisors = plain RoPE frequencies / transformers' llama3 ones
        scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
        plain = 1.0 / (500000.0 ** (torch.arange(0, config.head_dim, 2).double() / config.head_dim))
        factors = np.asarray(tensors["rope_freqs.weight"].data)
        np.testing.assert_allclose(factors, (plain / scaled).numpy(), rtol=1e-5)
        assert factors.min() == 1 and factors.max() == 32 and ((factors > 1) & (factors < 32)).any()
    if arch == "gemma3_text":
        assert field_value(reader, "gemma3.attention.sliding_window") == 16
        assert field_value(reader, "gemma3.attention.sliding_window_pattern") == [True, True, True, False]
        assert field_value(reader, "gemma3.rope.freq_base_swa") == 20000.0
        assert field_value(reader, "gemma3.rope.scaling.type") == "linear"
        assert field_value(reader, "gemma3.rope.scaling.factor") == 8.0
        model = AutoModelForCausalLM.from_pretrained(directory)
        norm = np.asarray(tensors["blk.0.attn_q_norm.weight"].data)  # llama.cpp scales by w, Gemma by 1 + w
        np.testing.assert_allclose(
            norm, model.model.layers[0].self_attn.q_norm.weight.detach() + 1, rtol=1e-6
        )


def test_transformers_reads_gguf_weights_and_tokenizer(tiny, gguf_files, gguf_weights_models):
    """Tokenizer and chat template survive exactly; weights within each type's rounding (Llama's q/k rows
    un-permuted and Gemma's norms un-shifted by transformers); Qwen3's logits from transformers' own model."""
    arch, directory, tokenizer = tiny
    original = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    state = original.state_dict()
    bounds = {"F16": 1e-3, "Q8_0": 1e-2, "Q4_0": 0.15}  # relative Frobenius error of the matrices
    for kind, path in gguf_files.items():
        model, gguf_tokenizer = load_gguf_transformers(path)
        for question, ids in zip(QUESTIONS, prompt_ids(tokenizer), strict=True):
            assert chat(gguf_tokenizer, question) == chat(tokenizer, question)
            assert gguf_tokenizer(chat(tokenizer, question))["input_ids"] == ids
        for name, weight in model.state_dict().items():
            error = (weight - state[name]).norm() / state[name].norm()
            assert error < (bounds[kind] if weight.dim() == 2 else 1e-6), (kind, name, float(error))
    ids = prompt_ids(tokenizer)[0]
    # logits of the original settings on the F16 weights: F16 rounding, a few thousandths of ~5-unit logits
    torch.testing.assert_close(
        logits(gguf_weights_models["F16"], ids), logits(original, ids), atol=2e-2, rtol=0
    )
    if arch == "qwen3":  # the one of the three whose settings transformers reads completely
        f16, _ = load_gguf_transformers(gguf_files["F16"])
        torch.testing.assert_close(logits(f16, ids), logits(original, ids), atol=2e-2, rtol=0)


@needs_llama_cpp
def test_llama_cpp_tokenizes_and_matches_transformers_logits(tiny, gguf_files, gguf_weights_models):
    """llama.cpp's tokenizer gives the same ids; its logits match transformers' float32 ones on the same
    weights, prompts fed 4 tokens at a time so later chunks attend through the KV cache (and, for Gemma 3,
    reach past the 16-token sliding window)."""
    from llama_cpp import Llama

    _, _, tokenizer = tiny
    # llama.cpp rounds activations to F16 (F16 weights) or to 8 bits per 32-block (Q8_0, Q4_0 weights);
    # a wrong tensor layout or missing metadata key moves these ~5-unit logits by 0.6 to 5
    bounds = {"F16": 3e-2, "Q8_0": 0.3, "Q4_0": 0.3}
    for kind, path in gguf_files.items():
        llm = Llama(
            model_path=str(path),
            n_ctx=256,
            n_batch=4,
            logits_all=True,
            n_threads=1,
            n_threads_batch=1,
            verbose=False,
        )
        for question, ids in zip(QUESTIONS, prompt_ids(tokenizer), strict=True):
            assert llm.tokenize(chat(tokenizer, question).encode(), add_bos=False, special=True) == ids
            llm.reset()
            llm.eval(ids)
            expected = logits(gguf_weights_models[kind], ids).numpy()
            np.testing.assert_allclose(llm.scores[: len(ids)], expected, atol=bounds[kind], rtol=0)
        llm.close()


@needs_llama_cpp
def test_llama_cpp_greedy_matches_transformers(tiny, gguf_files, gguf_weights_models):
    """Greedy F16 continuations in llama.cpp equal transformers' on the same weights, token for token.

    Not Q8_0 here (the Qwen2 test has it): llama.cpp rounds activations to 8 bits against Q8_0 weights,
    which moves these models' logits by up to 0.2, more than some top-2 gaps of random weights."""
    from reasondistill.core.engines import SamplingConfig
    from reasondistill.core.llamacpp_engine import LlamaCppEngine

    _, _, tokenizer = tiny
    prompts = prompt_ids(tokenizer)
    engine = LlamaCppEngine(gguf_files["F16"], n_ctx=256, threads=1)
    outputs = engine.sample(prompts, SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_tokens=12), [0] * 3)
    engine.close()
    for prompt, (completion,) in zip(prompts, outputs, strict=True):
        with torch.no_grad():
            expected = gguf_weights_models["F16"].generate(
                torch.tensor([prompt]), max_new_tokens=12, do_sample=False
            )[0, len(prompt) :]
        expected = expected.tolist()
        eos = tokenizer.eos_token_id
        expected = expected[: expected.index(eos) + 1] if eos in expected else expected
        assert completion.token_ids.tolist() == expected


@pytest.fixture(scope="module")
def planted(tiny, tmp_path_factory):
    """The tiny model with layer 1 the identity (for Gemma 3 a sliding-window layer, so the kept layers'
    types shift) and MLP channels 0-31 dead (conftest.plant_redundancy)."""
    arch, directory, tokenizer = tiny
    out = plant_redundancy(directory, tokenizer, 1, tmp_path_factory.mktemp(f"planted-{arch}"))
    pruned = tmp_path_factory.mktemp(f"pruned-{arch}")
    args = [
        "--model",
        str(out),
        "--output_dir",
        str(pruned),
        "--num_layers",
        "3",
        "--intermediate_size",
        "256",
    ]
    assert main(["prune", *args, *CALIBRATION]) == 0
    return out, pruned


def test_pruned_model_equals_the_original_with_dropped_parts_removed(tiny, planted):
    """Depth drops exactly the identity layer and width every dead channel; the pruned model (loaded by
    transformers) computes what the original computes with the other dropped channels' up_proj rows zeroed,
    both in one forward pass and token by token through the KV cache."""
    arch, _, tokenizer = tiny
    planted_dir, pruned_dir = planted
    info = json.loads((pruned_dir / "prune_info.json").read_text())
    assert info["kept_layers"] == [0, 2, 3]
    config = json.loads((pruned_dir / "config.json").read_text())
    assert (config["num_hidden_layers"], config["intermediate_size"]) == (3, 256)
    if arch == "gemma3_text":  # each kept layer keeps its own attention type
        assert config["layer_types"] == ["sliding_attention", "sliding_attention", "full_attention"]
    pruned = AutoModelForCausalLM.from_pretrained(pruned_dir).eval()
    reference = AutoModelForCausalLM.from_pretrained(planted_dir).eval()
    with torch.no_grad():
        for index, old_index in enumerate(info["kept_layers"]):
            new, old = pruned.model.layers[index], reference.model.layers[old_index]
            assert new.self_attn.layer_idx == index  # KV-cache slots renumbered
            gate, kept_gate = old.mlp.gate_proj.weight, new.mlp.gate_proj.weight
            kept = (gate[:, None, :] == kept_gate[None]).all(-1).any(1)  # [intermediate]: row kept?
            assert kept.sum() == 256 and not kept[:32].any()  # no dead channel survived
            torch.testing.assert_close(new.mlp.down_proj.weight, old.mlp.down_proj.weight[:, kept])
            old.mlp.up_proj.weight[~kept] = 0
    for ids in prompt_ids(tokenizer):
        torch.testing.assert_close(logits(pruned, ids), logits(reference, ids), atol=1e-5, rtol=1e-5)
        prompt = torch.tensor([ids])
        with torch.no_grad():
            ours = pruned.generate(prompt, max_new_tokens=8, do_sample=False)
            theirs = reference.generate(prompt, max_new_tokens=8, do_sample=False)
        assert ours.tolist() == theirs.tolist()


@needs_llama_cpp
def test_pruned_model_exports_and_runs_in_llama_cpp(tiny, planted):
    """Prune then export, the order of prune -> distil -> quantize: llama.cpp runs the pruned shapes (and
    Gemma 3's shifted layer types) as transformers does."""
    from llama_cpp import Llama

    _, _, tokenizer = tiny
    _, pruned_dir = planted
    path = export_gguf(pruned_dir, pruned_dir / "pruned-F16.gguf", "F16")
    model = AutoModelForCausalLM.from_pretrained(pruned_dir).eval()
    model.load_state_dict(load_gguf_transformers(path)[0].state_dict())
    llm = Llama(
        model_path=str(path), n_ctx=256, logits_all=True, n_threads=1, n_threads_batch=1, verbose=False
    )
    for ids in prompt_ids(tokenizer):
        llm.reset()
        llm.eval(ids)
        np.testing.assert_allclose(llm.scores[: len(ids)], logits(model, ids).numpy(), atol=3e-2, rtol=0)
    llm.close()


def test_unsupported_architectures_and_settings_are_refused(tmp_path, demo_tokenizer):
    phi3 = tmp_path / "phi3"
    AutoModelForCausalLM.from_config(
        Phi3Config(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=512,
            pad_token_id=0,
        )
    ).save_pretrained(phi3)
    demo_tokenizer.save_pretrained(phi3)
    supported = r"Qwen2 \(qwen2\), Qwen3 \(qwen3\), Llama \(llama\), Gemma 3 \(gemma3_text\) only"
    with pytest.raises(ValueError, match=f"is a phi3 model; this exporter writes {supported}"):
        export_gguf(phi3, tmp_path / "x.gguf")
    with pytest.raises(ValueError, match=f"is a phi3 model; pruning supports {supported}"):
        prune_model(PruneConfig(model=str(phi3), num_layers=1))

    # settings llama.cpp's graph for the architecture hard-codes; only config.json is read before refusing
    gemma = tiny_config("gemma3_text", demo_tokenizer)
    gemma.query_pre_attn_scalar, gemma.final_logit_softcapping = 256, 30.0
    gemma.save_pretrained(tmp_path / "gemma")
    with pytest.raises(
        ValueError, match="Gemma 3 does not run this model's query_pre_attn_scalar .*final_logit"
    ):
        export_gguf(tmp_path / "gemma", tmp_path / "y.gguf")
    qwen3 = tiny_config("qwen3", demo_tokenizer)
    qwen3.rope_parameters = dict(
        rope_type="yarn", rope_theta=1e6, factor=4.0, original_max_position_embeddings=256
    )
    qwen3.layer_types = ["sliding_attention"] * 4
    qwen3.save_pretrained(tmp_path / "qwen3")
    with pytest.raises(
        ValueError, match="Qwen3 does not run this model's sliding-window layers, RoPE type yarn"
    ):
        export_gguf(tmp_path / "qwen3", tmp_path / "z.gguf")
