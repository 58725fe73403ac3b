"""bitsandbytes quantization (NF4 4-bit, LLM.int8) saved as a model directory transformers reloads.

bitsandbytes quantizes while transformers loads the full-precision weights, so the artifact is made by
loading the merged model with a `BitsAndBytesConfig` and saving it straight away. On CPU it must be saved
before it runs anything: a CPU NF4 model saved after a forward pass reloads with corrupted weights
(logits off by about 1, measured with bitsandbytes 0.50), so this module never calls the model.
bitsandbytes' CPU kernels also need every linear layer's output size to be a multiple of 32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from reasondistill.compress.merge import check_full_precision

BnbBits = Literal[4, 8]


def bnb_config(
    bits: BnbBits, double_quant: bool = True, compute_dtype: str = "float32", quant_type: str = "nf4"
) -> BitsAndBytesConfig:
    """NF4 (or FP4) with optional double quantization of the block scales, or LLM.int8."""
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=getattr(torch, compute_dtype),
    )


def check_bnb_shapes(model_dir: str | Path) -> None:
    """Refuse, before loading, a model whose linear outputs are not multiples of 32 (bitsandbytes CPU)."""
    config = AutoConfig.from_pretrained(model_dir)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    sizes = {
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_key_value_heads * head_dim": config.num_key_value_heads * head_dim,
    }
    if not torch.cuda.is_available() and (bad := {k: v for k, v in sizes.items() if v % 32}):
        raise ValueError(
            f"{model_dir}: {bad} not a multiple of 32, which bitsandbytes' CPU kernels need; run on a GPU "
            "or use a GGUF profile"
        )


def quantize_bnb(
    model_dir: str | Path,
    output_dir: str | Path,
    bits: BnbBits = 4,
    double_quant: bool = True,
    compute_dtype: str = "float32",
    quant_type: str = "nf4",
) -> Path:
    """Quantize a full-precision model directory with bitsandbytes and save it, with its tokenizer."""
    check_full_precision(model_dir, "model")
    check_bnb_shapes(model_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        quantization_config=bnb_config(bits, double_quant, compute_dtype, quant_type),
        dtype=getattr(torch, compute_dtype),
        device_map=device,
    )
    model.save_pretrained(output_dir)  # before any forward pass (see the module docstring)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(output_dir)
    return Path(output_dir)
