"""Running ``litdata.optimize`` inside this process for ``prepare`` (``lightning_gpt.data.prepared``): its private
scratch folders, the encoder threads per worker, how its workers start, and the process state put back afterwards.

Why this exists: litdata's ``optimize`` keeps process-wide state in environment variables and in the multiprocessing
start method, and by default deletes and recreates ``$TMPDIR/chunks`` and ``$TMPDIR/data`` (another prepare's!);
these functions confine each call.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
from typing import Any, Iterator, Optional

__all__ = ["optimize_tokens", "scratch", "start_method"]


def start_method() -> Optional[str]:
    """How litdata starts its workers: ``"fork"`` on Linux from a process with one Python thread, else litdata's own
    choice (``None``: "spawn" outside notebooks).

    Spawned, each worker and each of its helper processes is a new interpreter that imports torch and this package
    (~5 CPU-seconds each, ~10 processes for 2 workers); forked, they start at once: a 2-worker prepare of a 1 MB corpus
    costs 5 CPU-seconds instead of 15 and writes the same bytes. The workers read files, encode and write chunks (no
    torch kernels, no CUDA). Fork copies only the calling thread: a lock another thread held at that moment (logging,
    a stream) would stay held in the child forever, so a process with other threads spawns. tqdm's monitor threads
    (started by the first progress bar of each tqdm class) are stopped first: they only tune bars' refresh rates. A
    subclass keeps its own (a ``tqdm.auto`` bar, as torch's inductor and many libraries draw, starts one that
    ``tqdm.monitor`` does not show), so every running one is found.
    """
    if not sys.platform.startswith("linux"):
        return None
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread for later bars (subclasses read the attribute from tqdm)
    for thread in threading.enumerate():
        # tqdm's monitor (tqdm/_monitor.py, a private module): a thread named so, with its bar class and an exit()
        stop = getattr(thread, "exit", None)
        if thread.name == "tqdm_monitor" and hasattr(thread, "tqdm_cls") and callable(stop):
            stop()  # sets its event and joins it
            if getattr(thread.tqdm_cls, "monitor", None) is thread:
                thread.tqdm_cls.monitor = None
            thread.tqdm_cls.monitor_interval = 0
    return "fork" if threading.active_count() == 1 else None


def optimize_tokens(**kwargs: Any) -> None:
    """``litdata.optimize`` of token arrays (``TokensLoader``, items kept in order), on this machine alone: litdata's
    multi-node variables are hidden from it (``prepared_nodes`` splits the work between nodes and merges)."""
    import litdata
    from litdata import TokensLoader

    hidden = {k: os.environ.pop(k) for k in ("DATA_OPTIMIZER_NUM_NODES", "DATA_OPTIMIZER_NODE_RANK") if k in os.environ}
    try:
        litdata.optimize(**kwargs, item_loader=TokensLoader(), reorder_files=False, start_method=start_method())
    finally:
        os.environ.update(hidden)


@contextlib.contextmanager
def scratch(workers: int) -> Iterator[None]:
    """Private scratch folders for litdata (it deletes and recreates ``$TMPDIR/chunks`` and ``$TMPDIR/data`` by
    default!), encoder threads shared among ``workers``, and the process start method restored afterwards."""
    folder = tempfile.mkdtemp(prefix="lightning-gpt-prepare-")
    keys = ("DATA_OPTIMIZER_CACHE_FOLDER", "DATA_OPTIMIZER_DATA_CACHE_FOLDER", "LIGHTNING_GPT_ENCODE_THREADS")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ["DATA_OPTIMIZER_CACHE_FOLDER"] = os.path.join(folder, "chunks")
    os.environ["DATA_OPTIMIZER_DATA_CACHE_FOLDER"] = os.path.join(folder, "data")
    os.environ["LIGHTNING_GPT_ENCODE_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    before = multiprocessing.get_start_method(allow_none=True)
    try:
        yield
    finally:
        # litdata sets "spawn" for the whole process: later DataLoader workers here would each import torch anew.
        multiprocessing.set_start_method(before, force=True)
        os.environ.update({key: value for key, value in saved.items() if value is not None})
        for key in [key for key, value in saved.items() if value is None]:
            os.environ.pop(key, None)
        shutil.rmtree(folder, ignore_errors=True)
