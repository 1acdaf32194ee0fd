"""Which local files a source reads (each real file once), and how they are identified without reading them.

**Finding files.** A directory is searched recursively; a glob (``*``, ``?``, ``[...]``, ``**``) is matched with the
rules of Python's ``glob`` (a leading ``.`` must be written out, ``**`` matches any number of folders). Our own walk
instead of ``glob.glob`` because ``glob``'s ``**`` follows symbolic links to folders without noticing cycles: a link
to a parent folder makes it list every file dozens of times, down to the path-length limit. Here, symbolic links to
folders are followed (a linked data folder is data the user meant) but every folder is entered once, and files are
deduplicated by (device, inode): a file reached through a link, a hard link or two overlapping folders is read once.
Hidden names (``.DS_Store``, ``.git/``, Emacs ``.#x`` lock files, ``.ipynb_checkpoints/``) and editor backups (``x~``,
``#x#``) are never read. In a directory, files of other types (``README.md``, images, ``.bin``) are left out with a
warning; a compressed copy of a supported type (``x.jsonl.gz``) is an error, since leaving it out silently would lose
data and reading it beside its uncompressed twin would read the same text twice.

**Identity without reading.** A file is identified by its path, size, modification time, status-change time
(``ctime``) and inode, as ``stat`` gives them. ``cp -p``, ``rsync -a``, ``tar`` and ``touch -d`` can set the
modification time back, but no tool can set ``ctime``: any write, and any restore of the times, moves it to now. So a
changed file always reads as changed, and start-up costs one ``stat`` per file instead of reading the corpus. The
trade-off: renaming, ``chmod``, or restoring a copy (a new inode) also reads as changed, which costs a rebuild, never
stale data. The device number is left out on purpose: it is not stable across reboots for NFS, device-mapper volumes
and container overlays, and would force a rebuild after each. One race remains, as for ``make`` and git ("racy git"):
a file rewritten within the file system's timestamp granularity of the moment it was identified, with the same size.
A file whose times are that recent is therefore identified again after the granularity has passed (at most 50 ms,
or 2 s on file systems with whole-second times); a file whose times lie in the future (clock skew on a network file
system) is identified by a SHA-256 of its bytes instead.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
import time
from typing import Iterator, Optional

from lightning_gpt.data.sources.base import log

__all__ = ["SUPPORTED_SUFFIXES", "find_files", "files_fingerprint"]

SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".parquet")
_COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zstd", ".lz4", ".zip", ".7z", ".br")
_FINE_WINDOW_NS = 50_000_000  # > one kernel tick (the coarse clock that stamps files ticks every 1-10 ms)
_COARSE_WINDOW_NS = 2_000_000_000  # FAT stores modification times in 2-second steps


def _supported(name: str) -> bool:
    return name.lower().endswith(SUPPORTED_SUFFIXES)


def _compressed_text(name: str) -> bool:
    """``x.jsonl.gz`` and the like: a supported type under a compression suffix."""
    low = name.lower()
    return any(low.endswith(s + c) for s in SUPPORTED_SUFFIXES for c in _COMPRESSED_SUFFIXES)


def _litter(name: str, hidden_too: bool) -> bool:
    """Editor backups, auto-saves and lock files (and, with ``hidden_too``, every hidden file): never data."""
    if hidden_too and name.startswith("."):
        return True
    return name.endswith("~") or name.startswith(".#") or (name.startswith("#") and name.endswith("#"))


def _segment_match(name: str, segment: str) -> bool:
    if name.startswith(".") and not segment.startswith("."):  # glob's rule: a leading dot is matched explicitly
        return False
    return fnmatch.fnmatchcase(name, segment)


def _match(parts: tuple[str, ...], segments: tuple[str, ...]) -> bool:
    """Whether a relative path (``parts``) matches the pattern ``segments`` (``**`` = zero or more folders)."""
    if not segments:
        return not parts
    if segments[0] == "**":
        for i in range(len(parts) + 1):
            if i > 0 and parts[i - 1].startswith("."):
                return False
            if _match(parts[i:], segments[1:]):
                return True
        return False
    return bool(parts) and _segment_match(parts[0], segments[0]) and _match(parts[1:], segments[1:])


def _walk(base: str, max_depth: Optional[int], hidden: bool) -> Iterator[tuple[str, ...]]:
    """Relative paths of the non-folder entries under ``base``, in sorted order, following links to folders but
    entering each folder (by device and inode) once, and hidden folders only with ``hidden``."""
    seen: set[tuple[int, int]] = set()

    def visit(folder: str, rel: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        try:
            st = os.stat(folder)
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            raise FileNotFoundError(f"could not list the folder {folder!r} of the source ({err}).") from None
        if (st.st_dev, st.st_ino) in seen:
            return
        seen.add((st.st_dev, st.st_ino))
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows symbolic links
            except OSError:
                is_dir = False
            if is_dir:
                if entry.name.startswith(".") and not hidden:
                    continue
                if max_depth is None or len(rel) + 1 < max_depth:
                    yield from visit(entry.path, rel + (entry.name,))
            else:
                yield rel + (entry.name,)

    yield from visit(base, ())


def _split_pattern(pattern: str) -> tuple[str, tuple[str, ...]]:
    """``data/20*/**/*.txt`` -> (``data``, (``20*``, ``**``, ``*.txt``)): the literal folder and the magic rest."""
    parts = pattern.split(os.sep)
    for i, part in enumerate(parts):
        if glob.has_magic(part):
            base = os.sep.join(parts[:i]) or ("." if not pattern.startswith(os.sep) else os.sep)
            return base, tuple(p for p in parts[i:] if p)
    return pattern, ()


def find_files(pattern: str, name: str) -> list[str]:
    """The files of a local source, as sorted absolute paths, each real file once.

    Args:
        pattern: a file, a folder (searched recursively for supported files) or a glob; ``~`` is expanded.
        name: the source as the user wrote it, for messages.

    Raises:
        FileNotFoundError: nothing exists at ``pattern``, a match is a broken link, or no supported file matched.
        ValueError: a named or matched file has an unsupported or compressed type.
    """
    p = os.path.expanduser(pattern)
    supported = "/".join(SUPPORTED_SUFFIXES)
    is_dir = False
    if os.path.isfile(p):
        found = [p]
    elif os.path.isdir(p):
        found, is_dir = [os.path.join(p, *rel) for rel in _walk(p, None, hidden=False)], True
    elif glob.has_magic(p):
        base, segments = _split_pattern(p)
        depth = None if "**" in segments else len(segments)
        hidden = any(s.startswith(".") for s in segments)
        walked = _walk(base, depth, hidden) if os.path.isdir(base) else iter(())
        found = [os.path.join(base, *rel) for rel in walked if _match(rel, segments)]
    else:
        link = f" (a broken symbolic link to {os.readlink(p)!r})" if os.path.islink(p) else ""
        raise FileNotFoundError(
            f"source={name!r}: no such file or directory{link}. Give an existing {supported} file, a directory of "
            "them, a glob such as 'data/*.txt', 'hf://<dataset id or folder>', or 'python-stdlib'."
        )
    # A glob matches hidden names only where it spells the dot out, as Python's glob does; a folder never reads them.
    if found != [p]:
        found = [f for f in found if not _litter(os.path.basename(f), hidden_too=is_dir)]
    compressed = [f for f in found if _compressed_text(os.path.basename(f))]
    if compressed:
        raise ValueError(
            f"source={name!r}: {compressed[0]!r} is compressed ({len(compressed)} such file(s)); sources read "
            f"uncompressed {supported} files. Decompress it (e.g. gunzip -k FILE), or point source at a glob that "
            "leaves it out (e.g. 'data/**/*.jsonl')."
        )
    other = [f for f in found if not _supported(os.path.basename(f))]
    found = [f for f in found if _supported(os.path.basename(f))]
    if other and not is_dir:  # a file or glob named them: the user meant them
        raise ValueError(
            f"source={name!r}: unsupported file type {os.path.basename(other[0])!r}; supported suffixes are "
            f"{', '.join(SUPPORTED_SUFFIXES)} (rename plain-text files to .txt)."
        )
    files = _unique_files([os.path.abspath(f) for f in found], name)
    if other:  # (hidden files and backups are never data: left out without a word)
        shown = ", ".join(os.path.basename(f) for f in other[:4]) + (", ..." if len(other) > 4 else "")
        log.warning("source %r: left out %d file(s) that are not %s (%s).", name, len(other), supported, shown)
    if not files:
        raise FileNotFoundError(f"source={name!r}: matched no {supported} files.")
    return files


def _unique_files(paths: list[str], name: str) -> list[str]:
    """Sorted regular files, one path per (device, inode); a broken link is an error; others (FIFOs...) are dropped."""
    by_inode: dict[tuple[int, int], str] = {}
    for path in sorted(set(paths)):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            target = os.readlink(path) if os.path.islink(path) else "?"
            raise FileNotFoundError(
                f"source={name!r}: {path!r} is a broken symbolic link (to {target!r}); remove it or restore its target."
            ) from None
        if not os.path.isfile(path):
            continue
        first = by_inode.setdefault((st.st_dev, st.st_ino), path)
        if first != path:
            log.warning("source %r: %r is the same file as %r (a link); it is read once.", name, path, first)
    return sorted(by_inode.values())


def _stat_line(path: str, st: os.stat_result) -> str:
    return f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\n"


def _racy_until(st: os.stat_result, now: int) -> int:
    """The time (ns) after which ``st`` can no longer equal the stat of a rewritten file, or 0 if that is past."""
    coarse = st.st_mtime_ns % 1_000_000_000 == 0 and st.st_ctime_ns % 1_000_000_000 == 0
    until = max(st.st_mtime_ns, st.st_ctime_ns) + (_COARSE_WINDOW_NS if coarse else _FINE_WINDOW_NS)
    return until if until > now else 0


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def files_fingerprint(paths: list[str]) -> str:
    """A short hash that changes whenever one of the files may have changed, from ``stat`` alone (see the module
    docstring for the rule and its trade-off); only a file with times in the future is read.

    Args:
        paths: the files, in the order that matters.
    """
    stats = [os.stat(p) for p in paths]
    now = time.time_ns()
    racy = {i: _racy_until(st, now) for i, st in enumerate(stats)}
    racy = {i: until for i, until in racy.items() if until}
    wait = max(racy.values(), default=0) - now
    if racy and wait <= _COARSE_WINDOW_NS:
        time.sleep(wait / 1e9)
        for i in racy:
            stats[i] = os.stat(paths[i])
        now = time.time_ns()
        racy = {i: u for i in racy if (u := _racy_until(stats[i], now))}
    h = hashlib.sha256()
    for i, (path, st) in enumerate(zip(paths, stats)):
        h.update(_stat_line(path, st).encode("utf-8", "surrogateescape"))
        if i in racy:  # still changing, or stamped in the future: identify it by its bytes
            h.update(_sha256(path).encode())
    return h.hexdigest()[:16]
