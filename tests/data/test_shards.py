"""The shard reader (``prepare``'s, and the tokenizer sample's) is as strict as the plain readers (issue 22.6).

For every hostile file, the documents read shard by shard (small shards, so a file is cut into several) equal the
plain source's documents, or both refuse the file with the same ``file:row`` message.
"""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lightning_gpt.data.shards import plan_shards, read_shard, sample_documents
from lightning_gpt.data.sources import resolve_source


def _by_shards(source, shard_bytes: int = 64) -> list[str]:
    return [doc for shard in plan_shards(source, shard_bytes) for doc in read_shard(shard, source)]


def _plain(source) -> list[str]:
    return list(source.documents())


def _both_refuse(source, pattern: str) -> None:
    for read in (_plain, _by_shards):
        with pytest.raises(ValueError, match=pattern):
            read(source)


def _jsonl(path, rows, prefix: bytes = b"") -> str:
    path.write_bytes(prefix + b"".join(json.dumps(r).encode() + b"\n" for r in rows))
    return str(path)


FILLER = [{"text": f"row {i} with some words"} for i in range(6)]


@pytest.mark.parametrize(
    ("value", "kind"),
    [(123, "int"), (0, "int"), (1.5, "float"), (True, "bool"), (["a", "b"], "list"), ({"t": "x"}, "dict")],
)
def test_a_jsonl_value_that_is_not_text_is_refused_by_row(tmp_path, value, kind):
    path = _jsonl(tmp_path / "d.jsonl", [*FILLER, {"text": value}, *FILLER])
    _both_refuse(resolve_source(path), rf"d\.jsonl:7: text_column='text' holds a {kind} ")


def test_jsonl_nulls_and_empty_text_are_skipped_and_counted_a_bom_is_dropped(tmp_path, caplog):
    rows = [*FILLER, {"text": None}, {"text": ""}, {"text": "  "}, *FILLER]
    source = resolve_source(_jsonl(tmp_path / "d.jsonl", rows, prefix=b"\xef\xbb\xbf"))
    with caplog.at_level(logging.WARNING):
        docs = _by_shards(source)
        assert docs == _plain(source)
    assert docs[0] == "row 0 with some words" and len(docs) == 12  # no BOM kept, the three skipped
    # A shard that does not start the file names a skipped row by its byte offset: a line number would need a scan
    # from the file's start in every shard (a 40 GB file read once per shard); the plain path counts lines anyway.
    null_at = len(b"\xef\xbb\xbf") + sum(len(json.dumps(r)) + 1 for r in FILLER)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert f"1 rows with null text (first: {source.files()[0]} (line at byte {null_at}))" in messages
    assert f"1 rows with null text (first: {source.files()[0]}:7)" in messages


def test_a_jsonl_lone_surrogate_and_a_missing_column_are_refused(tmp_path):
    source = resolve_source(_jsonl(tmp_path / "s.jsonl", [*FILLER, {"text": "a\ud800b"}]))
    _both_refuse(source, r"s\.jsonl:7: .* lone UTF-16 surrogate")
    source = resolve_source(_jsonl(tmp_path / "m.jsonl", [*FILLER, {"body": "x"}]))
    _both_refuse(source, r"m\.jsonl:7: text_column='text' is not in this row")


def test_a_jsonl_line_past_the_limit_is_refused_without_reading_it_whole(tmp_path):
    from lightning_gpt.data.sources.readers import MAX_JSONL_LINE_BYTES

    path = tmp_path / "big.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"text": "ok"}\n{"text": "')
        f.write(b"a" * (MAX_JSONL_LINE_BYTES + 10))
        f.write(b'"}\n')
    source = resolve_source(str(path))
    for read in (_plain, lambda s: _by_shards(s, shard_bytes=1 << 30)):
        with pytest.raises(ValueError, match=r"big\.jsonl:2: the line is longer than 64 MiB"):
            read(source)


def test_txt_byte_order_mark_and_windows_line_ends_read_as_the_plain_reader_does(tmp_path):
    path = tmp_path / "w.txt"
    path.write_bytes(b"\xef\xbb\xbf" + b"".join(b"line %d of a windows file\r\n" % i for i in range(20)) + b"end\r")
    source = resolve_source(str(path))
    assert "".join(_by_shards(source)) == "".join(_plain(source))
    assert "".join(_by_shards(source)).startswith("line 0 of") and "\r" not in "".join(_by_shards(source))
    sample = "".join(sample_documents(source, 10**6, seed=0))
    assert sample == "".join(_plain(source))


def test_a_txt_file_holding_a_nul_character_is_refused(tmp_path):
    path = tmp_path / "u16.txt"
    path.write_bytes("some text\nmore text\n".encode("utf-16-le") * 4)
    source = resolve_source(str(path))
    _both_refuse(source, r"u16\.txt:1: holds a NUL character")


def test_parquet_values_that_are_not_text_nulls_and_a_missing_column(tmp_path):
    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [1, 2, 3]}), ints, row_group_size=1)
    source = resolve_source(str(ints))
    _both_refuse(source, r"ints\.parquet:row 1: text_column='text' is a Parquet column of type")
    mixed = tmp_path / "mixed.parquet"
    pq.write_table(pa.table({"text": ["a b", None, "", "c d", "e f"]}), mixed, row_group_size=2)
    source = resolve_source(str(mixed))
    assert _by_shards(source) == _plain(source) == ["a b", "c d", "e f"]
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"body": ["a"]}), other)
    source = resolve_source(str(other))
    _both_refuse(source, r"text_column='text' is not in .*other\.parquet")


def test_a_parquet_row_is_named_by_its_place_in_the_file_not_in_its_row_group(tmp_path):
    path = tmp_path / "late.parquet"
    pq.write_table(pa.table({"text": pa.array([["x"] if i == 4 else None for i in range(6)])}), path, row_group_size=2)
    source = resolve_source(str(path))
    _both_refuse(source, r"late\.parquet:row 5: ")
