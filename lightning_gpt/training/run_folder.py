"""The life of a run folder: which checkpoint ``--ckpt_path last`` means, who may write there, and what ``fit`` may
overwrite.

A run folder is ``<trainer.default_root_dir>``; its checkpoints live in ``<run>/checkpoints`` (or
``--checkpoint.dirpath``). The rules the ``lightning-gpt fit`` command follows:

- ``--ckpt_path last`` resolves to the newest *complete* training state in the checkpoint folder
  (``resolve_last_checkpoint``): ``last.ckpt`` when it loads and nothing beside it is newer, else the newest loadable
  checkpoint, with a warning that names why ``last.ckpt`` was passed over. It never silently starts from step 0 while
  resumable checkpoints exist.
- ``fit`` without ``--ckpt_path`` into a folder that already holds checkpoints is refused (``check_fresh_run``) unless
  ``--overwrite true`` asks for a fresh start; then the old checkpoints are removed first, so the folder only ever
  holds one run (one ``last.ckpt``).
- ``--ckpt_path last`` in a folder without any checkpoint (a first run, or every checkpoint deleted) stops with a
  message (``last_checkpoint``) instead of silently training from step 0; a requeued SLURM job resumes from its
  ``hpc_ckpt_*.ckpt`` (``slurm_requeue_resumes``).
- One ``fit`` at a time per checkpoint folder (``RunFolderLock``); the lock is an OS file lock, released by the OS
  when the process dies, so a killed run never leaves a stale lock behind.

``claim_run_folder`` (before anything is built: read-only checks) and ``open_run_folder`` (once built: writable, locked,
old checkpoints removed on ``--overwrite``) apply these rules for the ``fit`` command.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Optional

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info

__all__ = [
    "LAST",
    "CheckpointInfo",
    "RunFolderLock",
    "check_fresh_run",
    "check_writable",
    "checkpoint_dir",
    "checkpoint_files",
    "claim_run_folder",
    "inspect_checkpoint",
    "is_launch_rank_zero",
    "is_sharded_checkpoint",
    "last_checkpoint",
    "open_run_folder",
    "remove_checkpoints",
    "resolve_last_checkpoint",
    "slurm_requeue_resumes",
]

log = logging.getLogger(__name__)

LAST = "last.ckpt"
# What Lightning needs to resume a fit (weights, optimizer, loop counters); weights-only saves lack the last two.
_RESUME_KEYS = ("state_dict", "global_step", "loops", "optimizer_states")


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint file holds, read without loading its tensors.

    Attributes:
        path: the file.
        step: its ``global_step``, or ``None`` when it cannot be read.
        problem: why it cannot be resumed from (``None`` when it can).
    """

    path: str
    step: Optional[int]
    problem: Optional[str]

    @property
    def resumable(self) -> bool:
        return self.problem is None


def checkpoint_files(folder: str) -> list[str]:
    """The ``*.ckpt`` files and sharded ``*.ckpt`` folders (``FSDP2Strategy``) in ``folder`` (not temporaries of a save
    in progress), sorted by name."""
    from lightning_gpt.io.sharded import is_sharded_checkpoint

    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if n.endswith(".ckpt"))
    paths = [os.path.join(folder, n) for n in names]
    return [p for p in paths if os.path.isfile(p) or is_sharded_checkpoint(p)]


