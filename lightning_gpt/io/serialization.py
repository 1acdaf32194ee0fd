"""Reading files safely, below every other module: ``torch.load`` that runs no code unless the user opts in, and
what a weights folder looks like.

Everything here imports only torch, so checkpoint reading (``lightning_gpt.io.checkpoint``), weights folders
(``lightning_gpt.io.hf``) and tokenizer loading (``lightning_gpt.data.tokenizers``) share it without importing each
other in a circle.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any, Optional, Union

import torch

__all__ = [
    "UnsafeCheckpointError",
    "is_pretrained_path",
    "read_checkpoint",
    "torch_load",
]

CONFIG_FILE = "config.json"
NATIVE_FILE = "lightning_gpt.json"
SAFETENSORS_FILE = "model.safetensors"
BIN_FILE = "pytorch_model.bin"
FORMATS = ("hf", "safetensors")
LAYOUT = (
    "config.json (model_type gpt2), model.safetensors or pytorch_model.bin, and the tokenizer as tokenizer.json or "
    "vocab.json + merges.txt, as GPT2LMHeadModel.save_pretrained and the tokenizer's save_pretrained write them"
)


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds objects that only a full unpickle can rebuild, and the user did not opt in to that.

    Unpickling can run arbitrary code, so such a file is loaded only with ``trust_checkpoint=True`` (Python) or
    ``--trust_checkpoint`` (command line). A ``ValueError``: the command line shows it as one paragraph, exit status 2.
    """


def torch_load(
    source: Any, map_location: Any = "cpu", trust_checkpoint: bool = False, name: Any = None, mmap: bool = False
) -> Any:
    """``torch.load`` that never unpickles code unless ``trust_checkpoint`` is set.

    Args:
        source: a path or a binary file object.
        map_location: where tensors go.
        trust_checkpoint: allow a full unpickle (``weights_only=False``); only for files from a trusted source.
        name: how to name the file in the error (default: ``source``).
        mmap: memory-map the file instead of reading it (a path only).

    Returns:
        What ``torch.load`` returns.

    Raises:
        UnsafeCheckpointError: the file needs a full unpickle and ``trust_checkpoint`` is off.
    """
    kwargs = {"mmap": True} if mmap else {}
    if trust_checkpoint:
        return torch.load(source, map_location=map_location, weights_only=False, **kwargs)
    try:
        return torch.load(source, map_location=map_location, weights_only=True, **kwargs)
    except pickle.UnpicklingError as err:
        # Only a pickled object (a GLOBAL) is "unsafe"; other refusals (e.g. an unknown opcode) mean damaged bytes.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found is None:
            raise
        raise UnsafeCheckpointError(
            f"{name if name is not None else source} holds more than tensors and plain data (an object of type "
            f"{found.group(1)}), so it was not "
            "loaded: rebuilding those objects means unpickling, which can run any code the file contains. "
            "lightning-gpt writes checkpoints that load safely; load this one only if you trust where it came from, "
            "with trust_checkpoint=True (Python) or --trust_checkpoint (command line)."
        ) from None


def read_checkpoint(
    path: Union[str, Path], map_location: Any = "cpu", trust_checkpoint: bool = False
) -> dict[str, Any]:
    """``torch.load`` a checkpoint file with clear errors for a missing, unreadable, foreign or unsafe file.

    Loads with ``weights_only=True``: no code in the file runs. A file that needs a full unpickle is refused unless
    ``trust_checkpoint`` is set (never retried silently).

    Args:
        path: the ``.ckpt`` file.
        map_location: where tensors go (``"cpu"`` by default).
        trust_checkpoint: allow a full unpickle of a file from a trusted source.

    Returns:
        The checkpoint dict.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file needs a full unpickle and ``trust_checkpoint`` is off.
        ValueError: a directory, an empty, truncated or foreign file.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"{path} is a directory, not a checkpoint file. A sharded (distributed) checkpoint must be consolidated "
            "first: save with the strategy's save_distributed_checkpoint=False, or convert the folder with "
            "torch.distributed.checkpoint.format_utils.dcp_to_torch_save."
        )
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint file not found: {path}. Check the path (e.g. --ckpt_path).")
    if path.stat().st_size == 0:
        raise ValueError(
            f"{path} is not a readable checkpoint (truncated or corrupt?): the file is empty. Use the previous "
            "checkpoint of the run (saves are atomic, so it is intact)."
        )
    try:
        return torch_load(path, map_location=map_location, trust_checkpoint=trust_checkpoint)
    except UnsafeCheckpointError:
        raise
    except Exception as err:  # torch's loaders raise many types on damaged bytes (IndexError, KeyError, ...)
        raise ValueError(
            f"{path} is not a readable checkpoint (truncated or corrupt?): {type(err).__name__}: {err}. If a save was "
            "interrupted, use the previous checkpoint (saves are atomic, so it is intact)."
        ) from err


def is_pretrained_path(path: Union[str, Path]) -> bool:
    """Whether ``path`` is a weights folder (``config.json``, ``lightning_gpt.json`` or weights inside) or a
    ``.safetensors`` file, rather than a Lightning ``.ckpt``."""
    path = Path(path)
    if path.is_dir():  # weights without a config count too: reading then says what is missing
        return any((path / name).is_file() for name in (CONFIG_FILE, NATIVE_FILE, SAFETENSORS_FILE, BIN_FILE))
    return path.suffix == ".safetensors"


def _folder(path: Union[str, Path]) -> tuple[Path, Optional[Path]]:
    """``(folder, weights file or None)`` of a folder or a ``.safetensors`` file, with clear errors."""
    path = Path(path)
    if path.suffix == ".safetensors" and not path.is_dir():
        if not path.is_file():
            raise FileNotFoundError(f"Weights file not found: {path}.")
        return path.parent, path
    if not path.is_dir():
        raise FileNotFoundError(f"Weights folder not found: {path}. Expected a folder with {LAYOUT}.")
    if not (path / CONFIG_FILE).is_file() and not (path / NATIVE_FILE).is_file():
        raise ValueError(
            f"{path} has no config.json, so it is not a Hugging Face model folder (nor a lightning-gpt export). "
            f"Expected {LAYOUT}."
        )
    return path, None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not readable JSON ({type(err).__name__}: {err}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} should hold a JSON object, got {type(data).__name__}.")
    return data
