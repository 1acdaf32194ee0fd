"""Writes that leave either the complete new file (or folder) or the previous one, never a part, and no litter.

Every writer of this package that owns its output follows one pattern:

1. remove the temporaries that writers now gone left beside the target (``<name>.tmp-<pid>[-<tag>]``: named after
   the writing process, so a live writer's temporary is never touched, even by another process);
2. write to such a temporary in the target's folder, with SIGTERM turned into an exception meanwhile (its default
   action ends the process on the spot, where no ``finally`` runs), then fsync it and ``os.replace`` it onto the
   target (atomic on POSIX and Windows);
3. on any failure, Ctrl-C or SIGTERM included, remove the temporary; a full or read-only disk (``ENOSPC``, ``EFBIG``,
   ``EROFS``...) becomes one ``StorageError`` paragraph, even where a library wrapped the ``OSError`` in its own
   exception (``torch.save`` raises ``RuntimeError: ... unexpected pos``), and a Ctrl-C stays a ``KeyboardInterrupt``.

Plain Python (no torch, no Lightning).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import threading
from pathlib import Path
from typing import IO, Any, Iterator, Optional, Union

from lightning_gpt.errors import Terminated, interruption_in, storage_error

__all__ = [
    "atomic_directory",
    "atomic_file",
    "fsync_dir",
    "raise_write_error",
    "sigterm_raises",
    "signals_held",
    "sweep_temporaries",
    "temporary_path",
    "writer_alive",
]

TMP = ".tmp-"


def temporary_path(target: Union[str, Path], hidden: bool = False) -> Path:
    """``<target>.tmp-<pid>-<random>`` beside ``target`` (``.<name>...`` when ``hidden``): named after this process,
    so ``sweep_temporaries`` can tell a dead writer's temporary from a live one's."""
    target = Path(target)
    prefix = "." if hidden else ""
    return target.with_name(f"{prefix}{target.name}{TMP}{os.getpid()}-{secrets.token_hex(4)}")


def writer_alive(pid_text: str) -> bool:
    """Whether the process that owns a temporary (``<pid>`` or ``<pid>-<tag>``) still runs; ours counts as gone.

    Args:
        pid_text: the part of the name after ``.tmp-``.
    """
    try:
        pid = int(pid_text.split("-", 1)[0])
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
    except OSError:  # exists but belongs to someone else (or cannot be asked): leave it
        return True
    return True


def sweep_temporaries(target: Union[str, Path], hidden: bool = False) -> list[Path]:
    """Remove the temporaries of ``target`` (files or folders) whose writing process is gone.

    Args:
        target: the final path the temporaries were for.
        hidden: the temporaries' names start with a dot (as ``temporary_path(..., hidden=True)`` makes them).

    Returns:
        What was removed.
    """
    target = Path(target)
    prefix = f"{'.' if hidden else ''}{target.name}{TMP}"
    removed: list[Path] = []
    try:
        names = os.listdir(target.parent)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(prefix) or writer_alive(name[len(prefix) :]):
            continue
        entry = target.parent / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry)
    return removed


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While the block runs, SIGTERM raises ``Terminated`` (a ``SystemExit`` with status 143) instead of ending the
    process where it stands, so cleanups in ``except``/``finally`` run.

    Only where SIGTERM has its default action and this is the main thread: a handler someone installed (Lightning's
    during ``fit``, which stops at a step boundary) is left alone.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while the block runs (a cleanup: removing a temporary), delivering them after it:
    a Ctrl-C pressed again and again must not interrupt the removal of what an earlier one interrupted. Only in the
    main thread, where POSIX signal masks exist."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def raise_write_error(err: BaseException, target: object, what: str, fix: str) -> None:
    """Re-raise a failure of a write as the user should see it (call from an ``except`` block).

    A Ctrl-C or SIGTERM that a library wrapped in its own error (``torch.save`` turns whatever its file's ``write``
    raised into ``RuntimeError``) is raised again as itself; a full or read-only disk as ``StorageError``; anything
    else unchanged.

    Args:
        err: the failure.
        target: the final path being written.
        what: what it is, e.g. ``"the checkpoint"``.
        fix: the setting that writes elsewhere, e.g. ``"--trainer.default_root_dir"``.
    """
    interruption = interruption_in(err)
    if interruption is not None and interruption is not err:
        raise interruption from None
    wrapped = storage_error(err, target, what, fix)
    if wrapped is not None:
        raise wrapped from err
    raise err


def fsync_dir(directory: Union[str, Path]) -> None:
    """Make a rename in ``directory`` durable (POSIX); a no-op where a folder cannot be fsynced."""
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


@contextlib.contextmanager
def atomic_file(target: Union[str, Path], what: str, fix: str, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary beside ``target`` for writing; on success fsync it and rename it onto ``target``.

    Args:
        target: the final file.
        what: what it is, for the error message (e.g. ``"the checkpoint"``).
        fix: the setting that writes elsewhere (e.g. ``"--trainer.default_root_dir"``).
        mode: ``"wb"`` or ``"w"`` (UTF-8 text).

    Yields:
        The open temporary file.

    Raises:
        StorageError: a full or read-only disk, or no permission (one paragraph naming ``target`` and ``fix``).
    """
    target = Path(target)
    tmp: Optional[Path] = None
    try:
        with sigterm_raises():
            target.parent.mkdir(parents=True, exist_ok=True)
            sweep_temporaries(target)
            tmp = temporary_path(target)
            with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            tmp = None
    except BaseException as err:
        if tmp is not None:
            with signals_held(), contextlib.suppress(OSError):
                tmp.unlink()
        raise_write_error(err, target, what, fix)
    fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_directory(target: Union[str, Path], what: str, fix: str) -> Iterator[Path]:
    """A hidden temporary folder beside ``target`` to fill; on success it is renamed onto ``target`` (which must not
    exist, or be an empty folder).

    Args:
        target: the final folder.
        what: what it is, for the error message (e.g. ``"the export"``).
        fix: the setting that writes elsewhere (e.g. ``"--output_dir"``).

    Yields:
        The temporary folder.

    Raises:
        StorageError: a full or read-only disk, or no permission.
    """
    target = Path(target)
    tmp: Optional[Path] = None
    try:
        with sigterm_raises():
            target.parent.mkdir(parents=True, exist_ok=True)
            sweep_temporaries(target, hidden=True)
            tmp = temporary_path(target, hidden=True)
            tmp.mkdir()
            yield tmp
            for entry in tmp.iterdir():
                _fsync_file(entry)
            if target.exists():
                target.rmdir()  # empty (the caller checked)
            os.replace(tmp, target)
            tmp = None
    except BaseException as err:
        if tmp is not None:
            with signals_held():
                shutil.rmtree(tmp, ignore_errors=True)
        raise_write_error(err, target, what, fix)
    fsync_dir(target.parent)


def _fsync_file(path: Path) -> None:
    if not path.is_file():
        return
    with open(path, "rb") as f:
        os.fsync(f.fileno())
