"""A source cut into shards that separate processes (and machines) read independently, for ``prepare``.

A shard is a small JSON-able dict; ``plan_shards`` lists them (reading no text: file sizes, Parquet row-group counts,
Hugging Face shard counts) and ``read_shard`` yields one shard's documents, in order, in bounded memory:

- ``.jsonl`` and ``.txt`` files are cut into byte ranges of about ``shard_bytes`` at line breaks (a range starts just
  after a line break and ends at one); a ``.jsonl`` line is a document; a ``.txt`` file is one document when it fits
  in a shard and otherwise one document per range (documents cut at line breaks, as the BPE encoder cuts long ones);
- ``.parquet`` files by row group;
- a Hugging Face dataset by ``Dataset.shard`` (contiguous) or, streamed, by the stream's own shards;
- anything else (the embedded ``python-stdlib`` corpus, a few MB) is one shard: ``source.documents()``.

With ``max_chars``, every shard is capped at ``max_chars / number of shards`` (a bounded total without a serial scan).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Iterator, Optional

from lightning_gpt.data.sources import HFSource, LocalSource, TextSource, decode_utf8_line
from lightning_gpt.data.sources.base import capped
from lightning_gpt.data.sources.readers import jsonl_row_value

__all__ = ["DEFAULT_SHARD_BYTES", "plan_shards", "read_shard", "sample_documents"]

DEFAULT_SHARD_BYTES = 16 << 20  # 16 MiB of text per shard: small enough to balance workers, large enough to amortize


def _byte_ranges(path: str, size: int, shard_bytes: int) -> list[tuple[int, int]]:
    if size <= shard_bytes:
        return [(0, size)]
    return [(start, min(size, start + shard_bytes)) for start in range(0, size, shard_bytes)]


def plan_shards(source: TextSource, shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[dict[str, Any]]:
    """The shards of ``source``, in a fixed order (reads metadata only, never the text).

    Args:
        source: a resolved source (``resolve_source``).
        shard_bytes: target size of a file shard in bytes.

    Returns:
        JSON-able shard descriptions for ``read_shard``.
    """
    shards: list[dict[str, Any]] = []
    if isinstance(source, LocalSource):
        for path in source.files():
            if path.endswith(".parquet"):
                import pyarrow.parquet as pq

                for rg in range(pq.ParquetFile(path).num_row_groups):
                    shards.append({"kind": "parquet", "path": path, "row_group": rg, "column": source.text_column})
                continue
            size = os.path.getsize(path)
            kind = "txt" if path.endswith(".txt") else "jsonl"
            for start, end in _byte_ranges(path, size, shard_bytes):
                shards.append({"kind": kind, "path": path, "start": start, "end": end, "column": source.text_column})
    elif isinstance(source, HFSource):
        ds = source.dataset()
        n = int(getattr(ds, "n_shards", 0) or 0) if source.streaming else max(1, len(ds) // 50_000)
        for i in range(max(1, n)):
            shards.append({"kind": "hf", "index": i, "num_shards": max(1, n)})
    else:
        shards.append({"kind": "whole"})
    cap = getattr(source, "max_chars", None)
    if cap is not None:
        for shard in shards:
            shard["max_chars"] = max(1, cap // len(shards))
    return shards


def _lines(path: str, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """``(byte offset, line)`` of the lines that start in ``[start, end)`` (the first partial line is skipped)."""
    with open(path, "rb") as f:
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":
                f.readline()  # the line that straddles ``start`` belongs to the previous range
        pos = f.tell()
        while pos < end:
            line = f.readline()
            if not line:
                return
            yield pos, line
            pos += len(line)


def _line_of(path: str, offset: int) -> int:
    """The 1-based line number of byte ``offset`` (counted only when a message needs it)."""
    count, pos = 1, 0
    with open(path, "rb") as f:
        while pos < offset:
            block = f.read(min(1 << 20, offset - pos))
            if not block:
                break
            count += block.count(b"\n")
            pos += len(block)
    return count


def _decode(raw: bytes, path: str, offset: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return decode_utf8_line(raw, path, _line_of(path, offset), offset)  # raises, naming file:line


def _txt(shard: dict[str, Any]) -> Iterator[str]:
    path, start, end = shard["path"], shard["start"], shard["end"]
    yield "".join(_decode(raw, path, off) for off, raw in _lines(path, start, end))


def _jsonl(shard: dict[str, Any]) -> Iterator[str]:
    # The messages are read_jsonl's (sources/readers.py): file:line, the line counted only on the error path.
    path, column = shard["path"], shard["column"]
    for off, raw in _lines(path, shard["start"], shard["end"]):
        line = _decode(raw, path, off)
        if not line.strip():
            continue
        yield str(jsonl_row_value(line, column, functools.partial(_where, path, off)) or "")


def _where(path: str, offset: int) -> str:
    return f"{path}:{_line_of(path, offset)}"


def _raw_documents(shard: dict[str, Any], source: Optional[TextSource]) -> Iterator[str]:
    kind = shard["kind"]
    if kind == "txt":
        yield from _txt(shard)
    elif kind == "jsonl":
        yield from _jsonl(shard)
    elif kind == "parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(shard["path"]).read_row_group(shard["row_group"], columns=[shard["column"]])
        for value in table.column(0).to_pylist():
            yield str(value or "")
    elif kind == "hf":
        assert isinstance(source, HFSource)
        ds = source.dataset()
        part = (
            ds.shard(num_shards=shard["num_shards"], index=shard["index"])
            if source.streaming
            else ds.shard(num_shards=shard["num_shards"], index=shard["index"], contiguous=True)
        )
        for row in part:
            yield str(row.get(source.text_column) or "")
    else:
        assert source is not None
        yield from source.documents()


def read_shard(shard: dict[str, Any], source: Optional[TextSource] = None) -> Iterator[str]:
    """Yield the documents of one shard (whitespace-only documents skipped, the shard's cap applied).

    Args:
        shard: one of ``plan_shards``' descriptions.
        source: the source it came from (needed for Hugging Face and ``whole`` shards).

    Raises:
        ValueError: a line that is not valid UTF-8 or not a JSON object with the text column (names file and byte).
    """
    return capped(_raw_documents(shard, source), shard.get("max_chars"))  # blank documents dropped, then the cap


def sample_documents(source: TextSource, max_chars: int, seed: int) -> Iterator[str]:
    """A bounded, seeded sample of ``source``'s documents, for training a tokenizer.

    The shards (``plan_shards``: byte ranges of files, row groups, dataset shards) are visited in a seeded random
    order and read until ``max_chars`` characters were yielded (the last document truncated), so the time and memory
    do not grow with the corpus past the sample. A source that is one shard (e.g. ``python-stdlib``) gives its first
    ``max_chars`` characters.

    Args:
        source: the resolved source.
        max_chars: the sample size in characters.
        seed: the seed of the shard order.
    """
    import random

    shards = plan_shards(source)
    for shard in shards:
        shard.pop("max_chars", None)  # the sample's own bound applies
    random.Random(seed).shuffle(shards)
    total = 0
    for shard in shards:
        for doc in read_shard(shard, source):
            if total + len(doc) >= max_chars:
                yield doc[: max_chars - total]
                return
            total += len(doc)
            yield doc
