"""Start a model from existing weights (``GPTModule(init_from=PATH)``, ``lightning-gpt fit --model.init_from PATH``).

PATH is a Hugging Face GPT-2 folder, a ``lightning-gpt export`` folder (or a ``.safetensors`` file in one), one of
this package's ``.ckpt`` checkpoints, or nanoGPT's ``ckpt.pt`` (``lightning_gpt.io.nanogpt``). The architecture comes
from PATH; the fields that no weight depends on (dropout and the attention kind with its options) may be changed, and
``block_size`` may shrink (the position table is cropped, as nanoGPT's ``crop_block_size`` does). Only the weights are
taken: the optimizer, the step and the schedule start fresh.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, Union

import torch

from lightning_gpt.config import GPTConfig

__all__ = ["WEIGHT_FREE_FIELDS", "init_config", "init_state_dict", "init_tokenizer_state", "resolve_init_config"]

# GPTConfig fields that no parameter depends on: they may differ from the init source.
WEIGHT_FREE_FIELDS = (
    "dropout",
    "attention",
    "attention_window",
    "attention_stride",
    "sparse_pattern",
    "n_global_tokens",
    "feature_map",
    "linear_chunk_size",
)


# Init sources the user allowed to be fully unpickled in this process (``init_config(..., trust_checkpoint=True)``,
# as ``--trust_checkpoint`` does before the module is built): the module's own reads of the same file, which cannot
# see the command-line flag, honour that opt-in instead of refusing the file a second time.
_TRUSTED: set[str] = set()


def _trusted(path: Union[str, Path], trust_checkpoint: bool) -> bool:
    return trust_checkpoint or str(Path(path).resolve()) in _TRUSTED


def _is_folder(path: Union[str, Path]) -> bool:
    from lightning_gpt.io.hf import is_pretrained_path

    return is_pretrained_path(path)


def _checkpoint(path: Union[str, Path], trust_checkpoint: bool) -> dict[str, Any]:
    from lightning_gpt.io.checkpoint import read_checkpoint
    from lightning_gpt.io.nanogpt import from_nanogpt, is_nanogpt_checkpoint
    from lightning_gpt.io.sharded import is_sharded_checkpoint, read_sharded_index

    if is_sharded_checkpoint(path):  # FSDP2's folder: its config, tokenizer and tensor sizes (nothing read yet)
        return read_sharded_index(path, trust_checkpoint=trust_checkpoint)[0]
    checkpoint = read_checkpoint(path, trust_checkpoint=trust_checkpoint, mmap=True)
    if is_nanogpt_checkpoint(checkpoint):  # nanoGPT's ckpt.pt: its model_args, weights and meta.pkl (or GPT-2 BPE)
        checkpoint = from_nanogpt(checkpoint, path)
    if not isinstance(checkpoint, dict) or "gpt_config" not in checkpoint:
        raise ValueError(
            f"init_from={str(path)!r} has no 'gpt_config' entry, so it was not saved by lightning-gpt. Pass a "
            "lightning-gpt checkpoint, an exported folder, or a Hugging Face GPT-2 folder (config.json + "
            "model.safetensors)."
        )
    return checkpoint


def _check_exists(path: Union[str, Path]) -> None:
    if not Path(path).exists():
        raise FileNotFoundError(
            f"init_from={str(path)!r} does not exist. Pass a Hugging Face GPT-2 folder (config.json, "
            "model.safetensors, tokenizer.json), a folder written by lightning-gpt export, or a .ckpt file."
        )


def init_config(path: Union[str, Path], trust_checkpoint: bool = False) -> GPTConfig:
    """The ``GPTConfig`` stored at ``path`` (a weights folder, a ``.safetensors`` file, a ``.ckpt`` file or FSDP2's
    sharded ``.ckpt`` folder).

    Args:
        path: the init source.
        trust_checkpoint: allow a ``.ckpt`` that needs a full unpickle (code may run).

    Raises:
        FileNotFoundError: no such path. ValueError: not a GPT-2 / lightning-gpt source.
    """
    _check_exists(path)
    if trust_checkpoint:
        _TRUSTED.add(str(Path(path).resolve()))
    trust_checkpoint = _trusted(path, trust_checkpoint)
    if _is_folder(path):
        from lightning_gpt.io.hf import read_pretrained_config

        return read_pretrained_config(path, trust_checkpoint=trust_checkpoint)  # checked against the weights
    from lightning_gpt.io.sharded import is_sharded_checkpoint

    if Path(path).is_dir() and not is_sharded_checkpoint(path):
        raise ValueError(
            f"init_from={str(path)!r} is a folder without config.json, so it is not a Hugging Face model folder. "
            "Expected config.json, model.safetensors or pytorch_model.bin, and tokenizer.json (or vocab.json + "
            "merges.txt); for a training run's folder pass its checkpoints/last.ckpt."
        )
    from lightning_gpt.io.checkpoint import read_model_checkpoint

    _checkpoint(path, trust_checkpoint)  # one paragraph for a foreign file
    return read_model_checkpoint(path, trust_checkpoint=trust_checkpoint)[0]  # checked against the weights


def resolve_init_config(path: Union[str, Path], given: Optional[GPTConfig] = None) -> GPTConfig:
    """The config to build before loading the weights at ``path``: PATH's, with ``given``'s weight-free fields.

    Args:
        path: the init source.
        given: the config the user asked for, or ``None`` to take PATH's. Every field a weight depends on must match
            PATH's, except ``block_size``, which may be smaller (the position table is cropped).

    Returns:
        The config.

    Raises:
        ValueError: a field of ``given`` contradicts PATH's weights (the message names it).
    """
    source = init_config(path)
    if given is None:
        return source
    diff = []
    for field in dataclasses.fields(GPTConfig):
        mine, theirs = getattr(given, field.name), getattr(source, field.name)
        if field.name in WEIGHT_FREE_FIELDS or mine == theirs:
            continue
        if field.name == "block_size" and mine < theirs:
            continue
        diff.append(f"{field.name}: init_from has {theirs!r}, given {mine!r}")
    if diff:
        raise ValueError(
            f"model.config does not match the weights of init_from={str(path)!r} ({'; '.join(diff)}). The "
            "architecture comes from init_from: remove those fields from the model config (dropout, the attention "
            "kind and its options may differ, and block_size may be smaller)."
        )
    return dataclasses.replace(
        source, block_size=given.block_size, **{name: getattr(given, name) for name in WEIGHT_FREE_FIELDS}
    )


def init_state_dict(path: Union[str, Path], config: GPTConfig, trust_checkpoint: bool = False) -> dict[str, Any]:
    """The weights at ``path`` under ``GPT``'s names, fitted to ``config`` (position table cropped to its
    ``block_size``).

    Args:
        path: the init source.
        config: the config the model was built with (see ``resolve_init_config``).
        trust_checkpoint: allow a ``.ckpt`` / ``.bin`` that needs a full unpickle (code may run).
    """
    trust_checkpoint = _trusted(path, trust_checkpoint)
    if _is_folder(path):
        from lightning_gpt.io.hf import read_pretrained

        _, state, _ = read_pretrained(path, trust_checkpoint=trust_checkpoint)
    else:
        from lightning_gpt.io.checkpoint import read_model_checkpoint

        _checkpoint(path, trust_checkpoint)
        state = read_model_checkpoint(path, trust_checkpoint=trust_checkpoint)[1]
    wpe = state.get("transformer.wpe.weight")
    if isinstance(wpe, torch.Tensor) and wpe.shape[0] > config.block_size:
        state["transformer.wpe.weight"] = wpe[: config.block_size]
    return state


def init_tokenizer_state(path: Union[str, Path], trust_checkpoint: bool = False) -> Optional[dict[str, Any]]:
    """The tokenizer state stored at ``path`` (checked: a malformed one is a ``ValueError`` naming the file), or
    ``None`` when it holds none."""
    trust_checkpoint = _trusted(path, trust_checkpoint)
    if _is_folder(path):
        from lightning_gpt.io.tokenizer import read_pretrained_tokenizer

        return read_pretrained_tokenizer(path)
    from lightning_gpt.io.tokenizer import tokenizer_from_state

    state = _checkpoint(path, trust_checkpoint).get("tokenizer")
    if state is not None:
        tokenizer_from_state(state, f"{path} (its tokenizer entry)")
    return state
