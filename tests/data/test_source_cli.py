"""Sources through the ``lightning-gpt`` command: no silent wrong data (issue 22.6), Hugging Face folders on disk and
``--data.data_files`` (issue 20.4). Each wrong input is one paragraph and exit 2 with nothing half-written; each
left-out input is counted in a warning; what was trained on is checked in the token cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import WORDS, assert_no_partial_files, user_error


def _text(seed: int, n_words: int = 60) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(n_words)) + "\n"


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return path


def trained_chars(cache: Path) -> list[int]:
    """``n_chars`` of every token cache entry written (one per source)."""
    return sorted(json.loads(m.read_text())["n_chars"] for m in cache.glob("tokens/*/meta.json"))


def fit(cli, run_yaml, source, *extra):
    # No validation hold-out: the one token cache entry is the whole of what the source contributed.
    overrides = {"data.source": str(source), "trainer.max_steps": 1, "data.val_fraction": 0}
    return cli("fit", "--config", run_yaml(**overrides), *extra)


@pytest.fixture
def offline_hf(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    datasets.disable_progress_bars()
    return datasets


# ------------------------------------------------------------------------------------------ fields that are not text


@pytest.mark.parametrize("value", [123, 0, True, [1, 2], {"a": "dict"}])
def test_a_jsonl_text_field_that_is_not_a_string_is_refused_naming_file_and_line(cli, tmp_path, run_yaml, value):
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"text": _text(i)} for i in range(5)] + [{"text": value}])
    message = user_error(fit(cli, run_yaml, rows), f"{rows}:6", "text_column='text'", "not a string")
    assert type(value).__name__ in message
    assert not (tmp_path / "cache" / "tokens").exists() or not trained_chars(tmp_path / "cache")
    assert_no_partial_files(tmp_path)


@pytest.mark.parametrize("values", [[1, 2, 3], [[1], [2], [3]]])
def test_a_parquet_column_that_is_not_text_is_refused_naming_file_row_and_type(cli, tmp_path, run_yaml, values):
    table = write_parquet(tmp_path / "rows.parquet", [{"text": v} for v in values])
    user_error(fit(cli, run_yaml, table), f"{table}:row 1", "is a Parquet column of type", "not a string")
    assert_no_partial_files(tmp_path)


def test_a_lone_surrogate_in_jsonl_is_refused(cli, tmp_path, run_yaml):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"text": _text(0)}) + "\n" + '{"text": "broken \\ud800 pair"}\n')
    user_error(fit(cli, run_yaml, rows), f"{rows}:2", "surrogate")


def test_null_and_empty_rows_are_skipped_and_counted(cli, tmp_path, run_yaml, caplog):
    data = tmp_path / "data"
    data.mkdir()
    good = [_text(i) for i in range(6)]
    write_jsonl(data / "a.jsonl", [{"text": good[0]}, {"text": None}, {"text": good[1]}, {"text": "  "}])
    write_parquet(data / "b.parquet", [{"text": good[2]}, {"text": None}, {"text": good[3]}, {"text": ""}])
    result = fit(cli, run_yaml, data)
    assert result.code == 0, result
    # (the command prints these warnings on stderr; in this process, pytest's log capture takes them)
    assert "skipped" in caplog.text and "2 rows with null text" in caplog.text
    assert f"{data / 'a.jsonl'}:2" in caplog.text and "2 rows with empty or whitespace-only text" in caplog.text
    assert trained_chars(tmp_path / "cache") == [sum(map(len, good[:4]))]


def test_a_hugging_face_column_that_is_not_text_is_refused(cli, tmp_path, run_yaml, offline_hf):
    offline_hf.Dataset.from_dict({"text": list(range(50))}).save_to_disk(str(tmp_path / "saved"))
    user_error(fit(cli, run_yaml, f"hf://{tmp_path / 'saved'}"), "text_column='text'", "int64", "not a string")


# ------------------------------------------------------------------------------------------- how files are found


def test_hidden_files_backups_lock_files_and_other_types_in_a_folder_are_not_trained_on(
    cli, tmp_path, run_yaml, caplog
):
    data = tmp_path / "data"
    (data / ".ipynb_checkpoints").mkdir(parents=True)
    good = _text(1) * 3
    (data / "good.txt").write_text(good)
    (data / ".hidden.txt").write_text(_text(2))
    (data / "good.txt~").write_text(_text(3))
    (data / ".ipynb_checkpoints" / "good-checkpoint.txt").write_text(good)
    os.symlink("user@host.4242:1700000000", data / ".#good.txt")  # Emacs' lock file: a dangling link
    (data / "README.md").write_text("# about this data")
    (data / "empty.txt").write_text("")
    result = fit(cli, run_yaml, data)
    assert result.code == 0, result
    assert trained_chars(tmp_path / "cache") == [len(good)]
    assert "left out 1 file(s) that are not .txt/.jsonl/.parquet (README.md)" in caplog.text
    assert f"1 empty or whitespace-only files (first: {data / 'empty.txt'})" in caplog.text


def test_links_and_overlapping_patterns_read_each_real_file_once(cli, tmp_path, run_yaml, caplog):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    one, two = _text(1) * 2, _text(2) * 2
    (data / "one.txt").write_text(one)
    (data / "sub" / "two.txt").write_text(two)
    os.symlink("one.txt", data / "alias.txt")
    os.link(data / "one.txt", data / "hard.txt")
    os.symlink("..", data / "sub" / "up")  # a cycle
    result = fit(cli, run_yaml, data / "**" / "*.txt")
    assert result.code == 0, result
    assert trained_chars(tmp_path / "cache") == [len(one) + len(two)]
    assert "read once" in caplog.text


def test_a_compressed_copy_in_a_folder_is_an_error_not_silently_left_out(cli, tmp_path, run_yaml):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text(_text(1) * 3)
    (data / "b.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00")
    user_error(fit(cli, run_yaml, data), "b.jsonl.gz", "compressed", "gunzip")
    assert_no_partial_files(tmp_path)


def test_a_broken_link_in_a_folder_is_named(cli, tmp_path, run_yaml):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text(_text(1) * 3)
    os.symlink(tmp_path / "moved-away.txt", data / "b.txt")
    user_error(fit(cli, run_yaml, data), "b.txt", "broken symbolic link", "moved-away.txt")


# -------------------------------------------------------------------------------------------------- how text is decoded


def test_a_bom_and_crlf_line_ends_are_not_trained_on(cli, tmp_path, run_yaml):
    text = _text(1) * 3
    windows = tmp_path / "windows.txt"
    windows.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    result = fit(cli, run_yaml, windows)
    assert result.code == 0, result
    assert trained_chars(tmp_path / "cache") == [len(text)]


def test_utf16_text_is_refused_not_trained_on_as_nul_bytes(cli, tmp_path, run_yaml):
    wide = tmp_path / "wide.txt"
    wide.write_bytes((_text(1) * 3).encode("utf-16-le"))  # no BOM: valid UTF-8, a NUL after every letter
    user_error(fit(cli, run_yaml, wide), f"{wide}:1", "NUL", "UTF-16")
    assert_no_partial_files(tmp_path)


# ------------------------------------------------------------------------------------------- Hugging Face on disk


def test_a_save_to_disk_dataset_folder_trains(cli, tmp_path, run_yaml, offline_hf):
    texts = [_text(i) for i in range(8)]
    ds = offline_hf.Dataset.from_dict({"text": texts, "n": list(range(8))})
    ds.map(lambda row: {"text": row["text"].upper()}).save_to_disk(str(tmp_path / "saved"))
    result = fit(cli, run_yaml, f"hf://{tmp_path / 'saved'}")
    assert result.code == 0, result
    assert trained_chars(tmp_path / "cache") == [sum(map(len, texts))]


def test_a_save_to_disk_datasetdict_folder_with_val_split(cli, tmp_path, run_yaml, offline_hf):
    train, val = [_text(i) for i in range(8)], [_text(10), _text(11)]
    splits = {
        "train": offline_hf.Dataset.from_dict({"text": train}),
        "validation": offline_hf.Dataset.from_dict({"text": val}),
    }
    offline_hf.DatasetDict(splits).save_to_disk(str(tmp_path / "dd"))
    result = fit(cli, run_yaml, f"hf://{tmp_path / 'dd'}", "--data.val_split", "validation")
    assert result.code == 0, result
    assert trained_chars(tmp_path / "cache") == sorted([sum(map(len, train)), sum(map(len, val))])


@pytest.mark.parametrize("form", ["path", "list", "mapping"])  # a glob: tests/data/test_hf_sources.py
def test_data_files_from_the_command_line(cli, tmp_path, run_yaml, offline_hf, form):
    texts = [_text(i) for i in range(9)]
    write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in texts[:4]])
    write_jsonl(tmp_path / "b.jsonl", [{"text": t} for t in texts[4:7]])
    write_jsonl(tmp_path / "val.jsonl", [{"text": t} for t in texts[7:]])
    a, b, val = (str(tmp_path / n) for n in ("a.jsonl", "b.jsonl", "val.jsonl"))
    value, extra, expected = {
        "path": (a, [], [texts[:4]]),
        "list": (f"[{a}, {b}]", [], [texts[:7]]),
        "mapping": (
            f"{{train: [{a}, {b}], validation: {val}}}",
            ["--data.val_split", "validation"],
            [texts[:7], texts[7:]],
        ),
    }[form]
    result = fit(cli, run_yaml, "hf://json", "--data.data_files", value, *extra)
    assert result.code == 0, result
    assert trained_chars(tmp_path / "cache") == sorted(sum(map(len, t)) for t in expected)


def test_data_files_with_a_local_source_is_one_paragraph(cli, tmp_path, run_yaml):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(_text(1) * 3)
    user_error(fit(cli, run_yaml, corpus, "--data.data_files", "x.jsonl"), "data_files", "hf://json")
