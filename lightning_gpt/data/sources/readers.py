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
import re
from typing import Any, Callable, Iterator, Optional, Union

from lightning_gpt.data.sources.base import Skips

__all__ = [
    "TXT_PIECE_CHARS",
    "MAX_JSONL_LINE_BYTES",
    "read_txt",
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
                line = lineno + piece.count("\n", 0, piece.index("\0"))
                raise ValueError(
                    f"{path}:{line}: holds a NUL character, so it is not UTF-8 text (a binary file, or text saved as "
                    f"UTF-16/UTF-32?). Convert it, e.g. iconv -f utf-16 -t utf-8 {path!r} > fixed.txt, or remove it "
                    "from the source."
                )
            lineno += piece.count("\n")
            if piece and not piece.isspace():
                nonblank = True
                yield piece
    if not nonblank:
        skips.add("empty or whitespace-only files", path)


def text_value(value: Any, where: str, text_column: str, skips: Skips) -> Optional[str]:
    """Check the ``text_column`` value of one row: a string with some text is returned; a null, an empty or a
    whitespace-only string is counted in ``skips`` and ``None`` is returned.

    Args:
        value: the row's value.
        where: ``file:row`` (or ``source row N``), for messages.
        text_column: the column's name, for messages.
        skips: where skipped rows are counted.

    Raises:
        ValueError: the value is not a string (a number, bool, list, dict...), or holds a lone surrogate.
    """
    if isinstance(value, str):
        if not value or value.isspace():
            skips.add("rows with empty or whitespace-only text", where)
            return None
        if _SURROGATE.search(value):
            raise ValueError(
                f"{where}: {text_column}={_short(value)} holds a lone UTF-16 surrogate (an escape like \\ud800 "
                "without its pair), which is not valid Unicode text. Fix the row or leave it out of the source."
            )
        return value
    if value is None:
        skips.add("rows with null text", where)
        return None
    raise ValueError(
        f"{where}: text_column={text_column!r} holds a {type(value).__name__} ({_short(value)}), not a string; only "
        "text is trained on, and turning it into text would train on something the data does not say. Set "
        "text_column to the field that holds the text, or fix the row."
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def jsonl_row_value(line: str, text_column: str, where: Union[str, Callable[[], str]]) -> Any:
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
        return where if isinstance(where, str) else where()

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


def read_jsonl(path: str, text_column: str, skips: Skips) -> Iterator[str]:
    """The ``text_column`` strings of a ``.jsonl`` file, one per line (blank lines ignored).

    Args:
        path: the file.
        text_column: the field holding the text.
        skips: where null and empty values are counted.

    Raises:
        ValueError: a line is not UTF-8, not JSON, not an object, longer than ``MAX_JSONL_LINE_BYTES``, lacks
            ``text_column``, or its value is not a string (each naming ``file:line``).
    """
    with open(path, "rb") as f:
        offset = 0
        lineno = 0
        while raw := f.readline(MAX_JSONL_LINE_BYTES + 1):
            lineno += 1
            if len(raw) > MAX_JSONL_LINE_BYTES:
                raise ValueError(
                    f"{path}:{lineno}: the line is longer than {MAX_JSONL_LINE_BYTES >> 20} MiB; a JSONL line holds "
                    "one document. Split the document over several lines (rows)."
                )
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw, offset = raw[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8)
            line = decode_utf8_line(raw, path, lineno, offset)
            offset += len(raw)
            if not line.strip():
                continue
            value = jsonl_row_value(line, text_column, f"{path}:{lineno}")
            text = text_value(value, f"{path}:{lineno}", text_column, skips)
            if text is not None:
                yield text


def read_parquet(path: str, text_column: str, skips: Skips) -> Iterator[str]:
    """The ``text_column`` strings of a ``.parquet`` file, one per row (read 1024 rows at a time); the arguments
    are ``read_jsonl``'s, ``text_column`` naming a column.

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
    row = 0
    for batch in pf.iter_batches(columns=[text_column], batch_size=1024):
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
