"""GGUF export of a Qwen2 model directory: weights, hyperparameters, tokenizer and chat template in one file.

Written with the `gguf` package (llama.cpp's own Python writer); tensor names come from its
`TensorNameMap` for `MODEL_ARCH.QWEN2`, the table llama.cpp's `convert_hf_to_gguf.py` uses, and the
tokenizer is stored the way that script stores a GPT-2-style BPE (token list and types, merges, special
ids, chat template). The result loads in llama.cpp (and llama-cpp-python, Ollama, LM Studio) and in
transformers (`from_pretrained(dir, gguf_file=name)`, which dequantizes it).

Types written here, in pure Python: F16, Q8_0 and Q4_0 (32-weight blocks with one scale: 4.5 bits per
weight). As llama.cpp's own quantizer does, Q4_0 keeps the token embedding (which is also the output head
of a tied model) at higher precision, Q8_0 here, since it is the most sensitive matrix. K-quants such as
Q4_K_M come from llama.cpp's quantizer (`llama_quantize`, needs llama-cpp-python) applied to the F16 file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import gguf
import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from reasondistill.compress.merge import check_full_precision

GgufType = Literal["F16", "Q8_0", "Q4_0"]
LlamaCppType = Literal["Q4_K_M", "Q5_K_M", "Q6_K"]
QWEN2_PRETOKENIZER = (  # Qwen2's split regex; llama.cpp knows it as the "qwen2" pre-tokenizer
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
FILE_TYPES = {
    "F16": gguf.LlamaFileType.MOSTLY_F16,
    "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
}


def tensor_type(name: str, shape: tuple[int, ...], file_type: GgufType) -> gguf.GGMLQuantizationType:
    """The GGML type of one tensor: norms and biases stay F32; blocks need rows that split into 32s."""
    if len(shape) == 1:
        return gguf.GGMLQuantizationType.F32
    wanted = {
        "F16": gguf.GGMLQuantizationType.F16,
        "Q8_0": gguf.GGMLQuantizationType.Q8_0,
        "Q4_0": gguf.GGMLQuantizationType.Q8_0
        if name == "token_embd.weight"
        else gguf.GGMLQuantizationType.Q4_0,
    }[file_type]
    block = gguf.GGML_QUANT_SIZES[wanted][0]
    return wanted if shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16


def _check_tokenizer(model_dir: Path) -> None:
    tokenizer_json = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    patterns = [
        step.get("pattern", {}).get("Regex")
        for step in tokenizer_json.get("pre_tokenizer", {}).get("pretokenizers", [])
        if step.get("type") == "Split"
    ]
    if tokenizer_json["model"]["type"] != "BPE" or QWEN2_PRETOKENIZER not in patterns:
        raise ValueError(
            f"{model_dir}/tokenizer.json is not a Qwen2-style byte-level BPE (its split regex differs), so "
            "llama.cpp would tokenize differently; export it with llama.cpp's convert_hf_to_gguf.py instead"
        )


def _add_vocab(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> None:
    """Token list padded to the model's vocabulary, types, merges, special ids and chat template, as
    llama.cpp's converter writes a GPT-2-style BPE (its `get_vocab_base` and `_set_vocab_gpt2`)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    id_to_token = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in id_to_token:
            tokens.append(f"[PAD{index}]")  # rows the tokenizer never produces
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(added[index].content)
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(id_to_token[index])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    special.add_to_gguf(writer, quiet=True)  # merges, eos/pad ids, chat template
    if special.chat_template is None:
        raise ValueError(f"{model_dir} has no chat template (chat_template.jinja or tokenizer_config.json)")
    if "add_bos" not in special.add_special_token:
        writer.add_add_bos_token(False)  # Qwen2 prompts start without a BOS; llama.cpp would add one


def export_gguf(model_dir: str | Path, output_path: str | Path, file_type: GgufType = "F16") -> Path:
    """Write a full-precision Qwen2 model directory (with tokenizer) as one GGUF file of `file_type`."""
    model_dir, output_path = Path(model_dir), Path(output_path)
    check_full_precision(model_dir, "model")
    config = AutoConfig.from_pretrained(model_dir)
    if config.model_type != "qwen2":
        raise ValueError(
            f"{model_dir} is a {config.model_type} model; this exporter writes Qwen2 only. Use llama.cpp's "
            "convert_hf_to_gguf.py for other architectures"
        )
    _check_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config.num_hidden_layers)

    output_path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(output_path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN2])
    writer.add_name(model_dir.name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(FILE_TYPES[file_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_vocab(writer, model_dir, config.vocab_size)

    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd as the output head when `output` is absent
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"{model_dir}: tensor {hf_name} has no GGUF name in llama.cpp's Qwen2 map")
        data = tensor.numpy()
        qtype = tensor_type(name, data.shape, file_type)
        if qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, data.astype(np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, data.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return output_path


def llama_quantize(f16_path: str | Path, output_path: str | Path, file_type: LlamaCppType = "Q4_K_M") -> Path:
    """K-quantize an F16 GGUF with llama.cpp's own quantizer (through llama-cpp-python's bindings).

    Tensors whose rows do not split into K-quant super-blocks of 256 get llama.cpp's fallback type.
    """
    try:
        import llama_cpp
    except ImportError:
        raise ValueError(
            f"GGUF type {file_type} needs llama.cpp's quantizer: pip install 'reasondistill[llamacpp]' "
            "(a source build of llama-cpp-python, about 10 minutes on 2 cores), or use Q4_0"
        ) from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{file_type}")
    status = llama_cpp.llama_model_quantize(str(f16_path).encode(), str(output_path).encode(), params)
    if status != 0:
        raise RuntimeError(f"llama.cpp failed to quantize {f16_path} to {file_type} (status {status})")
    return Path(output_path)


def load_gguf_transformers(gguf_path: str | Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) read back from a GGUF file by transformers, weights dequantized to `dtype`."""
    gguf_path = Path(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    return model, tokenizer


def dequantize_gguf(gguf_path: str | Path, output_dir: str | Path) -> Path:
    """Write a GGUF file's dequantized weights and tokenizer as a plain float32 model directory.

    transformers marks a model read from GGUF as quantized and refuses to save it, so the weights are
    copied into a fresh model built from the same config without its `quantization_config`.
    """
    model, tokenizer = load_gguf_transformers(gguf_path)
    del model.config.quantization_config
    plain = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return Path(output_dir)
