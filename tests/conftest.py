"""Suite-wide test settings, and the ``cli`` fixture: the ``lightning-gpt`` command run in this process."""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Callable, Optional

import pytest
import torch

# The tests use tiny models: one thread is faster than several that wait on each other, and a CI machine has 2 cores.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Token and tokenizer caches of a test run never land in the user's home directory.
os.environ.setdefault("LIGHTNING_GPT_CACHE", os.path.join(os.environ.get("TMPDIR", "/tmp"), "lightning_gpt_test_cache"))


class CLIResult:
    """Exit code and captured output of one ``lightning-gpt`` call."""

    def __init__(self, code: Optional[int], out: str, err: str) -> None:
        # Lightning's log handlers may still point at an earlier test's (closed) capture stream; drop those reports.
        err = re.sub(r"--- Logging error ---.*?\nArguments:[^\n]*\n", "", err, flags=re.S)
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"CLIResult(code={self.code!r}, err=...{self.err[-800:]!r})"


@pytest.fixture
def cli(capsys, monkeypatch) -> Callable[..., CLIResult]:
    """Run ``lightning_gpt.cli.main(argv)`` in this process (no interpreter start-up cost); return code and output."""
    monkeypatch.delenv("LIGHTNING_GPT_TRACEBACK", raising=False)
    monkeypatch.setattr(sys, "argv", ["lightning-gpt"])  # LightningCLI warns when args and sys.argv both look given

    def run(*argv: Any) -> CLIResult:
        from lightning_gpt.cli import main

        capsys.readouterr()
        code: Optional[int] = 0
        try:
            main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return CLIResult(code, captured.out, captured.err)

    return run