def inspect_checkpoint(path: str) -> CheckpointInfo:
    """Read a checkpoint's step and check that it holds a resumable training state (tensors stay memory-mapped).

    Args:
        path: a ``.ckpt`` file.

    Returns:
        A ``CheckpointInfo``; ``problem`` names what is wrong (missing, empty, unreadable, weights only).
    """
    from lightning_gpt.io.sharded import is_sharded_checkpoint, sharded_keys

    if is_sharded_checkpoint(path):  # meta.pt: the loops and counters; .metadata: the tensors' names
        try:
            meta: Any = torch.load(os.path.join(path, "meta.pt"), map_location="cpu", weights_only=True)
            keys = sharded_keys(path)
        except Exception as err:  # noqa: BLE001 - damaged bytes raise many types
            return CheckpointInfo(path, None, f"it cannot be read ({type(err).__name__}; truncated or damaged?)")
        if isinstance(meta, dict):  # the sharded entries stand in for the keys a .ckpt file would hold
            meta = {**meta, **{key: True for key in keys}}
            if "optimizer_0" in keys:
                meta["optimizer_states"] = True
        return _info(path, meta)
    if not os.path.isfile(path):
        return CheckpointInfo(path, None, "it does not exist")
    if os.path.getsize(path) == 0:
        return CheckpointInfo(path, None, "it is empty")
    try:
        try:
            state: Any = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # not a zip-format file: mmap is impossible, read it in full
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - damaged bytes raise many types
        return CheckpointInfo(path, None, f"it cannot be read ({type(err).__name__}; truncated or damaged?)")
    return _info(path, state)


def _info(path: str, state: Any) -> CheckpointInfo:
    if not isinstance(state, dict):
        return CheckpointInfo(path, None, "it is not a Lightning checkpoint")
    missing = [k for k in _RESUME_KEYS if k not in state]
    step = state.get("global_step")
    step = int(step) if isinstance(step, int) else None
    if missing:
        return CheckpointInfo(path, step, f"it is not a resumable training checkpoint (no {', '.join(missing)})")
    return CheckpointInfo(path, step, None)


def resolve_last_checkpoint(folder: str) -> tuple[Optional[str], Optional[str]]:
    """What ``--ckpt_path last`` means in a checkpoint folder: the newest complete training state.

    ``last.ckpt`` when it is resumable and no other checkpoint holds a later step; otherwise the resumable checkpoint
    with the highest step (the newest file among equals).

    Args:
        folder: the checkpoint folder (``<run>/checkpoints``).

    Returns:
        ``(path, note)``: the file to resume from, or ``None`` when the folder holds no checkpoint at all (a first
        run); ``note`` says why ``last.ckpt`` was passed over, or is ``None``.

    Raises:
        ValueError: checkpoints exist, but none of them can be resumed from.
    """
    files = checkpoint_files(folder)
    if not files:
        return None, None
    infos = [inspect_checkpoint(p) for p in files]
    usable = [i for i in infos if i.resumable]
    last = next((i for i in infos if os.path.basename(i.path) == LAST), None)
    if not usable:
        details = "; ".join(f"{os.path.basename(i.path)}: {i.problem}" for i in infos[:5])
        raise ValueError(
            f"--ckpt_path last: none of the {len(infos)} checkpoint(s) in {folder} can be resumed from ({details}). "
            "Pass a resumable .ckpt with --ckpt_path, or start a fresh run with --overwrite true (this deletes them) "
            "or a new --trainer.default_root_dir."
        )
    newest = max(usable, key=lambda i: (i.step or 0, os.path.basename(i.path) == LAST, os.path.getmtime(i.path)))
    if last is not None and last.resumable and (last.step or 0) >= (newest.step or 0):
        return last.path, None
    if last is None:
        why = f"there is no {LAST}"
    elif not last.resumable:
        why = f"{LAST} cannot be used: {last.problem}"
    else:
        why = f"{LAST} is at step {last.step}, older than {os.path.basename(newest.path)}"
    return newest.path, f"{why}; resuming from {newest.path} (step {newest.step}), the newest complete checkpoint."


def check_fresh_run(folder: str) -> None:
    """Refuse to start a new run over the checkpoints of an earlier one.

    Args:
        folder: the checkpoint folder the new run would write to.

    Raises:
        ValueError: ``folder`` already holds ``*.ckpt`` files; the message says how to resume or start over.
    """
    files = checkpoint_files(folder)
    if not files:
        return
    last = os.path.join(folder, LAST)
    info = inspect_checkpoint(last) if os.path.exists(last) else None
    held = f"{len(files)} .ckpt file(s)"
    if info is not None and info.step is not None:
        held = f"{LAST} at step {info.step}"
    raise ValueError(
        f"{folder} already holds the checkpoints of an earlier run ({held}); a new run would overwrite them, so "
        "nothing was started. To continue that run, add --ckpt_path last. To start over in the same folder, add "
        "--overwrite true (deletes those checkpoints first). To keep them and start a new run, pass another "
        "--trainer.default_root_dir (or --checkpoint.dirpath)."
    )


