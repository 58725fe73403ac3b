"""The model-argument checks every stage runs before anything loads, on real directories."""

import json
import shutil
import time

import pytest

from reasondistill.core.model_dir import check_chat_tokenizer, check_model_source, is_hub_id


def adapter_on(directory, base: str | None) -> None:
    """An adapter directory as PEFT writes it (the weights do not matter to the checks)."""
    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))


def test_hub_ids_are_org_slash_name_and_never_a_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_hub_id("Qwen/Qwen2.5-0.5B")
    (tmp_path / "outputs" / "teacher").mkdir(parents=True)
    for local in ("teacher", "outputs/teacher", "outputs/other", "./x/y", "/x/y", "a/b/c"):
        assert not is_hub_id(local), local


@pytest.mark.parametrize(
    "path", ["teacher-missing", "outputs/demo/teacher-missing", "./x/teacher", "/nowhere/t"]
)
def test_a_missing_local_path_names_setting_path_and_fix_at_once(path):
    started = time.time()
    with pytest.raises(
        ValueError, match=rf"^teacher {path} does not exist \(cwd .*\): set --teacher to a model"
    ):
        check_model_source(path, "teacher")
    assert time.time() - started < 1  # never sent to the hub


def test_offline_hub_id_must_be_cached(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets
    with pytest.raises(
        ValueError, match="teacher nobody/no-such-model is neither a local directory nor in the hub"
    ):
        check_model_source("nobody/no-such-model", "teacher")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    check_model_source("nobody/no-such-model", "teacher")  # online: the hub answers


def test_model_adapter_and_bad_directories(tiny_model_dir, tmp_path):
    check_model_source(str(tiny_model_dir), "model")
    with pytest.raises(ValueError, match="has neither config.json .* nor adapter_config.json"):
        check_model_source(str(tmp_path), "model")
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="is a file: set --model to a model directory"):
        check_model_source(str(tmp_path / "model.gguf"), "model")

    adapter = tmp_path / "adapter"
    adapter_on(adapter, str(tiny_model_dir))
    check_model_source(str(adapter), "model")
    moved = tmp_path / "moved-adapter"
    adapter_on(moved, str(tmp_path / "base-that-moved"))
    with pytest.raises(
        ValueError, match=r"base .*base-that-moved \(base_model_name_or_path in .*--base_model DIR"
    ):
        check_model_source(str(moved), "model")
    check_model_source(str(moved), "model", base_model=str(tiny_model_dir))
    with pytest.raises(ValueError, match=r"base .*typo \(--base_model\) is not a model directory"):
        check_model_source(str(moved), "model", base_model=str(tmp_path / "typo"))


def test_tokenizer_files_and_chat_template_are_checked(tiny_model_dir, tmp_path):
    check_chat_tokenizer(str(tiny_model_dir), "model")
    weights_only = tmp_path / "weights-only"
    weights_only.mkdir()
    shutil.copy(tiny_model_dir / "config.json", weights_only)
    with pytest.raises(ValueError, match=rf"model {weights_only} has no tokenizer files .*--tokenizer"):
        check_chat_tokenizer(str(weights_only), "model")
    no_template = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, no_template, ignore=shutil.ignore_patterns("chat_template.jinja"))
    with pytest.raises(ValueError, match=rf"model {no_template}: the tokenizer has no chat template"):
        check_chat_tokenizer(str(no_template), "model")
    with pytest.raises(ValueError, match="tokenizer /nowhere/tok does not exist"):
        check_chat_tokenizer("/nowhere/tok", "tokenizer")
