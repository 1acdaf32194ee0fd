"""Plain helpers shared by the test folders: a tiny corpus, a tiny run config, CLI error checks (fixtures live in
``tests/conftest.py``)."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any, Optional

import yaml

REPO = Path(__file__).resolve().parents[1]
WORDS = "the quick brown fox jumps over a lazy dog and the cat runs to its house".split()


def write_corpus(path: Path, n_lines: int = 200, seed: int = 0) -> Path:
    """A small deterministic plain-text corpus (about 12 KB)."""
    rng = random.Random(seed)
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(n_lines)) + "\n")
    return path


def tiny_config(root: Path, source: Path, cache_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A CLI config for a 2-layer, 32-wide GPT on ``source``, writing into ``root`` (no logger, no samples)."""
    cfg: dict[str, Any] = {
        "seed_everything": 1337,
        "trainer": {
            "default_root_dir": str(root),
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 4,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "limit_val_batches": 0,
        },
        "model": {"config": {"block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32}, "learning_rate": 1e-3},
        "data": {"source": str(source), "tokenizer": "char", "batch_size": 4, "cache_dir": str(cache_dir)},
        "sampling": {"every_n_steps": 100000},
    }
    for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return cfg


def write_yaml(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def last_error_line(err: str) -> str:
    """The ``error: ...`` part of a CLI message (argparse prints the usage first)."""
    idx = err.rfind("lightning-gpt: error:")
    idx = idx if idx >= 0 else err.rfind("error:")
    return err[idx:] if idx >= 0 else err


def user_error(result, *needles: str) -> str:
    """A CLI user error: exit 2, the needles in the message, no traceback. Returns the message."""
    assert result.code == 2, result
    assert "Traceback (most recent call last)" not in result.err, result.err
    message = last_error_line(result.err)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def assert_no_partial_files(folder: Path) -> None:
    """Nothing half-written under ``folder``: no ``*.tmp*`` files (atomic writes rename them into place)."""
    leftovers = [p for p in folder.rglob("*") if ".tmp" in p.name]
    assert not leftovers, f"partial files left behind: {leftovers}"


def python_env() -> dict[str, str]:
    """Environment for a child ``python -m lightning_gpt`` process: one thread, offline, no traceback override."""
    env = dict(os.environ)
    env.pop("LIGHTNING_GPT_TRACEBACK", None)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


PYTHON = sys.executable


def mount_tmpfs(path: Path, size: str) -> Optional[str]:
    """Mount a real tmpfs of ``size`` (e.g. ``"1m"``) at ``path`` (created); returns why not (no root, a container
    without the mount capability...) or ``None`` when mounted. Unmount with ``unmount(path)``."""
    import shutil
    import subprocess

    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        return "no mount command"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return None if done.returncode == 0 else f"cannot mount a tmpfs here: {done.stderr.decode().strip()}"


def unmount(path: Path) -> None:
    import subprocess

    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill_disk(folder: Path, leave: int = 0) -> Path:
    """Fill the file system of ``folder`` with one file until ``write`` fails with ENOSPC, then free ``leave`` bytes
    (rounded down to 4 KiB pages). Returns the filler file."""
    filler = folder / "filler.bin"
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as err:
            assert err.errno == 28, err
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler
