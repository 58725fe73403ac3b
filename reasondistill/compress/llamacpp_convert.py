"""GGUF export with llama.cpp's own converter, `convert_hf_to_gguf.py`, which knows every architecture
llama.cpp runs (Llama, Qwen2/3, Gemma, Phi-3, Mistral, SmolLM, ...).

scripts/install.sh copies the converter (the script, its `conversion/` package and the `gguf-py` it is
written against, newer than the `gguf` package of the same version number) out of the llama-cpp-python
source it builds, into `.venv/share/reasondistill/llama.cpp`; `REASONDISTILL_LLAMA_CPP=DIR` points at
another llama.cpp checkout instead. It runs in a subprocess, so its `gguf` never meets ours.

Two things are added around it. The converter names a BPE tokenizer's pre-tokenizer by hashing the
tokens it gives a fixed text, and refuses any hash it does not know: every tokenizer trained for a new
model (the demo's own) is refused. For those, and only those, it runs with the name that
`gguf_export.llama_cpp_pretokenizer` gives after checking that the tokenizer's split regex is one
llama.cpp implements ('qwen2', 'llama-bpe'); a tokenizer the converter knows keeps its own answer. And
whether llama.cpp puts a BOS token before a text prompt is written as the transformers tokenizer does it:
the converter reads it from tokenizer files that often do not say, and llama.cpp's default then adds one
for 'llama-bpe' and Gemma.

Refused before converting, with `gguf_converter: reasondistill` (gguf_export.py) named as the way out, is
what this converter version writes wrong without an error: a Gemma 3 whose layers are not Gemma 3's five
sliding-window layers to one full-attention layer (it writes no layer pattern, and llama.cpp assumes
that one), or whose vocabulary is padded beyond a tokenizer.json's tokens (it cuts the embedding to the
tokenizer but lists the padded vocabulary, and llama.cpp refuses the file).
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Literal

# Only the standard library at import: the converter's subprocess runs this module and must import its
# own gguf-py, not the `gguf` package that gguf_export (imported below, where needed) brings in.

CONVERTER_ENV = "REASONDISTILL_LLAMA_CPP"
ConverterType = Literal["F32", "F16", "Q8_0"]
OUTTYPES: dict[str, str] = {"F32": "f32", "F16": "f16", "Q8_0": "q8_0"}
GEMMA3_FULL_ATTENTION_EVERY = 6  # llama.cpp's Gemma 3 graph without a pattern key (src/models/gemma3.cpp)


def converter_dir() -> Path:
    """The llama.cpp directory holding convert_hf_to_gguf.py, conversion/ and gguf-py/."""
    default = Path(sys.prefix) / "share" / "reasondistill" / "llama.cpp"
    directory = Path(os.environ.get(CONVERTER_ENV) or default)
    missing = [
        name for name in ("convert_hf_to_gguf.py", "conversion", "gguf-py") if not (directory / name).exists()
    ]
    if missing:
        raise ValueError(
            f"llama.cpp's GGUF converter is not in {directory} (missing {', '.join(missing)}): run "
            f"scripts/install.sh (with LLAMACPP=1, the default), set {CONVERTER_ENV} to a llama.cpp "
            "checkout, or set gguf_converter: reasondistill in the quantize recipe"
        )
    return directory


def check_convertible(model_dir: Path) -> None:
    """Refuse, before writing anything, what the converter would write wrong without saying so."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    if config.model_type not in ("gemma3", "gemma3_text"):
        return
    config = getattr(config, "text_config", config)
    full_every = GEMMA3_FULL_ATTENTION_EVERY
    expected = [
        "full_attention" if (layer + 1) % full_every == 0 else "sliding_attention"
        for layer in range(config.num_hidden_layers)
    ]
    problems = []
    if list(config.layer_types) != expected:
        problems.append(
            f"its layers are {config.layer_types}, and llama.cpp reads a Gemma 3 without a layer pattern "
            f"(this converter writes none) as one full-attention layer in every {full_every}"
        )
    tokenizer_json = model_dir / "tokenizer.json"
    if not (model_dir / "tokenizer.model").is_file() and tokenizer_json.is_file():
        tokens = json.loads(tokenizer_json.read_text(encoding="utf-8"))
        count = len(tokens["model"]["vocab"]) + len(tokens["added_tokens"])
        if count != config.vocab_size:
            problems.append(
                f"its vocabulary ({config.vocab_size}) is padded beyond tokenizer.json's {count} tokens, and "
                "this converter cuts the embedding to the tokenizer but lists the padded vocabulary"
            )
    if problems:
        raise ValueError(
            f"{model_dir}: llama.cpp's converter would write this Gemma 3 wrong: {'; '.join(problems)}. "
            "Export it with gguf_converter: reasondistill (gguf_export.py writes the layer pattern and the "
            "padded vocabulary)"
        )


def convert_hf_to_gguf(
    model_dir: str | Path, output_path: str | Path, file_type: ConverterType = "F16"
) -> Path:
    """Write a full-precision model directory (with tokenizer) as one GGUF file with llama.cpp's converter.

    The file appears only once the converter has finished: a failed run leaves no partial file behind.
    """
    from transformers import AutoTokenizer

    from reasondistill.compress.gguf_export import llama_cpp_pretokenizer
    from reasondistill.compress.merge import check_full_precision

    model_dir, output_path = Path(model_dir), Path(output_path)
    check_full_precision(model_dir, "model")
    directory = converter_dir()
    check_convertible(model_dir)
    try:
        pretokenizer = llama_cpp_pretokenizer(model_dir)
    except (ValueError, FileNotFoundError):
        pretokenizer = ""  # not one we can vouch for: the converter's own hash decides, or refuses
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer("1")["input_ids"]
    adds_bos = tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id]
    output_path.parent.mkdir(parents=True, exist_ok=True)
    partial = output_path.with_name(output_path.name + ".partial")
    command = [
        sys.executable,
        "-m",
        __name__,
        str(directory),
        pretokenizer,
        str(int(adds_bos)),
        str(model_dir),
    ]
    command += ["--outfile", str(partial), "--outtype", OUTTYPES[file_type]]
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        partial.unlink(missing_ok=True)
        last_lines = "\n".join(run.stderr.strip().splitlines()[-5:])
        raise RuntimeError(
            f"llama.cpp's converter failed on {model_dir} (exit {run.returncode}):\n{last_lines}"
        )
    partial.replace(output_path)
    return output_path


def _run_converter(directory: Path, pretokenizer: str, adds_bos: bool, argv: list[str]) -> None:
    """In the subprocess: run convert_hf_to_gguf.py with `argv`, naming the pre-tokenizer it does not know
    and writing whether the tokenizer adds a BOS token."""
    sys.path[:0] = [str(directory / "gguf-py"), str(directory)]
    # the converter's own packages, found through sys.path above
    from conversion.base import TextModel
    from gguf import SpecialVocab

    by_hash = TextModel.get_vocab_base_pre

    def known_or_checked(self, tokenizer) -> str:
        try:
            return by_hash(self, tokenizer)
        except NotImplementedError:
            if not pretokenizer:
                raise
            return pretokenizer

    add_to_gguf = SpecialVocab.add_to_gguf

    def with_bos_as_measured(self, gguf_writer, quiet: bool = False) -> None:
        self.add_special_token["bos"] = adds_bos
        add_to_gguf(self, gguf_writer, quiet)

    TextModel.get_vocab_base_pre = known_or_checked
    SpecialVocab.add_to_gguf = with_bos_as_measured
    sys.argv = [str(directory / "convert_hf_to_gguf.py"), *argv]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    _run_converter(Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", sys.argv[4:])
