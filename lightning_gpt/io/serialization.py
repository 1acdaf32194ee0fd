"""Reading files safely, below every other module: ``torch.load`` that runs no code unless the user opts in, and
what a weights folder looks like.

Everything here imports only torch, so checkpoint reading (``lightning_gpt.io.checkpoint``), weights folders
(``lightning_gpt.io.hf``) and tokenizer loading (``lightning_gpt.data.tokenizers``) share it without importing each
other in a circle.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Optional, Union

import torch

from lightning_gpt.jsonfile import read_json

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

    A refusal of the weights-only unpickler (``pickle.UnpicklingError``) is classified by what the file holds, not
    by the wording of PyTorch's message (which changes between versions): the pickle is disassembled without running
    it (``torch.serialization.get_unsafe_globals_in_checkpoint``), and if it names classes or functions outside
    PyTorch's allowlist the file is refused with ``UnsafeCheckpointError``; otherwise it is damaged and the original
    error propagates.

    Args:
        source: a path or a binary file object.
        map_location: where tensors go.
        trust_checkpoint: allow a full unpickle (``weights_only=False``); only for files from a trusted source.
        name: how to name the file in the error (default: ``source``).
        mmap: memory-map the file instead of reading it (a path only; PyTorch's zip format only, other files are read
            in full): the tensors' data is read when it is used, so shapes can be checked first.

    Returns:
        What ``torch.load`` returns.

    Raises:
        UnsafeCheckpointError: the file needs a full unpickle and ``trust_checkpoint`` is off.
    """
    kwargs = {"mmap": True} if mmap and isinstance(source, (str, os.PathLike)) and _is_zip(source) else {}
    if trust_checkpoint:
        return torch.load(source, map_location=map_location, weights_only=False, **kwargs)
    try:
        return torch.load(source, map_location=map_location, weights_only=True, **kwargs)
    except pickle.UnpicklingError:
        unsafe = _unsafe_globals(source)
        if not unsafe:
            raise  # damaged bytes, not a forbidden object
    shown = ", ".join(unsafe[:4]) + (f" and {len(unsafe) - 4} more" if len(unsafe) > 4 else "")
    raise UnsafeCheckpointError(
        f"{name if name is not None else source} holds more than tensors and plain data (it names {shown}), so it "
        "was not loaded: rebuilding those objects means unpickling, which can run any code the file contains. "
        "lightning-gpt writes checkpoints that load safely; load this one only if you trust where it came from, with "
        "trust_checkpoint=True (Python) or --trust_checkpoint (command line)."
    ) from None


def _is_zip(path: Union[str, os.PathLike[str]]) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _unsafe_globals(source: Any) -> list[str]:
    """The classes and functions a checkpoint's pickle names outside PyTorch's weights-only allowlist, found by
    disassembling it (nothing runs); ``[]`` when there are none or the bytes cannot be disassembled (damaged)."""
    try:
        if hasattr(source, "seek"):
            source.seek(0)
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(source))
    except Exception:  # noqa: BLE001 - not PyTorch's zip format: the legacy format, or damaged bytes
        pass
    try:
        if hasattr(source, "seek"):
            source.seek(0)
            return _legacy_globals(source)
        with open(source, "rb") as f:
            return _legacy_globals(f)
    except Exception:  # noqa: BLE001 - damaged bytes
        return []


def _legacy_globals(f: Any) -> list[str]:
    """Globals named by the pickles at the start of a legacy-format ``torch.save`` file (magic number, protocol,
    system info, then the object), other than ``torch``'s own and ``collections.OrderedDict``."""
    import pickletools

    found: list[str] = []
    for _ in range(4):
        strings: list[str] = []
        for opcode, arg, _pos in pickletools.genops(f):
            if opcode.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    safe = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set")
    return sorted({g for g in found if not g.startswith(safe)})