def remove_checkpoints(folder: str) -> list[str]:
    """Delete the ``*.ckpt`` files of ``folder`` (what ``--overwrite true`` asks for); returns their paths."""
    files = checkpoint_files(folder)
    for path in files:
        if os.path.isdir(path):  # a sharded checkpoint folder
            shutil.rmtree(path)
        else:
            os.remove(path)
    return files


def check_writable(folder: str) -> None:
    """Create ``folder`` if needed and prove that a file can be written there, before any training.

    Raises:
        ValueError: the folder cannot be created or written to; the message names it and the options to change.
    """
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ValueError(
            f"Checkpoints cannot be written to {folder} ({err.strerror or type(err).__name__}). Choose a writable "
            "folder with --trainer.default_root_dir (or --checkpoint.dirpath), or fix its permissions; nothing was "
            "trained."
        ) from None


class RunFolderLock:
    """An exclusive lock on a checkpoint folder for the length of one ``fit``.

    The lock file is ``<parent>/.<folder name>.lock`` beside the folder (so the checkpoint folder itself only holds
    checkpoints). It is an OS lock (``filelock``): the OS drops it when the process ends, even on SIGKILL.

    Args:
        folder: the checkpoint folder.
    """

    def __init__(self, folder: str) -> None:
        from filelock import FileLock

        folder = os.path.abspath(folder)
        self.folder = folder
        self.path = os.path.join(os.path.dirname(folder), f".{os.path.basename(folder)}.lock")
        self._lock = FileLock(self.path)

    def acquire(self) -> "RunFolderLock":
        """Take the lock, or fail at once.

        Raises:
            ValueError: another process holds it (another ``fit`` writes to this folder).
        """
        from filelock import Timeout

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise ValueError(
                f"Another lightning-gpt fit is running in {self.folder} (it holds the lock {self.path}); two runs "
                "in one folder would overwrite each other's checkpoints. Wait for it to finish (or stop it: Ctrl-C or "
                "kill saves a resumable last.ckpt), or give this run its own --trainer.default_root_dir."
            ) from None
        return self

    def release(self) -> None:
        """Drop the lock (also done by the OS when the process ends)."""
        if self._lock.is_locked:
            self._lock.release(force=True)

    def __enter__(self) -> "RunFolderLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def checkpoint_dir(dirpath: Optional[str], default_root_dir: Optional[str]) -> str:
    """The run's checkpoint folder: ``--checkpoint.dirpath``, else ``<trainer.default_root_dir>/checkpoints`` (the
    working directory when no root is set)."""
    if dirpath is not None:
        return str(dirpath)
    return os.path.join(str(default_root_dir or os.getcwd()), "checkpoints")


def is_sharded_checkpoint(path: str) -> bool:
    """Whether ``path`` is a distributed (FSDP) checkpoint: a directory itself, where a run directory only contains
    checkpoints."""
    return any(os.path.exists(os.path.join(path, name)) for name in (".metadata", "meta.pt"))


def is_launch_rank_zero() -> bool:
    """Whether this process is the job's first one, before any process group exists: torchrun, SLURM and Lightning's
    launcher set ``RANK``/``SLURM_PROCID``/``NODE_RANK``/``LOCAL_RANK`` to non-zero values for the others (Lightning's
    launcher starts them from rank 0 during ``fit``, after rank 0 has claimed the run folder)."""
    names = ("RANK", "SLURM_PROCID", "NODE_RANK", "GROUP_RANK", "LOCAL_RANK")
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in names)


