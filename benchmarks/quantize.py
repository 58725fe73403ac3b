"""Size, memory, speed and accuracy of every compressed artifact, and the prune half of prune-distil-quantize.

    .venv/bin/python benchmarks/quantize.py [--model DIR] [--num-problems 100] [--output-dir DIR]
        [--profiles P ...] [--max-tokens N] [--speed-tokens 128] [--large-layers 12]
        [--calibration-tokens 128] [--threads 2]

Three tables, each printed as it finishes:

1. The demo student to compress (default: the cached demo teacher, 3.3M parameters, whose accuracy is
   meaningful): every hardware profile (GGUF F16 / Q8_0 / Q4_0 / Q4_K_M, bitsandbytes NF4 and int8) against
   the float32 model: size, % of bf16 size, peak memory, tokens/s, greedy pass@1 on the demo task and
   accuracy kept.
2. A randomly initialised 12-layer x 512 Qwen2 (36M parameters), size and speed only: at the demo size the
   embedding, norms and per-process overhead hide what 4 bits save; here the layers dominate.
3. Pruning the same model by one layer and a third of the MLP width (the demo teacher: 4 -> 3 layers, MLP
   768 -> 512): parameters, size and accuracy before distillation; `reasondistill train` then distils it
   back (docs/quantize.md).

GGUF rows run in llama.cpp when llama-cpp-python is installed (Q4_K_M needs it), else in transformers.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

from reasondistill.compress.prune import prune_model
from reasondistill.compress.prune_config import PruneConfig
from reasondistill.compress.quantize import build_artifacts, format_table, measure_artifacts
from reasondistill.compress.quantize_config import QuantizeConfig
from reasondistill.core.llamacpp_engine import llama_cpp_available
from reasondistill.core.logs import setup_logging
from reasondistill.core.markdown_table import markdown_table
from reasondistill.core.model_dir import parameter_count
from reasondistill.demo.factory import ModelSize, build_model
from reasondistill.evaluate.evaluate import evaluate_models, model_size_bytes
from reasondistill.evaluate.evaluate_config import EvaluateConfig
from reasondistill.evaluate.results import ModelSpec

LARGE = ModelSize(
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=12,
    num_attention_heads=8,
    num_key_value_heads=2,
)
PROFILES = ["gguf-f16", "gguf-q8", "gguf-q4", "nf4", "int8"]


def default_model() -> str:
    teachers = sorted(Path(".cache/reasondistill").glob("demo-teacher-*/demo_build.json"))
    if not teachers:
        raise SystemExit("no cached demo teacher: run `reasondistill demo` first or pass --model DIR")
    return str(teachers[-1].parent)


def compress(model: str, out: Path, profiles: list[str], **settings) -> list[dict]:
    config = QuantizeConfig(model=model, output_dir=str(out), profiles=profiles, **settings)
    reference, artifacts = build_artifacts(config)
    rows, _ = measure_artifacts(reference, artifacts, config)
    print(format_table(rows), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model directory to compress (default: cached teacher)")
    parser.add_argument("--num-problems", type=int, default=100)
    parser.add_argument("--output-dir", default="outputs/bench-quantize")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--profiles",
        nargs="+",
        default=PROFILES + (["gguf-q4km"] if llama_cpp_available() else []),
        help="hardware profiles to build (default: all; gguf-q4km with llama-cpp-python)",
    )
    parser.add_argument("--max-tokens", type=int, default=None, help="longest response (default: 400)")
    parser.add_argument("--speed-tokens", type=int, default=128, help="tokens timed per artifact")
    parser.add_argument("--large-layers", type=int, default=12, help="layers of the random model (table 2)")
    parser.add_argument(
        "--calibration-tokens", type=int, default=128, help="pruning: greedy tokens per calibration prompt"
    )
    args = parser.parse_args()
    setup_logging("warning")  # the tables are the output; third-party start-up chatter stays down
    model, out = args.model or default_model(), Path(args.output_dir)
    profiles, settings = args.profiles, dict(threads=args.threads, speed_tokens=args.speed_tokens)
    results = {}

    print(f"\n## 1. {model}: greedy pass@1 on the first {args.num_problems} demo-task test problems\n")
    accuracy = dict(num_problems=args.num_problems, max_tokens=args.max_tokens)
    results["demo"] = compress(model, out / "demo", profiles, **accuracy, **settings)

    print(f"\n## 2. random Qwen2, {args.large_layers} layers x 512 (size and speed only)\n")
    large = out / f"random-{args.large_layers}x512"
    tokenizer = AutoTokenizer.from_pretrained(model)
    build_model(replace(LARGE, num_hidden_layers=args.large_layers), tokenizer, seed=0).save_pretrained(large)
    tokenizer.save_pretrained(large)
    print(f"{parameter_count(large):,} parameters")
    results["large"] = compress(str(large), out / "large", profiles, benchmark=None, **settings)

    print("\n## 3. pruning (before distillation)\n")
    pruned_dir = out / "pruned"
    original = AutoConfig.from_pretrained(model)
    width = original.intermediate_size * 2 // 3 // 32 * 32  # a multiple of 32, as pruning requires
    pruned, pruned_tokenizer, info = prune_model(
        PruneConfig(
            model=model,
            num_layers=original.num_hidden_layers - 1,
            intermediate_size=width,
            calibration_tokens=args.calibration_tokens,
        )
    )
    pruned.save_pretrained(pruned_dir)
    pruned_tokenizer.save_pretrained(pruned_dir)
    config = EvaluateConfig(
        backend="transformers",
        dtype="float32",
        max_model_len=1024,
        num_samples=1,
        temperature=0.0,
        **accuracy,
    )
    runs = evaluate_models(
        [ModelSpec(model, "original"), ModelSpec(str(pruned_dir), "pruned")], ["arithmetic"], config
    )
    shapes = {  # model -> (layers, MLP width, parameters)
        "original": (original.num_hidden_layers, original.intermediate_size, info["parameters_before"]),
        "pruned": (info["num_layers"], info["intermediate_size"], info["parameters_after"]),
    }
    rows = [
        [
            run.model,
            *shapes[run.model][:2],
            f"{shapes[run.model][2]:,}",
            f"{model_size_bytes(run.model_path) / 1e6:.2f}",
            f"{run.metrics['pass@1']['value']:.1%}",
        ]
        for run in runs
    ]
    header = ["model", "layers", "MLP width", "parameters", "size MB", "pass@1"]
    print(markdown_table(header, rows, numeric=range(1, len(header))))
    results["prune"] = {"info": info, "pass@1": {run.model: run.metrics["pass@1"]["value"] for run in runs}}
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
