"""Compare a config with the weights it is said to describe, before a model of that config is allocated.

Every loader reads the weights' names, shapes and dtypes first (a safetensors header, or a ``.ckpt`` / ``.bin`` read
weights-only with ``mmap=True``: the tensors are not read) and calls ``check_weights``. Only a config that matches
them is built, so an edited or hostile config (``n_layer: 100000``, ``block_size: 1000000000``) is one paragraph in
milliseconds instead of minutes of allocation; and weights that do not match (an extra layer, a missing tensor,
integer values) are refused by name instead of being ignored or cast.

The expected names and shapes come from a one-layer ``GPT`` built on the meta device (no memory), its layer repeated
``n_layer`` times by name: building the whole model on meta would itself take minutes for a hostile ``n_layer``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Union

import torch

from lightning_gpt.config import GPTConfig

__all__ = ["HF_IGNORED_SUFFIXES", "check_weights", "config_from_entry", "hf_weight_names", "safetensors_specs"]

_LAYER = re.compile(r"^transformer\.h\.(\d+)\.(.+)$")
# Hugging Face GPT-2 checkpoints may hold the attention mask buffers of old transformers versions: not weights.
HF_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
# HF GPT-2's Conv1D matrices are stored (in, out): transposed relative to nn.Linear (see lightning_gpt.io.convert).
_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_SHOWN = 3  # names listed per kind of problem; the count says how many more


def config_from_entry(data: Any, where: object) -> GPTConfig:
    """A ``GPTConfig`` from a dict read from a file (a checkpoint's ``gpt_config``, ``lightning_gpt.json``).

    Args:
        data: the stored fields (``GPTConfig.to_dict()`` output).
        where: how to name the entry in the message, e.g. ``"runs/x/last.ckpt's gpt_config"``.

    Raises:
        ValueError: not a dict, an unknown field, or a bad value (one paragraph naming ``where``).
    """
    if not isinstance(data, dict):
        raise ValueError(
            f"{where} should be a dict of GPTConfig fields, got {type(data).__name__}. The file is damaged."
        )
    try:
        return GPTConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where} is not a valid model config: {err}") from None


def safetensors_specs(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file as meta tensors (names, shapes, dtypes), from its header alone.

    Args:
        path: the file.

    Returns:
        ``{name: meta tensor}``; nothing of the data is read.

    Raises:
        ValueError: not a readable safetensors file (the message names it).
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            specs = {}
            for name in f.keys():
                piece = f.get_slice(name)
                dtype = _SAFETENSORS_DTYPES.get(piece.get_dtype())
                if dtype is None:  # e.g. an fp8 type: a dtype the model cannot hold; name it as it is written
                    raise ValueError(f"tensor {name} has dtype {piece.get_dtype()}")
                specs[name] = torch.empty(piece.get_shape(), dtype=dtype, device="meta")
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types on bad bytes
        raise ValueError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err}).") from None
    return specs


def hf_weight_names(hf_state: Mapping[str, Any]) -> dict[str, Any]:
    """Hugging Face GPT-2 names and Conv1D layouts -> ``GPT``'s (views only: no data is read or copied).

    Args:
        hf_state: tensors keyed as ``GPT2LMHeadModel`` (or ``GPT2Model``, without ``transformer.``) names them.

    Returns:
        The same tensors keyed as ``GPT.state_dict()`` names them, Conv1D matrices transposed; the attention-mask
        buffers of old ``transformers`` versions are dropped.
    """
    out = {}
    for key, value in hf_state.items():
        name = key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"
        if name.endswith(HF_IGNORED_SUFFIXES):
            continue
        if name.endswith(_TRANSPOSED) and isinstance(value, torch.Tensor) and value.dim() == 2:
            value = value.t()
        out[name] = value
    return out


def _template(config: GPTConfig) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """``(entries outside the blocks, entries of one block without the 'transformer.h.<i>.' prefix)`` of GPT(config).

    One ``Block`` built on the meta device (no memory, the same time for any ``n_layer``; its attention core, a
    user-registered one too, says what it holds), and ``GPT``'s four outer tensors from the config: building the whole
    ``GPT`` on meta would run its normal-init through PyTorch's reference kernels, which import ``torch._dynamo``
    (a second of start-up). ``tests/io/test_weights_and_writes.py`` compares both with ``GPT(config).state_dict()``."""
    from lightning_gpt.model import Block

    with torch.device("meta"):
        block = {name: tuple(t.shape) for name, t in Block(config).state_dict().items()}
    rows, width = config.padded_vocab_size, config.n_embd
    outer: dict[str, tuple[int, ...]] = {
        "transformer.wte.weight": (rows, width),
        "transformer.wpe.weight": (config.block_size, width),
        "transformer.ln_f.weight": (width,),
    }
    if config.bias:
        outer["transformer.ln_f.bias"] = (width,)
    outer["lm_head.weight"] = (rows, width)
    return outer, block


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def check_weights(
    config: GPTConfig, state: Mapping[str, Any], weights_name: object, config_name: object, strict: bool = True
) -> None:
    """Check that ``state`` holds exactly the weights of ``GPT(config)``, without building that model.

    Args:
        config: the config about to be built.
        state: the weights under ``GPT``'s names (real, memory-mapped or meta tensors: only shapes and dtypes are
            read). A tied config may leave out ``lm_head.weight``.
        weights_name: how to name the weights in the message (their file).
        config_name: how to name the config in the message, e.g. ``"the model config in runs/x/config.json"``.
        strict: also refuse missing and unexpected tensors (as ``load_state_dict(strict=True)``); shapes and dtypes
            are always checked.

    Raises:
        ValueError: one paragraph naming the tensors that are missing, unexpected, of another shape, or not floating
            point, and the fix.
    """
    outer, block = _template(config)
    optional = {"lm_head.weight": outer.pop("lm_head.weight")} if config.tie_weights else {}
    problems: list[str] = []
    not_float = [k for k, v in state.items() if isinstance(v, torch.Tensor) and not v.is_floating_point()]
    if not_float:
        kinds = sorted({str(state[k].dtype).replace("torch.", "") for k in not_float})
        problems.append(
            f"{_listed(not_float)} hold {'/'.join(kinds)} values, but model weights are floating point (a cast "
            "would load garbage)"
        )
    unexpected, wrong_shape, layers_found = [], [], set()
    for name, tensor in state.items():
        found = _LAYER.match(name)
        if found:
            index, rest = int(found.group(1)), found.group(2)
            layers_found.add(index)
            shape = block.get(rest) if index < config.n_layer else None
        else:
            shape = outer.get(name, optional.get(name))
        if shape is None:
            unexpected.append(name)
        elif tuple(getattr(tensor, "shape", ())) != tuple(shape):
            wrong_shape.append(f"{name} {tuple(tensor.shape)} where the config needs {tuple(shape)}")
    missing = [name for name in outer if name not in state]
    absent_layers = config.n_layer - len([i for i in layers_found if i < config.n_layer])
    if absent_layers:
        first = next(i for i in range(config.n_layer) if i not in layers_found)
        missing.append(
            f"transformer.h.{first}.* (a whole block)"
            if absent_layers == 1
            else f"transformer.h.{first}.* and {absent_layers - 1} more whole blocks (the config says n_layer="
            f"{config.n_layer}, the weights hold {len(layers_found)} blocks)"
        )
    for index in sorted(i for i in layers_found if i < config.n_layer):
        missing += [f"transformer.h.{index}.{rest}" for rest in block if f"transformer.h.{index}.{rest}" not in state]
        if len(missing) > _SHOWN:
            break
    if wrong_shape:
        problems.append(f"shapes differ: {_listed(wrong_shape)}")
    if strict and missing:
        problems.append(f"missing: {_listed(missing)}")
    if strict and unexpected:
        problems.append(f"not part of the model: {_listed(sorted(unexpected))}")
    if problems:
        raise ValueError(
            f"The weights in {weights_name} do not match {config_name} (n_layer={config.n_layer}, "
            f"n_embd={config.n_embd}, n_head={config.n_head}, block_size={config.block_size}, vocab_size="
            f"{config.vocab_size}): {'; '.join(problems)}. Nothing was built. Use the config and the weights of one "
            "save (restore the config written with these weights, or export them again with lightning-gpt export); "
            "weights that are not floating point are damaged or not a model's."
        )
