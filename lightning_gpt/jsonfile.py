"""Reading a JSON file this package wrote or was handed, with its size checked before a byte is parsed.

``json.load`` reads a whole file into memory and then builds several times its size in Python objects: a manifest,
``index.json``, ``config.json`` or cache entry that a damaged disk, a bad copy or a hostile folder made gigabytes
long would take as much memory and minutes before anything could be said. Every JSON file read here goes through
``read_json`` (or ``check_json_size`` for bytes that come from elsewhere, such as an object store's
``ContentLength``), which refuses a file over the limit with one paragraph. The largest legitimate files are the
manifests of prepared datasets and cached tokenizers, which embed a tokenizer (a few MB for GPT-2's, tens of MB for
the largest public ones). Only the standard library is imported: the command line's fast paths use it.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

__all__ = ["MAX_JSON_MB_ENV", "check_json_size", "env_megabytes", "max_json_bytes", "read_json"]

MAX_JSON_MB_ENV = "LIGHTNING_GPT_MAX_JSON_MB"
"""Environment variable: the largest JSON file (in MB) that is read; 256 by default (as for a ``tokenizer.json``)."""
_DEFAULT_MAX_JSON_MB = 256


def env_megabytes(variable: str, default_mb: float) -> int:
    """A size limit in bytes read from the environment variable ``variable`` (in MB; ``default_mb`` when unset).

    Raises:
        ValueError: the variable is set to something that is not a number.
    """
    text = os.environ.get(variable, "").strip()
    try:
        return int(float(text) * 1e6) if text else int(default_mb * 1_000_000)
    except ValueError:
        raise ValueError(f"${variable}={text!r} is not a number of megabytes (e.g. 512).") from None


def max_json_bytes() -> int:
    """The size limit of a JSON file, in bytes (``$LIGHTNING_GPT_MAX_JSON_MB`` MB, default 256).

    Raises:
        ValueError: the variable is set to something that is not a number.
    """
    return env_megabytes(MAX_JSON_MB_ENV, _DEFAULT_MAX_JSON_MB)


def check_json_size(n_bytes: int, where: object) -> None:
    """Refuse ``n_bytes`` of JSON at ``where`` when it is over ``max_json_bytes()``.

    Raises:
        ValueError: one paragraph naming ``where``, its size, the limit and how to raise it.
    """
    limit = max_json_bytes()
    if n_bytes > limit:
        raise ValueError(
            f"{where} is {n_bytes / 1e6:,.1f} MB, more than the {limit / 1e6:,.1f} MB a JSON file read by "
            f"lightning-gpt may have (${MAX_JSON_MB_ENV}): parsing it would take minutes and several times as much "
            "memory. The files this package writes are far smaller, so it is damaged or not the file you meant; if "
            f"it is, raise the limit, e.g. {MAX_JSON_MB_ENV}={int(n_bytes / 1e6) + 1}."
        )


def read_json(path: str | os.PathLike[str]) -> Any:
    """The parsed content of the JSON file ``path`` (UTF-8), its size checked first.

    Raises:
        OSError: the file cannot be opened or read.
        ValueError: it is not a regular file (a FIFO or a device would never end), over the size limit
            (``check_json_size``), not UTF-8 or not JSON (``json.JSONDecodeError`` and ``UnicodeDecodeError`` are
            ``ValueError``\\ s).
    """
    where = os.fspath(path)
    if not stat.S_ISREG(os.stat(where).st_mode):
        raise ValueError(f"{where} is not a regular file (a FIFO, device or folder), so it is not a JSON file.")
    limit = max_json_bytes()
    with open(where, "rb") as f:
        check_json_size(os.fstat(f.fileno()).st_size, where)
        data = f.read(limit + 1)  # never more than the limit, even from a file that grew since
    check_json_size(len(data), where)
    return json.loads(data.decode("utf-8"))
