"""``AtomicCheckpointIO``: a Lightning ``CheckpointIO`` plugin that never leaves a half-written checkpoint, and never
runs code from a checkpoint it reads unless told to trust it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import lightning
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_gpt.errors import storage_error

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to ``<path>.tmp-<pid>``, fsync it, then ``os.replace`` it onto ``<path>``.

    The rename is atomic on POSIX and Windows, so the file under the final name is always a complete checkpoint: a
    crash or SIGKILL mid-save leaves the previous file (and at worst a stray ``.tmp-<pid>`` file, removed on the next
    successful save of the same path, but only when the process that wrote it is gone: a live writer's file is never
    touched). Remote filesystems (``s3://``...) fall back to the plain write.

    Reading (``fit --ckpt_path``, ``validate``/``test``/``predict``) is weights-only whatever Lightning asks for: a file
    that needs a full unpickle is refused (``UnsafeCheckpointError``) unless ``trust_checkpoint`` is set. A weights
    folder (``lightning-gpt export`` or Hugging Face GPT-2) reads as a checkpoint of weights, config and tokenizer.

    Args:
        trust_checkpoint: allow full unpickling of checkpoints that need it (code in the file may run).
    """

    def __init__(self, trust_checkpoint: bool = False) -> None:
        super().__init__()
        self.trust_checkpoint = trust_checkpoint

    def load_checkpoint(
        self, path: Any, map_location: Optional[Any] = lambda storage, loc: storage, weights_only: Optional[bool] = None
    ) -> dict[str, Any]:
        from lightning_gpt.io.checkpoint import read_checkpoint, torch_load
        from lightning_gpt.io.hf import is_pretrained_path

        fs = get_filesystem(path)
        if "file" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
            if not fs.exists(path):
                raise FileNotFoundError(f"Checkpoint file not found: {path}")
            with fs.open(path, "rb") as f:
                return torch_load(f, map_location=map_location, trust_checkpoint=self.trust_checkpoint, name=path)
        if is_pretrained_path(path):
            return _as_lightning_checkpoint(path, trust_checkpoint=self.trust_checkpoint)
        return read_checkpoint(path, map_location=map_location, trust_checkpoint=self.trust_checkpoint)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(
                "`Trainer.save_checkpoint(..., storage_options=...)` with `storage_options` arg"
                f" is not supported for `{self.__class__.__name__}`."
            )
        fs = get_filesystem(path)
        if "file" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
            super().save_checkpoint(checkpoint, path)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f"{path.name}.tmp-*"):  # left by an earlier crash
            if not _writer_alive(stale.name.rsplit(".tmp-", 1)[-1]):
                stale.unlink(missing_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            # A full or read-only disk is the user's to fix: one paragraph naming the file, not torch's traceback.
            wrapped = storage_error(err, path, "the checkpoint", "--trainer.default_root_dir (or --checkpoint.dirpath)")
            if wrapped is not None:
                raise wrapped from err
            raise
        _fsync_dir(path.parent)


def _writer_alive(pid_text: str) -> bool:
    """Whether the process that owns a ``.tmp-<pid>`` file still runs (ours counts as gone: we replace it)."""
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid == os.getpid() or pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there: assume it lives
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists but belongs to someone else (or cannot be asked): leave it
        return True
    return True


def _fsync_dir(directory: Path) -> None:
    # Make the rename itself durable (POSIX); not possible on every platform.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _as_lightning_checkpoint(path: str | Path, trust_checkpoint: bool = False) -> dict[str, Any]:
    """A weights folder as the dict a ``GPTModule`` checkpoint holds (weights, ``gpt_config``, ``tokenizer``), so
    Lightning's ``predict``/``validate``/``test`` can take the folder as ``ckpt_path``."""
    from lightning_gpt.io.hf import read_pretrained

    config, state, tokenizer = read_pretrained(path, trust_checkpoint=trust_checkpoint)
    return {
        "state_dict": {f"model.{k}": v for k, v in state.items()},
        "gpt_config": config.to_dict(),
        "tokenizer": tokenizer,
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
    }
