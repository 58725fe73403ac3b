"""Hardware profiles: a user picks the device class a student will run on, not a bit format.

Each profile names one artifact `reasondistill quantize` builds from the merged full-precision model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    device: str  # who runs it
    runtime: str  # what runs it
    format: Literal["gguf", "bnb"]
    # F16, Q8_0, Q4_0 or Q4_K_M (quantize.WRITTEN_BY_CONVERTER: which need llama.cpp's quantizer)
    gguf_type: str | None = None
    bnb_bits: Literal[4, 8] | None = None

    @property
    def artifact(self) -> str:
        """File or directory name of the artifact under the output directory."""
        return f"model-{self.gguf_type}.gguf" if self.format == "gguf" else self.name


PROFILES: dict[str, HardwareProfile] = {
    profile.name: profile
    for profile in (
        HardwareProfile(
            "gguf-q4", "CPU, laptop, phone", "llama.cpp, Ollama, LM Studio", "gguf", gguf_type="Q4_0"
        ),
        HardwareProfile(
            "gguf-q4km",
            "CPU, laptop, phone (best 4-bit; needs llama-cpp-python here)",
            "llama.cpp, Ollama, LM Studio",
            "gguf",
            gguf_type="Q4_K_M",
        ),
        HardwareProfile(
            "gguf-q8", "CPU with memory to spare", "llama.cpp, Ollama, LM Studio", "gguf", gguf_type="Q8_0"
        ),
        HardwareProfile(
            "gguf-f16", "reference export for llama.cpp tools", "llama.cpp", "gguf", gguf_type="F16"
        ),
        HardwareProfile(
            "nf4", "GPU serving, QLoRA fine-tuning", "transformers + bitsandbytes", "bnb", bnb_bits=4
        ),
        HardwareProfile(
            "int8", "GPU serving, smaller loss than 4-bit", "transformers + bitsandbytes", "bnb", bnb_bits=8
        ),
    )
}


def get_profile(name: str) -> HardwareProfile:
    if name not in PROFILES:
        raise ValueError(f"unknown hardware profile '{name}'; choose from {', '.join(PROFILES)}")
    return PROFILES[name]
