"""Exceptions of lightning-gpt that callers may want to catch (importable without Lightning)."""

from __future__ import annotations

import difflib
import errno
import importlib
import inspect
import os
import re
from typing import Iterator, Optional

__all__ = [
    "NonFiniteError",
    "StorageError",
    "Terminated",
    "describe_storage_error",
    "interruption_in",
    "lead_with_reason",
    "storage_error",
]


class NonFiniteError(RuntimeError):
    """Raised by ``NonFiniteGuard`` when training produced NaN/inf (policy ``stop``) or a checkpoint would hold it."""


class Terminated(SystemExit):
    """SIGTERM arrived while a file was being written (see ``lightning_gpt.io.atomic.sigterm_raises``): the write was
    undone, and the process exits with status 143 (128 + SIGTERM), as if the signal had ended it."""

    def __init__(self) -> None:
        super().__init__(143)


# errno values a user fixes by freeing space or writing elsewhere, with the words that say so.
_STORAGE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file grew past the size this process may write (ulimit -f) or the file system allows",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
# What the user does about each of them.
_REMEDY = {
    errno.ENOSPC: "Free some space",
    errno.EDQUOT: "Free some space",
    errno.EFBIG: "Raise the file size limit (ulimit -f)",
}


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the exceptions it was raised from or while handling (``__cause__`` / ``__context__``)."""
    seen = set()
    current: Optional[BaseException] = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _storage_cause(err: BaseException) -> Optional[OSError]:
    """The full/read-only-disk ``OSError`` behind ``err``, also when a library wrapped it in its own error
    (``torch.save`` raises ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos`` while handling the
    ``OSError`` of its file's ``write``)."""
    for link in _chain(err):
        if isinstance(link, OSError) and getattr(link, "errno", None) in _STORAGE_ERRNOS:
            return link
    return None


def interruption_in(err: BaseException) -> Optional[BaseException]:
    """The ``KeyboardInterrupt`` or ``SystemExit`` behind ``err`` (a Ctrl-C or SIGTERM that a library turned into its
    own error, as ``torch.save`` does with what its file's ``write`` raised), or ``None``."""
    return next((link for link in _chain(err) if isinstance(link, (KeyboardInterrupt, SystemExit))), None)


class StorageError(OSError):
    """A file could not be written for a reason the user can fix (full or read-only disk, no permission).

    ``str()`` is one paragraph naming the file, the reason and the setting that moves it elsewhere.
    """

    def __init__(self, code: int, message: str, filename: Optional[str] = None) -> None:
        super().__init__(code, message)
        self.message = message
        self.filename = filename

    def __str__(self) -> str:
        return self.message


def storage_error(err: BaseException, path: object, what: str, fix: str) -> Optional[StorageError]:
    """Turn an ``OSError`` of a full/read-only disk (or missing permission) into a ``StorageError`` naming the fix.

    Args:
        err: the error raised while writing.
        path: the file or directory being written.
        what: what was being written, e.g. ``"the checkpoint"``.
        fix: the setting that points the write elsewhere, e.g. ``"--trainer.default_root_dir"``.

    Returns:
        The ``StorageError`` to raise instead, or ``None`` when ``err`` is some other failure (re-raise it as is).
    """
    if isinstance(err, StorageError):
        return None
    cause = _storage_cause(err)
    if cause is None:
        return None
    code = int(cause.errno or 0)
    path = os.fspath(path) if isinstance(path, (str, os.PathLike)) else str(path)
    return StorageError(
        code,
        f"could not write {what} {path!r}: {_STORAGE_ERRNOS[code]} ({os.strerror(code)}). "
        f"{_REMEDY.get(code, 'Make it writable')}, or write elsewhere with {fix}; the previous file under that name "
        "(if any) is unchanged and no partial file was left.",
        path,
    )


def describe_storage_error(err: BaseException) -> Optional[str]:
    """One paragraph for a full/read-only disk error raised where no caller named the file (also when a library
    wrapped the ``OSError`` in its own exception), else ``None``."""
    if isinstance(err, StorageError):
        return err.message
    cause = _storage_cause(err)
    if cause is None:
        return None
    code = int(cause.errno or 0)
    where = f" {cause.filename!r}" if getattr(cause, "filename", None) else ""
    verb = "could not use" if code in (errno.EACCES, errno.EPERM) else "could not write"
    return (
        f"{verb}{where}: {_STORAGE_ERRNOS[code]} ({os.strerror(code)}). {_REMEDY.get(code, 'Fix the permissions')}, "
        "or point the output elsewhere (--trainer.default_root_dir, --data.cache_dir, --writer.output_path, "
        "--output_dir)."
    )


def lead_with_reason(message: str) -> str:
    """jsonargparse reports a bad field of an ``Optional[...]`` argument as "Does not validate against any of the
    Union subtypes", a list of subtypes, the real reason, and a dump of the value; keep only the real reason. A class
    that failed to start (a logger whose package is missing, a tracking store that refuses) is reported by the
    class's own message first, without jsonargparse's "Expected a <class ...>" tries of the other union members."""
    started = _class_start_failure(message)
    if started:
        return started
    if "Does not validate against any of the Union subtypes" not in message:
        return message
    unknown = _unknown_field(message)
    if unknown:
        return unknown
    reasons: list[list[str]] = []
    in_errors = False
    for line in message.splitlines():
        text = line.strip()
        if text == "Errors:":
            in_errors = True
        elif text.startswith("Given value"):
            in_errors = False
        elif in_errors and text.startswith("- "):
            reasons.append([text[2:].strip()])
        elif in_errors and text and reasons:
            reasons[-1].append(text)
    reasons = [r for r in reasons if not r[0].startswith("Expected a <class 'NoneType'>")]
    for r in reasons:
        started = _class_start_failure(" ".join(r))
        if started:
            return started
    key = re.search(r'Parser key "([^"]+)"', message)
    prefix = f"--{key.group(1)}: " if key else ""
    return prefix + " ".join(" ".join(r) for r in reasons) if reasons else message


def _class_start_failure(message: str) -> Optional[str]:
    """ "Problem with given class_path 'x.Y': <reason> Expected a <class ...> ..." -> "Y could not start: <reason>"
    with what to do, or ``None`` for any other message."""
    found = re.match(r"\s*Problem with given class_path '([\w.]+)':\s*(.*)", message, re.DOTALL)
    if not found:
        return None
    class_path, rest = found.groups()
    reason = re.split(r"\s*Expected a <class ", rest, maxsplit=1)[0].strip()
    if not reason or "Option '" in reason or "Parser key" in reason:
        return None  # a bad value or field inside the class's arguments, not a class that failed to start
    name = class_path.rpartition(".")[2]
    what = "logger" if ".loggers." in class_path else "class"
    fix = (
        "Install what it needs or fix its settings, or choose another logger (--trainer.logger TensorBoardLogger, "
        "CSVLogger, or false)."
        if what == "logger"
        else "Install what it needs or fix its settings."
    )
    return f"the {what} {name} ({class_path}) could not start: {reason} {fix}"


def _unknown_field(message: str) -> Optional[str]:
    """ "Option 'n_layr' is not accepted" inside a union message -> one line naming the key and the nearest field."""
    option = re.search(r"Option '([^']+)' is not accepted", message)
    key = re.search(r'Parser key "([^"]+)"', message)
    class_path = re.search(r"class_path '([\w.]+)'", message)
    if not (option and key and class_path):
        return None
    module, _, name = class_path.group(1).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        fields = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    bad = option.group(1)
    close = difflib.get_close_matches(bad, fields, n=1, cutoff=0.5)
    hint = f"did you mean --{key.group(1)}.{close[0]}?" if close else f"its fields are {', '.join(fields)}."
    return f"--{key.group(1)}.{bad}: {name} has no field {bad!r}; {hint}"
