"""The token cache never serves stale or broken data (issue 11.3).

A source rewritten with its size and modification time restored gets a new entry; a damaged entry (truncated tokens,
broken metadata, missing offsets) is rebuilt with a warning that names it; temporaries of dead builders are removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lightning_gpt.data.cache import CacheEntryError, build_token_cache, load_token_cache
from lightning_gpt.data.tokenizers import CharTokenizer
from lightning_gpt.training import TextDataModule


def _datamodule(tmp_path, source):
    return TextDataModule(
        source=str(source), tokenizer="char", block_size=8, batch_size=2, cache_dir=str(tmp_path / "cache")
    )


def _train_tokens(dm) -> list[int]:
    dm.prepare_data()
    dm.setup("fit")
    return dm.train_dataset.cache.tokens.tolist()


def test_content_change_with_size_and_mtime_restored_is_detected(tmp_path):
    src = tmp_path / "corpus.txt"
    src.write_text("abcd " * 200)
    first = _train_tokens(_datamodule(tmp_path, src))
    st = os.stat(src)
    src.write_text("dcba " * 200)  # same size
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))  # what cp -p, rsync -a and tar do
    assert os.stat(src).st_size == st.st_size and os.stat(src).st_mtime_ns == st.st_mtime_ns
    second = _train_tokens(_datamodule(tmp_path, src))
    assert second != first


def _entry(tmp_path) -> str:
    tok = CharTokenizer.train(["hello world"])
    return build_token_cache(str(tmp_path), {"k": 1}, iter(["hello", "world"]), tok)


def _damage(path: str, how: str) -> None:
    if how == "truncated-tokens":
        with open(os.path.join(path, "tokens.bin"), "r+b") as f:
            f.truncate(3)
    elif how == "broken-meta":
        with open(os.path.join(path, "meta.json"), "w") as f:
            f.write('{"n_tokens": 12, "dty')
    elif how == "missing-offsets":
        os.remove(os.path.join(path, "offsets.npy"))
    elif how == "garbage-offsets":
        with open(os.path.join(path, "offsets.npy"), "wb") as f:
            f.write(b"not numpy at all")


DAMAGE = ["truncated-tokens", "broken-meta", "missing-offsets", "garbage-offsets"]


@pytest.mark.parametrize("how", DAMAGE)
def test_opening_a_damaged_entry_names_it_and_the_fix(tmp_path, how):
    path = _entry(tmp_path)
    _damage(path, how)
    with pytest.raises(CacheEntryError) as info:
        load_token_cache(path)
    message = str(info.value)
    assert path in message and "delete" in message.lower()
    assert "allow_pickle" not in message and "mmap length" not in message


@pytest.mark.parametrize("how", DAMAGE)
def test_building_over_a_damaged_entry_rebuilds_it_with_a_warning(tmp_path, how, caplog):
    path = _entry(tmp_path)
    good = load_token_cache(path).tokens.tolist()
    _damage(path, how)
    tok = CharTokenizer.train(["hello world"])
    with caplog.at_level(logging.WARNING):
        again = build_token_cache(str(tmp_path), {"k": 1}, iter(["hello", "world"]), tok)
    assert again == path
    assert load_token_cache(path).tokens.tolist() == good
    assert any(path in r.getMessage() and "rebuil" in r.getMessage() for r in caplog.records)


def test_stale_temporaries_of_dead_builders_are_removed(tmp_path):
    tok = CharTokenizer.train(["hello world"])
    root = tmp_path / "tokens"
    root.mkdir()
    # A builder killed with SIGKILL: its process is gone, its temporary directory stays.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    from lightning_gpt.data.cache import _tmp_prefix

    stale = root / (_tmp_prefix(dead_pid) + "abc")
    stale.mkdir()
    (stale / "tokens.bin").write_bytes(b"\0" * 10)
    live = root / (_tmp_prefix(os.getpid()) + "live")  # a live builder's (this process): kept
    live.mkdir()
    build_token_cache(str(tmp_path), {"k": 2}, iter(["hello"]), tok)
    assert not stale.exists()
    assert live.exists()
    shutil.rmtree(live)


def test_entry_stays_fast_to_reopen(tmp_path):
    """Verification reads the metadata and file sizes, not the token stream."""
    path = _entry(tmp_path)
    meta = json.loads(open(os.path.join(path, "meta.json")).read())
    arr = load_token_cache(path)
    assert isinstance(arr.tokens, np.memmap) and arr.n_tokens == meta["n_tokens"]
