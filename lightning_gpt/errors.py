"""Exceptions of lightning-gpt that callers may want to catch (importable without Lightning)."""

from __future__ import annotations

import difflib
import errno
import importlib
import inspect
import os
import re
from typing import Optional

__all__ = ["NonFiniteError", "StorageError", "storage_error", "lead_with_reason"]


class NonFiniteError(RuntimeError):
    """Raised by ``NonFiniteGuard`` when training produced NaN/inf (policy ``stop``) or a checkpoint would hold it."""


# errno values a user fixes by freeing space or writing elsewhere, with the words that say so.
_STORAGE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


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
    code = getattr(err, "errno", None)
    if isinstance(err, StorageError) or not isinstance(err, OSError) or code not in _STORAGE_ERRNOS:
        return None
    path = os.fspath(path) if isinstance(path, (str, os.PathLike)) else str(path)
    return StorageError(
        code,
        f"could not write {what} {path!r}: {_STORAGE_ERRNOS[code]} ({os.strerror(code)}). Free some space (or make "
        f"it writable), or write elsewhere with {fix}; nothing partial was left under the final name.",
        path,
    )


def describe_storage_error(err: OSError) -> Optional[str]:
    """One paragraph for a full/read-only disk ``OSError`` raised where no caller named the file, else ``None``."""
    code = getattr(err, "errno", None)
    if code not in _STORAGE_ERRNOS:
        return None
    where = f" {err.filename!r}" if getattr(err, "filename", None) else ""
    verb = "could not use" if code in (errno.EACCES, errno.EPERM) else "could not write"
    return (
        f"{verb}{where}: {_STORAGE_ERRNOS[code]} ({os.strerror(code)}). Free some space (or fix the permissions), "
        "or point the output elsewhere (--trainer.default_root_dir, --data.cache_dir, --writer.output_path)."
    )


def lead_with_reason(message: str) -> str:
    """jsonargparse reports a bad field of an ``Optional[...]`` argument as "Does not validate against any of the
    Union subtypes", a list of subtypes, the real reason, and a dump of the value; keep only the real reason."""
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
    key = re.search(r'Parser key "([^"]+)"', message)
    prefix = f"--{key.group(1)}: " if key else ""
    return prefix + " ".join(" ".join(r) for r in reasons) if reasons else message


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
