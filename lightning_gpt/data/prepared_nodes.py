"""``lightning-gpt prepare`` on several machines at once, into one folder that every node sees (a shared filesystem).

Each node runs the same ``prepare`` command with litdata's variables ``DATA_OPTIMIZER_NUM_NODES`` (the number of
nodes) and ``DATA_OPTIMIZER_NODE_RANK`` (this node, ``0 .. N-1``) set, as litdata's own multi-node ``optimize`` reads
them. The shards (``lightning_gpt.data.shards``, planned identically on every node) are split into ``N`` contiguous
runs; node ``r`` tokenizes run ``r`` with its own workers into ``<output_dir>/.nodes/<r>/`` (``train/`` litdata chunks,
``val-parts/`` the held-out documents of each shard) and then writes ``.nodes/<r>/done.json`` (atomically: its
settings, the node count and its shard run). Node 0 waits for every node's ``done.json``, checks that all were made
with the same settings, and merges as litdata's last node merges its nodes' ``<rank>-index.json`` files: the chunks are
linked into ``train/`` under litdata's ``chunk-<rank>-<index>.bin`` names (rank ``r * 10**6 + worker``), their index
entries concatenated in node order into one ``train/index.json``; the validation parts become ``val/``; the manifest
is written last, then ``.nodes/`` removed. Litdata's own multi-node path is not used as it is: on a local folder its
last node copies the other nodes' index files without waiting for them, and every node deletes the folder's chunks
when it starts (a node that starts late deletes an early node's work).

A node killed midway leaves its part without ``done.json``: run the command again on that node (its part is redone;
the finished parts of the other nodes are kept), and on node 0 if it stopped too.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from typing import Any, Optional

from lightning_gpt.jsonfile import read_json

__all__ = ["NODES", "merge_train", "node_layout", "node_shards", "part_dir", "read_part", "val_parts", "write_part"]

log = logging.getLogger(__name__)

NODES = ".nodes"
_DONE = "done.json"
_RANK_STRIDE = 10**6  # chunk-<node * stride + worker>-<index>.bin: litdata's file name pattern, unique across nodes


def node_layout() -> tuple[int, int]:
    """``(number of nodes, this node's rank)`` from ``DATA_OPTIMIZER_NUM_NODES`` / ``DATA_OPTIMIZER_NODE_RANK``
    (``(1, 0)`` when unset).

    Raises:
        ValueError: a value that is not a whole number, or a rank outside ``0 .. N-1``.
    """
    raw_nodes = os.environ.get("DATA_OPTIMIZER_NUM_NODES", "").strip() or "1"
    raw_rank = os.environ.get("DATA_OPTIMIZER_NODE_RANK", "").strip() or "0"
    try:
        nodes, rank = int(raw_nodes), int(raw_rank)
    except ValueError:
        nodes, rank = 0, -1
    if nodes == 0 and raw_nodes == "0":
        nodes = 1
    if nodes < 1 or not 0 <= rank < nodes:
        raise ValueError(
            f"DATA_OPTIMIZER_NUM_NODES={raw_nodes!r} and DATA_OPTIMIZER_NODE_RANK={raw_rank!r} do not describe a node: "
            "set the number of machines (e.g. 2) and, on each, its rank from 0 to that number minus 1, and run the "
            "same prepare command with the same --output_dir (a folder every machine sees) on all of them."
        )
    return nodes, rank


def node_shards(n_shards: int, nodes: int, rank: int) -> range:
    """The contiguous run of shard indices node ``rank`` of ``nodes`` tokenizes (sizes differ by at most one)."""
    base, extra = divmod(n_shards, nodes)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def part_dir(output_dir: str, rank: int) -> str:
    """The folder node ``rank`` writes its part into."""
    return os.path.join(output_dir, NODES, str(rank))


def read_part(folder: str) -> Optional[dict[str, Any]]:
    """A finished part's ``done.json`` (``None`` when the part is absent or unfinished)."""
    try:
        done = read_json(os.path.join(folder, _DONE))
    except (OSError, ValueError):
        return None
    return done if isinstance(done, dict) else None


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` whole or not at all: a hidden temporary beside it, flushed to disk, renamed
    into place (the marker files of a prepare: a reader never sees half of one)."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_part(folder: str, part: dict[str, Any]) -> None:
    """Mark node's part finished: ``done.json`` (``write_json``)."""
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, _DONE), part)


def wait_for_parts(output_dir: str, expected: dict[str, Any], wait_minutes: float, poll_s: float = 0.2) -> None:
    """On node 0: wait until every node's part is finished and made with the same settings as node 0's.

    Args:
        output_dir: the shared dataset folder.
        expected: node 0's ``done.json`` (settings, node count, shard count, its shard run).
        wait_minutes: give up after this long.
        poll_s: seconds between looks.

    Raises:
        ValueError: a node prepared with other settings or another node count (one paragraph naming it), or parts
            still missing after ``wait_minutes`` (naming the nodes).
    """
    nodes = int(expected["num_nodes"])
    deadline = time.monotonic() + 60 * wait_minutes
    next_note = time.monotonic() + 60
    while True:
        missing = []
        for rank in range(nodes):
            part = read_part(part_dir(output_dir, rank))
            if part is None:
                missing.append(rank)
                continue
            same = {k: part.get(k) for k in ("settings", "num_nodes", "num_shards")}
            if same != {k: expected[k] for k in same}:
                raise ValueError(
                    f"node {rank} prepared its part of {output_dir!r} with other settings than node 0 (source, "
                    "tokenizer, validation split, number of nodes or shards differ): run the same prepare command, "
                    "with the same source, options and DATA_OPTIMIZER_NUM_NODES, on every node."
                )
        if not missing:
            return
        now = time.monotonic()
        if now > deadline:
            raise ValueError(
                f"node 0 waited {wait_minutes:g} minutes for the parts of node(s) {missing} in {output_dir!r}, which "
                "never finished. Run the same prepare command (same DATA_OPTIMIZER_NUM_NODES, their "
                "DATA_OPTIMIZER_NODE_RANK) on those nodes, with the same --output_dir seen by every node, then run "
                "it again here: the finished parts are kept."
            )
        if now > next_note:
            log.warning("node 0: waiting for the parts of node(s) %s in %s", missing, output_dir)
            next_note = now + 60
        time.sleep(poll_s)


def merge_train(output_dir: str, nodes: int) -> None:
    """Link every node's training chunks into ``<output_dir>/train/`` and write one ``index.json`` for them (chunks
    in node order, each node's in its own order). The parts stay intact until the manifest is written."""
    train = os.path.join(output_dir, "train")
    shutil.rmtree(train, ignore_errors=True)
    os.makedirs(train)
    chunks: list[dict[str, Any]] = []
    config = None
    for rank in range(nodes):
        source = os.path.join(part_dir(output_dir, rank), "train")
        index = os.path.join(source, "index.json")
        if not os.path.isfile(index):  # no shard, or every document of its shards held out
            continue
        data = read_json(index)
        if config is None:
            config = data["config"]
        elif data["config"] != config:
            raise ValueError(f"node {rank}'s chunks in {source!r} have another format than node 0's; prepare again.")
        for chunk in data["chunks"]:
            _, worker, rest = chunk["filename"].split("-", 2)  # chunk-<worker>-<index>.bin
            name = f"chunk-{rank * _RANK_STRIDE + int(worker)}-{rest}"
            try:
                os.link(os.path.join(source, chunk["filename"]), os.path.join(train, name))
            except OSError:  # a filesystem without hard links
                shutil.copyfile(os.path.join(source, chunk["filename"]), os.path.join(train, name))
            chunks.append({**chunk, "filename": name})
    if config is None:
        os.rmdir(train)
        return
    write_json(os.path.join(train, "index.json"), {"chunks": chunks, "config": config, "updated_at": str(time.time())})


def val_parts(output_dir: str, nodes: int) -> list[str]:
    """Every node's held-out documents, one file per shard, in shard order."""
    files = []
    for rank in range(nodes):
        folder = os.path.join(part_dir(output_dir, rank), "val-parts")
        if os.path.isdir(folder):
            files += [os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".bin")]
    return sorted(files, key=os.path.basename)
