"""On-disk caches: token ids (a memory-mapped array per source x tokenizer x settings) and trained tokenizers.

Everything is written atomically: into a temporary name in the same directory, then ``os.replace``d into place, so a
crash or an error leaves no half-written entry, and concurrent writers (several ranks or runs) just race to an
identical result.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import numpy as np

from lightning_gpt.data.tokenizers import CharTokenizer, Tokenizer, tokenizer_from_state_dict

__all__ = ["TokenArray", "default_cache_dir", "cache_key", "build_token_cache", "load_token_cache", "cached_tokenizer"]

CACHE_VERSION = 1
_CHUNK_CHARS = 1 << 20  # tokenize ~1M characters at a time (bounded memory for any corpus size)


def default_cache_dir() -> str:
    """``$LIGHTNING_GPT_CACHE`` if set, else ``~/.cache/lightning_gpt``."""
    return os.environ.get("LIGHTNING_GPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lightning_gpt")


def cache_key(obj: Any) -> str:
    """A short stable hash of a JSON-able object (sorted keys, independent of ``PYTHONHASHSEED``)."""
    blob = json.dumps({"v": CACHE_VERSION, "obj": obj}, sort_keys=True, ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits, else ``uint32``."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


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


def _encode_chunk(tokenizer: Tokenizer, docs: list[str], bos: bool, eos: bool) -> list[np.ndarray]:
    if isinstance(tokenizer, CharTokenizer):
        out = []
        for d in docs:
            arr = tokenizer.encode_array(d)
            parts = ([[tokenizer.bos_id]] if bos else []) + [arr] + ([[tokenizer.eos_id]] if eos else [])
            out.append(np.concatenate(parts) if len(parts) > 1 else arr)
        return out
    return [np.asarray(ids, dtype=np.int64) for ids in tokenizer.encode_batch(docs, bos=bos, eos=eos)]


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
) -> str:
    """Tokenize ``documents`` into the cache (unless an entry for ``key_obj`` exists) and return the entry path.

    Each document is stored as ``[BOS] ids EOS`` (BOS only with ``add_bos``).

    Args:
        cache_dir: the cache root.
        key_obj: everything the ids depend on (source identity, tokenizer fingerprint, settings).
        documents: the documents, read only when the entry is missing.
        tokenizer: the tokenizer (must have an EOS token).
        add_bos: prepend BOS to every document.
        description: the source's name, for error messages.
    """
    root = os.path.join(cache_dir, "tokens")
    final = os.path.join(root, cache_key(key_obj))
    if os.path.isfile(os.path.join(final, "meta.json")):
        return final
    if tokenizer.eos_id is None:
        raise ValueError(f"{tokenizer.describe()} has no EOS token to separate documents; use a tokenizer with one.")
    if add_bos and tokenizer.bos_id is None:
        raise ValueError(f"add_bos=True but {tokenizer.describe()} has no BOS token; set add_bos=False.")
    dtype = token_dtype(tokenizer.vocab_size)
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=root)
    try:
        offsets = [0]
        n_chars = 0
        with open(os.path.join(tmp, "tokens.bin"), "wb") as f:
            for chunk in _with_progress(_chunks(documents), description):
                n_chars += sum(len(d) for d in chunk)
                for ids in _encode_chunk(tokenizer, chunk, add_bos, True):
                    f.write(ids.astype(dtype).tobytes())
                    offsets.append(offsets[-1] + len(ids))
        if n_chars == 0:
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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_token_cache(path: str) -> TokenArray:
    """Open a cache entry written by ``build_token_cache`` (the id stream is memory-mapped, not read).

    Args:
        path: the entry directory.
    """
    meta_path = os.path.join(path, "meta.json")
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"no token cache at {path!r}; call TextDataModule.prepare_data() first.")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    n = int(meta["n_tokens"])
    tokens = (
        np.memmap(os.path.join(path, "tokens.bin"), dtype=meta["dtype"], mode="r", shape=(n,))
        if n
        else np.zeros(0, dtype=meta["dtype"])
    )
    offsets = np.load(os.path.join(path, "offsets.npy"))
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
        with open(path, encoding="utf-8") as f:
            return tokenizer_from_state_dict(json.load(f))
    tok = build()
    os.makedirs(root, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=root)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(tok.state_dict(), f, sort_keys=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
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
