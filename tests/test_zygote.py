"""``tests/zygote.py``: a forked ``python -m lightning_gpt`` child behaves as a fresh interpreter would (its own pid,
exit status, stdin/stdout/stderr, session, signals), and says so side by side with one."""

from __future__ import annotations

import os
import signal
import subprocess

import psutil  # type: ignore[import-untyped]
import pytest

from tests import zygote
from tests.helpers import PYTHON, REPO, python_env

pytestmark = pytest.mark.skipif(
    not zygote._enabled(), reason="the zygote is off (LIGHTNING_GPT_TEST_ZYGOTE=0, or no os.pidfd_open: not Linux)"
)


def test_a_forked_command_matches_a_fresh_interpreter(trained):
    argv = [PYTHON, "-m", "lightning_gpt", "generate", "--ckpt_path", str(trained["ckpt"]), "--prompt", "-"]
    argv += ["--max_new_tokens", "5", "--temperature", "0"]
    fresh = subprocess.run(argv, cwd=REPO, env=python_env(), input="the quick", capture_output=True, text=True)
    forked = zygote.run(argv, cwd=REPO, env=python_env(), input="the quick", capture_output=True, text=True)
    assert forked.returncode == fresh.returncode == 0, forked.stderr[-2000:]
    assert forked.stdout == fresh.stdout and forked.stdout.startswith("the quick")  # stdin read, stdout written
    bad = [PYTHON, "-m", "lightning_gpt", "gnerate"]
    forked_bad = zygote.run(bad, cwd=REPO, env=python_env(), capture_output=True, text=True)
    assert forked_bad.returncode == 2 and "unknown subcommand 'gnerate'" in forked_bad.stderr


def test_a_forked_command_is_a_process_of_its_own(trained):
    argv = [PYTHON, "-m", "lightning_gpt", "generate", "--ckpt_path", str(trained["ckpt"]), "--prompt", "-"]
    proc = zygote.popen(argv, cwd=REPO, env=python_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        start_new_session=True)  # fmt: skip
    assert isinstance(proc, zygote.ZygoteProcess)  # forked, not a fresh interpreter
    child = psutil.Process(proc.pid)
    assert proc.pid != os.getpid() and child.ppid() not in (0, 1, os.getpid())  # the zygote's child
    assert os.getpgid(proc.pid) == proc.pid  # its own session and process group
    assert proc.poll() is None  # blocked reading its stdin
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL  # killed by the signal, as Popen reports it
    assert not psutil.pid_exists(proc.pid) or psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE
