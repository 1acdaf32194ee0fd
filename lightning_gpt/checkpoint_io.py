"""``AtomicCheckpointIO``: a Lightning ``CheckpointIO`` plugin that never leaves a half-written checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to ``<path>.tmp-<pid>``, fsync it, then ``os.replace`` it onto ``<path>``.

    The rename is atomic on POSIX and Windows, so the file under the final name is always a complete checkpoint: a
    crash or SIGKILL mid-save leaves the previous file (and at worst a stray ``.tmp-<pid>`` file, removed on the next
    successful save of the same path, but only when the process that wrote it is gone: a live writer's file is never
    touched). Remote filesystems (``s3://``...) fall back to the plain write.
    """

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
        except BaseException:
            tmp.unlink(missing_ok=True)
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
