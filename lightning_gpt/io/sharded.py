"""Read a sharded (distributed) checkpoint folder written under ``FSDP2Strategy``, consolidating as it loads.

The folder (``<run>/checkpoints/last.ckpt/``) holds ``torch.distributed.checkpoint`` shards (``__<rank>_0.distcp``),
their index ``.metadata`` (every tensor's name, global size and dtype) and ``meta.pt`` (what a ``.ckpt`` holds besides
the tensors: ``gpt_config``, ``tokenizer``, loop counters). Loading here needs no process group and no Lightning:

1. ``meta.pt`` is read weights-only, and ``.metadata`` through an unpickler that rebuilds only the index's own classes
   (``torch.distributed.checkpoint`` itself would ``pickle.load`` it: code could run); anything else in it is an
   ``UnsafeCheckpointError`` unless ``trust_checkpoint``.
2. The sizes and dtypes in ``.metadata`` are checked against ``gpt_config`` (and a given config) by
   ``lightning_gpt.io.checkpoint.read_sharded_checkpoint``, as meta tensors: nothing is allocated for a config that
   does not fit.
3. ``torch.distributed.checkpoint.load`` reads every rank's shards into full tensors (the model's own, for
   ``load_checkpoint``): consolidation happens as the shards are read, with no second copy of the model.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any, Union

import torch

from lightning_gpt.io.serialization import UnsafeCheckpointError, read_checkpoint

__all__ = ["is_sharded_checkpoint", "load_sharded_weights", "read_sharded_index", "sharded_keys"]

_PREFIX = "state_dict."  # Lightning saves {"state_dict": module state, "optimizer_0": ...}; DCP flattens the keys
_META = "meta.pt"
_ALLOWED = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("collections", "OrderedDict"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    *(
        ("torch.distributed.checkpoint.metadata", name)
        for name in (
            "Metadata",
            "TensorStorageMetadata",
            "TensorProperties",
            "ChunkStorageMetadata",
            "BytesStorageMetadata",
            "StorageMeta",
            "MetadataIndex",
            "_MEM_FORMAT_ENCODING",
        )
    ),
}


def is_sharded_checkpoint(path: Union[str, Path]) -> bool:
    """Whether ``path`` is a sharded checkpoint folder (``.metadata`` and ``meta.pt`` inside)."""
    path = Path(path)
    return path.is_dir() and (path / ".metadata").is_file() and (path / _META).is_file()


class _IndexUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, name: object) -> None:
        super().__init__(file)
        self.name = name

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"{self.name} names {module}.{name}, which a sharded checkpoint's index never holds: unpickling it could "
            "run code. Load it only if you trust its source (--trust_checkpoint / trust_checkpoint=True)."
        )


def _reader(path: Path, trust_checkpoint: bool) -> Any:
    """A ``FileSystemReader`` whose ``.metadata`` goes through ``_IndexUnpickler`` (unless trusted)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            if trust_checkpoint:
                return super().read_metadata(*args, **kwargs)
            index = path / ".metadata"
            try:
                with open(index, "rb") as f:
                    metadata = _IndexUnpickler(f, index).load()
            except UnsafeCheckpointError:
                raise
            except Exception as err:  # noqa: BLE001 - damaged bytes raise many types
                raise ValueError(
                    f"{index} cannot be read ({type(err).__name__}: {err}); the sharded checkpoint {path} is damaged "
                    "or incomplete (a save that did not finish). Use another checkpoint of the run."
                ) from None
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(str(path))


def sharded_keys(path: Union[str, Path], trust_checkpoint: bool = False) -> set[str]:
    """The top-level entries of a sharded folder's tensors (``state_dict``, ``optimizer_0``...), from ``.metadata``."""
    index = _reader(Path(path), trust_checkpoint).read_metadata()
    return {key.split(".", 1)[0] for key in index.state_dict_metadata}


def read_sharded_index(path: Union[str, Path], trust_checkpoint: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a sharded checkpoint folder's ``meta.pt`` and ``.metadata``, without reading its tensors.

    ``lightning_gpt.io.checkpoint.read_sharded_checkpoint`` checks the result against the saved config.

    Args:
        path: the folder.
        trust_checkpoint: allow a full unpickle of ``meta.pt`` / ``.metadata`` (code may run); trusted folders only.

    Returns:
        ``(contents, meta)``: a checkpoint-like dict (``gpt_config``, ``tokenizer``, and ``state_dict`` of meta
        tensors with the saved global shapes and dtypes, keyed ``model.<GPT name>``), and ``meta.pt``'s dict.

    Raises:
        UnsafeCheckpointError: ``meta.pt`` or ``.metadata`` needs a full unpickle and ``trust_checkpoint`` is off.
        ValueError: a damaged folder.
    """
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    path = Path(path)
    meta = read_checkpoint(path / _META, trust_checkpoint=trust_checkpoint)
    if not isinstance(meta, dict):
        raise ValueError(f"{path / _META} is not a checkpoint's metadata; the sharded checkpoint {path} is damaged.")
    index = _reader(path, trust_checkpoint).read_metadata()
    specs = {}
    for key, item in index.state_dict_metadata.items():
        if key.startswith(_PREFIX) and isinstance(item, TensorStorageMetadata):
            specs[key[len(_PREFIX) :]] = torch.empty(item.size, dtype=item.properties.dtype, device="meta")
    contents: dict[str, Any] = {k: meta[k] for k in ("gpt_config", "tokenizer") if k in meta}
    contents["state_dict"] = specs
    return contents, meta


def load_sharded_weights(
    path: Union[str, Path], targets: dict[str, torch.Tensor], trust_checkpoint: bool = False
) -> None:
    """Read the weights of a sharded checkpoint folder into ``targets`` (full tensors, filled in place).

    Args:
        path: the folder (checked first: ``lightning_gpt.io.checkpoint.read_sharded_checkpoint``).
        targets: ``GPT`` parameter name -> a tensor of the saved global size (e.g. ``model.state_dict()``); names the
            folder does not hold (the tied ``lm_head.weight``) are left as they are.
        trust_checkpoint: see ``read_sharded_checkpoint``.
    """
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    reader = _reader(path, trust_checkpoint)
    saved = set(reader.read_metadata().state_dict_metadata)
    wanted = {f"model.{k}": v for k, v in targets.items() if f"{_PREFIX}model.{k}" in saved}
    with warnings.catch_warnings():  # "torch.distributed is disabled ... load in a single process": the intent
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        dcp.load({"state_dict": wanted}, storage_reader=reader, no_dist=True)
