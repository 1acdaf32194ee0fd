"""Load a trained GPT (and its tokenizer) from a checkpoint, and write checkpoints atomically.

``load_checkpoint`` needs no Lightning objects: a checkpoint saved by ``GPTModule`` holds the model config
(``gpt_config``), the tokenizer (``tokenizer``) and the weights (``state_dict``, keys prefixed ``model.``).

``AtomicCheckpointIO`` is a Lightning ``CheckpointIO`` plugin: it writes to a temporary file in the target directory,
fsyncs it and renames it into place, so a process killed mid-save (even by SIGKILL) leaves the previous checkpoint
readable and never a truncated one under the final name. It lives in ``lightning_gpt.training.checkpoint_io`` (and is
importable from here too), so that reading a checkpoint does not import Lightning.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch

from lightning_gpt.config import GPTConfig
from lightning_gpt.io.nanogpt import from_nanogpt, is_nanogpt_checkpoint
from lightning_gpt.io.serialization import UnsafeCheckpointError, read_checkpoint, torch_load
from lightning_gpt.model import GPT

__all__ = [
    "UnsafeCheckpointError",
    "find_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "model_state_dict",
    "resolve_checkpoint_config",
    "torch_load",
    "resolve_dtype",
]

log = logging.getLogger(__name__)

_PREFIXES = ("model.", "_orig_mod.", "module.")
# Fields that may differ between a checkpoint and an explicitly given config: they change no parameter shape.
NON_ARCH_FIELDS = ("dropout",)


def model_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The bare ``GPT`` weights of a checkpoint: ``model.`` / ``_orig_mod.`` (torch.compile) / ``module.`` stripped."""
    state = checkpoint.get("state_dict", checkpoint)
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        stripped = key
        while stripped.startswith(_PREFIXES):
            stripped = stripped.split(".", 1)[1]
        stripped = stripped.replace("._orig_mod.", ".")
        if key.startswith("model.") or "state_dict" not in checkpoint:
            out[stripped] = value
    return out


def resolve_checkpoint_config(saved: dict[str, Any], given: Optional[GPTConfig] = None) -> GPTConfig:
    """The config to restore a checkpoint with: the checkpoint's, checked against an explicitly given one.

    Args:
        saved: ``checkpoint["gpt_config"]``.
        given: the config the user asked for, or ``None`` to take the checkpoint's. Every architectural field must
            match; ``dropout`` may differ (the given value wins, e.g. to fine-tune with other dropout).
    """
    config = GPTConfig.from_dict(saved)
    if given is None:
        return config
    diff = [
        f"{f.name}: checkpoint {getattr(config, f.name)!r} vs given {getattr(given, f.name)!r}"
        for f in dataclasses.fields(GPTConfig)
        if f.name not in NON_ARCH_FIELDS and getattr(config, f.name) != getattr(given, f.name)
    ]
    if diff:
        raise ValueError(
            f"The checkpoint's model config does not match the given config ({', '.join(diff)}). Remove those fields "
            "from your model config (the checkpoint's are used when none is given) or use a matching checkpoint."
        )
    return dataclasses.replace(config, **{k: getattr(given, k) for k in NON_ARCH_FIELDS})


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    """A floating-point ``torch.dtype`` from its name (``"bfloat16"``, ``"bf16"``, ``"float16"``, ``"float32"``...).

    Raises:
        ValueError: for anything that is not float32, bfloat16 or float16.
    """
    value = _DTYPES.get(dtype.strip().lower().removeprefix("torch.")) if isinstance(dtype, str) else dtype
    if value not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(
            f"Unsupported dtype {dtype!r} for the model's weights; use float32, bfloat16 (bf16) or float16 (fp16)."
        )
    return value


