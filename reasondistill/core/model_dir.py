"""What a model directory holds, read without loading the model."""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open


def parameter_count(model_dir: str | Path) -> int:
    """Parameters stored in a full-precision model directory's safetensors files (a tied head counts once)."""
    total = 0
    for weights in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(weights, "pt") as tensors:
            for name in tensors.keys():  # noqa: SIM118 (safe_open is not a mapping)
                numel = 1
                for dim in tensors.get_slice(name).get_shape():
                    numel *= dim
                total += numel
    return total
