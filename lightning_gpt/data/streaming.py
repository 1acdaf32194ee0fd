"""Streaming a prepared dataset (``lightning-gpt prepare``) with litdata: windows of ``block_size + 1`` tokens.

``StreamingDataset`` reads the chunks in place from a local folder, or downloads them from an object store
(``s3://...``) into a bounded local cache as they are needed: the first batch comes after the first chunk, not after
the whole corpus. It shuffles chunks and the windows inside them with a seed, splits them across ranks and loader
workers, and ``StreamingDataLoader.state_dict()`` records how many global samples were consumed, so a resumed run
continues exactly (also on another number of devices: litdata re-stripes the rest of the epoch over the new ranks).

Windows are litdata's ``TokensLoader`` items: consecutive, non-overlapping runs of ``block_size + 1`` tokens inside a
chunk (the last partial window of each chunk is dropped, a few hundred tokens per 64 MB chunk). Start-up reads only
``index.json`` and the manifest; no corpus bytes.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
import torch

from lightning_gpt.data.object_store import read_store_manifest
from lightning_gpt.data.prepared import PREPARED_VERSION, is_prepared, litdata_environment, read_manifest
from lightning_gpt.data.tokenizers import Tokenizer, tokenizer_from_state_dict

__all__ = [
    "check_prepared_tokenizer",
    "collate_windows",
    "is_remote",
    "is_streaming_source",
    "prepared_tokenizer",
    "read_any_manifest",
    "streaming_dataset",
    "streaming_loader",
    "check_streaming_resume",
]

_REMOTE = ("s3://", "gs://", "azure://", "r2://")


def is_remote(source: str) -> bool:
    """Whether ``source`` names an object-store folder (``s3://bucket/prefix`` and the like)."""
    return isinstance(source, str) and source.startswith(_REMOTE)


def is_streaming_source(source: str) -> bool:
    """Whether ``source`` is a prepared dataset: a local folder with the manifest (or an interrupted prepare, which
    then fails with the command to finish it), or an object-store folder."""
    return is_remote(source) or is_prepared(source) or os.path.isfile(os.path.join(source, ".preparing"))


def read_any_manifest(source: str) -> dict[str, Any]:
    """The manifest of a local or ``s3://`` prepared folder.

    Args:
        source: the folder.

    Raises:
        FileNotFoundError: no manifest there (not prepared).
        ValueError: an interrupted prepare; an unreadable manifest; an object store other than S3 (local copies
            work for any), or one that cannot be read (missing bucket, refused credentials, unreachable endpoint).
    """
    if not is_remote(source):
        return read_manifest(source)
    if not source.startswith("s3://"):
        raise ValueError(f"--data.source {source!r}: only s3:// object stores are read here; copy the folder locally.")
    manifest = read_store_manifest(source)
    try:
        version = int(manifest["version"])
    except (KeyError, TypeError, ValueError):
        version = -1
    if version != PREPARED_VERSION:
        raise ValueError(f"{source!r} was prepared by another version of lightning-gpt; prepare it again.")
    return manifest


def collate_windows(items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``TokensLoader`` items of ``block_size + 1`` ids -> ``(input_ids, targets)``, each ``(B, block_size)`` int64.

    Args:
        items: the batch's items (``uint16``/``uint32`` tensors or arrays).
    """
    ids = torch.stack(
        [t.to(torch.int64) if torch.is_tensor(t) else torch.from_numpy(np.array(t, np.int64)) for t in items]
    )
    # (B, T + 1): np.array copies (litdata may hand out read-only views of a chunk)
    return ids[:, :-1], ids[:, 1:]


def streaming_dataset(
    source: str,
    split: str,
    block_size: int,
    *,
    seed: int,
    shuffle: bool,
    cache_dir: Optional[str] = None,
) -> Any:
    """A ``litdata.StreamingDataset`` of ``block_size + 1``-id windows over one split of a prepared folder (batch them
    with ``collate_windows``).

    Args:
        source: the prepared folder (local path or ``s3://...``).
        split: ``train`` or ``val``.
        block_size: the model's context length (items hold ``block_size + 1`` ids).
        seed: the shuffling seed (from the run seed).
        shuffle: shuffle chunks and windows (training).
        cache_dir: where chunks of a remote folder are cached locally (``None``: litdata's default).
    """
    litdata_environment()
    from litdata import StreamingDataset, TokensLoader

    folder = f"{source.rstrip('/')}/{split}" if is_remote(source) else os.path.join(source, split)
    if is_remote(source) and os.environ.get("AWS_ENDPOINT_URL"):
        # litdata downloads with s5cmd where it is installed, which reads the endpoint from S3_ENDPOINT_URL
        os.environ.setdefault("S3_ENDPOINT_URL", os.environ["AWS_ENDPOINT_URL"])
    return StreamingDataset(
        folder,
        cache_dir=cache_dir if is_remote(source) else None,
        item_loader=TokensLoader(block_size=block_size + 1),
        shuffle=shuffle,
        drop_last=True if shuffle else None,
        seed=seed,
    )


def check_prepared_tokenizer(manifest: dict[str, Any], other: Tokenizer, what: str, source: str) -> None:
    """Raise unless ``other`` is the tokenizer the prepared dataset was made with (same fingerprint).

    Args:
        manifest: the prepared dataset's manifest.
        other: the tokenizer to check (a named one, a checkpoint's, the model's).
        what: how to name ``other`` in the message.
        source: the prepared folder, for the message.

    Raises:
        ValueError: the tokenizers differ (one paragraph, before step 0).
    """
    prepared = tokenizer_from_state_dict(manifest["tokenizer"])
    if other.fingerprint() != prepared.fingerprint():
        raise ValueError(
            f"the prepared dataset {source!r} was tokenized with {prepared.describe()}, but {what} is "
            f"{other.describe()}: its token ids would mean different text. Prepare the data again with this "
            "tokenizer (lightning-gpt prepare --data.tokenizer ...), or train with the dataset's tokenizer."
        )


def prepared_tokenizer(manifest: dict[str, Any], named: Optional[Tokenizer], source: str) -> Tokenizer:
    """The prepared dataset's tokenizer; a tokenizer the user named (a file, a checkpoint, an id) must be it.

    Args:
        manifest: the prepared dataset's manifest.
        named: the tokenizer named in the settings, or ``None`` (a trainable kind: the folder's was trained already).
        source: the prepared folder, for messages.

    Raises:
        ValueError: ``named`` differs from the dataset's tokenizer.
    """
    if named is not None:
        check_prepared_tokenizer(manifest, named, "the named tokenizer", source)
    return tokenizer_from_state_dict(manifest["tokenizer"])


def streaming_loader(dataset: Any, batch_size: int, num_workers: int, pin_memory: bool) -> Any:
    """A ``litdata.StreamingDataLoader`` of ``(input_ids, targets)`` batches (its ``state_dict`` is the position).

    Args:
        dataset: a ``streaming_dataset``.
        batch_size: sequences per batch per rank.
        num_workers: loader worker processes.
        pin_memory: page-locked batches.
    """
    litdata_environment()
    from litdata import StreamingDataLoader

    return StreamingDataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, collate_fn=collate_windows
    )


def check_streaming_resume(state: dict[str, Any], source: str, world_size: int) -> None:
    """Refuse to resume a streamed position on another number of processes (litdata 0.2.44 cannot re-stripe it).

    Args:
        state: the data module's saved state.
        source: the prepared folder, for the message.
        world_size: this run's number of processes.

    Raises:
        ValueError: one paragraph naming the old and the new number of processes.
    """
    saved = state.get("world_size")
    if saved is not None and saved != world_size:
        raise ValueError(
            f"this checkpoint streamed {source!r} on {saved} processes and this run has {world_size}: the streaming "
            "loader's position cannot be carried over to another number of processes without repeating or skipping "
            f"data. Resume with {saved} devices (trainer.devices x trainer.num_nodes), or start a new run from the "
            "weights (--model.init_from <checkpoint>)."
        )
