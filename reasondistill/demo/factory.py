"""Qwen2-architecture models of chosen sizes (Llama for a student of another tokenizer), built from
scratch for the demo.

Saved with `save_pretrained`, they load in transformers, vLLM and PEFT exactly like a hub
checkpoint. Every linear layer's output size is a multiple of 32, which bitsandbytes' 4-bit CPU
kernels require.

`python -m reasondistill.demo.factory SIZE TOKENIZER_DIR OUTPUT_DIR [--seed N]` saves a fresh model of
a demo size with another model's tokenizer: a starting model for `reasondistill train` or
`reasondistill progressive` (recipes/demo/progressive.yaml).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
)

from reasondistill.core.logs import setup_logging

logger = logging.getLogger("reasondistill.demo.factory")  # not __name__: it also runs as __main__


@dataclass(frozen=True)
class ModelSize:
    """Shape of a demo model; head_dim = hidden_size / num_attention_heads."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int


ModelSizeName = Literal["teacher", "assistant", "student"]
# qwen2 for every demo model; llama (the same shape without q/k/v biases) for a student of another
# tokenizer: transformers 5 loads the tokenizer of any qwen2 directory as Qwen2Tokenizer, with Qwen2's
# pre-tokenizer whatever its tokenizer.json says, and a llama directory's as saved.
DemoArchitecture = Literal["qwen2", "llama"]

# teacher > teaching assistant > student, as in progressive distillation.
MODEL_SIZES: dict[ModelSizeName, ModelSize] = {
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
    size: ModelSizeName | ModelSize,
    tokenizer: PreTrainedTokenizerBase,
    max_position_embeddings: int = 2048,
    seed: int = 0,
    architecture: DemoArchitecture = "qwen2",
) -> PreTrainedModel:
    """A randomly initialised Qwen2 (or Llama) causal LM whose vocabulary matches `tokenizer`.

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
    config = {"qwen2": Qwen2Config, "llama": LlamaConfig}[architecture](
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
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_initial_model(
    size: ModelSizeName,
    tokenizer: PreTrainedTokenizerBase,
    directory: Path,
    seed: int,
    architecture: DemoArchitecture = "qwen2",
) -> None:
    """A random `size` model (with `tokenizer`) saved in `directory`, unless a model is there already."""
    if (directory / "config.json").exists():
        logger.info("reusing %s", directory)
        return
    model = build_model(size, tokenizer, seed=seed, architecture=architecture)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    logger.info("fresh %s model, %.2fM parameters: %s", size, count_parameters(model) / 1e6, directory)


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reasondistill.demo.factory",
        description="Save a freshly initialised demo-size Qwen2 with another model's tokenizer.",
    )
    parser.add_argument("size", choices=list(MODEL_SIZES), help="the model's shape")
    parser.add_argument(
        "tokenizer_dir", type=Path, help="a model directory whose tokenizer it uses (the teacher)"
    )
    parser.add_argument("output_dir", type=Path, help="where it is saved (kept if a model is there already)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the initialisation")
    args = parser.parse_args(argv)
    setup_logging()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_dir)
    save_initial_model(args.size, tokenizer, args.output_dir, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
