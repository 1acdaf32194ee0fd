"""Writers interrupted by real signals at real moments leave no litter (issue 22, item 4).

A child ``lightning-gpt`` process is signalled while its temporary exists (polled on disk): SIGTERM or Ctrl-C during
``export`` removes the temporary folder and says so; a SIGKILL leaves it, and the next export sweeps it (its writer is
gone); a second Ctrl-C during a checkpoint save aborts without a torch traceback and without a temporary file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_gpt import GPT, GPTConfig
from tests import zygote
from tests.helpers import PYTHON, REPO, python_env, tiny_config, write_yaml


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory, trained) -> Path:
    """A checkpoint of a 6 x 512 GPT (~19M parameters, ~76 MB of weights): its export takes long enough to be
    signalled mid-write."""
    config = GPTConfig(vocab_size=64, block_size=32, n_layer=6, n_head=8, n_embd=512)
    torch.manual_seed(0)
    model = GPT(config)
    tokenizer = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)["tokenizer"]
    path = tmp_path_factory.mktemp("big") / "big.ckpt"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"gpt_config": config.to_dict(), "state_dict": state, "tokenizer": tokenizer}, path)
    return path


def start(argv: list, log: Path) -> Any:
    with open(log, "w") as f:
        return zygote.popen(
            [PYTHON, "-m", "lightning_gpt", *map(str, argv)],
            cwd=REPO,
            env=python_env(),
            stdout=f,
            stderr=subprocess.STDOUT,
        )


def wait_for(folder: Path, marker: str, proc: Any, log: Path, timeout: float = 120) -> Path:
    """Poll until an entry whose name contains ``marker`` exists in ``folder``; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with os.scandir(folder) as entries:
            found = [Path(e.path) for e in entries if marker in e.name]
        if found:
            return found[0]
        if proc.poll() is not None:
            pytest.fail(f"the process ended before {marker!r} appeared ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.001)
    proc.kill()
    pytest.fail(f"no {marker!r} in {folder} within {timeout} s:\n{log.read_text()[-3000:]}")


def finish(proc: Any, log: Path) -> str:
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"did not stop:\n{log.read_text()[-3000:]}")
    return log.read_text()


def litter(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if ".tmp" in p.name]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl_c"])
def test_signal_during_export_removes_the_temporary(tmp_path, big_checkpoint, sig):
    out = tmp_path / "exports" / "out"
    out.parent.mkdir()
    log = tmp_path / "export.log"
    proc = start(["export", "--ckpt_path", big_checkpoint, "--output_dir", out, "--format", "safetensors"], log)
    wait_for(out.parent, ".out.tmp-", proc, log)
    proc.send_signal(sig)
    text = finish(proc, log)
    assert proc.returncode == (143 if sig == signal.SIGTERM else 130), text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert ("stopped by SIGTERM" if sig == signal.SIGTERM else "interrupted") in text
    assert not out.exists() and not litter(out.parent), litter(out.parent)


@pytest.mark.slow
def test_the_next_export_sweeps_what_a_killed_export_left(tmp_path, big_checkpoint):
    out = tmp_path / "exports" / "out"
    out.parent.mkdir()
    log = tmp_path / "export.log"
    proc = start(["export", "--ckpt_path", big_checkpoint, "--output_dir", out, "--format", "safetensors"], log)
    stale = wait_for(out.parent, ".out.tmp-", proc, log)
    proc.send_signal(signal.SIGKILL)  # nothing can clean up after this
    proc.wait(timeout=60)
    assert stale.exists()
    # A temporary of a live writer (this test process) is left alone.
    live = out.parent / f".out.tmp-{os.getpid()}-live"
    live.mkdir()
    proc = start(["export", "--ckpt_path", big_checkpoint, "--output_dir", out, "--format", "safetensors"], log)
    text = finish(proc, log)
    assert proc.returncode == 0, text[-3000:]
    assert out.is_dir() and not stale.exists() and live.exists()


@pytest.mark.slow
def test_second_ctrl_c_during_a_checkpoint_save_aborts_without_a_traceback(tmp_path, corpus, trained):
    """The first Ctrl-C asks for a checkpoint at the end of the step; more, pressed while it is being written, abort
    the save: exit status 1 (or 130), no torch traceback, no temporary file, no partial checkpoint. (Ctrl-C is
    pressed every few milliseconds from then on, as an impatient user does, so that one lands inside torch.save's
    writes.)"""
    overrides = {
        "trainer.max_steps": 100000,
        "model.config": {"block_size": 16, "n_layer": 6, "n_head": 8, "n_embd": 512},
        "checkpoint.every_n_train_steps": 100000,
    }
    cfg = tiny_config(tmp_path / "run", corpus, trained["cache"], **overrides)
    config = write_yaml(tmp_path / "run.yaml", cfg)
    log = tmp_path / "fit.log"
    proc = start(
        ["fit", "--config", config, "--trainer.enable_progress_bar", "true", "--trainer.log_every_n_steps", "1"], log
    )
    deadline = time.monotonic() + 240
    while "step 2/" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, log.read_text()[-3000:]
    folder = tmp_path / "run" / "checkpoints"
    proc.send_signal(signal.SIGINT)
    folder.mkdir(parents=True, exist_ok=True)
    wait_for(folder, ".ckpt.tmp-", proc, log)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.003)
    text = finish(proc, log)
    # 1: Lightning's graceful shutdown; 130: a Ctrl-C that landed before Lightning's handler ignored the next ones.
    assert proc.returncode in (1, 130), text[-3000:]
    assert "Traceback" not in text and "unexpected pos" not in text and "Exception ignored" not in text, text[-3000:]
    assert not litter(folder) and not (folder / "last.ckpt").exists(), os.listdir(folder)
