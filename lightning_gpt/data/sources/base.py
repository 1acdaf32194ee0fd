"""The ``TextSource`` contract, and the counted skips every reader shares."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Callable, Iterator, Optional, Union

__all__ = ["TextSource", "Skips", "capped"]

log = logging.getLogger("lightning_gpt.data.sources")

# Part of every identity: bump it when the text a reader yields for the same bytes changes (here: 2 = .txt files read
# in pieces with universal newlines and without a BOM; 3 = prepare's shards read by the same strict readers), so caches
# and prepared folders built by an older reader are not reused.
READER_VERSION = 3


class TextSource:
    """A deterministic sequence of documents.

    Subclasses implement ``documents()`` (in a fixed order, no empty or whitespace-only documents) and ``identity()``.
    """

    name: str = "source"

    def documents(self) -> Iterator[str]:
        """Yield the documents, in a fixed order."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """A JSON-able description that changes whenever the text may have changed (read without reading the text)."""
        raise NotImplementedError

    def key(self) -> str:
        """A short stable hash of ``identity()``."""
        blob = json.dumps(self.identity(), sort_keys=True, ensure_ascii=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class Skips:
    """Counts what a reader left out on purpose (null text, empty or whitespace-only rows and files), with the first
    place of each kind, and reports it once per pass as one warning.

    Args:
        source: the source's name, for the warning.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.counts: dict[str, int] = {}
        self.first: dict[str, str] = {}
        self._reported: Optional[str] = None

    def add(self, kind: str, where: Union[str, Callable[[], str]]) -> None:
        """Count one skipped item of ``kind`` (e.g. ``"null text"``) found at ``where`` (``file:row``, or a function
        giving it: called for the first item of a kind only, as finding a line number may cost a scan)."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind not in self.first:
            self.first[kind] = where if isinstance(where, str) else where()

    def reset(self) -> None:
        """Start a new pass (``documents()`` may be iterated several times: tokenizer training, then the cache)."""
        self.counts, self.first = {}, {}

    def report(self) -> None:
        """Log one warning with the counts of this pass (nothing when nothing was skipped or the same was said)."""
        if not self.counts:
            return
        parts = [f"{n} {kind} (first: {self.first[kind]})" for kind, n in sorted(self.counts.items())]
        message = f"source {self.source!r}: skipped {'; '.join(parts)}; they are not trained on."
        if message != self._reported:
            log.warning(message)
            self._reported = message


def capped(docs: Iterator[str], max_chars: Optional[int]) -> Iterator[str]:
    """Skip whitespace-only documents; stop (truncating the last document) once ``max_chars`` characters were given.

    Args:
        docs: the documents.
        max_chars: the cap on the total characters; ``None`` for no cap.
    """
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
