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
4. For a resume under another strategy (DDP, one process), ``load_sharded_optimizers`` consolidates the optimizer
   state the same way (AdamW moments and ``step`` as full tensors, sizes checked against the weights first; the
   ``param_groups`` values, which DCP stores pickled, read weights-only) and keys it like a plain optimizer's.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any, Union

import torch

from lightning_gpt.io.serialization import UnsafeCheckpointError, read_checkpoint

__all__ = [
    "is_sharded_checkpoint",
    "load_sharded_optimizers",
    "load_sharded_weights",
    "read_sharded_index",
    "sharded_keys",
]

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


def _safe_planner(trust_checkpoint: bool) -> Any:
    """A ``DefaultLoadPlanner`` over a flat state dict whose non-tensor entries (``param_groups`` values, stored
    pickled by DCP) are read weights-only: DCP's own ``load_bytes`` unpickles them in full (code could run). The keys
    refused are listed in ``planner.refused`` (raising inside DCP would come out wrapped in its own exception)."""
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class SafePlanner(DefaultLoadPlanner):
        refused: list[str] = []

        def load_bytes(self, read_item: Any, value: Any) -> None:
            fqn = read_item.dest_index.fqn
            try:
                self.state_dict[fqn] = torch.load(value, weights_only=not trust_checkpoint)
            except pickle.UnpicklingError:
                self.refused.append(fqn)

    planner = SafePlanner(flatten_state_dict=False, flatten_sharded_tensors=False)
    planner.refused = []
    return planner


def _nest(flat: dict[str, Any], paths: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
    """Rebuild the nested dicts and lists DCP flattened (``planner_data``: flat key -> path of keys and indices)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        path = paths[key]
        node: Any = out
        for part, following in zip(path[:-1], path[1:]):
            empty: Any = [] if isinstance(following, int) else {}
            if isinstance(node, list):
                node.extend({} for _ in range(part + 1 - len(node)))
                if not node[part]:
                    node[part] = empty
                node = node[part]
            else:
                node = node.setdefault(part, empty)
        if isinstance(node, list):
            node.extend({} for _ in range(path[-1] + 1 - len(node)))
        node[path[-1]] = value
    return out


def load_sharded_optimizers(
    path: Union[str, Path], weights: dict[str, torch.Size], trust_checkpoint: bool = False
) -> list[dict[str, Any]]:
    """Consolidate the optimizer states of a sharded folder, keyed like a plain optimizer's ``state_dict()``.

    ``FSDP2Strategy`` saves each optimizer as ``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict``
    gives it: state keyed by parameter name (``model.transformer.wte.weight``), every moment a ``DTensor`` shard, and
    ``param_groups`` listing names. Here every shard is read into one full tensor (``torch.distributed.checkpoint``
    reshards as it reads, ``no_dist``: no process group needed) and the names become integer ids in ``param_groups``
    order, as ``torch.optim.Optimizer.state_dict()`` numbers them (``GPTModule`` builds its groups in the same order
    under every strategy): ``optimizer.load_state_dict`` of a DDP run or a single process takes it as it is.

    Args:
        path: the folder (its weights checked first: ``lightning_gpt.io.checkpoint.read_sharded_checkpoint``).
        weights: ``model.<GPT name>`` -> the saved global size of each weight; every optimizer tensor must belong to
            one of them and have its size (or be a scalar such as ``step``), checked before anything is allocated.
        trust_checkpoint: allow a full unpickle of ``.metadata`` and of the ``param_groups`` values.

    Returns:
        One ``{"state": {id: {"step", "exp_avg", ...}}, "param_groups": [{..., "params": [ids]}]}`` per optimizer
        (``optimizer_0``, ``optimizer_1``...); empty when the folder holds no optimizer.

    Raises:
        ValueError: an optimizer tensor of a weight the folder does not hold, or of another size (damaged or
            hostile ``.metadata``), or ``param_groups`` naming unknown weights.
        UnsafeCheckpointError: a ``param_groups`` value needs a full unpickle and ``trust_checkpoint`` is off.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    path = Path(path)
    reader = _reader(path, trust_checkpoint)
    index = reader.read_metadata()
    flat: dict[str, Any] = {}
    paths: dict[str, tuple[Any, ...]] = {}
    for key, item in index.state_dict_metadata.items():
        if not key.startswith("optimizer_"):
            continue
        where = tuple((index.planner_data or {}).get(key) or ())
        if len(where) < 3 or not isinstance(where[0], str) or where[1] not in ("state", "param_groups"):
            raise ValueError(f"{path / '.metadata'} holds {key!r}, which is not an optimizer entry; damaged folder.")
        if isinstance(item, TensorStorageMetadata):
            name = where[2] if where[1] == "state" else None
            size = weights.get(name) if isinstance(name, str) else None
            if size is None or tuple(item.size) not in ((), tuple(size)):
                raise ValueError(
                    f"{path / '.metadata'} gives the optimizer tensor {key!r} the size {tuple(item.size)}, which "
                    f"fits no weight of the checkpoint ({name!r}: {None if size is None else tuple(size)}). The "
                    "folder is damaged or was not written by lightning-gpt's FSDP2Strategy; nothing was allocated."
                )
            flat[key] = torch.empty(item.size, dtype=item.properties.dtype)
        else:
            flat[key] = None
        paths[key] = where
    if not flat:
        return []
    with warnings.catch_warnings():  # "torch.distributed is disabled ... load in a single process": the intent
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        planner = _safe_planner(trust_checkpoint)
        dcp.load(flat, storage_reader=reader, planner=planner, no_dist=True)
    if planner.refused:
        raise UnsafeCheckpointError(
            f"the sharded checkpoint {path} holds {sorted(planner.refused)[:3]}, which need a full unpickle (a saved "
            "optimizer never does: code could run). Load it only if you trust its source (--trust_checkpoint / "
            "trust_checkpoint=True)."
        )
    nested = _nest(flat, paths)
    return [_numbered(nested[key], path) for key in sorted(nested, key=lambda k: int(k.split("_")[-1]))]


def _numbered(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """Name-keyed optimizer state -> id-keyed, ids in ``param_groups`` order (``torch.optim.Optimizer.state_dict``)."""
    groups = state.get("param_groups", [])
    order = [name for group in groups for name in group.get("params", [])]
    ids = {name: i for i, name in enumerate(order)}
    unknown = sorted(set(state.get("state", {})) - set(ids))
    if unknown:
        raise ValueError(
            f"the optimizer state in {path} holds moments of {unknown[:3]}, which its param_groups do not list; "
            "the folder is damaged."
        )
    return {
        "state": {ids[name]: value for name, value in state.get("state", {}).items()},
        "param_groups": [{**group, "params": [ids[n] for n in group.get("params", [])]} for group in groups],
    }