def read_checkpoint(
    path: Union[str, Path], map_location: Any = "cpu", trust_checkpoint: bool = False, mmap: bool = False
) -> dict[str, Any]:
    """``torch.load`` a checkpoint file with clear errors for a missing, unreadable, foreign or unsafe file.

    Loads with ``weights_only=True``: no code in the file runs. A file that needs a full unpickle is refused unless
    ``trust_checkpoint`` is set (never retried silently).

    Args:
        path: the ``.ckpt`` file.
        map_location: where tensors go (``"cpu"`` by default).
        trust_checkpoint: allow a full unpickle of a file from a trusted source.
        mmap: memory-map the tensors (read when used), so their shapes can be checked before anything is built.

    Returns:
        The checkpoint dict.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file needs a full unpickle and ``trust_checkpoint`` is off.
        ValueError: a directory, an empty, truncated or foreign file.
    """
    path = Path(path)
    if path.is_dir():
        if (path / ".metadata").is_file():
            raise ValueError(
                f"{path} is a sharded (distributed) checkpoint folder, not a file. Load it with "
                "lightning_gpt.io.checkpoint.load_checkpoint (lightning-gpt export, generate and evaluate read it "
                "too), or convert it to one file with torch.distributed.checkpoint.format_utils.dcp_to_torch_save."
            )
        raise ValueError(
            f"{path} is a folder, not a checkpoint file: pass one of its .ckpt files, or give the run folder to "
            "load_checkpoint / --ckpt_path, which pick its newest complete checkpoint."
        )
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint file not found: {path}. Check the path (e.g. --ckpt_path).")
    if path.stat().st_size == 0:
        raise ValueError(
            f"{path} is not a readable checkpoint (truncated or corrupt?): the file is empty. Use the previous "
            "checkpoint of the run (saves are atomic, so it is intact)."
        )
    try:
        return torch_load(path, map_location=map_location, trust_checkpoint=trust_checkpoint, mmap=mmap)
    except UnsafeCheckpointError:
        raise
    except Exception as err:  # torch's loaders raise many types on damaged bytes (IndexError, KeyError, ...)
        reason = (str(err).strip().splitlines() or [""])[0]  # PyTorch's advice that follows is about other cases
        raise ValueError(
            f"{path} is not a readable checkpoint (truncated or corrupt?): {type(err).__name__}: {reason}. If a save "
            "was interrupted, use the previous checkpoint (saves are atomic, so it is intact)."
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
        data = read_json(path)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not readable JSON ({type(err).__name__}: {err}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} should hold a JSON object, got {type(data).__name__}.")
    return data


_ST_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def write_safetensors(tensors: dict[str, torch.Tensor], f: Any, metadata: Optional[dict[str, str]] = None) -> None:
    """Write ``tensors`` to the open binary file ``f`` in the safetensors format, one tensor at a time.

    Our own writer rather than ``safetensors.torch.save_file`` because that one reports a full disk as an opaque
    ``SafetensorError`` (no errno: no way to tell the user "the disk is full"), writes from Rust where no Python
    cleanup can follow a signal, and sets the file's mode to 0600. The format is small and fixed
    (https://github.com/huggingface/safetensors#format): an 8-byte little-endian header length, a JSON header
    (``{name: {dtype, shape, data_offsets}}`` plus ``__metadata__``) padded with spaces to 8 bytes, then the tensors'
    bytes, back to back in header order. The files load with ``safetensors`` and ``transformers``
    (``tests/io/test_hf.py``).

    Args:
        tensors: name -> CPU tensor (any layout; written contiguous, in the machine's little-endian byte order).
        f: a binary file opened for writing.
        metadata: the header's ``__metadata__`` (string values).

    Raises:
        ValueError: a dtype safetensors cannot store. OSError: from ``f.write`` (full disk, ...).
    """
    import struct
    import sys

    if sys.byteorder != "little":  # pragma: no cover - safetensors stores little-endian bytes
        raise ValueError("write_safetensors needs a little-endian machine; use safetensors.torch.save_file.")
    # safetensors' own order: larger element sizes first (keeps every tensor aligned), then by name.
    names = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name in names:
        tensor = tensors[name]
        if tensor.dtype not in _ST_DTYPES:
            raise ValueError(f"tensor {name} has dtype {tensor.dtype}, which safetensors cannot store.")
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _ST_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    for name in names:
        tensor = tensors[name].detach().cpu().contiguous()
        if tensor.numel():
            f.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
