"""Where text comes from: the embedded Python standard library, local files, or a Hugging Face dataset.

A source yields documents (strings) in a fixed order and describes itself with ``identity()``: a small JSON-able dict
that changes whenever the text may have changed (paths, the files' ``stat``, dataset fingerprints, caps), computed
without reading the text. The token cache and the trained-tokenizer cache are keyed by it, so a cached run never
tokenizes, nor reads, the corpus again.

- ``base.py``: the ``TextSource`` contract and the counted skips;
- ``files.py``: which local files are read (each real file once) and their identity from ``stat`` (and why that is
  safe against ``cp -p`` / ``rsync -a`` restores);
- ``readers.py``: ``.txt`` in bounded pieces, ``.jsonl``, ``.parquet``, and what counts as text;
- ``local.py``: ``StdlibSource`` and ``LocalSource``; ``hf.py``: ``HFSource``.
"""

from __future__ import annotations

from typing import Optional

from lightning_gpt.data.sources.base import TextSource
from lightning_gpt.data.sources.hf import DataFiles, HFSource, check_data_files
from lightning_gpt.data.sources.local import DEFAULT_STDLIB_MAX_CHARS, LocalSource, StdlibSource
from lightning_gpt.data.sources.readers import TXT_PIECE_CHARS, decode_utf8_line

__all__ = [
    "DEFAULT_STDLIB_MAX_CHARS",
    "TXT_PIECE_CHARS",
    "DataFiles",
    "TextSource",
    "StdlibSource",
    "LocalSource",
    "HFSource",
    "decode_utf8_line",
    "resolve_source",
]


def resolve_source(
    source: str,
    *,
    text_column: str = "text",
    max_chars: Optional[int] = None,
    dataset_config: Optional[str] = None,
    split: str = "train",
    streaming: bool = False,
    data_files: Optional[DataFiles] = None,
) -> TextSource:
    """Turn a source string into a ``TextSource``.

    Args:
        source: ``python-stdlib`` (the embedded default), ``hf://<dataset id, builder name or folder>`` (a
            ``save_to_disk`` folder too), or a local file, directory or glob of ``.txt`` / ``.jsonl`` / ``.parquet``
            files.
        text_column: the text field of ``.jsonl`` / ``.parquet`` / Hugging Face data.
        max_chars: cap on the characters read; ``None`` means the source's default (5,000,000 for ``python-stdlib``,
            everything otherwise).
        dataset_config: the Hugging Face dataset configuration.
        split: the Hugging Face split.
        streaming: stream the Hugging Face dataset.
        data_files: for ``hf://`` sources, the files to load, as ``datasets.load_dataset`` takes them (a path or
            glob, a list, or a mapping from split to them).

    Raises:
        ValueError: an empty source, a ``max_chars`` below 1, or ``data_files`` with a source that is not ``hf://``.
    """
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"source must be a non-empty string, got {source!r}.")
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"max_chars must be a positive integer or None, got {max_chars!r}.")
    check_data_files(data_files)
    if data_files is not None and not source.startswith("hf://"):
        raise ValueError(
            f"data_files={data_files!r} chooses files of a Hugging Face dataset, but source={source!r} is not one. "
            "Use source='hf://json' (or parquet, text, or hf://<dataset folder>) with data_files, or give the files "
            "as the source itself (a path, folder or glob) and leave data_files unset."
        )
    if source == "python-stdlib":
        return StdlibSource(DEFAULT_STDLIB_MAX_CHARS if max_chars is None else max_chars)
    if source.startswith("hf://"):
        name = source[len("hf://") :]
        if not name:
            raise ValueError(
                "source='hf://' needs a dataset id or path after the prefix, e.g. 'hf://roneneldan/TinyStories'."
            )
        return HFSource(name, dataset_config, split, text_column, streaming, max_chars, data_files)
    return LocalSource(source, text_column, max_chars)
