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
    "read_model_checkpoint",
    "read_sharded_checkpoint",
    "check_checkpoint_contents",
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

    The saved config is compared with the weights' names, shapes and dtypes before the model is built (the file is
    memory-mapped, so the tensors are not read for that): a config that does not describe the weights is one
    paragraph, however large it claims the model is.

    Args:
        path: a ``.ckpt`` file saved by ``GPTModule`` (Lightning ``ModelCheckpoint`` or ``trainer.save_checkpoint``);
            a sharded ``.ckpt`` folder of ``FSDP2Strategy`` (``lightning_gpt.io.sharded``, consolidated as it loads);
            a run folder (``runs/quickstart``) or its ``checkpoints`` folder, whose newest complete checkpoint is
            loaded; a ``.safetensors`` file with its JSON config beside it; a folder written by ``lightning-gpt
            export`` or by Hugging Face ``save_pretrained`` (GPT-2); or nanoGPT's ``ckpt.pt`` or ``out_dir``
            (``lightning_gpt.io.nanogpt``).
        map_location: device of the loaded weights.
        strict: require the weights to match the model exactly (shapes and dtypes are checked either way).
        trust_checkpoint: allow a full unpickle (code may run) of a file that needs it; trusted files only.
        dtype: cast the weights to this floating dtype (``"bfloat16"``, ``torch.float16``, ...), e.g. to decode at
            half the memory traffic; ``None`` keeps the saved dtype.
        tokenizer: the tokenizer of a nanoGPT ``ckpt.pt`` (default: the ``meta.pkl`` beside it, else GPT-2's BPE);
            ignored for other files, which carry their own.

    Returns:
        ``(model, tokenizer)``: the model in eval mode; the tokenizer, or ``None`` when the checkpoint holds none.

    Raises:
        FileNotFoundError: no such file, or a folder without checkpoints.
        UnsafeCheckpointError: the file needs a full unpickle and ``trust_checkpoint`` is off.
        ValueError: an unknown ``dtype``; a damaged or foreign file; weights that do not match the saved config
            (missing, unexpected, differently shaped or non-float tensors, named); a malformed tokenizer.
    """
    from lightning_gpt.io.hf import is_pretrained_path, load_pretrained

    target_dtype = None if dtype is None else resolve_dtype(dtype)
    if is_pretrained_path(path):
        model, tokenizer = load_pretrained(path, map_location=map_location, trust_checkpoint=trust_checkpoint)
        return (model if target_dtype is None else model.to(dtype=target_dtype)), tokenizer
    from lightning_gpt.io.sharded import is_sharded_checkpoint, load_sharded_weights

    if Path(path).is_dir() and not is_sharded_checkpoint(path):
        path = find_checkpoint(str(path))
    if is_sharded_checkpoint(path):  # sizes checked against .metadata first, then the shards read into the model
        config, _, tokenizer, _ = read_sharded_checkpoint(path, trust_checkpoint=trust_checkpoint, strict=strict)
        model = GPT(config)
        load_sharded_weights(path, model.state_dict(), trust_checkpoint=trust_checkpoint)
    else:
        config, state, tokenizer = read_model_checkpoint(
            path, trust_checkpoint=trust_checkpoint, strict=strict, tokenizer=tokenizer
        )
        model = GPT(config)
        try:
            model.load_state_dict(state, strict=strict)
        except RuntimeError as err:
            raise ValueError(f"The weights in {path} do not fit its gpt_config ({config}): {err}") from err
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    if target_dtype is not None:
        model.to(dtype=target_dtype)
    model.eval()
    return model, tokenizer


def check_checkpoint_contents(
    checkpoint: Any, path: object, strict: bool = True, given: Optional[GPTConfig] = None
) -> tuple[GPTConfig, dict[str, torch.Tensor], Optional[Any]]:
    """Check what a ``GPTModule`` checkpoint holds before anything is built from it: its ``gpt_config`` (and
    ``given``) against its weights' names, shapes and dtypes, and its tokenizer state.

    Args:
        checkpoint: the dict read from the file (tensors may be memory-mapped: only shapes and dtypes are read).
        path: how to name the file in messages.
        strict: refuse missing and unexpected tensors too (shapes and dtypes are always checked).
        given: another config about to be built for these weights (e.g. the command line's), checked too.

    Returns:
        ``(config, state, tokenizer)``: its ``gpt_config``, the bare ``GPT`` weights (``lm_head.weight`` added when
        tied), and its tokenizer (``None`` when it holds none).

    Raises:
        ValueError: no ``gpt_config`` entry, a malformed one, weights that do not match it (or ``given``), or a
            malformed tokenizer state; one paragraph naming the file and the tensors.
    """
    from lightning_gpt.io.tokenizer import tokenizer_from_state
    from lightning_gpt.io.weights import check_weights, config_from_entry

    if not isinstance(checkpoint, dict) or "gpt_config" not in checkpoint:
        raise ValueError(
            f"{path} has no 'gpt_config' entry, so it was not saved by lightning_gpt's GPTModule. For Hugging Face "
            "GPT-2 weights use lightning_gpt.io.convert; for a bare state dict build GPT(config) and call "
            "load_state_dict."
        )
    config = config_from_entry(checkpoint["gpt_config"], f"{path}'s gpt_config")
    state = model_state_dict(checkpoint)
    check_weights(config, state, path, "the gpt_config saved with them", strict=strict)
    if given is not None:
        check_weights(given, state, path, "the model config given on the command line (or in --config)", strict=strict)
    if config.tie_weights and "lm_head.weight" not in state and "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    tokenizer = checkpoint.get("tokenizer")
    if tokenizer is not None:
        tokenizer = tokenizer_from_state(tokenizer, f"{path} (its tokenizer entry)")
    return config, state, tokenizer


def read_model_checkpoint(
    path: Union[str, Path],
    trust_checkpoint: bool = False,
    strict: bool = True,
    given: Optional[GPTConfig] = None,
    tokenizer: Optional[Any] = None,
) -> tuple[GPTConfig, dict[str, torch.Tensor], Optional[Any]]:
    """Read a ``GPTModule`` checkpoint memory-mapped (its tensors are read only when used) and check it with
    ``check_checkpoint_contents``; nothing is built.

    Args:
        path: the ``.ckpt`` file.
        trust_checkpoint: allow a full unpickle (code may run) of a file that needs it.
        strict: see ``check_checkpoint_contents``.
        given: see ``check_checkpoint_contents``.
        tokenizer: the tokenizer of a nanoGPT ``ckpt.pt`` (see ``load_checkpoint``); ignored for other files.

    Returns:
        ``(config, state, tokenizer)``, see ``check_checkpoint_contents``.

    Raises:
        FileNotFoundError: no such file. UnsafeCheckpointError: it needs a full unpickle, without
            ``trust_checkpoint``. ValueError: see ``read_checkpoint`` and ``check_checkpoint_contents``.
    """
    from lightning_gpt.io.sharded import is_sharded_checkpoint, load_sharded_weights

    if is_sharded_checkpoint(path):  # checked from .metadata, then consolidated into tensors of the checked sizes
        config, specs, saved_tokenizer, _ = read_sharded_checkpoint(path, trust_checkpoint, strict, given)
        state = {name: torch.empty(spec.shape, dtype=spec.dtype) for name, spec in specs.items()}
        load_sharded_weights(path, state, trust_checkpoint=trust_checkpoint)
        if config.tie_weights and "transformer.wte.weight" in state:
            state["lm_head.weight"] = state["transformer.wte.weight"]
        return config, state, saved_tokenizer
    checkpoint = read_checkpoint(path, map_location="cpu", trust_checkpoint=trust_checkpoint, mmap=True)
    if is_nanogpt_checkpoint(checkpoint):  # nanoGPT's ckpt.pt: its model_args, weights and meta.pkl (or GPT-2 BPE)
        checkpoint = from_nanogpt(checkpoint, path, tokenizer)
    return check_checkpoint_contents(checkpoint, path, strict=strict, given=given)


def read_sharded_checkpoint(
    path: Union[str, Path], trust_checkpoint: bool = False, strict: bool = True, given: Optional[GPTConfig] = None
) -> tuple[GPTConfig, dict[str, torch.Tensor], Optional[Any], dict[str, Any]]:
    """Check a sharded ``FSDP2Strategy`` checkpoint folder (``lightning_gpt.io.sharded``) without reading its tensors:
    the sizes and dtypes in its ``.metadata`` against its ``gpt_config`` (and ``given``).

    Args:
        path: the folder.
        trust_checkpoint: allow a full unpickle of ``meta.pt`` / ``.metadata`` (code may run).
        strict: see ``check_checkpoint_contents``.
        given: see ``check_checkpoint_contents``.

    Returns:
        ``(config, specs, tokenizer, meta)``: as ``check_checkpoint_contents``, the weights as meta tensors; and the
        folder's ``meta.pt`` dict (loop counters, hyperparameters...).

    Raises:
        UnsafeCheckpointError: ``meta.pt`` or ``.metadata`` needs a full unpickle and ``trust_checkpoint`` is off.
        ValueError: a damaged folder; sizes that do not fit the config (one paragraph; nothing allocated).
    """
    from lightning_gpt.io.sharded import read_sharded_index

    contents, meta = read_sharded_index(path, trust_checkpoint=trust_checkpoint)
    config, specs, tokenizer = check_checkpoint_contents(contents, path, strict=strict, given=given)
    return config, specs, tokenizer, meta


def check_config_for_checkpoint(given: Any, path: Union[str, Path], trust_checkpoint: bool = False) -> None:
    """Check a model config that is about to be built and then loaded from ``path`` against the weights in ``path``.

    ``vocab_size`` is exempt: ``GPTModule`` takes it from the tokenizer before the weights are loaded (and checks it
    against the checkpoint there).

    Args:
        given: the config (a ``GPTConfig``, a dict of its fields, or an object with ``as_dict()`` such as a
            jsonargparse namespace); ``None`` checks nothing.
        path: the ``.ckpt`` file.
        trust_checkpoint: allow a full unpickle (code may run) of a file that needs it.

    Raises:
        ValueError: the config does not describe the weights (one paragraph naming the tensors).
    """
    if given is None:
        return
    from lightning_gpt.io.weights import config_from_entry

    if isinstance(given, GPTConfig):
        fields = given.to_dict()
    else:
        fields = dict(given.as_dict() if hasattr(given, "as_dict") else given)
    saved, _, _ = read_model_checkpoint(path, trust_checkpoint=trust_checkpoint)  # the saved config fits the weights
    fields["vocab_size"] = saved.vocab_size
    # ... and the given one must equal it (the field-level message of GPTModule's own check, before anything is built)
    resolve_checkpoint_config(saved.to_dict(), config_from_entry(fields, "the model config"))


def _checkpoint_step(path: str) -> Optional[int]:
    """The ``global_step`` of a checkpoint that loads weights-only (tensors memory-mapped, not read), else ``None``;
    of a sharded folder, from its ``meta.pt``."""
    from lightning_gpt.io.sharded import is_sharded_checkpoint

    if os.path.isdir(path):
        if not is_sharded_checkpoint(path):
            return None
        try:
            meta = read_checkpoint(os.path.join(path, "meta.pt"), map_location="cpu")
        except (ValueError, OSError):
            return None
        step = meta.get("global_step", 0) if isinstance(meta, dict) else None
        return int(step) if isinstance(step, int) else None
    try:
        checkpoint = read_checkpoint(path, map_location="cpu", mmap=True)
    except (ValueError, OSError):
        return None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        return None
    step = checkpoint.get("global_step", 0)
    return int(step) if isinstance(step, int) else 0


def find_checkpoint(path: str) -> str:
    """Resolve a run folder to its newest complete checkpoint, or return a file path unchanged.

    Newest complete: of the ``.ckpt`` files (or sharded ``.ckpt`` folders) that load (weights-only), the one with the
    highest ``global_step``, ``last.ckpt`` first among equals, then the newest file. Damaged files are passed over with
    a warning; when none loads, the newest file is returned so that loading it names the problem.

    Args:
        path: a ``.ckpt`` file, a run folder (``runs/quickstart``) or its ``checkpoints`` folder.

    Raises:
        FileNotFoundError: no such path, or no ``.ckpt`` file in the folder.
    """
    from lightning_gpt.io.sharded import is_sharded_checkpoint

    if os.path.isfile(path) or is_sharded_checkpoint(path):
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
        ckpts = [c for c in ckpts if os.path.isfile(c) or is_sharded_checkpoint(c)] or [
            c
            for c in [os.path.join(folder, "ckpt.pt")]
            if os.path.isfile(c)  # a nanoGPT out_dir
        ]
        if not ckpts:
            continue
        # Preference among equal steps: last.ckpt, then the newest file.
        ckpts.sort(key=lambda c: (os.path.basename(c).startswith("last"), os.path.getmtime(c)), reverse=True)
        steps = {c: _checkpoint_step(c) for c in ckpts}
        readable = [c for c in ckpts if steps[c] is not None]
        if not readable:
            return ckpts[0]
        best = max(readable, key=lambda c: steps[c] or 0)  # max keeps the first of equals: the preferred one
        skipped = [os.path.basename(c) for c in ckpts if steps[c] is None]
        if skipped:
            log.warning("%s: passed over %s (cannot be read); using %s.", folder, ", ".join(skipped), best)
        return best
    raise FileNotFoundError(
        f"No .ckpt file in {path!r} or {os.path.join(path, 'checkpoints')!r}. Train first (lightning-gpt fit ...) or "
        "pass the checkpoint file itself."
    )
