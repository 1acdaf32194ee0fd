"""nanoGPT checkpoints (``ckpt.pt``) as this package's models: ``from_nanogpt`` turns one into a checkpoint dict of
our own layout, so every loader (``load_checkpoint``, ``init_from``, ``load_tokenizer``) reads it through one hook.

What nanoGPT's ``train.py`` saves (karpathy/nanoGPT, ``train.py``): ``{"model": raw_model.state_dict(), "optimizer":
..., "model_args": {n_layer, n_head, n_embd, block_size, bias, vocab_size, dropout}, "iter_num": int,
"best_val_loss": tensor or float, "config": {str: int/float/bool/str}}``. All of it is tensors and plain data, so it
loads with ``torch.load(weights_only=True)``: no code runs. A compiled run (``compile=True``, the default) saves the
weights under an ``_orig_mod.`` prefix; PyTorch < 2.0 runs keep the causal mask buffer ``transformer.h.N.attn.bias``.
Both are handled here. nanoGPT's MLP uses ``nn.GELU()`` (exact), so the config gets ``activation="gelu"``; its
LayerNorm epsilon is 1e-5 and its head is tied to the token embedding.

The tokenizer: the one given, else the ``meta.pkl`` beside the checkpoint (a character vocabulary: ``{"vocab_size",
"stoi", "itos"}``, read with an unpickler that accepts only dicts, lists, strings and ints), else GPT-2's BPE
(``tiktoken:gpt2``), as nanoGPT's ``sample.py`` does.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any, Optional, Union

import torch

from lightning_gpt.config import GPTConfig, is_int
from lightning_gpt.data.tokenizer_base import Tokenizer

__all__ = ["META_FILE", "from_nanogpt", "is_nanogpt_checkpoint", "nanogpt_config", "read_meta"]

META_FILE = "meta.pkl"
_PREFIXES = ("_orig_mod.", "module.")
_LAYER = re.compile(r"^transformer\.h\.(\d+)\.")
_MASK_BUFFER = re.compile(r"^transformer\.h\.\d+\.attn\.bias$")  # the causal mask of nanoGPT's slow path
_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")
_META_MAX_BYTES = 64 << 20


def is_nanogpt_checkpoint(checkpoint: Any) -> bool:
    """Whether a loaded checkpoint dict is nanoGPT's (``model_args`` + ``model``) rather than this package's."""
    return (
        isinstance(checkpoint, dict)
        and isinstance(checkpoint.get("model_args"), dict)
        and isinstance(checkpoint.get("model"), dict)
        and "gpt_config" not in checkpoint
    )


def _state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """nanoGPT's weights under ``GPT``'s names (the same names once the compile prefix and mask buffers are gone)."""
    out = {}
    for key, value in checkpoint["model"].items():
        if not isinstance(value, torch.Tensor):
            continue
        while key.startswith(_PREFIXES):
            key = key.split(".", 1)[1]
        if _MASK_BUFFER.match(key):
            continue
        out[key] = value
    return out


def nanogpt_config(model_args: dict[str, Any], state: dict[str, torch.Tensor], name: str = "ckpt.pt") -> GPTConfig:
    """The ``GPTConfig`` of a nanoGPT model, checked against its tensors before anything is allocated.

    Args:
        model_args: ``checkpoint["model_args"]``.
        state: the weights (``from_nanogpt`` strips the compile prefix first).
        name: the file, for messages.

    Returns:
        The config: ``vocab_size`` = the embedding's rows (``from_nanogpt`` narrows it to the tokenizer), exact GELU.

    Raises:
        ValueError: a missing or non-integer argument, or one that disagrees with the tensors (the message names it).
    """
    bad = [k for k in _ARGS if not is_int(model_args.get(k)) or model_args[k] < 1]
    if bad:
        raise ValueError(
            f"{name}: model_args has no positive integer {', '.join(bad)} (got {model_args!r}), so it is not a "
            "nanoGPT checkpoint this package can read."
        )
    wte, wpe = state.get("transformer.wte.weight"), state.get("transformer.wpe.weight")
    if wte is None or wpe is None or wte.dim() != 2 or wpe.dim() != 2:
        raise ValueError(f"{name}: the weights have no 2-D transformer.wte.weight / transformer.wpe.weight.")
    layers = {int(m.group(1)) for k in state if (m := _LAYER.match(k))}
    found = {
        "vocab_size": wte.shape[0],
        "n_embd": wte.shape[1],
        "block_size": wpe.shape[0],
        "n_layer": len(layers),
    }
    wrong = [f"{k}={model_args[k]} but the weights have {v}" for k, v in found.items() if model_args[k] != v]
    if layers != set(range(len(layers))):
        wrong.append(f"layer numbers {sorted(layers)} are not 0..{len(layers) - 1}")
    bias = bool(model_args.get("bias", True))
    if bias != ("transformer.ln_f.bias" in state):
        wrong.append(f"bias={bias} but the weights {'lack' if bias else 'have'} biases")
    if wrong:
        raise ValueError(
            f"{name}: model_args does not describe the weights it was saved with ({'; '.join(wrong)}). The file is "
            "damaged or was edited; use the ckpt.pt that nanoGPT's train.py wrote."
        )
    dropout = model_args.get("dropout", 0.0)
    return GPTConfig(
        vocab_size=found["vocab_size"],
        block_size=found["block_size"],
        n_layer=found["n_layer"],
        n_head=int(model_args["n_head"]),
        n_embd=found["n_embd"],
        dropout=float(dropout) if isinstance(dropout, (int, float)) else 0.0,
        bias=bias,
        activation="gelu",  # nanoGPT's MLP: nn.GELU(), the exact form
        tie_weights=True,
        layer_norm_eps=1e-5,
    )


class _Refused(pickle.UnpicklingError):
    """The pickle names a class or function (``GLOBAL``), which ``_MetaUnpickler`` never loads."""


class _MetaUnpickler(pickle.Unpickler):
    """Rebuilds only plain data: no class or function may be loaded (so no code in the file runs)."""

    def find_class(self, module: str, name: str) -> Any:
        raise _Refused(f"{module}.{name}")


def read_meta(path: Union[str, Path]) -> Tokenizer:
    """The character vocabulary of a nanoGPT ``meta.pkl`` as a ``VocabTokenizer``, read without running code.

    Args:
        path: the ``meta.pkl`` file.

    Raises:
        ValueError: a file that holds anything but a dict of plain data (objects, functions), or a vocabulary that is
            not ``stoi``/``itos`` of single characters.
    """
    from lightning_gpt.data.vocab_tokenizer import VocabTokenizer

    path = Path(path)
    fix = "Pass the tokenizer explicitly (e.g. --tokenizer tiktoken:gpt2) or move the file away."
    size = path.stat().st_size
    if size > _META_MAX_BYTES:
        raise ValueError(f"{path} is {size} bytes: too large for a character vocabulary (a meta.pkl is small). {fix}")
    data = path.read_bytes()
    try:
        meta = _MetaUnpickler(io.BytesIO(data)).load()
    except _Refused as err:
        raise ValueError(
            f"{path} was not read: it holds {err} or other non-plain data (a nanoGPT meta.pkl is a dict of strings "
            f"and integers), and unpickling objects could run code from the file. {fix}"
        ) from None
    except Exception as err:  # noqa: BLE001 - truncated or random bytes raise many types
        raise ValueError(f"{path} is not a readable pickle ({type(err).__name__}: {err}). {fix}") from None
    stoi, itos = (meta.get("stoi"), meta.get("itos")) if isinstance(meta, dict) else (None, None)
    if not isinstance(stoi, dict) or not isinstance(itos, dict):
        raise ValueError(f"{path} has no 'stoi' and 'itos' dicts, so it is not a nanoGPT character vocabulary. {fix}")
    try:
        return VocabTokenizer.from_mappings(stoi, itos)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: {err} {fix}") from None


def _default_tokenizer(path: Optional[Union[str, Path]]) -> Tokenizer:
    meta = None if path is None else Path(path).with_name(META_FILE)
    if meta is not None and meta.is_file():
        return read_meta(meta)
    from lightning_gpt.data.tiktoken_tokenizer import TiktokenTokenizer

    try:
        return TiktokenTokenizer("gpt2")
    except (ImportError, ValueError) as err:
        raise ValueError(
            f"{path} is a nanoGPT checkpoint without a {META_FILE} beside it, so its tokenizer is GPT-2's BPE "
            f"(tiktoken:gpt2), which could not be loaded: {err} Put the dataset's {META_FILE} (nanoGPT's "
            "data/<dataset>/meta.pkl) next to the checkpoint, or name the tokenizer (lightning-gpt evaluate "
            "--tokenizer ...)."
        ) from None


def from_nanogpt(
    checkpoint: dict[str, Any], path: Optional[Union[str, Path]] = None, tokenizer: Optional[Tokenizer] = None
) -> dict[str, Any]:
    """A nanoGPT checkpoint as a checkpoint of this package: ``{"gpt_config", "state_dict", "tokenizer"}``.

    The embedding table keeps its rows (nanoGPT pads GPT-2's 50257 tokens to 50304); ``vocab_size`` becomes the
    tokenizer's, so decoding never emits a padding id.

    Args:
        checkpoint: the loaded ``ckpt.pt`` (``read_checkpoint``: weights-only).
        path: where it was read from (``meta.pkl`` is looked for beside it; named in messages).
        tokenizer: the tokenizer to use; default ``meta.pkl`` beside ``path``, else ``tiktoken:gpt2``.

    Returns:
        The converted checkpoint; ``state_dict`` keys carry the ``model.`` prefix, as ``GPTModule`` saves them.

    Raises:
        ValueError: inconsistent ``model_args``, an unreadable ``meta.pkl``, no tokenizer to be had, or a tokenizer
            with more ids than the model has rows.
    """
    name = str(path) if path is not None else "the nanoGPT checkpoint"
    state = _state_dict(checkpoint)
    config = nanogpt_config(checkpoint["model_args"], state, name)
    tokenizer = tokenizer if tokenizer is not None else _default_tokenizer(path)
    rows, n = config.vocab_size, int(tokenizer.vocab_size)
    if n > rows:
        raise ValueError(
            f"The tokenizer ({tokenizer.describe()}) has {n} ids but the model in {name} has {rows} embedding rows: "
            "it is not the model's tokenizer. Use the meta.pkl of the dataset the model was trained on, or GPT-2's "
            "BPE for a model trained on GPT-2 tokens."
        )
    if n < rows:
        multiple = 64 if -(-n // 64) * 64 == rows else rows
        config = GPTConfig.from_dict({**config.to_dict(), "vocab_size": n, "padded_vocab_multiple": multiple})
    weights = {f"model.{k}": v for k, v in state.items()}
    weights.setdefault("model.lm_head.weight", state["transformer.wte.weight"])
    return {"gpt_config": config.to_dict(), "state_dict": weights, "tokenizer": tokenizer.state_dict()}
