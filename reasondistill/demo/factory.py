"""Qwen2-architecture models of chosen sizes, built from scratch for the demo.

Saved with `save_pretrained`, they load in transformers, vLLM and PEFT exactly like a hub
checkpoint. Every linear layer's output size is a multiple of 32, which bitsandbytes' 4-bit CPU
kernels require.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM


@dataclass(frozen=True)
class ModelSize:
    """Shape of a demo model; head_dim = hidden_size / num_attention_heads."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int


# teacher > teaching assistant > student, as in progressive distillation.
MODEL_SIZES: dict[str, ModelSize] = {
    "teacher": ModelSize(
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "assistant": ModelSize(
        hidden_size=192,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=3,
        num_key_value_heads=1,
    ),
    "student": ModelSize(
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
    ),
}


def build_model(
    size: str | ModelSize,
    tokenizer: PreTrainedTokenizerBase,
    max_position_embeddings: int = 2048,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2ForCausalLM whose vocabulary matches `tokenizer`.

    The vocabulary is padded up to a multiple of 64, as real checkpoints pad theirs (the padding
    rows are never produced by the tokenizer).
    """
    shape = MODEL_SIZES[size] if isinstance(size, str) else size
    for name in ("hidden_size", "intermediate_size"):
        if getattr(shape, name) % 32:
            raise ValueError(
                f"{name}={getattr(shape, name)} must be a multiple of 32 (bitsandbytes 4-bit on CPU)"
            )
    head_dim = shape.hidden_size // shape.num_attention_heads
    if (head_dim * shape.num_key_value_heads) % 32:
        raise ValueError(
            "num_key_value_heads * head_dim must be a multiple of 32 (bitsandbytes 4-bit on CPU)"
        )
    vocab_size = -(-len(tokenizer) // 64) * 64
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_initial_model(size: str, tokenizer: PreTrainedTokenizerBase, directory: Path, seed: int) -> bool:
    """A random `size` model (with `tokenizer`) saved in `directory` unless one is there; True if built."""
    if (directory / "config.json").exists():
        return False
    model = build_model(size, tokenizer, seed=seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return True


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())