def load_checkpoint(
    path: Union[str, Path],
    map_location: Any = "cpu",
    strict: bool = True,
    trust_checkpoint: bool = False,
    dtype: Union[None, str, torch.dtype] = None,
    tokenizer: Optional[Any] = None,
) -> tuple[GPT, Optional[Any]]:
    """Build the ``GPT`` saved in a checkpoint (or a weights folder) and its tokenizer.

    Args:
        path: a ``.ckpt`` file saved by ``GPTModule`` (Lightning ``ModelCheckpoint`` or ``trainer.save_checkpoint``);
            a ``.safetensors`` file with its JSON config beside it; or a folder written by ``lightning-gpt export``
            or by Hugging Face ``save_pretrained`` (GPT-2); or nanoGPT's ``ckpt.pt`` (``lightning_gpt.io.nanogpt``).
        map_location: device of the loaded weights.
        strict: require the weights to match the model exactly.
        trust_checkpoint: allow a full unpickle (code may run) of a file that needs it; trusted files only.
        dtype: cast the weights to this floating dtype (``"bfloat16"``, ``torch.float16``, ...), e.g. to decode at
            half the memory traffic; ``None`` keeps the saved dtype.
        tokenizer: the tokenizer of a nanoGPT ``ckpt.pt`` (default: the ``meta.pkl`` beside it, else GPT-2's BPE);
            ignored for other files, which carry their own.

    Returns:
        ``(model, tokenizer)``: the model in eval mode; the tokenizer, or ``None`` when the checkpoint holds none.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file needs a full unpickle and ``trust_checkpoint`` is off.
        ValueError: an unknown ``dtype``; a damaged or foreign file, or weights that do not fit the saved config.
    """
    from lightning_gpt.io.hf import is_pretrained_path, load_pretrained

    target_dtype = None if dtype is None else resolve_dtype(dtype)
    if is_pretrained_path(path):
        model, tokenizer = load_pretrained(path, map_location=map_location, trust_checkpoint=trust_checkpoint)
        return (model if target_dtype is None else model.to(dtype=target_dtype)), tokenizer
    checkpoint = read_checkpoint(path, map_location=map_location, trust_checkpoint=trust_checkpoint)
    if is_nanogpt_checkpoint(checkpoint):
        checkpoint = from_nanogpt(checkpoint, path, tokenizer)
    if not isinstance(checkpoint, dict) or "gpt_config" not in checkpoint:
        raise ValueError(
            f"{path} has no 'gpt_config' entry, so it was not saved by lightning_gpt's GPTModule. For Hugging Face "
            "GPT-2 weights use lightning_gpt.io.convert; for a bare state dict build GPT(config) and call "
            "load_state_dict."
        )
    config = GPTConfig.from_dict(checkpoint["gpt_config"])
    model = GPT(config)
    state = model_state_dict(checkpoint)
    if config.tie_weights and "lm_head.weight" not in state and "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as err:
        raise ValueError(f"The weights in {path} do not fit its gpt_config ({config}): {err}") from err
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    if target_dtype is not None:
        model.to(dtype=target_dtype)
    model.eval()
    tokenizer = None
    if checkpoint.get("tokenizer") is not None:
        from lightning_gpt.data.tokenizers import tokenizer_from_state_dict

        tokenizer = tokenizer_from_state_dict(checkpoint["tokenizer"])
    return model, tokenizer


def find_checkpoint(path: str) -> str:
    """Resolve a run directory to its newest checkpoint (``last.ckpt`` first), or return a file path unchanged.

    Args:
        path: a ``.ckpt`` file, a run directory (``runs/quickstart``) or its ``checkpoints`` folder.
    """
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"Checkpoint {path!r} does not exist. Pass a .ckpt file or a run directory such as runs/quickstart "
            "(train one with: lightning-gpt fit --config recipes/quickstart.yaml)."
        )
    for folder in (os.path.join(path, "checkpoints"), path):
        if not os.path.isdir(folder):
            continue
        ckpts = [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".ckpt")]
        ckpts = [c for c in ckpts if os.path.isfile(c)] or [
            c
            for c in [os.path.join(folder, "ckpt.pt")]
            if os.path.isfile(c)  # a nanoGPT out_dir
        ]
        if ckpts:
            lasts = [c for c in ckpts if os.path.basename(c).startswith("last")]
            return max(lasts or ckpts, key=os.path.getmtime)
    raise FileNotFoundError(
        f"No .ckpt file in {path!r} or {os.path.join(path, 'checkpoints')!r}. Train first (lightning-gpt fit ...) or "
        "pass the checkpoint file itself."
    )
