"""llama.cpp's own converter (convert_hf_to_gguf.py, installed by scripts/install.sh) through
compress/llamacpp_convert.py.

Where both write an architecture, its file equals our exporter's tensor for tensor and key for key: two
writers agreeing. Architectures our exporter refuses (OLMo 2: norms after attention and MLP, q/k norms
over all heads; Granite: embedding, residual, attention and logit multipliers) run in llama.cpp as in
transformers. What this converter version would write wrong is refused before anything is written.
"""

import json

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GraniteConfig, Olmo2Config

from reasondistill.cli import main
from reasondistill.compress.gguf_export import export_gguf
from reasondistill.compress.llamacpp_convert import convert_hf_to_gguf, converter_dir
from reasondistill.core.llamacpp_engine import llama_cpp_available
from reasondistill.demo.architectures import save_tiny_model

QUESTIONS = ["Tom has 12 apples and gets 7 more.", "What is 45 - 18?", "Sam buys 3 boxes of 9 pens."]
# keys only one writer adds: our exporter's redundant shape keys, the converter's size label and type
ONE_WRITER_KEYS = (
    "general.name",
    "general.size_label",
    "general.type",
    "vocab_size",
    "length",
    "dimension_count",
)
needs_llama_cpp = pytest.mark.skipif(
    not llama_cpp_available(), reason="llama-cpp-python not installed: pip install 'reasondistill[llamacpp]'"
)


def prompts(tokenizer) -> list[str]:
    chats = [[{"role": "user", "content": question}] for question in QUESTIONS]
    return [tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) for chat in chats]


def test_converter_is_installed():
    """scripts/install.sh put it where quantize looks (the other tests would fail without it anyway)."""
    assert (converter_dir() / "convert_hf_to_gguf.py").is_file()


@pytest.mark.parametrize("arch", ["qwen2", "llama", "qwen3"])
def test_converter_writes_what_our_exporter_writes(
    arch, tmp_path, tiny_model_dir, demo_tokenizer, llama3_tokenizer
):
    """Same tensors (names, types, bytes) and same metadata, tokenizer included: the pre-tokenizer name we
    supplied for the demo's tokenizers and whether a BOS is added."""
    if arch == "qwen2":
        model_dir = tiny_model_dir
    else:
        tokenizer = llama3_tokenizer if arch == "llama" else demo_tokenizer
        model_dir = save_tiny_model(arch, tokenizer, tmp_path / arch)
    ours = gguf.GGUFReader(export_gguf(model_dir, tmp_path / "ours.gguf", "F16"))
    theirs = gguf.GGUFReader(convert_hf_to_gguf(model_dir, tmp_path / "theirs.gguf", "F16"))

    def keys(reader):
        return {
            key for key in reader.fields if not key.startswith("GGUF.") and not key.endswith(ONE_WRITER_KEYS)
        }

    assert keys(ours) == keys(theirs)
    assert {"tokenizer.ggml.pre", "tokenizer.ggml.merges", "tokenizer.chat_template"} <= keys(theirs)
    for key in keys(ours):
        assert ours.fields[key].contents() == theirs.fields[key].contents(), key
    assert theirs.fields["tokenizer.ggml.add_bos_token"].contents() is False
    their_tensors = {tensor.name: tensor for tensor in theirs.tensors}
    assert sorted(their_tensors) == sorted(tensor.name for tensor in ours.tensors)
    for tensor in ours.tensors:
        assert their_tensors[tensor.name].tensor_type == tensor.tensor_type, tensor.name
        np.testing.assert_array_equal(their_tensors[tensor.name].data, tensor.data, err_msg=tensor.name)


