"""Text sources: the embedded stdlib corpus, local txt/jsonl/parquet files, Hugging Face datasets (local only)."""

import json
import os

import pytest

from lightning_gpt.data.sources import HFSource, LocalSource, StdlibSource, resolve_source


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), str(path))


def test_stdlib_source_sorted_capped_and_stable():
    src = resolve_source("python-stdlib", max_chars=20_000)
    assert isinstance(src, StdlibSource)
    files = src.files()
    assert files == sorted(files) and len(files) > 100
    assert not any(part in ("site-packages", "test", "tests") for f in files for part in f.split("/"))
    docs = list(src.documents())
    assert sum(map(len, docs)) == 20_000
    assert "import" in "".join(docs) or "def " in "".join(docs)
    again = resolve_source("python-stdlib", max_chars=20_000)
    assert list(again.documents()) == docs and again.key() == src.key()
    assert resolve_source("python-stdlib", max_chars=30_000).key() != src.key()
    assert resolve_source("python-stdlib").max_chars == 5_000_000


def test_local_txt_file_dir_and_glob(tmp_path):
    (tmp_path / "b.txt").write_text("second doc")
    (tmp_path / "a.txt").write_text("first doc")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("   \n")  # whitespace-only: skipped
    single = resolve_source(str(tmp_path / "a.txt"))
    assert isinstance(single, LocalSource) and list(single.documents()) == ["first doc"]
    assert list(resolve_source(str(tmp_path)).documents()) == ["first doc", "second doc"]
    assert list(resolve_source(str(tmp_path / "*.txt")).documents()) == ["first doc", "second doc"]
    assert list(resolve_source(str(tmp_path / "**" / "*.txt")).documents()) == ["first doc", "second doc"]


def test_local_identity_changes_when_file_changes(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("one")
    k1 = resolve_source(str(f)).key()
    f.write_text("one two")
    assert resolve_source(str(f)).key() != k1


def test_local_jsonl_and_parquet_with_text_column(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"body": "row one", "id": 1}, {"body": "row two", "id": 2}])
    write_parquet(tmp_path / "b.parquet", [{"body": "pq one"}, {"body": "pq two"}])
    src = resolve_source(str(tmp_path), text_column="body")
    assert list(src.documents()) == ["row one", "row two", "pq one", "pq two"]
    assert list(resolve_source(str(tmp_path), text_column="body", max_chars=10).documents()) == ["row one", "row"]


def test_missing_text_column_errors(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"body": "x"}])
    with pytest.raises(ValueError, match=r"text_column='text' is not in .*available columns: \['body'\]"):
        list(resolve_source(str(tmp_path / "a.jsonl")).documents())
    write_parquet(tmp_path / "b.parquet", [{"content": "x"}])
    with pytest.raises(ValueError, match=r"text_column='text' .*\['content'\]"):
        list(resolve_source(str(tmp_path / "b.parquet")).documents())


def test_missing_path_and_bad_suffix_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        resolve_source(str(tmp_path / "missing.txt")).files()
    with pytest.raises(FileNotFoundError, match="matched no"):
        resolve_source(str(tmp_path / "*.txt")).files()
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(ValueError, match="unsupported file type 'data.csv'"):
        resolve_source(str(tmp_path / "data.csv")).files()
    with pytest.raises(ValueError, match="non-empty string"):
        resolve_source("  ")
    with pytest.raises(ValueError, match="max_chars"):
        resolve_source("python-stdlib", max_chars=0)


@pytest.mark.parametrize("streaming", [False, True])
def test_hf_source_on_local_dataset(tmp_path, streaming):
    data = tmp_path / "ds"
    data.mkdir()
    write_jsonl(data / "train.jsonl", [{"text": f"doc {i}", "n": i} for i in range(5)])
    src = resolve_source(f"hf://{data}", streaming=streaming)
    assert isinstance(src, HFSource)
    assert list(src.documents()) == [f"doc {i}" for i in range(5)]
    ident = src.identity()
    assert ident["streaming"] is streaming and ("fingerprint" in ident) is (not streaming)
    with pytest.raises(ValueError, match=r"text_column='body' is not a column .*\['n', 'text'\]"):
        list(resolve_source(f"hf://{data}", text_column="body", streaming=streaming).documents())


def test_hf_source_builder_with_data_files(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", [{"text": "alpha"}, {"text": "beta"}])
    src = HFSource("json", data_files=str(tmp_path / "x.jsonl"))
    assert list(src.documents()) == ["alpha", "beta"]


def test_hf_missing_dataset_errors(tmp_path):
    with pytest.raises((FileNotFoundError, ValueError), match="hf://"):
        list(resolve_source(f"hf://{tmp_path / 'nothing-here'}").documents())
    with pytest.raises(ValueError, match="needs a dataset id"):
        resolve_source("hf://")


def test_sources_never_need_shared_data():
    # The package resolves its default source without the test corpus.
    assert os.path.isdir(StdlibSource().root)


def test_jsonl_bom_long_lines_and_parquet_edge_cases(tmp_path, monkeypatch, caplog):
    from lightning_gpt.data.sources import readers

    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "after a BOM"}).encode() + b"\r\n")  # Notepad's UTF-8
    assert list(resolve_source(str(bom)).documents()) == ["after a BOM"]
    monkeypatch.setattr(readers, "MAX_JSONL_LINE_BYTES", 64)
    write_jsonl(tmp_path / "long.jsonl", [{"text": "short"}, {"text": "x" * 100}])
    with pytest.raises(ValueError, match=r"long\.jsonl:2: the line is longer than"):
        list(resolve_source(str(tmp_path / "long.jsonl")).documents())
    (tmp_path / "fake.parquet").write_text("not parquet at all")
    with pytest.raises(ValueError, match=r"fake\.parquet: not a readable Parquet file"):
        list(resolve_source(str(tmp_path / "fake.parquet")).documents())
    import pyarrow as pa
    import pyarrow.parquet as pq

    words = pa.array(["one", "two", "one"]).dictionary_encode()  # a dictionary-encoded string column is text
    pq.write_table(pa.table({"text": words}), str(tmp_path / "dict.parquet"))
    assert list(resolve_source(str(tmp_path / "dict.parquet")).documents()) == ["one", "two", "one"]
    pq.write_table(pa.table({"text": pa.nulls(3)}), str(tmp_path / "nulls.parquet"))  # a column of type null
    with caplog.at_level("WARNING"):
        assert list(resolve_source(str(tmp_path / "nulls.parquet")).documents()) == []
    assert "3 rows with null text" in caplog.text
