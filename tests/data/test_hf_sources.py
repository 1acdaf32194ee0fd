"""Hugging Face datasets on disk: ``save_to_disk`` folders (Dataset, DatasetDict), ``data_files`` in every form, and
text columns that are not text (issues 20.4 and 22.6). Built from local data with ``datasets``, offline."""

from __future__ import annotations

import json
import logging
import os

import pytest

from lightning_gpt.data.sources import resolve_source

datasets = pytest.importorskip("datasets")


@pytest.fixture(autouse=True)
def offline_hf(tmp_path, monkeypatch):
    """No network, and a ``datasets`` cache of this test's own."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    datasets.disable_progress_bars()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _docs(source, **kw) -> list[str]:
    return list(resolve_source(source, **kw).documents())


def test_a_save_to_disk_dataset_folder(tmp_path):
    ds = datasets.Dataset.from_dict({"text": ["first doc", "second doc"], "n": [1, 2]})
    ds.save_to_disk(str(tmp_path / "saved"))
    src = resolve_source(f"hf://{tmp_path / 'saved'}")
    assert list(src.documents()) == ["first doc", "second doc"]
    assert src.key() == resolve_source(f"hf://{tmp_path / 'saved'}").key()
    mapped = ds.map(lambda row: {"text": row["text"].upper()})  # what people keep after .map
    mapped.save_to_disk(str(tmp_path / "mapped"))
    assert _docs(f"hf://{tmp_path / 'mapped'}") == ["FIRST DOC", "SECOND DOC"]
    assert resolve_source(f"hf://{tmp_path / 'mapped'}").key() != src.key()


def test_a_single_dataset_folder_refuses_another_split_instead_of_giving_the_same_rows(tmp_path):
    datasets.Dataset.from_dict({"text": ["only"]}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match="one Dataset, which has no splits.*val_fraction"):
        _docs(f"hf://{tmp_path / 'saved'}", split="validation")


def test_a_save_to_disk_datasetdict_folder_by_split(tmp_path):
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["train one", "train two"]}),
            "validation": datasets.Dataset.from_dict({"text": ["val one"]}),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert _docs(f"hf://{tmp_path / 'dd'}") == ["train one", "train two"]
    assert _docs(f"hf://{tmp_path / 'dd'}", split="validation") == ["val one"]
    with pytest.raises(ValueError, match=r"split='test' is not in the DatasetDict .*\['train', 'validation'\]"):
        _docs(f"hf://{tmp_path / 'dd'}", split="test")
    with pytest.raises(ValueError, match="save_to_disk.*no data_files"):
        _docs(f"hf://{tmp_path / 'dd'}", data_files="x.jsonl")


def test_data_files_as_a_path_a_glob_a_list_and_a_split_mapping(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "alpha"}, {"text": "beta"}])
    write_jsonl(tmp_path / "b.jsonl", [{"text": "gamma"}])
    write_jsonl(tmp_path / "v.jsonl", [{"text": "held out"}])
    assert _docs("hf://json", data_files=str(tmp_path / "a.jsonl")) == ["alpha", "beta"]
    assert _docs("hf://json", data_files=str(tmp_path / "[ab].jsonl")) == ["alpha", "beta", "gamma"]
    assert _docs("hf://json", data_files=[str(tmp_path / "b.jsonl"), str(tmp_path / "a.jsonl")]) == [
        "gamma",
        "alpha",
        "beta",
    ]
    mapping = {"train": [str(tmp_path / "a.jsonl")], "validation": str(tmp_path / "v.jsonl")}
    assert _docs("hf://json", data_files=mapping) == ["alpha", "beta"]
    assert _docs("hf://json", data_files=mapping, split="validation") == ["held out"]
    # relative to a dataset folder
    assert _docs(f"hf://{tmp_path}", data_files={"train": "b.jsonl"}) == ["gamma"]


def test_data_files_is_checked(tmp_path):
    with pytest.raises(ValueError, match="data_files must be a path or glob"):
        resolve_source("hf://json", data_files={"train": 3})
    with pytest.raises(ValueError, match="data_files must be a path or glob"):
        resolve_source("hf://json", data_files=[])
    with pytest.raises(ValueError, match="source='corpus.txt' is not one"):
        resolve_source("corpus.txt", data_files="a.jsonl")


def test_a_local_data_file_changed_with_its_time_restored_is_read_again(tmp_path):
    # datasets keys its own cache by the files' modification times only; cp -p / rsync -a restore those.
    f = write_jsonl(tmp_path / "a.jsonl", [{"text": "old words"}])
    first = resolve_source("hf://json", data_files=str(f))
    assert list(first.documents()) == ["old words"]
    key = first.key()
    st = os.stat(f)
    write_jsonl(f, [{"text": "new words"}])  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = resolve_source("hf://json", data_files=str(f))
    assert list(again.documents()) == ["new words"]
    assert again.key() != key


@pytest.mark.parametrize("values", [[1, 2], [[1, 2], [3]], [True, False], [{"a": "b"}, {"a": "c"}]])
def test_a_column_that_is_not_text_is_refused_naming_its_type(tmp_path, values):
    datasets.Dataset.from_dict({"text": values}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match=r"text_column='text' of hf://.* is of type .*, not a string"):
        _docs(f"hf://{tmp_path / 'saved'}")


@pytest.mark.parametrize("streaming", [False, True])
def test_null_and_empty_rows_are_skipped_and_counted(tmp_path, streaming, caplog):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "kept"}, {"text": None}, {"text": ""}, {"text": "also kept"}])
    with caplog.at_level(logging.WARNING):
        assert _docs("hf://json", data_files=str(tmp_path / "a.jsonl"), streaming=streaming) == ["kept", "also kept"]
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "1 rows with null text (first: hf://json [train] row 2)" in message
    assert "1 rows with empty or whitespace-only text (first: hf://json [train] row 3)" in message


@pytest.mark.parametrize("streaming", [False, True])
def test_a_column_of_mixed_types_is_refused(tmp_path, streaming):
    write_jsonl(tmp_path / "a.jsonl", [{"text": "fine"}, {"text": 123}, {"text": [1, 2]}])
    with pytest.raises(ValueError, match=r"text_column='text' of hf://json \[train\] is of type Json"):
        _docs("hf://json", data_files=str(tmp_path / "a.jsonl"), streaming=streaming)


@pytest.mark.parametrize("streaming", [False, True])
def test_files_that_disagree_on_the_column_type_are_one_message(tmp_path, streaming):
    write_jsonl(tmp_path / "a.jsonl", [{"text": 5}])
    write_jsonl(tmp_path / "b.jsonl", [{"text": "words"}])
    with pytest.raises(ValueError, match=r"hf://json \[train\]"):
        _docs("hf://json", data_files=[str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")], streaming=streaming)


@pytest.mark.parametrize("streaming", [False, True])
def test_prepare_shards_read_the_rows_as_the_source_does(tmp_path, streaming, caplog):
    from lightning_gpt.data.shards import plan_shards, read_shard

    write_jsonl(tmp_path / "a.jsonl", [{"text": "kept"}, {"text": None}, {"text": "also kept"}])
    write_jsonl(tmp_path / "b.jsonl", [{"text": "b kept"}, {"text": " "}])
    source = resolve_source(
        "hf://json", data_files=[str(tmp_path / f) for f in ("a.jsonl", "b.jsonl")], streaming=streaming
    )
    with caplog.at_level(logging.WARNING):
        docs = [doc for shard in plan_shards(source) for doc in read_shard(shard, source)]
    assert docs == list(source.documents()) == ["kept", "also kept", "b kept"]  # and the skips counted (they were not)
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "1 rows with null text (first: hf://json [train] " + ("shard 0, row 2" if streaming else "row 2") in message
