"""A Ctrl-C ends the test run at once and leaves no process behind (a pytest plugin; ``tests/conftest.py`` loads it).

Without it, a Ctrl-C under pytest-xdist waited for the workers to finish their tests (execnet's 10 s exit timeout,
then a kill), and a test's ``subprocess.run`` killed only its direct child on ``KeyboardInterrupt``: a grandchild (the
second rank of a two-process fit, a server's worker) lived on, holding the pipes the test read. Here, in every pytest
process (the xdist controller and each worker), SIGINT first kills every descendant process, the whole tree snapshot
taken while it is still linked (an orphan loses its parent link), and then raises ``KeyboardInterrupt`` as Python's
default handler does. In a terminal, Ctrl-C reaches every process of the group; a ``kill -INT`` of the controller
alone is enough, since it kills the workers and theirs.

A test that leaves SIGINT ignored (Lightning ignores it after it handled a ``KeyboardInterrupt`` in an in-process
fit, which only a real Ctrl-C causes: a test that simulates one restores the handler itself) gets this handler back,
and the run stops there, as the Ctrl-C asked.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Generator

import psutil
import pytest


def kill_descendants() -> None:
    """SIGKILL every process this one started, their children included; wait (up to 5 s) until they are gone."""
    me = psutil.Process()
    for _ in range(2):  # a process forked between the snapshot and its parent's death is caught the second time
        procs = me.children(recursive=True)
        for proc in procs:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=5)


def _on_sigint(signum: int, frame: Any) -> None:
    kill_descendants()
    signal.default_int_handler(signum, frame)


def pytest_configure(config: pytest.Config) -> None:
    """Install the SIGINT handler (only over Python's default one, in the main thread)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Any) -> Generator[None, None, None]:
    """After each test: a SIGINT left ignored means a Ctrl-C was swallowed by an in-process fit; stop the run."""
    before = signal.getsignal(signal.SIGINT)
    yield
    if before is _on_sigint and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, _on_sigint)
        os.kill(os.getpid(), signal.SIGINT)


def pytest_keyboard_interrupt(excinfo: Any) -> None:
    """Whatever caught the interrupt first, nothing this run started outlives it."""
    kill_descendants()
