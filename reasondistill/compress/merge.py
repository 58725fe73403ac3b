"""Merge a PEFT (LoRA) adapter into its base model in full precision.

The merge always happens on full-precision base weights. Merging into a 4-bit (or 8-bit) base would
dequantize each weight, add the low-rank update and round the sum back to 4 bits: the rounding error of
NF4 (about 1/16 of a block's range) is as large as a typical LoRA update, so much of what the adapter
learned would be rounded away, and the result would differ from the model that was trained and
evaluated. A QLoRA adapter is therefore merged into the full-precision base it was quantized from, and the
merged model is quantized afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from reasondistill.core.model_dir import adapter_base, check_model_source, is_adapter_dir


def quantization_of(model_dir: str | Path) -> dict | None:
    """The `quantization_config` of a model directory's config.json, or None for a full-precision model."""
    config_path = Path(model_dir) / "config.json"
    if not config_path.is_file():
        return None
    return json.loads(config_path.read_text(encoding="utf-8")).get("quantization_config")


def check_full_precision(model_dir: str | Path, role: str) -> None:
    """Refuse a bitsandbytes/GPTQ/AWQ-quantized model where full-precision weights are needed."""
    quantization = quantization_of(model_dir)
    if quantization is not None:
        method = quantization.get("quant_method", "unknown")
        raise ValueError(
            f"{role} {model_dir} is already quantized ({method}): merging or re-quantizing it would round "
            "rounded weights again. Point to the full-precision model it was quantized from (for a QLoRA "
            "adapter: the original base, set with --base_model)"
        )


def load_merged(source: str | Path, base_model: str | None = None) -> PreTrainedModel:
    """Load `source` in float32: a full model directory as it is, an adapter directory merged into its base.

    Args:
        source: a model directory (config.json + weights) or a PEFT adapter directory.
        base_model: overrides the adapter's recorded base (e.g. when it moved); ignored for a full model.
    """
    from peft import PeftModel

    source = Path(source)
    if not source.is_dir():  # a hub id too: the merge reads local files
        raise ValueError(f"{source} is not a directory; give a model directory or a PEFT adapter directory")
    check_model_source(str(source), "model", base_model)  # an adapter whose base moved: the --base_model hint
    if not is_adapter_dir(source):
        check_full_precision(source, "model")
        return AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    base = base_model or adapter_base(source)
    check_full_precision(base, "base model")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, source).merge_and_unload()


def merge_adapter(
    source: str | Path, output_dir: str | Path, base_model: str | None = None, dtype: str = "float32"
) -> Path:
    """Write `source` (adapter or full model) as a plain model directory in `dtype`, with its tokenizer.

    The tokenizer comes from the adapter directory when the trainer saved one there, else from the base.
    """
    source, output_dir = Path(source), Path(output_dir)
    model = load_merged(source, base_model)
    model.to(getattr(torch, dtype)).save_pretrained(output_dir)
    has_tokenizer = (source / "tokenizer_config.json").is_file()
    tokenizer_source = (
        source if has_tokenizer or not is_adapter_dir(source) else (base_model or adapter_base(source))
    )
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(output_dir)
    return output_dir
