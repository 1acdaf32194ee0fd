"""Reading local files into documents: ``.txt`` in bounded pieces, ``.jsonl`` rows, ``.parquet`` rows.

Every reader is strict about what becomes training text:

- text is UTF-8; a bad byte is an error naming ``file:line`` and its byte offset (no silent replacement);
- a ``.txt`` file is read as Python's text mode reads it: a UTF-8 byte-order mark at the start is dropped and line
  ends are universal (``\\r\\n`` and a lone ``\\r`` become ``\\n``), so Windows and Unix copies of a text give the
  same tokens; a NUL character is an error (it means a binary file, or UTF-16/UTF-32 text);
- a ``.jsonl`` line is one JSON object (a byte-order mark before the first is dropped) of at most
  ``MAX_JSONL_LINE_BYTES``;
- the ``text_column`` value of a row must be a string: a number, bool, list or dict is an error naming ``file:row``
  (turning ``123`` into ``"123"`` or a list into its ``repr`` would train on text that is not in the data); a null,
  an empty or a whitespace-only string is skipped and counted (one warning per pass names how many and where the
  first was), as is an empty file.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from typing import Any, Callable, Iterator, Optional, Union

from lightning_gpt.data.sources.base import Skips

__all__ = [
    "TXT_PIECE_CHARS",
    "MAX_JSONL_LINE_BYTES",
    "read_txt",
    "read_txt_range",
    "read_jsonl",
    "read_parquet",
    "text_value",
    "decode_utf8_line",
]

# A .txt file is cut into documents of at most this many characters, at the last paragraph break (a blank line) in
# the piece, else at the last line break, else (one giant line) anywhere: about 1 MiB of text in memory at a time.
# Every document ends with EOS in the token stream, so a file up to this size is one document, as it always was.
TXT_PIECE_CHARS = 1 << 20
MAX_JSONL_LINE_BYTES = 64 << 20  # one JSON line: a whole book is ~5 MB
_SURROGATE = re.compile("[\ud800-\udfff]")
Where = Union[str, Callable[[], str]]  # ``file:row`` for a message, or a function giving it (called on that path only)


def _at(where: Where) -> str:
    return where if isinstance(where, str) else where()


def line_of(path: str, offset: int) -> int:
    """The 1-based line number of byte ``offset`` of ``path`` (a scan: for messages, or once per byte range)."""
    count, pos = 1, 0
    with open(path, "rb") as f:
        while pos < offset:
            block = f.read(min(1 << 20, offset - pos))
            if not block:
                break
            count += block.count(b"\n")
            pos += len(block)
    return count


def _nul_error(path: str, line: int) -> ValueError:
    return ValueError(
        f"{path}:{line}: holds a NUL character, so it is not UTF-8 text (a binary file, or text saved as "
        f"UTF-16/UTF-32?). Convert it, e.g. iconv -f utf-16 -t utf-8 {path!r} > fixed.txt, or remove it "
        "from the source."
    )


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

    Raises:
        ValueError: ``raw`` is not valid UTF-8.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _utf8_error(path, lineno, offset, err) from None


def _locate_bad_utf8(path: str) -> ValueError:
    """The error for the first invalid UTF-8 byte of ``path`` (read again in binary, 1 MiB at a time)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lineno = 0, 1
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 20)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as err:
                # err.object is the decoder's pending bytes + this block; its start is where those begin.
                start = offset - (len(err.object) - len(block))
                lineno += err.object.count(b"\n", 0, err.start)
                return _utf8_error(path, lineno, start, err)
            if not block:
                return ValueError(f"{path}: not valid UTF-8. Convert the file to UTF-8.")
            lineno += block.count(b"\n")
            offset += len(block)


def _cut(buf: str, size: int) -> int:
    """Where to end a document in ``buf`` (longer than ``size``): after the last blank line, else after the last line
    break, within the first ``size`` characters; else at ``size``."""
    cut = buf.rfind("\n\n", 0, size)
    if cut > 0:
        return cut + 2
    cut = buf.rfind("\n", 0, size)
    return cut + 1 if cut > 0 else size


def read_txt(path: str, skips: Skips, piece_chars: int = TXT_PIECE_CHARS) -> Iterator[str]:
    """The documents of a ``.txt`` file: pieces of at most ``piece_chars`` characters cut at line breaks (see
    ``TXT_PIECE_CHARS``); joined, they are the file's text exactly. At most about ``2 * piece_chars`` characters are
    held at a time.

    Args:
        path: the file.
        skips: where an empty or whitespace-only file is counted.
        piece_chars: the largest document, in characters.

    Raises:
        ValueError: the file is not UTF-8 (``file:line`` and byte offset named) or holds a NUL character.
    """
    buf, lineno, nonblank = "", 1, False
    # utf-8-sig drops a BOM at the start only; newline=None is universal newlines; the decoder keeps a multi-byte
    # character that straddles two reads whole.
    with open(path, encoding="utf-8-sig", errors="strict", newline=None) as f:
        eof = False
        while not eof or buf:
            if not eof and len(buf) <= piece_chars:
                try:
                    more = f.read(piece_chars)
                except UnicodeDecodeError:
                    raise _locate_bad_utf8(path) from None
                eof = not more
                buf += more
                continue
            cut = _cut(buf, piece_chars) if len(buf) > piece_chars else len(buf)
            piece, buf = buf[:cut], buf[cut:]
            if "\0" in piece:
                raise _nul_error(path, lineno + piece.count("\n", 0, piece.index("\0")))
            lineno += piece.count("\n")
            if piece and not piece.isspace():
                nonblank = True
                yield piece
    if not nonblank:
        skips.add("empty or whitespace-only files", path)


