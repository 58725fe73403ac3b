"""GGUF export of a Qwen2, Qwen3, Llama or Gemma 3 model directory: weights, hyperparameters, tokenizer and
chat template in one file.

Written with the `gguf` package (llama.cpp's own Python writer), the way llama.cpp's `convert_hf_to_gguf.py`
writes each architecture: tensor names from `gguf`'s `TensorNameMap` for the architecture's `MODEL_ARCH`,
the metadata keys its model class writes, and its tensor rewrites (`ARCHITECTURES` below says which each
needs). The tokenizer is stored as that script stores a GPT-2-style BPE (token list and types, merges,
special ids, chat template). The result loads in llama.cpp (and llama-cpp-python, Ollama, LM Studio) and in
transformers (`from_pretrained(dir, gguf_file=name)`, which dequantizes it; for Llama and Gemma 3 it reads
the weights but not every setting, see docs/quantize.md).

Types written here, in pure Python: F16, Q8_0 and Q4_0 (32-weight blocks with one scale: 4.5 bits per
weight). As llama.cpp's own quantizer does, Q4_0 keeps the token embedding (which is also the output head
of a tied model) at higher precision, Q8_0 here, since it is the most sensitive matrix. K-quants such as
Q4_K_M come from llama.cpp's quantizer (`llama_quantize`, needs llama-cpp-python) applied to the F16 file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gguf
import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from reasondistill.compress.merge import check_full_precision

GgufType = Literal["F16", "Q8_0", "Q4_0"]
LlamaCppType = Literal["Q4_0", "Q8_0", "Q4_K_M", "Q5_K_M", "Q6_K"]
QWEN2_PRETOKENIZER = (  # Qwen2's split regex; llama.cpp knows it as the "qwen2" pre-tokenizer
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_PRETOKENIZER = (  # Llama 3's: numbers in runs of up to 3 digits; llama.cpp's "llama-bpe"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# split regex -> (llama.cpp's name for it, whether llama.cpp then takes a word found whole in the vocabulary
# without applying merges: its `ignore_merges`, set for "llama-bpe" in llama-vocab.cpp)
PRETOKENIZERS = {QWEN2_PRETOKENIZER: ("qwen2", False), LLAMA3_PRETOKENIZER: ("llama-bpe", True)}
FILE_TYPES = {
    "F16": gguf.LlamaFileType.MOSTLY_F16,
    "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
}


@dataclass(frozen=True)
class Architecture:
    """What llama.cpp's converter and runtime do for one transformers `model_type`."""

    arch: gguf.MODEL_ARCH
    label: str
    activation: str  # the MLP activation llama.cpp's graph applies
    rope_types: tuple[str, ...]  # RoPE types of full-attention layers llama.cpp reproduces from our metadata
    permute_qk: bool = False  # llama.cpp ropes adjacent pairs (GPT-J style), transformers pairs the halves
    norm_offset: float = 0.0  # Gemma's RMSNorm scales by (1 + w), llama.cpp's by w
    sliding_window: bool = False  # per-layer sliding windows (`attention.sliding_window_pattern`)


