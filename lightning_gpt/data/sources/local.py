"""Sources on this machine: the embedded Python standard library, and local ``.txt`` / ``.jsonl`` / ``.parquet``
files (found and identified by ``files.py``, read by ``readers.py``)."""

from __future__ import annotations

import os
import sys
import sysconfig
from typing import Any, Iterator, Optional

from lightning_gpt.data.sources.base import READER_VERSION, Skips, TextSource, capped
from lightning_gpt.data.sources.files import files_fingerprint, find_files
from lightning_gpt.data.sources.readers import read_jsonl, read_parquet, read_txt

__all__ = ["DEFAULT_STDLIB_MAX_CHARS", "StdlibSource", "LocalSource"]

DEFAULT_STDLIB_MAX_CHARS = 5_000_000
# Skipped in the embedded corpus: installed third-party code and the (huge, repetitive) test suites.
_STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test", "lib2to3"}


class _FilesSource(TextSource):
    """A source that reads its files in order (``_read_all``), capped at ``max_chars`` characters in all."""

    max_chars: Optional[int]

    def _read_all(self) -> Iterator[str]:
        raise NotImplementedError

    def documents(self) -> Iterator[str]:
        return capped(self._read_all(), self.max_chars)


class StdlibSource(_FilesSource):
    """The running Python's own standard library ``.py`` files, in sorted relative-path order (offline everywhere).

    The files are read with undecodable bytes replaced (the corpus is the interpreter's own, always there; a stray
    byte in one file must not stop the default run), symbolic links to folders are not followed, and empty files
    (``__init__.py``) are skipped silently.

    Args:
        max_chars: cap on the total characters (the last file is truncated); ``None`` keeps everything.
        root: the stdlib directory; defaults to ``sysconfig.get_paths()["stdlib"]``.
    """

    name = "python-stdlib"

    def __init__(self, max_chars: Optional[int] = DEFAULT_STDLIB_MAX_CHARS, root: Optional[str] = None) -> None:
        self.root = os.path.realpath(root or sysconfig.get_paths()["stdlib"])
        self.max_chars = max_chars
        self._files: Optional[list[str]] = None

    def files(self) -> list[str]:
        """The sorted relative paths of the ``.py`` files (site-packages and test suites excluded)."""
        if self._files is None:
            found = []
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames[:] = [d for d in dirnames if d not in _STDLIB_SKIP_DIRS and not d.startswith(".")]
                rel_dir = os.path.relpath(dirpath, self.root)
                for fn in filenames:
                    if fn.endswith(".py"):
                        found.append(os.path.normpath(os.path.join(rel_dir, fn)).replace(os.sep, "/"))
            self._files = sorted(found)
            if not self._files:
                raise FileNotFoundError(f"source='python-stdlib': no .py files found under {self.root!r}.")
        return self._files

    def _needed_files(self) -> list[str]:
        """The prefix of ``files()`` that the cap reaches (by file size, which bounds the characters)."""
        if self.max_chars is None:
            return self.files()
        out, total = [], 0
        for rel in self.files():
            out.append(rel)
            total += os.path.getsize(os.path.join(self.root, rel))
            if total >= self.max_chars:
                break
        return out

    def _read_all(self) -> Iterator[str]:
        for rel in self.files():
            with open(os.path.join(self.root, rel), encoding="utf-8", errors="replace") as f:
                yield f.read()

    def identity(self) -> dict[str, Any]:
        needed = self._needed_files()
        return {
            "kind": "python-stdlib",
            "root": self.root,
            "python": sys.version,
            "max_chars": self.max_chars,
            "n_files": len(needed),
            "files": files_fingerprint([os.path.join(self.root, p) for p in needed]),
        }


class LocalSource(_FilesSource):
    """Local ``.txt`` / ``.jsonl`` / ``.parquet`` files: one file, every such file under a directory, or a glob.

    Each ``.jsonl`` line and each ``.parquet`` row is one document (its ``text_column``); a ``.txt`` file is cut
    into documents of at most ``TXT_PIECE_CHARS`` characters at paragraph or line breaks (one document when it is
    smaller). Files are found once per source (``files()``), each real file read once, in sorted path order; what is
    left out and why is in ``lightning_gpt.data.sources.files`` and ``readers``.

    Args:
        path: a file, a directory (searched recursively), or a glob pattern (``**`` allowed).
        text_column: the field holding the text in ``.jsonl`` / ``.parquet`` files.
        max_chars: cap on the total characters; ``None`` keeps everything.
    """

    def __init__(self, path: str, text_column: str = "text", max_chars: Optional[int] = None) -> None:
        self.pattern = os.path.expanduser(path)
        self.text_column = text_column
        self.max_chars = max_chars
        self.name = path
        self.skips = Skips(path)
        self._files: Optional[list[str]] = None

    def files(self) -> list[str]:
        """The matching files, as sorted absolute paths (each real file once).

        Raises:
            FileNotFoundError: nothing matched, or a match is a broken link.
            ValueError: a named file has an unsupported or compressed type.
        """
        if self._files is None:
            self._files = find_files(self.pattern, self.name)
        return self._files

    def _read_all(self) -> Iterator[str]:
        self.skips.reset()
        try:
            for path in self.files():
                low = path.lower()
                if low.endswith(".txt"):
                    yield from read_txt(path, self.skips)
                elif low.endswith(".jsonl"):
                    yield from read_jsonl(path, self.text_column, self.skips)
                else:
                    yield from read_parquet(path, self.text_column, self.skips)
        except GeneratorExit:  # stopped early (max_chars reached): report what was skipped up to there
            self.skips.report()
            raise
        self.skips.report()

    def identity(self) -> dict[str, Any]:
        files = self.files()
        return {
            "kind": "local",
            "reader": READER_VERSION,
            "files": files if len(files) <= 64 else [len(files), files[0], files[-1]],
            "stat": files_fingerprint(files),
            "text_column": self.text_column,
            "max_chars": self.max_chars,
        }