def text_value(
    value: Any, where: Where, text_column: str, skips: Skips, skip_where: Optional[Where] = None
) -> Optional[str]:
    """Check the ``text_column`` value of one row: a string with some text is returned; a null, an empty or a
    whitespace-only string is counted in ``skips`` and ``None`` is returned.

    Args:
        value: the row's value.
        where: ``file:row`` (or ``source row N``), for messages, or a function giving it.
        text_column: the column's name, for messages.
        skips: where skipped rows are counted.
        skip_where: where a skipped row is, for the skip count's "first:" (``None``: ``where``).

    Raises:
        ValueError: the value is not a string (a number, bool, list, dict...), or holds a lone surrogate.
    """
    if isinstance(value, str):
        if not value or value.isspace():
            skips.add("rows with empty or whitespace-only text", where if skip_where is None else skip_where)
            return None
        if _SURROGATE.search(value):
            raise ValueError(
                f"{_at(where)}: {text_column}={_short(value)} holds a lone UTF-16 surrogate (an escape like \\ud800 "
                "without its pair), which is not valid Unicode text. Fix the row or leave it out of the source."
            )
        return value
    if value is None:
        skips.add("rows with null text", where if skip_where is None else skip_where)
        return None
    raise ValueError(
        f"{_at(where)}: text_column={text_column!r} holds a {type(value).__name__} ({_short(value)}), not a string; "
        "only text is trained on, and turning it into text would train on something the data does not say. Set "
        "text_column to the field that holds the text, or fix the row."
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def jsonl_row_value(line: str, text_column: str, where: Where) -> Any:
    """The value under ``text_column`` of one JSONL line (not yet checked to be text).

    Args:
        line: one non-blank line of a ``.jsonl`` file, decoded.
        text_column: the field holding the text.
        where: ``file:line`` for a message, or a function giving it (called only on the error path: counting lines
            may cost a scan).

    Raises:
        ValueError: the line is not JSON, not an object, or lacks ``text_column`` (naming ``file:line``).
    """

    def at() -> str:
        return _at(where)

    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{at()}: not valid JSON ({err}); each line must be one object.") from None
    if not isinstance(row, dict):
        raise ValueError(
            f"{at()}: holds a JSON {type(row).__name__}, not an object; each line must be one "
            f'object with the text under text_column={text_column!r}, e.g. {{"text": "..."}}.'
        )
    if text_column not in row:
        raise ValueError(
            f"{at()}: text_column={text_column!r} is not in this row; available columns: "
            f"{sorted(row)}. Set text_column to the field that holds the text, or fix the row."
        )
    return row[text_column]


class _Lines:
    """The lines of ``path`` that start in the byte range ``[start, end)`` (the line that straddles ``start`` belongs
    to the range before; ``end=None``: to the end of the file), with their byte offsets and, on demand, line numbers.

    A line longer than ``max_bytes`` is an error before it is read whole.
    """

    def __init__(self, path: str, start: int = 0, end: Optional[int] = None, max_bytes: int = -1) -> None:
        self.path, self.start, self.end, self.max_bytes = path, start, end, max_bytes
        self.count = 0  # lines given so far
        self.begin = start  # the byte offset of the range's first line (set when the reading starts)
        self.pos = start  # the byte offset of the last line given
        self._first: Optional[int] = None  # the line number of the range's first line, found when a message needs it

    def lineno(self) -> int:
        """The 1-based line number (in the file) of the last line given."""
        if self._first is None:
            self._first = 1 if self.begin == 0 else line_of(self.path, self.begin)
        return self._first + self.count - 1

    def where(self) -> str:
        return f"{self.path}:{self.lineno()}"

    def place(self) -> str:
        """Where the last line is, without a scan: ``file:line`` when the line number is known (the range starts the
        file, or an error already counted it), else ``file (line at byte N)``. For counted skips, which every shard
        of a large file may report: a scan to the range's start for each would read the file once per shard."""
        if self.begin == 0 or self._first is not None:
            return self.where()
        return f"{self.path} (line at byte {self.pos})"

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        with open(self.path, "rb") as f:
            if self.start > 0:
                f.seek(self.start - 1)
                if f.read(1) != b"\n":
                    f.readline()  # the line that straddles ``start`` belongs to the previous range
            self.begin = pos = f.tell()
            limit = self.max_bytes + 1 if self.max_bytes > 0 else -1
            while self.end is None or pos < self.end:
                raw = f.readline(limit)
                if not raw:
                    return
                self.count += 1
                if 0 < self.max_bytes < len(raw):
                    raise ValueError(
                        f"{self.where()}: the line is longer than {self.max_bytes >> 20} MiB; a JSONL line holds one "
                        "document. Split the document over several lines (rows)."
                    )
                self.pos = pos
                if pos == 0 and raw.startswith(codecs.BOM_UTF8):  # a byte-order mark starts the file: dropped
                    yield len(codecs.BOM_UTF8), raw[len(codecs.BOM_UTF8) :]
                else:
                    yield pos, raw
                pos += len(raw)


def read_jsonl(path: str, text_column: str, skips: Skips, start: int = 0, end: Optional[int] = None) -> Iterator[str]:
    """The ``text_column`` strings of a ``.jsonl`` file, one per line (blank lines ignored).

    Args:
        path: the file.
        text_column: the field holding the text.
        skips: where null and empty values are counted.
        start: read the lines that start at or after this byte offset (the part of the file a shard reads) ...
        end: ... and before this one (``None``: the end of the file).

    Raises:
        ValueError: a line is not UTF-8, not JSON, not an object, longer than ``MAX_JSONL_LINE_BYTES``, lacks
            ``text_column``, or its value is not a string (each naming ``file:line``).
    """
    lines = _Lines(path, start, end, MAX_JSONL_LINE_BYTES)
    for offset, raw in lines:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise _utf8_error(path, lines.lineno(), offset, err) from None
        if not line.strip():
            continue
        value = jsonl_row_value(line, text_column, lines.where)
        text = text_value(value, lines.where, text_column, skips, skip_where=lines.place)
        if text is not None:
            yield text


def read_txt_range(path: str, start: int, end: int, skips: Skips) -> str:
    """The text of the lines of a ``.txt`` file that start in the byte range ``[start, end)``, read as ``read_txt``
    reads the whole file (a byte-order mark at the file's start dropped, universal line ends, UTF-8 and no NUL):
    joined in order, the ranges of a file give ``read_txt``'s text exactly.

    Args:
        path: the file.
        start: the first byte of the range (a line starting in it is read whole).
        end: the byte after the range.
        skips: where a file that is empty or whitespace only is counted (when the range is the whole file).

    Raises:
        ValueError: the range is not UTF-8 or holds a NUL character (naming ``file:line``).
    """
    lines = _Lines(path, start, end)
    parts = []
    for offset, raw in lines:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise _utf8_error(path, lines.lineno(), offset, err) from None
        if "\0" in line:
            raise _nul_error(path, lines.lineno())
        parts.append(line.replace("\r\n", "\n").replace("\r", "\n") if "\r" in line else line)
    text = "".join(parts)
    if start == 0 and (not text or text.isspace()) and os.path.getsize(path) <= end:
        skips.add("empty or whitespace-only files", path)
    return text


def read_parquet(path: str, text_column: str, skips: Skips, row_group: Optional[int] = None) -> Iterator[str]:
    """The ``text_column`` strings of a ``.parquet`` file, one per row (read 1024 rows at a time); the arguments
    are ``read_jsonl``'s, ``text_column`` naming a column; ``row_group`` reads that row group alone (a shard), its
    rows still named by their place in the file.

    Raises:
        ValueError: the file is not Parquet, lacks ``text_column``, or the column is not of a string type (naming
            the file, the type and the first row).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{path}: not a readable Parquet file ({err}). Fix or remove the file.") from None
    schema = pf.schema_arrow
    if text_column not in schema.names:
        raise ValueError(
            f"text_column={text_column!r} is not in {path!r}; available columns: {sorted(schema.names)}. Set "
            "text_column to the field that holds the text."
        )
    kind = schema.field(text_column).type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    textual = pa.types.is_string(kind) or pa.types.is_large_string(kind) or str(kind) == "string_view"
    groups = None if row_group is None else [row_group]
    row = 0 if row_group is None else sum(pf.metadata.row_group(i).num_rows for i in range(row_group))
    for batch in pf.iter_batches(columns=[text_column], batch_size=1024, row_groups=groups):
        for value in batch.column(0).to_pylist():
            row += 1
            if not textual and value is not None:
                raise ValueError(
                    f"{path}:row {row}: text_column={text_column!r} is a Parquet column of type {kind}, not a "
                    f"string (this row: {_short(value)}); only text is trained on. Set text_column to the column "
                    "that holds the text."
                )
            text = text_value(value, f"{path}:row {row}", text_column, skips)
            if text is not None:
                yield text
