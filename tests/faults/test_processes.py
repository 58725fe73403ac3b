"""vLLM's engine processes end with the process that started them, and their death is an error, not a
hang: a real engine on the tiny model in a child process, killed or interrupted as users do it."""

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

# The child: a vLLM engine, its engine process ids on stdout, then one long sampling call when asked.
CHILD = """
import json, signal, sys
from multiprocessing import active_children
sys.path.insert(0, sys.argv[2])  # tests/, for conftest's engine settings
from conftest import engine_config
from reasondistill.core.engines import SamplingConfig, VllmEngine

if sys.argv[3] == "background":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # how a non-interactive shell starts `command &`
engine = VllmEngine(engine_config(sys.argv[1]))
print("ENGINE", json.dumps([p.pid for p in active_children()]), flush=True)
sys.stdin.readline()
print("SAMPLING", flush=True)
try:  # 256 x up to 400 tokens: tens of seconds on 2 cores
    engine.sample([[1, 2, 3]] * 256, SamplingConfig(1, 1.0, 1.0, 400), list(range(256)))
    print("SAMPLED", flush=True)
except Exception as error:
    print(f"FAILED {type(error).__name__}: {error}", flush=True)
"""


class Child:
    """The child process, its own process group, and its marked stdout lines (vLLM logs there too)."""

    def __init__(self, model_dir: Path, mode: str):
        tests = str(Path(__file__).resolve().parents[1])
        self.process = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(model_dir), tests, mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.engine_tree: list[psutil.Process] = []

    def _read(self) -> None:
        for line in self.process.stdout:  # drained to the end: a full pipe would stall the child
            if line.startswith(("ENGINE", "SAMPLING", "SAMPLED", "FAILED")):
                self.lines.put(line.strip())

    def expect(self, marker: str, timeout: float) -> str:
        line = self.lines.get(timeout=timeout)
        assert line.startswith(marker), line
        return line

    def start_engine(self) -> None:
        engines = json.loads(self.expect("ENGINE", timeout=600).split(" ", 1)[1])
        self.engine_tree = [psutil.Process(pid) for pid in engines]
        self.engine_tree += [child for p in self.engine_tree for child in p.children(recursive=True)]
        assert self.engine_tree  # the EngineCore and its worker

    def alive(self) -> list[psutil.Process]:
        """Engine processes still running (a killed orphan may linger as a zombie until it is reaped)."""
        running = []
        for process in self.engine_tree:
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    running.append(process)
            except psutil.NoSuchProcess:
                pass
        return running

    def kill_all(self) -> None:
        for process in [self.process, *self.alive()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
        self.process.wait()


@pytest.fixture
def child(tiny_model_dir, request):
    started = Child(tiny_model_dir, request.param)
    yield started
    started.kill_all()  # a failing test must not leave a 3 GB engine behind


@pytest.mark.parametrize("child", ["foreground"], indirect=True)
def test_engine_processes_end_when_the_main_process_is_killed(child):
    child.start_engine()
    os.kill(child.process.pid, signal.SIGKILL)  # no Python cleanup runs
    child.process.wait()
    deadline = time.time() + 5
    while child.alive() and time.time() < deadline:
        time.sleep(0.1)
    assert not child.alive(), "vLLM's engine processes outlived the process that started them"


@pytest.mark.parametrize("child", ["background"], indirect=True)
def test_a_background_job_whose_engine_stops_on_ctrl_c_fails_instead_of_hanging(child):
    """Ctrl-C reaches the whole process group: the job ignores it, vLLM's engine (its own SIGINT handler)
    stops. Before: the job waited for the engine's outputs forever, or took the requests the engine ended
    as "abort" for finished ones."""
    child.start_engine()
    child.process.stdin.write("go\n")
    child.process.stdin.flush()
    child.expect("SAMPLING", timeout=10)
    time.sleep(1)  # the requests are in the engine
    os.killpg(child.process.pid, signal.SIGINT)
    assert child.expect("FAILED", timeout=30).startswith("FAILED EngineStopped: vLLM's engine")
    assert child.process.wait(timeout=30) == 0  # the job itself ignored the signal and ended normally
