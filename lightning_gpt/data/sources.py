"""Where text comes from: the embedded Python standard library, local files, or a Hugging Face dataset.

A source yields documents (strings) in a fixed order and describes itself with ``identity()``: a small JSON-able dict
that changes whenever the text may have changed (paths, a hash of the files' bytes, dataset fingerprints, caps). The
token cache and the trained-tokenizer cache are keyed by it, so a cached run never tokenizes the corpus again.

Local files are identified by a SHA-256 of their content, not by size and modification time: ``cp -p``, ``rsync -a``
and ``tar`` restore both, so a rewritten file would otherwise be served from the stale cache. Hashing reads the files
once per process at about 1 GB/s (a 5 MB corpus: milliseconds; 10 GB: seconds), far below the cost of tokenizing
them; within a process the digest is remembered per (path, size, mtime, ctime, inode).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
import sysconfig
from typing import Any, Iterator, Optional

__all__ = ["DEFAULT_STDLIB_MAX_CHARS", "TextSource", "StdlibSource", "LocalSource", "HFSource", "resolve_source"]

DEFAULT_STDLIB_MAX_CHARS = 5_000_000
LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")
# Skipped in the embedded corpus: installed third-party code and the (huge, repetitive) test suites.
_STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test", "lib2to3"}


class TextSource:
    """A deterministic sequence of documents.

    Subclasses implement ``documents()`` (in a fixed order, whitespace-only documents skipped) and ``identity()``.
    """

    name: str = "source"

    def documents(self) -> Iterator[str]:
        """Yield the documents, in a fixed order."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """A JSON-able description that changes whenever the text may have changed."""
        raise NotImplementedError

    def key(self) -> str:
        """A short stable hash of ``identity()``."""
        blob = json.dumps(self.identity(), sort_keys=True, ensure_ascii=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


def _capped(docs: Iterator[str], max_chars: Optional[int]) -> Iterator[str]:
    """Skip whitespace-only documents; stop (truncating the last document) once ``max_chars`` characters were given."""
    total = 0
    for doc in docs:
        if not doc or doc.isspace():
            continue
        if max_chars is not None and total + len(doc) > max_chars:
            rest = doc[: max_chars - total]
            if rest and not rest.isspace():
                yield rest
            return
        total += len(doc)
        yield doc


_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}  # per-process memo of file content hashes


def _file_digest(path: str) -> str:
    st = os.stat(path)
    memo = (path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    digest = _DIGESTS.get(memo)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = _DIGESTS[memo] = h.hexdigest()
    return digest


def _content_digest(paths: list[str]) -> str:
    """A hash of the files' names and bytes (see the module docstring for why not size and mtime)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(f"{p}\0{_file_digest(p)}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:16]


def _utf8_error(path: str, lineno: int, offset: int, err: UnicodeDecodeError) -> ValueError:
    bad = err.object[err.start : err.start + 4]
    return ValueError(
        f"{path}:{lineno}: not valid UTF-8 (byte {bad[:1]!r} at byte offset {offset + err.start} of the file). "
        f"Convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8 {path!r} > fixed.txt, or remove the bad bytes."
    )


def decode_utf8_line(raw: bytes, path: str, lineno: int, offset: int = 0) -> str:
    """Decode one line of a file as UTF-8; a bad byte raises ``ValueError`` naming ``path:lineno`` and the fix.

    Args:
        raw: the line's bytes.
        path: the file, for the message.
        lineno: the 1-based line number, for the message.
        offset: the byte offset of the line in the file (0 when unknown), for the message.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _utf8_error(path, lineno, offset, err) from None


def read_utf8(path: str) -> str:
    """Read a whole text file as UTF-8; a bad byte raises ``ValueError`` naming the file, line and byte offset."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        lineno = data.count(b"\n", 0, err.start) + 1
        raise _utf8_error(path, lineno, 0, err) from None


class StdlibSource(TextSource):
    """The running Python's own standard library ``.py`` files, in sorted relative-path order (offline everywhere).

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

    def documents(self) -> Iterator[str]:
        return _capped(self._read_all(), self.max_chars)

    def identity(self) -> dict[str, Any]:
        needed = self._needed_files()
        return {
            "kind": "python-stdlib",
            "root": self.root,
            "python": sys.version,
            "max_chars": self.max_chars,
            "n_files": len(needed),
            "content": _content_digest([os.path.join(self.root, p) for p in needed]),
        }


class LocalSource(TextSource):
    """Local ``.txt`` / ``.jsonl`` / ``.parquet`` files: one file, every such file under a directory, or a glob.

    A ``.txt`` file is one document; each ``.jsonl`` line and each ``.parquet`` row is one document (its
    ``text_column``).

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
        self._files: Optional[list[str]] = None

    def files(self) -> list[str]:
        """The matching files, as sorted absolute paths."""
        if self._files is not None:
            return self._files
        p = self.pattern
        if os.path.isfile(p):
            files = [p]
        elif os.path.isdir(p):
            files = [os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs if f.endswith(LOCAL_SUFFIXES)]
        elif glob.has_magic(p):
            files = [f for f in glob.glob(p, recursive=True) if os.path.isfile(f)]
        else:
            raise FileNotFoundError(
                f"source={self.name!r}: no such file or directory. Give an existing .txt/.jsonl/.parquet file, a "
                "directory of them, a glob such as 'data/*.txt', 'hf://<dataset id>', or 'python-stdlib'."
            )
        bad = [f for f in files if not f.endswith(LOCAL_SUFFIXES)]
        if bad:
            raise ValueError(
                f"source={self.name!r}: unsupported file type {os.path.basename(bad[0])!r}; supported suffixes are "
                f"{', '.join(LOCAL_SUFFIXES)} (rename plain-text files to .txt)."
            )
        if not files:
            raise FileNotFoundError(f"source={self.name!r}: matched no {'/'.join(LOCAL_SUFFIXES)} files.")
        self._files = sorted(os.path.abspath(f) for f in files)
        return self._files

    def _read_all(self) -> Iterator[str]:
        for path in self.files():
            if path.endswith(".txt"):
                yield read_utf8(path)
            elif path.endswith(".jsonl"):
                yield from self._read_jsonl(path)
            else:
                yield from self._read_parquet(path)

    def _missing_column(self, path: str, available: list[str]) -> ValueError:
        return ValueError(
            f"text_column={self.text_column!r} is not in {path!r}; available columns: {sorted(available)}. "
            "Set text_column to the field that holds the text."
        )

    def _read_jsonl(self, path: str) -> Iterator[str]:
        with open(path, "rb") as f:
            offset = 0
            for lineno, raw in enumerate(f, 1):
                line = decode_utf8_line(raw, path, lineno, offset)
                offset += len(raw)
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({err}); each line must be one object.") from err
                if not isinstance(row, dict):
                    raise ValueError(
                        f"{path}:{lineno}: holds a JSON {type(row).__name__}, not an object; each line must be one "
                        f'object with the text under text_column={self.text_column!r}, e.g. {{"text": "..."}}.'
                    )
                if self.text_column not in row:
                    raise ValueError(
                        f"{path}:{lineno}: text_column={self.text_column!r} is not in this row; available columns: "
                        f"{sorted(row)}. Set text_column to the field that holds the text, or fix the row."
                    )
                yield str(row[self.text_column] or "")

    def _read_parquet(self, path: str) -> Iterator[str]:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        if self.text_column not in pf.schema_arrow.names:
            raise self._missing_column(path, pf.schema_arrow.names)
        for batch in pf.iter_batches(columns=[self.text_column], batch_size=1024):
            for value in batch.column(0).to_pylist():
                yield str(value or "")

    def documents(self) -> Iterator[str]:
        return _capped(self._read_all(), self.max_chars)

    def identity(self) -> dict[str, Any]:
        files = self.files()
        return {
            "kind": "local",
            "files": files if len(files) <= 64 else [len(files), files[0], files[-1]],
            "content": _content_digest(files),
            "text_column": self.text_column,
            "max_chars": self.max_chars,
        }


