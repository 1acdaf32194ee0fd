"""Suite-wide test settings, and the ``cli`` fixture: the ``lightning-gpt`` command run in this process."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import torch
import torch._inductor.config

from tests.helpers import build_once, tiny_config, write_corpus, write_yaml, yaml_factory
from tests.interrupt import pytest_configure, pytest_keyboard_interrupt, pytest_runtest_protocol  # noqa: F401 (hooks)

# The tests use tiny models: one thread is faster than several that wait on each other, and a CI machine has 2 cores.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Inductor (the compile tests) compiles its kernels in this process instead of a pool of worker interpreters that each
# import torch: test_compile.py's compiled-greedy test took 38.8 CPU-s instead of 46.6 (cold caches, load average 5).
# The variable for child processes; the setting itself here (Lightning's import read the variable already).
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
torch._inductor.config.compile_threads = int(os.environ["TORCHINDUCTOR_COMPILE_THREADS"])
# Token and tokenizer caches of a test run never land in the user's home directory.
# One per pytest-xdist worker: tests that look at what the cache holds see only their own worker's entries.
_CACHE = "lightning_gpt_test_cache" + (
    f"_{os.environ['PYTEST_XDIST_WORKER']}" if "PYTEST_XDIST_WORKER" in os.environ else ""
)
os.environ.setdefault("LIGHTNING_GPT_CACHE", os.path.join(os.environ.get("TMPDIR", "/tmp"), _CACHE))


# The files that take longest (real multi-process runs, inductor compiles), longest first: pytest-xdist (`--dist
# loadfile --no-loadscope-reorder`, pyproject.toml) hands files to its workers in collection order, so these start
# first and the many short files fill in at the end; by default xdist starts the files with the most tests first, which
# left the two-node runs for last while the other worker sat idle. Only an order: a file missing here runs after them.
# Measured with `python benchmarks/suite_times.py -- -n 2` (per-file sums of wall time, 2026-12-06, with both ranks of
# a two-device fit forked from tests/zygote.py; benchmarks/results/test_suite.md); the two compile tests are placed by
# their cost with a cold inductor cache (a fresh machine: ~35 s each instead of ~5).
SLOWEST_FILES = (
    "training/test_multinode.py",
    "generation/test_compile.py",
    "training/test_module.py",
    "training/test_distributed.py",
    "evaluation/test_harness.py",
    "data/test_object_store.py",
    "io/test_deploy.py",
    "data/test_data_processes.py",
    "cli/test_cli.py",
    "serve/test_server.py",
    "test_gpu_check.py",
    "test_readme.py",
    "generation/test_speculative.py",
    "reliability/test_hostile_files.py",
    "training/test_meta_init.py",
    "data/test_prepared.py",
    "data/test_source_cli.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run ``SLOWEST_FILES`` first (a stable sort: the order inside a file and among the others is kept)."""
    tests_dir = Path(__file__).parent
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}

    def key(item: pytest.Item) -> int:
        try:
            name = item.path.relative_to(tests_dir).as_posix()
        except ValueError:
            return len(rank)
        return rank.get(name, len(rank))

    items.sort(key=key)


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


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return build_once(tmp_path_factory, "corpus", lambda folder: write_corpus(folder / "corpus.txt")) / "corpus.txt"


def _train(base: Path, corpus: Path) -> None:
    from lightning_gpt.cli import main

    torch.manual_seed(0)
    cfg = write_yaml(base / "run.yaml", tiny_config(base / "run", corpus, base / "cache", **{"trainer.max_steps": 2}))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("LIGHTNING_GPT_TRACEBACK", raising=False)
        mp.setattr(sys, "argv", ["lightning-gpt"])
        main(["fit", "--config", str(cfg)])


@pytest.fixture(scope="session")
def trained(tmp_path_factory, corpus) -> dict[str, Path]:
    """A tiny run trained for 2 steps with the CLI (once per test run, shared by the xdist workers): its directory,
    ``last.ckpt``, config and token cache. Read only: a test that writes copies it into its ``tmp_path``."""
    base = build_once(tmp_path_factory, "trained", lambda folder: _train(folder, corpus))
    ckpt = base / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return {"root": base / "run", "ckpt": ckpt, "config": base / "run.yaml", "cache": base / "cache"}


@pytest.fixture
def run_yaml(tmp_path, corpus) -> Callable[..., Path]:
    """``make(name="run.yaml", **dotted_overrides) -> path``: a tiny fit config writing to ``tmp_path/run``."""
    return yaml_factory(tmp_path, corpus)
