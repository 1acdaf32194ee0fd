"""On-disk caches: token ids (a memory-mapped array per source x tokenizer x settings) and trained tokenizers.

Everything is written atomically: into a temporary name in the same directory, then ``os.replace``d into place, so a
crash or an error leaves no half-written entry, and concurrent writers (several ranks or runs) just race to an
identical result. Temporaries carry the host and process id of their writer; the next build removes those of writers
that no longer run (a build killed with SIGKILL). An entry is verified when it is opened (metadata parses, the token
file has the recorded length, the offsets match): a damaged one is rebuilt by ``build_token_cache`` with a warning
naming it, and ``load_token_cache`` stops with ``CacheEntryError`` naming the entry and the fix. Stale content is
handled by the key: sources identify themselves by a hash of their content (see ``lightning_gpt.data.sources``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, NoReturn, Optional

import numpy as np

from lightning_gpt.data.encoding import check_separators, encode_documents, token_dtype
from lightning_gpt.data.tokenizers import Tokenizer, tokenizer_from_state_dict
from lightning_gpt.errors import storage_error
from lightning_gpt.jsonfile import read_json

__all__ = [
    "TokenArray",
    "CacheEntryError",
    "default_cache_dir",
    "cache_key",
    "build_token_cache",
    "load_token_cache",
    "cached_tokenizer",
]

log = logging.getLogger(__name__)
_CACHE_FIX = "--data.cache_dir (or $LIGHTNING_GPT_CACHE)"
_LEGACY_TMP_AGE_S = 24 * 3600  # temporaries without a writer id (older versions) count as stale after a day

CACHE_VERSION = 1
_CHUNK_CHARS = 1 << 20  # tokenize ~1M characters at a time (bounded memory for any corpus size)


def default_cache_dir() -> str:
    """``$LIGHTNING_GPT_CACHE`` if set, else ``~/.cache/lightning_gpt``."""
    return os.environ.get("LIGHTNING_GPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lightning_gpt")


def cache_key(obj: Any) -> str:
    """A short stable hash of a JSON-able object (sorted keys, independent of ``PYTHONHASHSEED``)."""
    blob = json.dumps({"v": CACHE_VERSION, "obj": obj}, sort_keys=True, ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


class CacheEntryError(ValueError):
    """A token cache entry on disk is damaged (truncated, unreadable metadata, missing or inconsistent offsets)."""


def _tmp_prefix(pid: Optional[int] = None) -> str:
    """Prefix of a temporary written by process ``pid`` on this host: ``.tmp-<host>-<pid>-``."""
    host = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:32] or "host"
    return f".tmp-{host}-{os.getpid() if pid is None else pid}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: str) -> list[str]:
    """Remove the temporaries in ``folder`` left by writers on this host that no longer run (and, from older
    versions without a writer id, those untouched for a day). Live writers' temporaries are kept.

    Args:
        folder: a cache folder (``<cache>/tokens`` or ``<cache>/tokenizers``).

    Returns:
        The removed paths.
    """
    if not os.path.isdir(folder):
        return []
    mine = _tmp_prefix(0)[: -len("0-")]  # ".tmp-<host>-"
    removed = []
    for name in os.listdir(folder):
        if not name.startswith(".tmp-"):
            continue
        path = os.path.join(folder, name)
        if name.startswith(mine):
            pid_text = name[len(mine) :].split("-", 1)[0]
            if not pid_text.isdigit() or _pid_alive(int(pid_text)):
                continue
        elif name.count("-") >= 3:  # another host's writer (a shared file system): not ours to judge
            continue
        else:
            try:
                if time.time() - os.path.getmtime(path) < _LEGACY_TMP_AGE_S:
                    continue
            except OSError:
                continue
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except OSError:
                continue
        removed.append(path)
    if removed:
        log.info("Removed %d stale temporaries of interrupted cache builds in %s.", len(removed), folder)
    return removed


def _damaged(path: str, reason: str) -> CacheEntryError:
    return CacheEntryError(
        f"token cache entry {path!r} is damaged ({reason}). Delete it (rm -r {path!r}) and run again: it is "
        "rebuilt from the source."
    )


def verify_token_cache(path: str) -> dict[str, Any]:
    """Check a cache entry without reading its token stream; return its metadata.

    Args:
        path: the entry directory.

    Returns:
        The parsed ``meta.json``.

    Raises:
        CacheEntryError: the metadata is unreadable, ``tokens.bin`` is shorter or longer than recorded, or
            ``offsets.npy`` is missing, unreadable or does not match the metadata.
    """
    try:
        meta = read_json(os.path.join(path, "meta.json"))
        n_tokens, n_docs, dtype = int(meta["n_tokens"]), int(meta["n_docs"]), np.dtype(meta["dtype"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise _damaged(path, f"meta.json is unreadable: {type(err).__name__}: {err}") from None
    tokens_path = os.path.join(path, "tokens.bin")
    size = os.path.getsize(tokens_path) if os.path.isfile(tokens_path) else None
    if size != n_tokens * dtype.itemsize:
        found = "missing" if size is None else f"{size} bytes"
        raise _damaged(path, f"tokens.bin is {found}, expected {n_tokens * dtype.itemsize} bytes")
    try:
        offsets = np.load(os.path.join(path, "offsets.npy"), mmap_mode="r", allow_pickle=False)
        ok = offsets.ndim == 1 and len(offsets) == n_docs + 1 and int(offsets[0]) == 0
        ok = ok and int(offsets[-1]) == n_tokens
    except (OSError, ValueError, EOFError) as err:
        raise _damaged(path, f"offsets.npy is missing or unreadable: {type(err).__name__}") from None
    if not ok:
        raise _damaged(path, "offsets.npy does not match meta.json")
    return meta


def _write_failed(err: OSError, path: str) -> NoReturn:
    """Raise the one-paragraph storage error for ``err`` (a full disk, no permission...), or ``err`` itself."""
    wrapped = storage_error(err, path, "the token cache", _CACHE_FIX)
    if wrapped is None:
        raise err
    raise wrapped from err


@dataclass
class TokenArray:
    """A tokenized corpus: one flat id stream plus document boundaries.

    Each document ``i`` occupies ``tokens[offsets[i]:offsets[i + 1]]`` and already carries its separators
    (``[BOS] text EOS``), so packing is a plain slice of ``tokens`` and padding uses whole documents.

    Attributes:
        path: the cache entry directory.
        tokens: the id stream (read-only memmap, ``uint16``/``uint32``).
        offsets: ``int64`` array of ``n_docs + 1`` document starts.
        meta: the entry's metadata (key object, counts, dtype).
    """

    path: str
    tokens: np.ndarray
    offsets: np.ndarray
    meta: dict[str, Any]

    @property
    def n_tokens(self) -> int:
        """Number of ids in the stream."""
        return int(self.meta["n_tokens"])

    @property
    def n_docs(self) -> int:
        """Number of documents."""
        return int(self.meta["n_docs"])


def _chunks(docs: Iterable[str]) -> Iterable[list[str]]:
    chunk: list[str] = []
    size = 0
    for d in docs:
        chunk.append(d)
        size += len(d)
        if size >= _CHUNK_CHARS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def build_token_cache(
    cache_dir: str,
    key_obj: dict[str, Any],
    documents: Iterable[str],
    tokenizer: Tokenizer,
    *,
    add_bos: bool = False,
    description: str = "corpus",
    allow_empty: bool = False,
) -> str:
    """Tokenize ``documents`` into the cache (unless an entry for ``key_obj`` exists) and return the entry path.

    Each document is stored as ``[BOS] ids EOS`` (BOS only with ``add_bos``).

    Args:
        cache_dir: the cache root.
        key_obj: everything the ids depend on (source identity, tokenizer fingerprint, settings).
        documents: the documents, read only when the entry is missing.
        tokenizer: the tokenizer (its EOS ends every document; without one, documents are joined as they are).
        add_bos: prepend BOS to every document.
        description: the source's name, for error messages.
        allow_empty: write an entry without documents instead of raising (a held-out part can be empty).
    """
    root = os.path.join(cache_dir, "tokens")
    final = os.path.join(root, cache_key(key_obj))
    if os.path.exists(final):
        try:
            verify_token_cache(final)
            return final
        except CacheEntryError as err:
            log.warning("%s Rebuilding it now.", err)
            _discard(final, root)
    check_separators(tokenizer, add_bos)
    dtype = token_dtype(tokenizer.vocab_size)
    try:
        os.makedirs(root, exist_ok=True)
        remove_stale_temporaries(root)
        tmp = tempfile.mkdtemp(prefix=_tmp_prefix(), dir=root)
    except OSError as err:
        _write_failed(err, root)
    try:
        offsets = [0]
        n_chars = 0
        with open(os.path.join(tmp, "tokens.bin"), "wb") as f:
            for chunk in _with_progress(_chunks(documents), description):
                n_chars += sum(len(d) for d in chunk)
                for ids in encode_documents(tokenizer, chunk, add_bos):
                    f.write(ids.astype(dtype).tobytes())
                    offsets.append(offsets[-1] + len(ids))
        if n_chars == 0 and not allow_empty:
            raise ValueError(
                f"source {description!r} has no text (it is empty or only whitespace); point source at a corpus "
                "with some text."
            )
        np.save(os.path.join(tmp, "offsets.npy"), np.asarray(offsets, dtype=np.int64))
        meta = {
            "key": key_obj,
            "n_tokens": offsets[-1],
            "n_docs": len(offsets) - 1,
            "n_chars": n_chars,
            "dtype": dtype.name,
            "vocab_size": tokenizer.vocab_size,
        }
        with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, sort_keys=True)
        try:
            os.replace(tmp, final)
        except OSError:
            if not os.path.isfile(os.path.join(final, "meta.json")):  # not a lost race: a real error
                raise
    except OSError as err:
        _write_failed(err, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _discard(entry: str, root: str) -> None:
    """Move a damaged entry out of the way (atomically, so no reader sees it half-deleted), then delete it."""
    aside = f"{root}/{_tmp_prefix()}discard-{os.path.basename(entry)}"
    try:
        os.replace(entry, aside)
    except OSError as err:
        if err.errno not in (errno.ENOENT,):  # ENOENT: another process already removed it
            raise
        return
    shutil.rmtree(aside, ignore_errors=True)


def load_token_cache(path: str) -> TokenArray:
    """Open a cache entry written by ``build_token_cache`` (the id stream is memory-mapped, not read).

    Args:
        path: the entry directory.

    Raises:
        FileNotFoundError: there is no entry at ``path``.
        CacheEntryError: the entry is damaged (see ``verify_token_cache``).
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no token cache at {path!r}; call TextDataModule.prepare_data() first.")
    meta = verify_token_cache(path)
    n = int(meta["n_tokens"])
    tokens = (
        np.memmap(os.path.join(path, "tokens.bin"), dtype=meta["dtype"], mode="r", shape=(n,))
        if n
        else np.zeros(0, dtype=meta["dtype"])
    )
    offsets = np.load(os.path.join(path, "offsets.npy"), allow_pickle=False)
    return TokenArray(path=path, tokens=tokens, offsets=offsets, meta=meta)