@pytest.fixture(scope="module", params=["olmo2", "granite"])
def other_architecture(request, tmp_path_factory, demo_tokenizer):
    """A tiny random model (weights spread 5x, as demo.architectures) of an architecture our exporter
    refuses."""
    config_class = {"olmo2": Olmo2Config, "granite": GraniteConfig}[request.param]
    config = config_class(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        initializer_range=0.1,
        pad_token_id=demo_tokenizer.pad_token_id,
        eos_token_id=demo_tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp(request.param)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    demo_tokenizer.save_pretrained(directory)
    with pytest.raises(ValueError, match=f"is a {request.param} model; this exporter writes"):
        export_gguf(directory, directory / "ours.gguf")
    return directory, convert_hf_to_gguf(directory, directory / "model-F16.gguf")


@needs_llama_cpp
def test_other_architectures_run_in_llama_cpp_as_in_transformers(other_architecture, demo_tokenizer):
    """llama.cpp's logits on the converted file match transformers' float32 ones on the same (F16-rounded)
    weights, and greedy tokens agree."""
    from llama_cpp import Llama

    from reasondistill.core.engines import SamplingConfig
    from reasondistill.core.llamacpp_engine import LlamaCppEngine

    directory, path = other_architecture
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():  # the weights as the F16 file holds them (norms stay F32 there)
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.copy_(weight.half().float())
    llm = Llama(
        model_path=str(path), n_ctx=256, logits_all=True, n_threads=1, n_threads_batch=1, verbose=False
    )
    ids_of_prompts = []
    for text in prompts(demo_tokenizer):
        ids = demo_tokenizer(text)["input_ids"]
        assert llm.tokenize(text.encode(), special=True) == ids  # no BOS added: the tokenizer adds none
        llm.reset()
        llm.eval(ids)
        with torch.no_grad():
            expected = model(torch.tensor([ids])).logits[0].numpy()
        assert np.ptp(expected[-1]) > 1  # logits that tell tokens apart
        np.testing.assert_allclose(llm.scores[: len(ids)], expected, atol=3e-2, rtol=0)
        ids_of_prompts.append(ids)
    llm.close()
    engine = LlamaCppEngine(path, n_ctx=256, threads=1)
    sampling = SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_tokens=8)
    outputs = engine.sample(ids_of_prompts, sampling, [0] * len(ids_of_prompts))
    engine.close()
    for ids, (completion,) in zip(ids_of_prompts, outputs, strict=True):
        with torch.no_grad():
            expected = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids) :]
        expected = expected.tolist()
        eos = demo_tokenizer.eos_token_id
        assert completion.token_ids.tolist() == (
            expected[: expected.index(eos) + 1] if eos in expected else expected
        )


def test_what_the_converter_would_write_wrong_is_refused_first(tmp_path, demo_tokenizer):
    """A Gemma 3 whose layers are not 5 sliding : 1 full, with a padded vocabulary: refused with the way
    out named; a tokenizer whose pre-tokenizer neither the converter nor our check knows: its error; no
    file either way."""
    gemma = save_tiny_model("gemma3_text", demo_tokenizer, tmp_path / "gemma")
    with pytest.raises(
        ValueError,
        match=r"(?s)one full-attention layer in every 6.*padded beyond.*gguf_converter: reasondistill",
    ):
        convert_hf_to_gguf(gemma, tmp_path / "gemma.gguf")
    other = save_tiny_model("qwen3", demo_tokenizer, tmp_path / "other-tokenizer")
    tokenizer_json = json.loads((other / "tokenizer.json").read_text())
    tokenizer_json["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\s+"
    (other / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    with pytest.raises(RuntimeError, match="BPE pre-tokenizer was not recognized"):
        convert_hf_to_gguf(other, tmp_path / "other.gguf")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["gemma", "other-tokenizer"]


@needs_llama_cpp
@pytest.mark.parametrize("other_architecture", ["olmo2"], indirect=True)
def test_quantize_writes_every_gguf_type_with_llama_cpps_converter(tmp_path, other_architecture):
    """`reasondistill quantize` on an architecture only llama.cpp's converter writes: F16 and Q8_0 from the
    converter, Q4_0 and Q4_K_M from llama.cpp's quantizer, each loading in llama.cpp."""
    from llama_cpp import Llama

    directory, _ = other_architecture
    out = tmp_path / "quantized"
    profiles = ["gguf-f16", "gguf-q8", "gguf-q4", "gguf-q4km"]
    assert (
        main(
            [
                "quantize",
                "--model",
                str(directory),
                "--output_dir",
                str(out),
                "--measure",
                "false",
                "--profiles",
                *profiles,
            ]
        )
        == 0
    )
    for kind, qtype in [("F16", "F16"), ("Q8_0", "Q8_0"), ("Q4_0", "Q4_0"), ("Q4_K_M", "Q4_K")]:
        reader = gguf.GGUFReader(out / f"model-{kind}.gguf")
        types = {tensor.tensor_type.name for tensor in reader.tensors if len(tensor.shape) == 2}
        assert qtype in types, (kind, types)
        Llama(model_path=str(out / f"model-{kind}.gguf"), n_ctx=64, verbose=False).close()