def slurm_requeue_resumes(default_root_dir: Optional[str]) -> bool:
    """Whether this is a requeued SLURM job that Lightning resumes from its ``hpc_ckpt_*.ckpt`` (the requeue reruns
    the same command, without ``--ckpt_path``).

    Args:
        default_root_dir: ``--trainer.default_root_dir`` (the working directory when ``None``).
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment

    root = str(default_root_dir or os.getcwd())
    if not SLURMEnvironment.detect() or not os.path.isdir(root):
        return False
    return any(n.startswith("hpc_ckpt_") and n.endswith(".ckpt") for n in os.listdir(root))


def last_checkpoint(folder: str, default_root_dir: Optional[str] = None) -> tuple[Optional[str], Optional[str]]:
    """What ``fit --ckpt_path last`` resumes from: ``resolve_last_checkpoint(folder)``, refusing an empty folder.

    Args:
        folder: the checkpoint folder.
        default_root_dir: the run folder, where a requeued SLURM job's ``hpc_ckpt_*.ckpt`` lies.

    Returns:
        ``(path, note)`` as ``resolve_last_checkpoint``; ``(None, None)`` only for a requeued SLURM job (Lightning
        resumes it from its own ``hpc_ckpt_*.ckpt``).

    Raises:
        ValueError: the folder holds no checkpoint (a first run, or every checkpoint was deleted), or none that
            resumes.
    """
    path, note = resolve_last_checkpoint(folder)
    if path is None and not slurm_requeue_resumes(default_root_dir):
        raise ValueError(
            f"--ckpt_path last: {folder} holds no checkpoint to resume from (a first run, or its checkpoints were "
            "deleted), so nothing was started. To start the run from step 0, leave out --ckpt_path last; to resume "
            "another run, pass its --trainer.default_root_dir (or --checkpoint.dirpath), or a .ckpt file with "
            "--ckpt_path."
        )
    return path, note


def claim_run_folder(folder: str, ckpt_path: Optional[str], overwrite: bool, default_root_dir: Optional[str]) -> None:
    """The read-only checks of a ``fit``'s checkpoint folder, before anything is built: an earlier run's checkpoints
    are only replaced when asked (a run resuming in this folder, ``--overwrite true`` and a requeued SLURM job pass).
    Nothing is created here, so a run refused later (e.g. for a bad model setting) leaves no folder behind.

    Args:
        folder: the checkpoint folder.
        ckpt_path: ``--ckpt_path`` (``last``, ``hpc``, a file...) or ``None``.
        overwrite: ``--overwrite``.
        default_root_dir: ``--trainer.default_root_dir``.

    Raises:
        ValueError: the folder holds an earlier run's checkpoints (see ``check_fresh_run``).
    """
    resumes_here = ckpt_path is not None and (
        ckpt_path in ("last", "hpc") or os.path.dirname(os.path.abspath(str(ckpt_path))) == os.path.abspath(folder)
    )
    if resumes_here or overwrite or slurm_requeue_resumes(default_root_dir):
        return
    check_fresh_run(folder)


def open_run_folder(folder: str, overwrite: bool) -> RunFolderLock:
    """Once every class is built and before any data is read: the folder must be writable, and no other ``fit`` may be
    using it (the returned lock, held until ``release()`` or the process ends). With ``overwrite`` (``--overwrite true``
    without ``--ckpt_path``) the earlier run's checkpoints are deleted, so the folder holds one run.

    Args:
        folder: the checkpoint folder (created when missing).
        overwrite: delete the ``*.ckpt`` files already there.

    Raises:
        ValueError: the folder cannot be written, or another ``fit`` holds its lock.
    """
    check_writable(folder)
    lock = RunFolderLock(folder).acquire()
    if overwrite:
        removed = remove_checkpoints(folder)
        if removed:
            rank_zero_info(f"--overwrite: deleted {len(removed)} checkpoint(s) of the earlier run in {folder}.")
    return lock