class HFSource(TextSource):
    """A Hugging Face dataset through ``datasets.load_dataset`` (hub id or local path), optionally streamed.

    Args:
        dataset_name: hub id, builder name (``json``, ``parquet``, ...) or local dataset path.
        dataset_config: the configuration name, if the dataset has several.
        split: which split to read.
        text_column: the column holding the text.
        streaming: iterate without downloading the whole dataset first (only ``max_chars`` of it is tokenized). A
            streamed dataset has no fingerprint, so its cache key is name/config/split/column/``max_chars``: delete
            the cache entry (or change ``max_chars``) if the remote data changes.
        max_chars: cap on the total characters; ``None`` keeps everything.
        data_files: forwarded to ``load_dataset`` (for builder names such as ``json``).
    """

    def __init__(
        self,
        dataset_name: str,
        dataset_config: Optional[str] = None,
        split: str = "train",
        text_column: str = "text",
        streaming: bool = False,
        max_chars: Optional[int] = None,
        data_files: Any = None,
    ) -> None:
        self.dataset_name = dataset_name
        self.dataset_config = dataset_config
        self.split = split
        self.text_column = text_column
        self.streaming = streaming
        self.max_chars = max_chars
        self.data_files = data_files
        self.name = f"hf://{dataset_name}" + (f" ({dataset_config})" if dataset_config else "") + f" [{split}]"
        self._ds: Any = None

    def dataset(self) -> Any:
        """The loaded ``datasets.Dataset`` (or ``IterableDataset`` when streaming), column checked."""
        if self._ds is None:
            import datasets

            try:
                ds = datasets.load_dataset(
                    self.dataset_name,
                    self.dataset_config,
                    split=self.split,
                    streaming=self.streaming,
                    data_files=self.data_files,
                )
            except FileNotFoundError as err:
                raise FileNotFoundError(f"source={self.name!r}: dataset not found ({err}).") from err
            except Exception as err:  # noqa: BLE001 - network errors come in many classes (requests, httpx, builtins)
                if not _is_network_error(err):
                    raise
                raise ValueError(
                    f"source={self.name!r}: the Hugging Face Hub could not be reached ({type(err).__name__}: "
                    f"{str(err).strip().splitlines()[0] if str(err).strip() else 'no details'}). Offline mode "
                    "(HF_HUB_OFFLINE=1 or HF_DATASETS_OFFLINE=1) only reads datasets already in the local Hugging Face "
                    "cache: run once online to download it, unset HF_HUB_OFFLINE, or point source at local files "
                    "(a .txt/.jsonl/.parquet path, or hf://<local dataset folder>)."
                ) from None
            except ValueError as err:
                raise ValueError(f"source={self.name!r}: could not load the dataset ({err}).") from err
            columns = ds.column_names
            if columns is not None and self.text_column not in columns:
                raise ValueError(
                    f"text_column={self.text_column!r} is not a column of {self.name}; available columns: "
                    f"{sorted(columns)}. Set text_column to the column that holds the text."
                )
            self._ds = ds
        return self._ds

    def _read_all(self) -> Iterator[str]:
        ds = self.dataset()
        if self.streaming:
            for row in ds:
                if self.text_column not in row:
                    raise ValueError(f"text_column={self.text_column!r} is missing from a row of {self.name}.")
                yield str(row[self.text_column] or "")
        else:
            column = ds.select_columns([self.text_column])
            for start in range(0, len(column), 1024):
                for value in column[start : start + 1024][self.text_column]:
                    yield str(value or "")

    def documents(self) -> Iterator[str]:
        return _capped(self._read_all(), self.max_chars)

    def identity(self) -> dict[str, Any]:
        ident = {
            "kind": "hf",
            "dataset": self.dataset_name,
            "config": self.dataset_config,
            "split": self.split,
            "text_column": self.text_column,
            "streaming": self.streaming,
            "max_chars": self.max_chars,
            "data_files": self.data_files,
        }
        if not self.streaming:
            ident["fingerprint"] = self.dataset()._fingerprint
        return ident


def _is_network_error(err: BaseException) -> bool:
    names = " ".join(c.__name__ for c in type(err).__mro__)
    return isinstance(err, (ConnectionError, TimeoutError)) or any(
        word in names for word in ("Offline", "Connection", "Timeout", "HTTPError")
    )


def resolve_source(
    source: str,
    *,
    text_column: str = "text",
    max_chars: Optional[int] = None,
    dataset_config: Optional[str] = None,
    split: str = "train",
    streaming: bool = False,
) -> TextSource:
    """Turn a source string into a ``TextSource``.

    Args:
        source: ``python-stdlib`` (the embedded default), ``hf://<dataset id or path>``, or a local file, directory or
            glob of ``.txt`` / ``.jsonl`` / ``.parquet`` files.
        text_column: the text field of ``.jsonl`` / ``.parquet`` / Hugging Face data.
        max_chars: cap on the characters read; ``None`` means the source's default (5,000,000 for ``python-stdlib``,
            everything otherwise).
        dataset_config: the Hugging Face dataset configuration.
        split: the Hugging Face split.
        streaming: stream the Hugging Face dataset.
    """
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"source must be a non-empty string, got {source!r}.")
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"max_chars must be a positive integer or None, got {max_chars!r}.")
    if source == "python-stdlib":
        return StdlibSource(DEFAULT_STDLIB_MAX_CHARS if max_chars is None else max_chars)
    if source.startswith("hf://"):
        name = source[len("hf://") :]
        if not name:
            raise ValueError(
                "source='hf://' needs a dataset id or path after the prefix, e.g. 'hf://roneneldan/TinyStories'."
            )
        return HFSource(name, dataset_config, split, text_column, streaming, max_chars)
    return LocalSource(source, text_column, max_chars)
