"""A local source is identified by ``stat`` alone: start-up reads no corpus bytes, and a change is still seen when
the modification time is restored (``touch -d``, ``cp -p``, ``rsync -a``), because ``ctime`` cannot be (issue 18.3)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from lightning_gpt.data.sources import resolve_source
from lightning_gpt.data.sources.files import files_fingerprint
from lightning_gpt.training import TextDataModule
from tests.helpers import python_env


def _bytes_read() -> int:
    """Bytes this process has read through read(2) and friends so far (Linux ``/proc/self/io``)."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


needs_proc_io = pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io")


_START = """
import sys
from lightning_gpt.training import TextDataModule

dm = TextDataModule(source=sys.argv[1], tokenizer="char", block_size=8, batch_size=2, cache_dir=sys.argv[2])
with open("/proc/self/io") as f:
    before = int(next(line for line in f if line.startswith("rchar:")).split()[1])
dm.prepare_data()
dm.setup("fit")
with open("/proc/self/io") as f:
    after = int(next(line for line in f if line.startswith("rchar:")).split()[1])
print(after - before, len(dm.train_dataset))
"""


@needs_proc_io
@pytest.mark.slow
def test_a_start_with_the_data_cached_reads_no_corpus_bytes(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    line = "the quick brown fox jumps over the lazy dog\n"
    for i in range(4):
        (corpus / f"part{i}.txt").write_text(line * 12_000)  # 4 x 0.5 MB
    size = sum(f.stat().st_size for f in corpus.iterdir())
    first = TextDataModule(source=str(corpus), tokenizer="char", block_size=8, cache_dir=str(tmp_path / "cache"))
    first.prepare_data()
    first.setup("fit")
    # A new process, as a restart or another rank is: nothing remembered in memory.
    args = [sys.executable, "-c", _START, str(corpus), str(tmp_path / "cache")]
    out = subprocess.run(args, capture_output=True, text=True, check=True, env=python_env())
    read, n_train = (int(v) for v in out.stdout.split()[-2:])
    assert read < size / 20, f"the second start read {read} bytes of a {size}-byte corpus"
    assert n_train == len(first.train_dataset)


def _restore_mtime(path, st) -> None:
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_changes_hidden_by_restored_times_are_seen(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("aaaa bbbb")
    st = os.stat(f)
    key = resolve_source(str(f)).key()
    assert resolve_source(str(f)).key() == key  # unchanged: the same identity
    f.write_text("bbbb aaaa")  # same size, in place (same inode) ...
    _restore_mtime(f, st)  # ... and the old modification time, as cp -p, rsync -a and tar set it
    now = os.stat(f)
    assert (now.st_size, now.st_mtime_ns, now.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    assert resolve_source(str(f)).key() != key


@pytest.mark.parametrize("tool", ["touch -d", "cp -p", "rsync -a", "write-aside-and-rename"])
def test_real_restore_tools_cannot_hide_a_change(tmp_path, tool):
    f, other = tmp_path / "a.txt", tmp_path / "b.txt"
    f.write_text("first text")
    key = resolve_source(str(f)).key()
    other.write_text("other text")  # same size, different bytes
    subprocess.run(["touch", "-r", str(f), str(other)], check=True)  # ... and f's modification time
    if tool == "touch -d":
        f.write_text("other text")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.stat(other).st_mtime))
        frac = f"{os.stat(other).st_mtime_ns % 1_000_000_000:09d}"
        subprocess.run(["touch", "-d", f"{stamp}.{frac}", str(f)], check=True)
    elif tool == "cp -p":
        subprocess.run(["cp", "-p", str(other), str(f)], check=True)
    elif tool == "write-aside-and-rename":  # what rsync -a and tar do without rsync: a new file renamed over
        aside = tmp_path / ".a.txt.tmp"
        shutil.copy2(other, aside)
        os.replace(aside, f)
    else:
        if shutil.which("rsync") is None:
            pytest.skip("rsync is not installed")
        subprocess.run(["rsync", "-a", str(other), str(f)], check=True)
    assert f.read_text() == "other text"
    assert os.stat(f).st_mtime_ns == os.stat(other).st_mtime_ns
    assert resolve_source(str(f)).key() != key


def test_a_file_identified_right_after_a_write_is_identified_again_after_the_timestamp_tick(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("fresh")
    start = time.monotonic()
    first = files_fingerprint([str(f)])  # the file's times are "now": it waits past the timestamp granularity
    assert time.monotonic() - start < 2.5
    assert files_fingerprint([str(f)]) == first


@needs_proc_io
def test_a_file_stamped_in_the_future_is_identified_by_its_bytes(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("x" * 1_000_000)
    future = time.time_ns() + 3600 * 10**9  # e.g. clock skew on a network file system
    os.utime(f, ns=(future, future))
    before = _bytes_read()
    files_fingerprint([str(f)])
    assert _bytes_read() - before >= 1_000_000
