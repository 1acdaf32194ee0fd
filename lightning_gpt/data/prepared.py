"""``lightning-gpt prepare``: a text source tokenized into a litdata dataset folder, in parallel, resumably.

Layout of a prepared folder::

    <output_dir>/lightning_gpt_dataset.json   written last: its presence means the folder is complete
    <output_dir>/train/                        litdata chunks (index.json + chunk-*.bin) of the training documents
    <output_dir>/val/                          the same for the validation documents (absent with val_fraction 0)

Each document is encoded once by the shared definition in ``lightning_gpt.data.encoding`` (``[BOS] ids EOS``), and
goes to ``val`` when ``is_held_out(split_seed, "<shard>/<index>", val_fraction)``: a seeded random sample of documents,
fixed at preparation time (so it cannot change on resume). The manifest holds the tokenizer's state (so ``fit`` uses
exactly the tokenizer the ids were made with, and refuses a model whose tokenizer differs), the token counts and the
settings. ``litdata.optimize`` runs ``num_workers`` processes over the shards of ``lightning_gpt.data.shards``, with a
progress bar (shards done, ETA). Across machines (litdata's ``DATA_OPTIMIZER_NUM_NODES`` / ``DATA_OPTIMIZER_NODE_RANK``)
each node tokenizes its share into ``.nodes/<rank>/`` and node 0 merges them (``lightning_gpt.data.prepared_nodes``).

A folder without the manifest is an interrupted prepare (killed, crashed): the next ``prepare`` into it deletes what
it wrote (only files it recognises: ``train/``, ``val/``, ``.val-parts/``, the ``.preparing`` note; a node's finished
part in ``.nodes/`` is kept and reused) and starts over;
``fit`` never reads it (no manifest, no dataset). An ``s3://bucket/prefix`` output is prepared the same way in a local
staging folder and uploaded, the manifest last (``lightning_gpt.data.object_store``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from typing import Any, Iterator, Optional

import numpy as np

from lightning_gpt.data import litdata_run, object_store
from lightning_gpt.data.encoding import check_separators, encode_documents, is_held_out, token_dtype
from lightning_gpt.data.shards import plan_shards, read_shard
from lightning_gpt.data.sources import TextSource, resolve_source
from lightning_gpt.data.tokenizers import Tokenizer, tokenizer_from_state_dict
from lightning_gpt.jsonfile import read_json

__all__ = ["MANIFEST", "PREPARED_VERSION", "is_prepared", "prepare_dataset", "read_manifest"]

log = logging.getLogger(__name__)

MANIFEST = "lightning_gpt_dataset.json"
PREPARED_VERSION = 1
_PREPARING = ".preparing"
_ERRORS = "errors"  # <val_parts>/errors/<shard>: the message of a shard whose text was refused
_OURS = {"train", "val", ".val-parts", ".nodes", _PREPARING, f".{MANIFEST}.tmp"}
_BATCH_CHARS = 1 << 20  # encode ~1M characters at a time: bounded memory per worker whatever the shard size


def litdata_environment() -> None:
    """Settings litdata reads from the environment, set before it is imported: no PyPI version check at every dataset
    (0.2.44 still asks once per process; its "newer version" warning is silenced: the pin is on purpose, pyproject).

    Raises:
        ValueError: litdata is not installed (with the install command).
    """
    import importlib.util
    import warnings

    if importlib.util.find_spec("litdata") is None:
        raise ValueError(
            "prepared datasets (lightning-gpt prepare, and fit from a prepared folder or bucket) need litdata: "
            "pip install 'lightning-gpt[scale]' (or pip install 'litdata<0.2.45')."
        )
    os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")
    warnings.filterwarnings("ignore", message=r"A newer version of litdata is available")


def is_prepared(path: str) -> bool:
    """Whether ``path`` is a complete prepared dataset folder (it holds the manifest, written last).

    Args:
        path: a local folder.
    """
    return isinstance(path, str) and os.path.isfile(os.path.join(path, MANIFEST))


def read_manifest(path: str) -> dict[str, Any]:
    """The manifest of a prepared folder (tokenizer state, token counts, settings).

    Args:
        path: the prepared folder.

    Raises:
        FileNotFoundError: ``path`` holds no manifest (not prepared, or an interrupted prepare).
        ValueError: the manifest is unreadable or from an unknown version.
    """
    file = os.path.join(path, MANIFEST)
    if os.path.isfile(os.path.join(path, _PREPARING)) and not os.path.isfile(file):
        raise ValueError(
            f"{path!r} holds an interrupted lightning-gpt prepare (killed or failed before it finished): run the same "
            "prepare command again; it deletes the partial folder and starts over."
        )
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"{path!r} is not a prepared dataset (no {MANIFEST}): prepare it first with lightning-gpt prepare "
            f"--data.source <your text> --output_dir {path} (a folder without it is an interrupted prepare)."
        )
    try:
        manifest = read_json(file)
        version = int(manifest["version"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{file!r} is damaged ({type(err).__name__}: {err}); run lightning-gpt prepare again."
        ) from None
    if version != PREPARED_VERSION:
        raise ValueError(
            f"{path!r} was prepared by another version of lightning-gpt (format {version}); prepare again."
        )
    return manifest


@functools.lru_cache(maxsize=2)
def _worker_tokenizer(state_json: str) -> Tokenizer:
    return tokenizer_from_state_dict(json.loads(state_json))


def _encode_shard(
    item: tuple[int, dict[str, Any]],
    *,
    source_spec: dict[str, Any],
    tokenizer_state: str,
    add_bos: bool,
    split_seed: int,
    val_fraction: float,
    val_parts: str,
) -> Iterator[np.ndarray]:
    """litdata ``fn``: yield the training tokens of one shard (in ~1M-character pieces); append its validation
    documents' tokens to ``<val_parts>/<shard>.bin``.

    A shard whose text is refused (a ``ValueError`` naming ``file:row``) records the message in
    ``<val_parts>/errors/<shard>`` and yields no more; every worker then stops at its next piece, and
    ``prepare_dataset`` raises that one message (a worker's exception would reach the user as several processes'
    tracebacks, after the other workers finished the whole corpus)."""
    index, shard = item
    if _first_failure(val_parts) is not None:
        return
    tokenizer = _worker_tokenizer(tokenizer_state)
    dtype = token_dtype(tokenizer.vocab_size)
    source = resolve_source(**source_spec) if shard["kind"] in ("hf", "whole") else None
    val_file = os.path.join(val_parts, f"{index:08d}.bin")
    val_out = None
    docs: list[str] = []
    size = 0
    n = 0
    try:
        for doc in [*read_shard(shard, source), None]:
            if doc is not None:
                docs.append(doc)
                size += len(doc)
                if size < _BATCH_CHARS:
                    continue
            if not docs or _first_failure(val_parts) is not None:
                break
            train_ids = []
            for ids in encode_documents(tokenizer, docs, add_bos):
                if is_held_out(split_seed, f"{index}/{n}", val_fraction):
                    if val_out is None:
                        val_out = open(val_file + ".tmp", "wb")  # noqa: SIM115 - closed in finally
                    val_out.write(ids.astype(dtype).tobytes())
                else:
                    train_ids.append(ids)
                n += 1
            if train_ids:
                yield np.concatenate(train_ids).astype(dtype)
            docs, size = [], 0
    except ValueError as err:
        errors = os.path.join(val_parts, _ERRORS)
        tmp = os.path.join(errors, f".{index:08d}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(str(err))
        os.replace(tmp, os.path.join(errors, f"{index:08d}"))
        return
    finally:
        if val_out is not None:
            val_out.close()
    if val_out is not None:
        os.replace(val_file + ".tmp", val_file)


def _first_failure(val_parts: str) -> Optional[str]:
    """The message of the lowest-numbered shard that failed (``_encode_shard``), if any."""
    # A folder of its own, empty unless a shard failed: it is listed at every ~1M-character piece, and the val parts
    # beside it grow to one file per shard.
    errors = os.path.join(val_parts, _ERRORS)
    failed = sorted(name for name in os.listdir(errors) if not name.startswith("."))
    if not failed:
        return None
    with open(os.path.join(errors, failed[0]), encoding="utf-8") as f:
        return f.read()


def _read_val_part(path: str, dtype: str) -> Iterator[np.ndarray]:
    tokens = np.fromfile(path, dtype=np.dtype(dtype))
    for start in range(0, len(tokens), 1 << 20):
        yield tokens[start : start + (1 << 20)]


def _clear_interrupted(output_dir: str, keep: set[str]) -> None:
    """Remove what an interrupted prepare left in ``output_dir`` (but not the names in ``keep``); refuse to touch a
    folder holding anything else."""
    if not os.path.isdir(output_dir):
        return
    names = set(os.listdir(output_dir)) - keep
    if names <= {_PREPARING}:  # nothing, or the note another node of this prepare wrote first
        return
    if not names <= _OURS or _PREPARING not in names:
        raise ValueError(
            f"--output_dir {output_dir!r} is not empty and is not a prepared dataset (found: {sorted(names)[:5]}). "
            "Give an empty or new folder."
        )
    log.warning("%s holds an interrupted prepare; deleting it and preparing again.", output_dir)
    _remove_ours(output_dir, keep)


def _remove_ours(output_dir: str, keep: frozenset[str] | set[str] = frozenset()) -> None:
    """Delete what prepare writes in ``output_dir`` (only its own names, less ``keep``; the folder itself stays)."""
    for name in (set(os.listdir(output_dir)) & _OURS) - set(keep):
        path = os.path.join(output_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def prepare_dataset(
    source: TextSource,
    source_spec: dict[str, Any],
    tokenizer: Tokenizer,
    output_dir: str,
    *,
    add_bos: bool = False,
    val_fraction: float = 0.0,
    split_seed: int = 0,
    num_workers: Optional[int] = None,
    chunk_bytes: str = "64MB",
    shard_bytes: Optional[int] = None,
    node_wait_minutes: float = 24 * 60,
    staging_dir: Optional[str] = None,
) -> dict[str, Any]:
    """Tokenize ``source`` into a litdata dataset folder; return its manifest (an up-to-date folder is kept).

    Across machines (litdata's ``DATA_OPTIMIZER_NUM_NODES`` and ``DATA_OPTIMIZER_NODE_RANK`` set on each,
    ``lightning_gpt.data.prepared_nodes``): every node tokenizes its share of the shards into
    ``<output_dir>/.nodes/<rank>/`` and returns ``{"node_rank", "num_nodes", "shards"}``; node 0 also waits for every
    part, merges them and writes the manifest (last), and returns it.

    Args:
        source: the resolved source (read for planning: file sizes, shard counts).
        source_spec: the ``resolve_source`` keyword arguments that rebuild ``source`` in the worker processes.
        tokenizer: the tokenizer (with EOS; BOS too with ``add_bos``); saved in the manifest.
        output_dir: a new or empty local folder (or one holding an interrupted or identical prepare); across
            machines, a folder every node sees (a shared filesystem); or ``s3://bucket/prefix`` (one machine;
            ``lightning_gpt.data.object_store``).
        add_bos: start every document with BOS.
        val_fraction: expected share of documents held out for validation (a seeded random sample).
        split_seed: the seed of that sample.
        num_workers: processes; ``None``: all CPUs of this machine.
        chunk_bytes: litdata chunk size (the unit of streaming and shuffling).
        shard_bytes: bytes of text per work item (``None``: ``shards.DEFAULT_SHARD_BYTES``).
        node_wait_minutes: across machines, how long node 0 waits for the other nodes' parts (then one paragraph
            naming the missing nodes).
        staging_dir: with ``s3://``, the local folder it is tokenized into before the upload (``None``: in $TMPDIR).

    Raises:
        ValueError: ``output_dir`` holds something else (never deleted), or a different prepared dataset; the
            source has no text; the tokenizer lacks EOS (or BOS with ``add_bos``); malformed node variables, or
            nodes that prepared with other settings, or a node missing after ``node_wait_minutes``; see also
            ``object_store.prepare_into_store``.
    """
    litdata_environment()
    from lightning_gpt.data import prepared_nodes as nodes_
    from lightning_gpt.data.shards import DEFAULT_SHARD_BYTES

    check_separators(tokenizer, add_bos)
    nodes, rank = nodes_.node_layout()
    settings = {"source": source.identity(), "tokenizer_fingerprint": tokenizer.fingerprint(), "add_bos": add_bos}
    settings.update(val_fraction=val_fraction, split_seed=split_seed)
    if "://" in output_dir:  # an object store: prepared in a local staging folder, then uploaded (manifest last)
        kw: dict[str, Any] = dict(add_bos=add_bos, val_fraction=val_fraction, split_seed=split_seed)
        kw.update(num_workers=num_workers, chunk_bytes=chunk_bytes, shard_bytes=shard_bytes)
        local = functools.partial(prepare_dataset, source, source_spec, tokenizer)
        return object_store.prepare_into_store(output_dir, settings, local, staging_dir, nodes, **kw)
    if is_prepared(output_dir):
        return object_store.reuse_prepared(
            read_manifest(output_dir), settings, output_dir, "another folder, or delete that one first."
        )
    shards = plan_shards(source, shard_bytes or DEFAULT_SHARD_BYTES)
    if nodes == 1 or rank == 0:  # the other nodes' parts (.nodes/<rank>/) are theirs
        _clear_interrupted(output_dir, keep={nodes_.NODES} if nodes > 1 else set())
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, _PREPARING), "w", encoding="utf-8") as f:
        json.dump(settings, f)
    common: dict[str, Any] = {"add_bos": add_bos, "split_seed": split_seed, "val_fraction": val_fraction}
    common.update(num_workers=num_workers, chunk_bytes=chunk_bytes)
    if nodes == 1:
        val_parts = os.path.join(output_dir, ".val-parts")
        items = list(enumerate(shards))
        try:
            _tokenize(tokenizer, source_spec, items, os.path.join(output_dir, "train"), val_parts, **common)
        except _RefusedText as err:
            _remove_ours(output_dir)  # nothing half-written stays behind
            raise ValueError(f"{err} (Nothing was prepared: {output_dir!r} holds none of it.)") from None
        parts = sorted(os.path.join(val_parts, p) for p in os.listdir(val_parts) if p.endswith(".bin"))
    else:
        folder = nodes_.part_dir(output_dir, rank)
        mine = nodes_.node_shards(len(shards), nodes, rank)
        part = {"settings": settings, "num_nodes": nodes, "num_shards": len(shards), "shards": [mine.start, mine.stop]}
        if nodes_.read_part(folder) != part:  # not this node's finished part of the same prepare: (re)do it
            shutil.rmtree(folder, ignore_errors=True)
            items = [(i, shards[i]) for i in mine]
            train, val = os.path.join(folder, "train"), os.path.join(folder, "val-parts")
            try:
                _tokenize(tokenizer, source_spec, items, train, val, **common)
            except _RefusedText as err:
                shutil.rmtree(folder, ignore_errors=True)
                raise ValueError(f"{err} (This node's part was not written: fix the row and prepare again.)") from None
            nodes_.write_part(folder, part)
        if rank != 0:
            return {"node_rank": rank, "num_nodes": nodes, "shards": part["shards"]}
        nodes_.wait_for_parts(output_dir, part, node_wait_minutes)
        nodes_.merge_train(output_dir, nodes)
        parts = nodes_.val_parts(output_dir, nodes)
    dtype = token_dtype(tokenizer.vocab_size)
    if parts:
        with litdata_run.scratch(1):
            litdata_run.optimize_tokens(
                fn=functools.partial(_read_val_part, dtype=dtype.name),
                inputs=parts,
                output_dir=os.path.join(output_dir, "val"),
                num_workers=1,
                chunk_bytes=chunk_bytes,
            )
    manifest = {
        "version": PREPARED_VERSION,
        "settings": settings,
        "tokenizer": tokenizer.state_dict(),
        "dtype": dtype.name,
        "splits": {name: _split_info(os.path.join(output_dir, name)) for name in ("train", "val")},
        "num_shards": len(shards),
    }
    if nodes > 1:
        manifest["num_nodes"] = nodes
    if manifest["splits"]["train"] is None:
        raise ValueError(f"source {source.name!r} has no text (it is empty or only whitespace); nothing to prepare.")
    shutil.rmtree(os.path.join(output_dir, ".val-parts" if nodes == 1 else nodes_.NODES), ignore_errors=True)
    nodes_.write_json(os.path.join(output_dir, MANIFEST), manifest)  # its temporary: f".{MANIFEST}.tmp" (in _OURS)
    os.remove(os.path.join(output_dir, _PREPARING))
    return manifest


def _tokenize(
    tokenizer: Tokenizer,
    source_spec: dict[str, Any],
    items: list[tuple[int, dict[str, Any]]],
    train_dir: str,
    val_parts: str,
    *,
    add_bos: bool,
    split_seed: int,
    val_fraction: float,
    num_workers: Optional[int],
    chunk_bytes: str,
) -> None:
    """Encode ``items`` (``(shard index, shard)``) with litdata's ``optimize`` into ``train_dir``; the held-out
    documents of shard ``i`` go to ``<val_parts>/<i>.bin``."""
    os.makedirs(os.path.join(val_parts, _ERRORS), exist_ok=True)
    if not items:
        return
    fn = functools.partial(
        _encode_shard,
        source_spec=source_spec,
        tokenizer_state=json.dumps(tokenizer.state_dict()),
        add_bos=add_bos,
        split_seed=split_seed,
        val_fraction=val_fraction,
        val_parts=val_parts,
    )
    workers = max(1, min(num_workers or os.cpu_count() or 1, len(items)))
    with litdata_run.scratch(workers):
        litdata_run.optimize_tokens(
            fn=fn, inputs=items, output_dir=train_dir, num_workers=workers, chunk_bytes=chunk_bytes
        )
    failure = _first_failure(val_parts)
    if failure is not None:
        raise _RefusedText(failure)


class _RefusedText(ValueError):
    """A shard's text was refused (``_encode_shard`` recorded the message); the caller removes what was written."""


def _split_info(folder: str) -> Optional[dict[str, Any]]:
    if not os.path.isfile(index := os.path.join(folder, "index.json")):
        return None
    chunks = read_json(index).get("chunks", [])
    return {"n_tokens": int(sum(int(c.get("dim") or 0) for c in chunks)), "n_chunks": len(chunks)}
