"""load_checkpoint errors and prefixes; AtomicCheckpointIO never leaves a partial file under the final name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_gpt import GPT, GPTConfig
from lightning_gpt.io.checkpoint import load_checkpoint, model_state_dict, read_checkpoint
from lightning_gpt.training.checkpoint_io import AtomicCheckpointIO
from lightning_gpt.training.module import GPTModule

TINY = GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32)


def gpt_checkpoint(model: GPT, prefix: str = "model.") -> dict:
    return {
        "gpt_config": model.config.to_dict(),
        "state_dict": {prefix + k: v for k, v in model.state_dict().items()},
    }


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = GPT(TINY)
    path = tmp_path / "good.ckpt"
    torch.save(gpt_checkpoint(model), path)
    return model, path


def test_load_checkpoint_round_trip_and_compile_prefix(saved, tmp_path):
    model, path = saved
    loaded, tokenizer = load_checkpoint(path)
    assert tokenizer is None
    x = torch.randint(0, 40, (2, 8))
    model.eval()
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # a module whose model was torch.compile'd saves keys as model._orig_mod.<name>
    compiled = tmp_path / "compiled.ckpt"
    torch.save(gpt_checkpoint(model, prefix="model._orig_mod."), compiled)
    torch.testing.assert_close(load_checkpoint(compiled)[0](x), model(x), rtol=0, atol=0)
    assert set(model_state_dict(torch.load(compiled, weights_only=True))) == set(model.state_dict())


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Checkpoint file not found: .*nope\.ckpt"):
        load_checkpoint(tmp_path / "nope.ckpt")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_or_truncated_file_is_a_clear_error(saved, tmp_path, damage):
    _, path = saved
    data = path.read_bytes()
    bad = tmp_path / f"{damage}.ckpt"
    bad.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(2048), "empty": b""}[damage])
    with pytest.raises(ValueError, match=r"is not a readable checkpoint \(truncated or corrupt\?\)"):
        load_checkpoint(bad)


def test_random_bytes_are_a_clear_error(tmp_path):
    # Some random byte strings make torch's legacy loader fail with IndexError/KeyError rather than a load error.
    gen = torch.Generator().manual_seed(7)
    for i in range(40):
        path = tmp_path / f"random{i}.ckpt"
        path.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=gen, dtype=torch.uint8).tolist()))
        with pytest.raises(ValueError, match="is not a readable checkpoint"):
            load_checkpoint(path)


def test_checkpoint_without_gpt_config(tmp_path):
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": GPT(TINY).state_dict()}, path)
    with pytest.raises(ValueError, match="has no 'gpt_config' entry"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_config(saved, tmp_path):
    model, _ = saved
    ckpt = gpt_checkpoint(model)
    ckpt["gpt_config"]["n_layer"] = 3
    path = tmp_path / "mismatch.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="do not match the gpt_config saved with them"):
        load_checkpoint(path)


def test_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="is a folder, not a checkpoint file"):
        read_checkpoint(tmp_path)
    (tmp_path / ".metadata").write_bytes(b"")
    with pytest.raises(ValueError, match="sharded .*load_checkpoint.*dcp_to_torch_save"):
        read_checkpoint(tmp_path)


def test_atomic_save_leaves_no_tmp_files(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "sub" / "a.ckpt"
    io.save_checkpoint({"x": torch.arange(3)}, path)
    io.save_checkpoint({"x": torch.arange(4)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(4))
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.ckpt"]


def test_atomic_save_failing_midway_keeps_the_previous_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "a.ckpt"
    io.save_checkpoint({"x": torch.arange(3)}, path)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial checkpoint bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"x": torch.arange(5)}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt"]


def test_atomic_save_removes_only_temporaries_of_dead_writers(tmp_path):
    """Two processes saving into one folder: a save never deletes the other (live) writer's temporary file."""
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        (tmp_path / f"last.ckpt.tmp-{live.pid}").write_bytes(b"a save in progress")
        (tmp_path / f"last.ckpt.tmp-{dead.pid}").write_bytes(b"left by a killed save")
        io.save_checkpoint({"x": torch.arange(3)}, path)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", f"last.ckpt.tmp-{live.pid}"]
    finally:
        live.kill()
        live.wait()


_KILL_CHILD = """
import sys, torch
from lightning_gpt.training.checkpoint_io import AtomicCheckpointIO
io = AtomicCheckpointIO()
i = 0
while True:
    i += 1
    io.save_checkpoint({"i": i, "w": torch.full((2_000_000,), float(i))}, sys.argv[1])
    print(i, flush=True)
"""


@pytest.mark.slow
def test_sigkill_during_saves_leaves_a_readable_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    for _ in range(3):
        assert proc.stdout.readline()  # a few saves completed
    time.sleep(0.07)  # then kill at an arbitrary moment, most likely mid-write (8 MB per save)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(path, weights_only=True)
    assert state["i"] >= 3
    assert torch.equal(state["w"], torch.full((2_000_000,), float(state["i"])))
    # the next save of the same path clears what the killed writer left behind
    AtomicCheckpointIO().save_checkpoint({"i": 0}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_atomic_io_in_a_trainer(tmp_path):
    torch.manual_seed(0)
    tokens = torch.randint(0, 40, (16, 17))
    loader = DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=8)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ckpt],
        plugins=[AtomicCheckpointIO()],
        default_root_dir=tmp_path,
    )
    trainer.fit(GPTModule(TINY), loader)
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == ["epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt"]
    model, _ = load_checkpoint(tmp_path / "ckpt" / names[-1])
    assert model.config == TINY


class _Opaque:
    """Not a tensor nor plain data: weights_only loading refuses it."""


def test_checkpoint_with_objects_is_refused_unless_trusted(saved, tmp_path):
    from lightning_gpt.io.checkpoint import UnsafeCheckpointError

    model, _ = saved
    ckpt = gpt_checkpoint(model)
    ckpt["extra"] = _Opaque()
    path = tmp_path / "objects.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(UnsafeCheckpointError, match=r"(?s)_Opaque.*trust_checkpoint=True.*--trust_checkpoint"):
        load_checkpoint(path)
    loaded, _ = load_checkpoint(path, trust_checkpoint=True)
    x = torch.randint(0, 40, (1, 6))
    torch.testing.assert_close(loaded(x), model.eval()(x))
