"""``lightning_gpt.jsonfile``: every JSON file is size-checked before it is parsed, and a FIFO is never opened."""

from __future__ import annotations

import json
import os

import pytest

from lightning_gpt.data.cache import CacheEntryError, verify_token_cache
from lightning_gpt.data.prepared import MANIFEST, read_manifest
from lightning_gpt.jsonfile import MAX_JSON_MB_ENV, max_json_bytes, read_json


def test_read_json_reads_a_file_under_the_limit(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"x": [1, 2]}))
    assert read_json(tmp_path / "a.json") == {"x": [1, 2]}
    assert max_json_bytes() == 256_000_000


def test_a_file_over_the_limit_is_refused_naming_it_and_the_fix(tmp_path, monkeypatch):
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"pad": "x" * 5000}))
    monkeypatch.setenv(MAX_JSON_MB_ENV, "0.001")  # 1000 bytes
    with pytest.raises(ValueError, match=f"big.json is .* MB, more than the 0.0 MB .*{MAX_JSON_MB_ENV}=1") as err:
        read_json(path)
    assert "\n" not in str(err.value)
    monkeypatch.setenv(MAX_JSON_MB_ENV, "lots")
    with pytest.raises(ValueError, match="'lots' is not a number of megabytes"):
        read_json(path)


def test_a_fifo_or_a_folder_is_refused_without_waiting(tmp_path):
    os.mkfifo(tmp_path / "fifo.json")  # open() would block until a writer came
    with pytest.raises(ValueError, match="fifo.json is not a regular file"):
        read_json(tmp_path / "fifo.json")
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(ValueError, match="dir.json is not a regular file"):
        read_json(tmp_path / "dir.json")


def test_a_prepared_manifest_and_a_token_cache_meta_over_the_limit_are_refused(tmp_path, monkeypatch):
    (tmp_path / MANIFEST).write_text(json.dumps({"version": 1, "pad": "x" * 5000}))
    (tmp_path / "meta.json").write_text(json.dumps({"n_tokens": 1, "n_docs": 1, "dtype": "uint16", "pad": "x" * 5000}))
    monkeypatch.setenv(MAX_JSON_MB_ENV, "0.001")
    with pytest.raises(ValueError, match=f"{MANIFEST} is .* MB, more than .*{MAX_JSON_MB_ENV}"):
        read_manifest(str(tmp_path))
    with pytest.raises(CacheEntryError, match=f"meta.json is .* MB, more than .*{MAX_JSON_MB_ENV}"):
        verify_token_cache(str(tmp_path))