def cached_tokenizer(cache_dir: Optional[str], key_obj: dict[str, Any], build: Callable[[], Tokenizer]) -> Tokenizer:
    """Load the trained tokenizer cached under ``key_obj``, or ``build()`` it and cache it atomically.

    Args:
        cache_dir: the cache root; ``None`` disables caching.
        key_obj: everything the trained tokenizer depends on (source identity, kind, vocab size, library version).
        build: trains the tokenizer.
    """
    if cache_dir is None:
        return build()
    root = os.path.join(cache_dir, "tokenizers")
    path = os.path.join(root, cache_key(key_obj) + ".json")
    if os.path.isfile(path):
        try:
            return tokenizer_from_state_dict(read_json(path))
        except (OSError, ValueError, KeyError, TypeError) as err:  # a damaged file: train again rather than fail
            log.warning("Cached tokenizer %r is damaged (%s: %s); rebuilding it now.", path, type(err).__name__, err)
    tok = build()
    tmp = ""
    try:
        os.makedirs(root, exist_ok=True)
        remove_stale_temporaries(root)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(), suffix=".json", dir=root)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(tok.state_dict(), f, sort_keys=True)
        os.replace(tmp, path)
    except OSError as err:
        wrapped = storage_error(err, path, "the tokenizer cache", _CACHE_FIX)
        if wrapped is None:
            raise
        raise wrapped from err
    finally:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)
    return tok


def _with_progress(chunks: Iterable[list[str]], description: str) -> Iterable[list[str]]:
    """Pass ``chunks`` through; once a corpus is past ~8M characters, show a tqdm bar of the characters tokenized."""
    bar, seen = None, 0
    try:
        for chunk in chunks:
            size = sum(len(d) for d in chunk)
            seen += size
            if bar is None and seen >= 8 * _CHUNK_CHARS:
                try:
                    from tqdm.auto import tqdm
                except ImportError:  # no bar without tqdm (a dependency of Lightning, not of this data layer)
                    tqdm = None
                if tqdm is None:
                    yield chunk
                    continue
                bar = tqdm(desc=f"tokenizing {description}", unit="char", unit_scale=True, initial=seen - size)
            if bar is not None:
                bar.update(size)
            yield chunk
    finally:
        if bar is not None:
            bar.close()
