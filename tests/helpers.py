"""Plain helpers shared by the test folders: a tiny corpus, a tiny run config, CLI error checks (fixtures live in
``tests/conftest.py``)."""

from __future__ import annotations

import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import lightning.pytorch as pl
import torch
import yaml
from filelock import FileLock
from torch.utils.data import DataLoader, TensorDataset

REPO = Path(__file__).resolve().parents[1]
WORDS = "the quick brown fox jumps over a lazy dog and the cat runs to its house".split()


MORE_WORDS = "the quick brown fox jumps over a lazy dog and then some more words appear here".split()


def write_corpus(path: Path, n_lines: int = 200, seed: int = 0, words: list[str] = WORDS) -> Path:
    """A small deterministic plain-text corpus (200 lines: about 12 KB) of lines of 12 ``words``."""
    rng = random.Random(seed)
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(n_lines)) + "\n")
    return path


def build_once(tmp_path_factory: Any, name: str, build: Callable[[Path], Any]) -> Path:
    """The folder ``name``, filled by ``build(folder)`` once per test run and shared by every pytest-xdist worker.

    The first worker to get here builds it under a file lock; the others wait for it and reuse it (a build that
    failed is redone by the next one). Without xdist it is a folder of this session. What is built must be read
    only by the tests (they write into their own ``tmp_path``).
    """
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the run's folder, above the workers'
    folder, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


TINY_GPT = dict(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32)
"""The fields of a tiny GPT (2 layers, 32 wide, context 16) for tests that build one directly."""


def tiny_gpt_config(**overrides: Any) -> Any:
    """``GPTConfig(**TINY_GPT)`` with ``overrides``."""
    from lightning_gpt.config import GPTConfig

    return GPTConfig(**{**TINY_GPT, **overrides})


def tiny_hf_gpt2(seed: int = 0, **config: Any) -> Any:
    """A random Hugging Face ``GPT2LMHeadModel`` in eval mode: vocabulary 100, 64 positions, 2 layers of 4 heads, 32
    wide, no dropout (``config`` overrides any ``GPT2Config`` field); its weights drawn after ``manual_seed(seed)``."""
    import transformers

    torch.manual_seed(seed)
    fields = dict(vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    fields.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**fields, **config})).eval()


def toy_tokens(n: int = 64, T: int = 16, vocab: int = 32, seed: int = 0) -> torch.Tensor:
    """``(n, T + 1)`` random token ids below ``vocab`` (rows of inputs and their next-token targets)."""
    return torch.randint(0, vocab, (n, T + 1), generator=torch.Generator().manual_seed(seed))


class ToyData(pl.LightningDataModule):
    """Rows of ``toy_tokens`` as ``(input_ids, targets)`` training batches.

    Args:
        n: rows; ``T``: their length; ``vocab``: ids below it; ``batch_size``: rows per batch.
        tokenizer: the data module's tokenizer, which ``GPTModule`` adopts (``None``: none).
        shuffle: shuffle the rows (a seeded generator: the same order every run).
    """

    def __init__(
        self,
        n: int = 64,
        T: int = 16,
        vocab: int = 32,
        batch_size: int = 8,
        tokenizer: Any = None,
        shuffle: bool = False,
    ) -> None:
        super().__init__()
        self.tokens = toy_tokens(n, T, vocab)
        self.batch_size = batch_size
        self.tokenizer = tokenizer
        self.shuffle = shuffle

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(1) if self.shuffle else None
        dataset = TensorDataset(self.tokens[:, :-1], self.tokens[:, 1:])
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=self.shuffle, generator=generator)


class ToyDataWithVal(ToyData):
    """``ToyData`` whose first 16 rows are also the validation set."""

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.tokens[:16, :-1], self.tokens[:16, 1:]), batch_size=self.batch_size)


def plain_trainer(tmp_path: Path, callbacks: Any = (), **kwargs: Any) -> pl.Trainer:
    """A ``lightning.pytorch.Trainer`` for tests: one CPU device, quiet (no logger, bar, summary or checkpoints),
    ``default_root_dir=tmp_path``; ``kwargs`` override."""
    defaults: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    return pl.Trainer(callbacks=list(callbacks), **{**defaults, **kwargs})


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


def yaml_factory(folder: Path, corpus: Path, **base: Any) -> Callable[..., Path]:
    """``make(name="run.yaml", **overrides) -> path``: a ``tiny_config`` run in ``folder/run`` on ``corpus``, with the
    dotted ``base`` overrides of a test file and then the call's own, written to ``folder/name``."""

    def make(name: str = "run.yaml", **overrides: Any) -> Path:
        cfg = tiny_config(folder / "run", corpus, folder / "cache", **{**base, **overrides})
        return write_yaml(folder / name, cfg)

    return make


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
    """Environment for a child ``python -m lightning_gpt`` process: one thread, offline, no traceback override, and
    this checkout first on ``PYTHONPATH`` (the child runs the code beside these tests whatever its working directory,
    as the forked children of ``tests/zygote.py`` do)."""
    env = dict(os.environ)
    env.pop("LIGHTNING_GPT_TRACEBACK", None)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO)]
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *path])
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
