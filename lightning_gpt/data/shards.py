"""A source cut into shards that separate processes (and machines) read independently, for ``prepare``.

A shard is a small JSON-able dict; ``plan_shards`` lists them (reading no text: file sizes, Parquet row-group counts,
Hugging Face shard counts) and ``read_shard`` yields one shard's documents, in order, in bounded memory:

- ``.jsonl`` and ``.txt`` files are cut into byte ranges of about ``shard_bytes`` at line breaks (a range starts just
  after a line break and ends at one); a ``.jsonl`` line is a document; a ``.txt`` file is one document when it fits
  in a shard and otherwise one document per range (documents cut at line breaks, as the BPE encoder cuts long ones);
- ``.parquet`` files by row group;
- a Hugging Face dataset by ``Dataset.shard`` (contiguous) or, streamed, by the stream's own shards;
- anything else (the embedded ``python-stdlib`` corpus, a few MB) is one shard: ``source.documents()``.

Every part is read by the plain source's own readers (``data/sources/readers.py``), held to the same rules and giving
the same messages. With ``max_chars``, every shard is capped at ``max_chars / number of shards`` (a bounded total
without a serial scan).
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Optional

from lightning_gpt.data.sources import HFSource, LocalSource, TextSource
from lightning_gpt.data.sources.base import Skips, capped
from lightning_gpt.data.sources.readers import read_jsonl, read_parquet, read_txt_range

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


def _raw_documents(shard: dict[str, Any], source: Optional[TextSource], skips: Skips) -> Iterator[str]:
    # The plain readers' own functions (data/sources/readers.py) on a part of a file: the same strictness (UTF-8, no
    # NUL, a BOM dropped, universal line ends in .txt, text values only: numbers, lists and bools are errors naming
    # file:row; nulls and blank rows skipped and counted) and the same messages.
    kind = shard["kind"]
    if kind == "txt":
        yield read_txt_range(shard["path"], shard["start"], shard["end"], skips)
    elif kind == "jsonl":
        yield from read_jsonl(shard["path"], shard["column"], skips, shard["start"], shard["end"])
    elif kind == "parquet":
        yield from read_parquet(shard["path"], shard["column"], skips, shard["row_group"])
    elif kind == "hf":
        assert isinstance(source, HFSource)
        ds, n, i = source.dataset(), shard["num_shards"], shard["index"]
        if source.streaming:
            yield from source.texts(ds.shard(num_shards=n, index=i), skips, where=f"shard {i}, row")
        else:
            div, mod = divmod(len(ds), n)  # Dataset.shard(contiguous=True): the first ``mod`` shards get one more
            part = ds.shard(num_shards=n, index=i, contiguous=True)
            yield from source.texts(part, skips, first_row=1 + i * div + min(i, mod))
    else:
        assert source is not None
        yield from source.documents()


def read_shard(
    shard: dict[str, Any], source: Optional[TextSource] = None, skips: Optional[Skips] = None
) -> Iterator[str]:
    """Yield the documents of one shard (whitespace-only documents skipped, the shard's cap applied), read as the
    plain source reads them (``data/sources/readers.py``).

    Args:
        shard: one of ``plan_shards``' descriptions.
        source: the source it came from (needed for Hugging Face and ``whole`` shards).
        skips: where rows left out on purpose (null or blank text, empty files) are counted; ``None``: counted here
            and reported as one warning when the shard is done (``prepare`` reads each shard in a worker process).

    Raises:
        ValueError: the shard's text is not valid UTF-8, holds a NUL character, a JSONL line is not a JSON object
            with the text column, or a value is not text (each naming ``file:row``).
    """
    if skips is not None:
        yield from capped(_raw_documents(shard, source, skips), shard.get("max_chars"))
        return
    own = Skips(str(shard.get("path") or getattr(source, "name", "source")))
    try:
        yield from capped(_raw_documents(shard, source, own), shard.get("max_chars"))
    finally:
        own.report()


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
    skipped = Skips(source.name)  # not reported: the pass that trains on the text reports what it skips
    for shard in shards:
        for doc in read_shard(shard, source, skipped):
            if total + len(doc) >= max_chars:
                yield doc[: max_chars - total]
                return
            total += len(doc)
            yield doc