ARCHITECTURES: dict[str, Architecture] = {
    "qwen2": Architecture(gguf.MODEL_ARCH.QWEN2, "Qwen2", "silu", ("default",)),
    "qwen3": Architecture(gguf.MODEL_ARCH.QWEN3, "Qwen3", "silu", ("default",)),
    "llama": Architecture(gguf.MODEL_ARCH.LLAMA, "Llama", "silu", ("default", "llama3"), permute_qk=True),
    "gemma3_text": Architecture(
        gguf.MODEL_ARCH.GEMMA3,
        "Gemma 3",
        "gelu_pytorch_tanh",
        ("default", "linear"),
        norm_offset=1.0,
        sliding_window=True,
    ),
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


def _head_dim(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def llama_cpp_pretokenizer(model_dir: Path) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer, once it is sure llama.cpp tokenizes alike."""
    tokenizer_json = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    patterns = [
        step.get("pattern", {}).get("Regex")
        for step in tokenizer_json.get("pre_tokenizer", {}).get("pretokenizers", [])
        if step.get("type") == "Split"
    ]
    known = [pattern for pattern in patterns if pattern in PRETOKENIZERS]
    if tokenizer_json["model"]["type"] != "BPE" or not known:
        raise ValueError(
            f"{model_dir}/tokenizer.json is not a Qwen2-style byte-level BPE nor a Llama 3-style one (its "
            "split regex is neither of llama.cpp's 'qwen2' and 'llama-bpe' pre-tokenizers), so llama.cpp "
            "would tokenize differently; export it with llama.cpp's convert_hf_to_gguf.py instead"
        )
    name, ignore_merges = PRETOKENIZERS[known[0]]
    if tokenizer_json["model"].get("ignore_merges", False) != ignore_merges and not _merges_rebuild_vocab(
        model_dir / "tokenizer.json", tokenizer_json
    ):
        raise ValueError(
            f"{model_dir}/tokenizer.json sets ignore_merges={not ignore_merges}, but llama.cpp's '{name}' "
            f"pre-tokenizer runs with ignore_merges={ignore_merges}, and the merges do not rebuild every "
            "vocabulary token, so some words would be split differently"
        )
    return name


def _merges_rebuild_vocab(tokenizer_file: Path, tokenizer_json: dict) -> bool:
    """Whether the BPE merges turn each vocabulary token's text back into that one token: then taking a
    whole word from the vocabulary first (`ignore_merges`) or merging it gives the same tokens."""
    model = Tokenizer.from_file(str(tokenizer_file)).model
    added = {token["content"] for token in tokenizer_json.get("added_tokens", [])}
    return all(
        [piece.value for piece in model.tokenize(token)] == [token]
        for token in tokenizer_json["model"]["vocab"]
        if token not in added
    )


def _add_vocab(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> None:
    """Token list padded to the model's vocabulary, types, merges, special ids and chat template, as
    llama.cpp's converter writes a GPT-2-style BPE (its `get_vocab_base` and `_set_vocab_gpt2`)."""
    pretokenizer = llama_cpp_pretokenizer(model_dir)
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
    writer.add_tokenizer_pre(pretokenizer)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    special.add_to_gguf(writer, quiet=True)  # merges, eos/pad ids, chat template
    if special.chat_template is None:
        raise ValueError(f"{model_dir} has no chat template (chat_template.jinja or tokenizer_config.json)")
    if "add_bos" not in special.add_special_token:
        # the tokenizer adds no BOS; llama.cpp would add one (by default for 'llama-bpe', and for Gemma 3)
        writer.add_add_bos_token(False)


def _supported(model_dir: Path, config: PretrainedConfig) -> Architecture:
    """The model's `Architecture`, once every setting llama.cpp's graph for it hard-codes agrees."""
    architecture = ARCHITECTURES.get(config.model_type)
    if architecture is None:
        supported = ", ".join(f"{a.label} ({name})" for name, a in ARCHITECTURES.items())
        raise ValueError(
            f"{model_dir} is a {config.model_type} model; this exporter writes {supported} only. Use "
            "llama.cpp's convert_hf_to_gguf.py for other architectures"
        )
    activation = getattr(config, "hidden_activation", None) or config.hidden_act
    problems = [f"activation {activation}"] if activation != architecture.activation else []
    if getattr(config, "query_pre_attn_scalar", _head_dim(config)) != _head_dim(config):
        problems.append("query_pre_attn_scalar != head_dim (llama.cpp scales attention by 1/sqrt(head_dim))")
    problems += [
        name
        for name in ("attn_logit_softcapping", "final_logit_softcapping", "use_bidirectional_attention")
        if getattr(config, name, None)
    ]
    layer_types = getattr(config, "layer_types", None) or []
    if "sliding_attention" in layer_types and not architecture.sliding_window:
        problems.append("sliding-window layers")
    rope = _rope_by_layer_type(config)
    if rope["full_attention"].get("rope_type", "default") not in architecture.rope_types:
        problems.append(f"RoPE type {rope['full_attention']['rope_type']}")
    if rope.get("sliding_attention", {}).get("rope_type", "default") != "default":
        problems.append(f"RoPE type {rope['sliding_attention']['rope_type']} on sliding-window layers")
    if problems:
        raise ValueError(
            f"{model_dir}: llama.cpp's {architecture.label} does not run this model's {', '.join(problems)}; "
            "export it with llama.cpp's convert_hf_to_gguf.py, if that supports it"
        )
    return architecture


def _rope_by_layer_type(config: PretrainedConfig) -> dict[str, dict]:
    """RoPE settings per attention type: Gemma 3 keeps one per type, the others one for all layers."""
    rope = config.rope_parameters
    return rope if "full_attention" in rope else {"full_attention": rope}


def llama3_rope_factors(rope: dict, dim: int) -> np.ndarray:
    """[dim / 2] divisors of each RoPE frequency under Llama 3's scaling (llama.cpp's `rope_freqs` tensor):
    1 above the high-frequency cut, `factor` below the low one, a smooth mix between (as transformers'
    `_compute_llama3_parameters`)."""
    freqs = 1.0 / (rope["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    context = rope["original_max_position_embeddings"]
    low, high, factor = rope["low_freq_factor"], rope["high_freq_factor"], rope["factor"]
    wavelengths = 2 * math.pi / freqs
    smooth = (context / wavelengths - low) / (high - low)
    mixed = 1 / ((1 - smooth) / factor + smooth)
    factors = np.where(
        wavelengths < context / high, 1.0, np.where(wavelengths > context / low, factor, mixed)
    )
    return factors.astype(np.float32)


def _add_hyperparameters(
    writer: gguf.GGUFWriter, config: PretrainedConfig, architecture: Architecture
) -> dict[str, np.ndarray]:
    """Shapes, norms, RoPE and attention layout; returns the tensors they add (Llama 3's `rope_freqs`)."""
    writer.add_context_length(config.max_position_embeddings)
    writer.add_vocab_size(config.vocab_size)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(_head_dim(config))
    writer.add_value_length(_head_dim(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rope = _rope_by_layer_type(config)
    full = rope["full_attention"]
    writer.add_rope_dimension_count(_head_dim(config))
    writer.add_rope_freq_base(full["rope_theta"])
    extra = {}
    if full.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(full["factor"])
    elif full.get("rope_type") == "llama3":
        name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        extra[name] = llama3_rope_factors(full, _head_dim(config))
    if architecture.sliding_window:
        writer.add_sliding_window(config.sliding_window)
        writer.add_sliding_window_pattern([kind == "sliding_attention" for kind in config.layer_types])
        writer.add_rope_freq_base_swa(rope["sliding_attention"]["rope_theta"])
    return extra


def permute_rope_pairs(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reorder each head's output rows from transformers' RoPE pairing (dimension i with i + d/2) to
    llama.cpp's LLAMA one (2i with 2i + 1): the converter's `LlamaModel.permute`."""
    return (
        weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _gguf_tensor(
    hf_name: str, tensor: torch.Tensor, config: PretrainedConfig, architecture: Architecture
) -> torch.Tensor:
    """A weight as llama.cpp's graph for the architecture expects it."""
    if hf_name.endswith("norm.weight"):
        tensor = tensor + architecture.norm_offset
    if architecture.permute_qk and ".q_proj." in hf_name:
        tensor = permute_rope_pairs(tensor, config.num_attention_heads)
    elif architecture.permute_qk and ".k_proj." in hf_name:
        tensor = permute_rope_pairs(tensor, config.num_key_value_heads)
    return tensor


def _add_tensor(writer: gguf.GGUFWriter, name: str, data: np.ndarray, file_type: GgufType) -> None:
    qtype = tensor_type(name, data.shape, file_type)
    if qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, data.astype(np.float32))
    elif qtype == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, data.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def export_gguf(model_dir: str | Path, output_path: str | Path, file_type: GgufType = "F16") -> Path:
    """Write a full-precision model directory (with tokenizer) of an architecture in `ARCHITECTURES` as one
    GGUF file of `file_type`."""
    model_dir, output_path = Path(model_dir), Path(output_path)
    check_full_precision(model_dir, "model")
    config = AutoConfig.from_pretrained(model_dir)
    architecture = _supported(model_dir, config)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    names = gguf.get_tensor_name_map(architecture.arch, config.num_hidden_layers)

    output_path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(output_path, gguf.MODEL_ARCH_NAMES[architecture.arch])
    writer.add_name(model_dir.name)
    extra = _add_hyperparameters(writer, config, architecture)
    writer.add_file_type(FILE_TYPES[file_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_vocab(writer, model_dir, config.vocab_size)

    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd as the output head when `output` is absent
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(
                f"{model_dir}: tensor {hf_name} has no GGUF name in llama.cpp's {architecture.label} map"
            )
        _add_tensor(writer, name, _gguf_tensor(hf_name, tensor, config, architecture).numpy(), file_type)
    for name, data in extra.items():
        _add_tensor(writer, name, data, file_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return output_path


def llama_quantize(f16_path: str | Path, output_path: str | Path, file_type: LlamaCppType = "Q4_K_M") -> Path:
    """Quantize an F16 GGUF with llama.cpp's own quantizer (through llama-cpp-python's bindings).

    Tensors whose rows do not split into K-quant super-blocks of 256 get llama.cpp's fallback type.
    """
    try:
        import llama_cpp
    except ImportError:
        raise ValueError(
            f"GGUF type {file_type} needs llama.cpp's quantizer: pip install 'reasondistill[llamacpp]' "
            "(a source build of llama-cpp-python, about 10 minutes on 2 cores), or write Q4_0 with "
            "gguf_converter: reasondistill"
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
