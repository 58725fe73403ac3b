"""Tiny random models of the architectures people deploy, beside the demo's Qwen2: Llama 3.2, Qwen3, Gemma 3.

Each keeps the traits that make its architecture differ in the pipeline's later stages (GGUF export,
llama.cpp, pruning), at a size the CPU runs in a second:

- **Llama 3.2** (`LlamaForCausalLM`): tied embeddings, grouped-query attention, `llama3` RoPE scaling
  (its original context shrunk to 64 tokens, so a short prompt meets all three of its frequency bands).
  Give it a tokenizer trained with `demo.tokenizer.LLAMA3_SPLIT_PATTERN`, Llama 3's pre-tokenizer.
- **Qwen3** (`Qwen3ForCausalLM`): RMS norms of each head's queries and keys, no qkv bias, and Qwen3's
  head_dim of 128, wider than hidden_size / num_attention_heads.
- **Gemma 3** (`Gemma3ForCausalLM`, text only): norms before and after attention and MLP scaling by
  (1 + weight), query/key norms, embeddings scaled by sqrt(hidden_size), GELU, sliding-window layers with
  their own RoPE base (a 16-token window, so short prompts reach past it) and a full-attention layer with
  linear RoPE scaling, as Gemma 3 4B and larger have.

Weights are random (seeded, 5x the usual spread, so greedy tokens depend on the context through attention
rather than repeating one token); norm weights get noise too, so a norm written to the wrong place changes
the function. Vocabularies are the tokenizer's length padded to a multiple of 32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen3Config,
)

TinyArchitecture = Literal["llama", "qwen3", "gemma3_text"]
TINY_ARCHITECTURES: tuple[TinyArchitecture, ...] = ("llama", "qwen3", "gemma3_text")
# hidden 128, MLP 384 and 4 layers, as the demo's Qwen2 student; every matrix row a multiple of 32 (Q4_0)
SHAPE = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, max_position_embeddings=1024)


def tiny_config(model_type: TinyArchitecture, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """The tiny config of `model_type` for `tokenizer` (its special ids, its vocabulary padded to 32s)."""
    ids = dict(
        vocab_size=-(-len(tokenizer) // 32) * 32,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=0.1,  # 5x the usual 0.02: attention, not just the last token, picks the next one
    )
    if model_type == "llama":
        rope = dict(rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0)
        rope.update(high_freq_factor=4.0, original_max_position_embeddings=64)
        return LlamaConfig(
            **SHAPE,
            **ids,
            num_attention_heads=4,
            num_key_value_heads=2,
            rms_norm_eps=1e-5,
            rope_parameters=rope,
        )
    if model_type == "qwen3":
        return Qwen3Config(
            **SHAPE, **ids, num_attention_heads=2, num_key_value_heads=1, head_dim=128, rope_theta=1e6
        )
    if model_type == "gemma3_text":
        return Gemma3TextConfig(
            **SHAPE,
            **ids,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            query_pre_attn_scalar=32,  # llama.cpp scales attention by 1/sqrt(head_dim), as Gemma 3 1B-12B do
            sliding_window=16,
            layer_types=["sliding_attention"] * 3 + ["full_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 20000.0},
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            },
        )
    raise ValueError(f"no tiny {model_type} model; choose from {', '.join(TINY_ARCHITECTURES)}")


def build_tiny_model(
    model_type: TinyArchitecture, tokenizer: PreTrainedTokenizerBase, seed: int = 0
) -> PreTrainedModel:
    """A randomly initialised tiny `model_type` model (float32) whose vocabulary fits `tokenizer`."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, tokenizer), dtype=torch.float32)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.endswith("norm.weight"):
                weight.add_(0.1 * torch.randn_like(weight))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def save_tiny_model(
    model_type: TinyArchitecture, tokenizer: PreTrainedTokenizerBase, directory: Path, seed: int = 0
) -> Path:
    """Save a tiny `model_type` model with `tokenizer` (and its chat template) as a hub-style directory."""
    build_tiny_model(model_type, tokenizer, seed).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
