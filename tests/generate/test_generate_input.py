"""Bad input to `reasondistill generate` is refused before any engine starts, in one line that names the
file, the line or the setting and the fix: real files, the real command line."""

import dataclasses
import json

import pytest
import yaml
from conftest import generate_config

from reasondistill import cli
from reasondistill.core.prompts import load_prompts
from reasondistill.generate.generate import generate

GOOD = json.dumps({"question": "Mia has 3 coins. How many coins does Mia have?", "answer": "3"})


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "truncated.jsonl",
            f'{GOOD}\n{{"question": "x", "answer": }}\n'.encode(),
            r"line 2: not valid JSON \(Expecting value at column 29\); fix that line",
        ),
        (
            "latin1.jsonl",
            f"{GOOD}\n\n".encode() + b'{"question": "caf\xe9"}\n',
            "line 3: byte 0xe9 is not UTF-8",
        ),
        ("list.jsonl", f"{GOOD}\n[1, 2]\n".encode(), "line 2: a JSON list, not an object"),
        ("array.json", f"[\n{GOOD},\n{GOOD}\n,]\n".encode(), r"line 4: not valid JSON \(Expecting value"),
    ],
    ids=["malformed", "not-utf8", "not-an-object", "json-array"],
)
def test_a_bad_prompt_file_names_the_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"^prompt file {path}, {message}"):
        load_prompts(str(path))


def test_json_prompt_files_still_read_as_before(tmp_path):
    lines, array = tmp_path / "rows.jsonl", tmp_path / "rows.json"
    lines.write_bytes(b"\xef\xbb\xbf" + f"{GOOD}\n\n{GOOD}".encode())  # a BOM, a blank line, no final newline
    array.write_text(f"[{GOOD}, {GOOD}]")
    for path in (lines, array):
        assert [(r.prompt_id, r.gold_answer) for r in load_prompts(str(path))] == [
            ("row-0", "3"),
            ("row-1", "3"),
        ]


def test_a_missing_relative_prompt_file_is_not_taken_for_a_hub_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"prompt source 'prompts/gsm8k.jsonl' does not exist"):
        load_prompts("prompts/gsm8k.jsonl")


def test_an_output_dir_below_a_file_is_refused_before_anything_loads(tmp_path, tiny_model_dir):
    blocker = tmp_path / "traces"
    blocker.write_text("not a directory")
    config = generate_config(tiny_model_dir, blocker / "ds", prompts=str(tmp_path / "nope.jsonl"))
    # checked before the prompts (which do not exist either): a mistyped output_dir costs no loading
    with pytest.raises(
        ValueError, match=rf"^output_dir {blocker / 'ds'}: {blocker} is a file, not a directory"
    ):
        generate(config)
    assert blocker.read_text() == "not a directory"


def test_the_command_line_gives_one_line_not_a_traceback(tmp_path, tiny_model_dir, capsys, monkeypatch):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(f"{GOOD}\n".encode() + b'{"question": "\xff"}\n')
    out = tmp_path / "out"
    recipe = tmp_path / "recipe.yaml"
    config = generate_config(tiny_model_dir, out, prompts=str(prompts), num_prompts=None)
    recipe.write_text(yaml.safe_dump(dataclasses.asdict(config)))
    monkeypatch.setattr(cli, "setup_logging", lambda level: None)  # its handler would keep capsys's stderr
    assert cli.main(["generate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and not out.exists()
    assert err.splitlines()[-1] == (
        f"reasondistill generate: error: prompt file {prompts}, line 2: byte 0xff is not UTF-8; "
        "save the file as UTF-8"
    )
