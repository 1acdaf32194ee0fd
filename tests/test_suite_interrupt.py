"""A Ctrl-C ends a parallel test run at once, with no process left (``tests/interrupt.py``).

A real pytest with two xdist workers runs two tests that each start a child process that starts a grandchild (as a
two-process fit does); a SIGINT sent to the pytest process alone must end it within seconds and leave none of them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]

SLOW_TESTS = """
import subprocess, sys

GRANDCHILD = "import time; time.sleep(300)  # grandchild"
CHILD = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {GRANDCHILD!r}]); time.sleep(300)"


def test_one():
    subprocess.run([sys.executable, "-c", CHILD], capture_output=True)


def test_two():
    subprocess.run([sys.executable, "-c", CHILD], capture_output=True)
"""


def test_the_suite_loads_the_interrupt_hooks(request):
    import tests.interrupt as plugin

    registered = request.config.pluginmanager.get_plugin(str(ROOT / "tests" / "conftest.py"))
    assert registered is not None and registered.pytest_configure is plugin.pytest_configure


def test_ctrl_c_ends_a_parallel_run_at_once_and_leaves_no_process(tmp_path):
    pytest.importorskip("xdist")
    (tmp_path / "test_slow.py").write_text(SLOW_TESTS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    args = ["-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider", "-p", "tests.interrupt", "--rootdir", tmp_path]
    proc = subprocess.Popen(
        [sys.executable, *map(str, args), str(tmp_path / "test_slow.py")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_default_sigint,  # a run started in the background inherits SIGINT ignored
    )
    try:
        tree = psutil.Process(proc.pid)
        deadline = time.monotonic() + 120
        procs: list[psutil.Process] = []
        while time.monotonic() < deadline and proc.poll() is None:
            procs = tree.children(recursive=True)
            if sum(_is_grandchild(p) for p in procs) == 2:
                break
            time.sleep(0.05)  # polling for the two grandchildren to exist, not a fixed wait
        grandchildren = [p for p in procs if _is_grandchild(p)]
        assert len(grandchildren) == 2, "the two tests did not start their processes"
        assert len(procs) >= 6  # 2 workers, 2 children, 2 grandchildren

        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert b"KeyboardInterrupt" in out, out.decode()[-2000:]
    assert took < 10, f"pytest took {took:.1f} s to end after a Ctrl-C"
    left = [p for p in procs if _alive(p)]
    for p in left:
        p.kill()
    assert not left, f"left running after a Ctrl-C: {[_cmdline(p) for p in left]}"


def _default_sigint() -> None:  # pragma: no cover - runs in the child before exec
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _is_grandchild(proc: psutil.Process) -> bool:
    return _cmdline(proc)[-1:] == ["import time; time.sleep(300)  # grandchild"]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


SWALLOWING_TESTS = """
import signal


def test_a_fit_that_handled_a_ctrl_c():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what Lightning leaves after it handled a KeyboardInterrupt


def test_never_runs():
    pass
"""


def test_a_ctrl_c_swallowed_by_an_in_process_fit_still_stops_the_run(tmp_path):
    (tmp_path / "test_swallow.py").write_text(SWALLOWING_TESTS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.interrupt", "--rootdir", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, *args, str(tmp_path / "test_swallow.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_default_sigint,
    )
    assert done.returncode == 2 and "KeyboardInterrupt" in done.stdout, done.stdout[-2000:]
    assert "1 passed" in done.stdout  # the second test never ran
