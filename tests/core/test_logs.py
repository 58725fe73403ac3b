"""Logging set-up: known third-party start-up noise is dropped, other warnings and our messages are not."""

import subprocess
import sys

IMPORT_BITSANDBYTES = """
import logging
import reasondistill.core.logs
import bitsandbytes
logging.getLogger("bitsandbytes.backends.cpu.ops").warning("a bitsandbytes warning that matters")
"""


def test_bitsandbytes_start_up_noise_is_dropped_and_its_other_warnings_kept():
    """The kernels-community line is logged while bitsandbytes is imported; importing our logging module
    first is enough (vLLM's engine processes never call setup_logging)."""
    run = subprocess.run(
        [sys.executable, "-c", IMPORT_BITSANDBYTES], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "gemm_4bit_forward" not in run.stderr
    assert "a bitsandbytes warning that matters" in run.stderr


def test_setup_logging_writes_our_messages_and_progress_bars_follow_the_level(capsys, monkeypatch):
    import logging

    from transformers.utils import logging as hf_logging

    from reasondistill.core.logs import progress_bar, setup_logging

    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "WARNING")  # setup_logging's default, undone after the test
    logger = logging.getLogger("reasondistill.test")
    root = logging.getLogger("reasondistill")
    handlers, level, hf_bars = list(root.handlers), root.level, hf_logging.is_progress_bar_enabled()
    try:
        root.handlers.clear()  # a handler made here writes to capsys's stdout
        setup_logging("info")
        logger.info("measured")
        assert capsys.readouterr().out == "measured\n"
        assert not progress_bar(logger, total=1).disable
        setup_logging("warning")
        logger.info("hidden")
        assert capsys.readouterr().out == "" and progress_bar(logger, total=1).disable
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        if hf_bars:
            hf_logging.enable_progress_bar()


def test_bars_and_warnings_users_cannot_act_on_are_off_and_others_still_show():
    import warnings

    import datasets

    from reasondistill.core.logs import drop_quiet_messages, quiet_third_party

    was_on = datasets.is_progress_bar_enabled()
    try:
        quiet_third_party()
        assert not datasets.is_progress_bar_enabled()  # no "Map: 100%" bar per trace dataset load
        quiet_third_party(debug=True)
        assert datasets.is_progress_bar_enabled()
    finally:
        (datasets.enable_progress_bars if was_on else datasets.disable_progress_bars)()
    with warnings.catch_warnings(record=True) as caught:
        drop_quiet_messages()  # as importing core.logs does (pytest resets warning filters per test)
        for message in ("'pin_memory' argument is set as true but no accelerator is found", "another"):
            module = "torch.utils.data.dataloader"
            warnings.warn_explicit(message, UserWarning, "dataloader.py", 1, module=module)
    assert [str(w.message) for w in caught] == ["another"]
