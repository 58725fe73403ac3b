"""What a model directory holds, read without loading the model; and the checks every stage runs on
its model arguments before anything loads.

A model argument is a local model directory (config.json), a PEFT adapter directory
(adapter_config.json, whose base is checked the same way) or a hub id written `org/name`. Anything else
is a local path: if it is missing the stage stops with one line naming the setting, the path and the
fix, instead of transformers sending the path to the hub (a raw `Repo id must be in the form ...`
traceback, or ~50 s of retries on a machine without network first).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

from reasondistill.core.prompts import HUB_ID

ADAPTER_CONFIG = "adapter_config.json"
# Any of these makes a directory a tokenizer (fast, sentencepiece, BPE and WordPiece vocabularies).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


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


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(adapter_dir: str | Path) -> str:
    """The base model an adapter was trained on (`base_model_name_or_path` of adapter_config.json)."""
    config = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"{adapter_dir}/{ADAPTER_CONFIG} names no base_model_name_or_path; pass it with --base_model"
        )
    return base


def is_hub_id(source: str) -> bool:
    """`org/name` that is no local path: what transformers would look up on the hub.

    A bare name (`gpt2`), `./x`, `/x`, anything with more than one slash, and `dir/name` where `dir` is a
    local directory count as local paths.
    """
    path = Path(source)
    local = path.exists() or path.parent.is_dir() or source.startswith((".", "/"))
    return not local and bool(HUB_ID.fullmatch(source))


def check_hub_id(repo_id: str, setting: str, revision: str | None = None) -> None:
    """With HF_HUB_OFFLINE set, a hub id must already be in the local hub cache (else transformers fails
    later with a long traceback); online, it is left to the hub."""
    import huggingface_hub

    if not huggingface_hub.is_offline_mode():
        return
    if not isinstance(huggingface_hub.try_to_load_from_cache(repo_id, "config.json", revision=revision), str):
        raise ValueError(
            f"{setting} {repo_id} is neither a local directory nor in the hub cache, and HF_HUB_OFFLINE is "
            f"set: give --{setting} a local model directory, or download {repo_id} on a machine that "
            "reaches the hub"
        )


def check_model_source(
    source: str | Path, setting: str, base_model: str | None = None, revision: str | None = None
) -> None:
    """Refuse a model argument that cannot load, before anything loads; local paths never go to the hub.

    Args:
        source: the value of the setting: a model directory, a PEFT adapter directory or a hub id.
        setting: the recipe key / command-line flag it came from, named in the message.
        base_model: an adapter's base given on the command line, checked instead of the recorded one.
        revision: the hub revision, for a hub id.
    """
    source, location = str(source), Path(source)
    if is_hub_id(source):
        check_hub_id(source, setting, revision)
    elif not location.exists():
        raise ValueError(
            f"{setting} {source} does not exist (cwd {Path.cwd()}): set --{setting} to a model directory, "
            "or to a hub id written org/name"
        )
    elif not location.is_dir():
        raise ValueError(f"{setting} {source} is a file: set --{setting} to a model directory")
    elif is_adapter_dir(location):
        base = base_model or adapter_base(location)
        if is_hub_id(base):
            check_hub_id(base, "base_model")
        elif not (Path(base) / "config.json").is_file():
            origin = "--base_model" if base_model else f"base_model_name_or_path in {ADAPTER_CONFIG}"
            raise ValueError(
                f"{setting} {source} is a LoRA adapter whose base {base} ({origin}) is not a model "
                "directory (moved?): pass the base model directory with --base_model DIR (quantize), or "
                f"write it as base_model_name_or_path in {location / ADAPTER_CONFIG}"
            )
    elif not (location / "config.json").is_file():
        raise ValueError(
            f"{setting} {source} has neither config.json (a model) nor {ADAPTER_CONFIG} (a PEFT adapter): "
            f"set --{setting} to the directory save_pretrained or the trainer wrote"
        )


def check_chat_tokenizer(source: str | Path, setting: str) -> None:
    """Refuse a local tokenizer source without tokenizer files or without a chat template (prompts are
    rendered through it); a hub id is left to the loader. Loading a tokenizer takes milliseconds."""
    source = str(source)
    if is_hub_id(source):
        return
    if not Path(source).is_dir():
        raise ValueError(
            f"{setting} {source} does not exist (cwd {Path.cwd()}): set --{setting} to a tokenizer or model "
            "directory"
        )
    if not any((Path(source) / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(
            f"{setting} {source} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}): save the "
            "tokenizer beside the model (tokenizer.save_pretrained(DIR)) or set --tokenizer to a directory "
            "that has them"
        )
    from transformers import AutoTokenizer

    if AutoTokenizer.from_pretrained(source).chat_template is None:
        raise ValueError(
            f"{setting} {source}: the tokenizer has no chat template (prompts are rendered through it): "
            "add chat_template.jinja (or chat_template in tokenizer_config.json), or set --tokenizer to a "
            "directory whose tokenizer has one"
        )
