"""Weight conversion between Hugging Face ``transformers`` GPT-2 and ``lightning_gpt.GPT``.

``transformers`` is imported lazily; it is not a runtime dependency. Bring real GPT-2 weights from a local directory::

    from transformers import GPT2LMHeadModel
    from lightning_gpt.io.convert import from_hf_gpt2

    model = from_hf_gpt2(GPT2LMHeadModel.from_pretrained("/path/to/gpt2"))
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from lightning_gpt.config import GPTConfig
from lightning_gpt.model import GPT

__all__ = [
    "from_hf_gpt2",
    "to_hf_gpt2",
    "config_from_hf_gpt2",
    "hf_gpt2_config_dict",
    "check_gpt2_compatible",
    "state_dict_from_hf_gpt2",
    "state_dict_to_hf_gpt2",
]

# HF GPT-2 uses Conv1D (weight stored as (in, out)): these matrices are transposed relative to nn.Linear.
_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


def config_from_hf_gpt2(hf_config: Any, **overrides: Any) -> GPTConfig:
    """Translate a ``transformers.GPT2Config`` into a ``GPTConfig``.

    Args:
        hf_config: the Hugging Face config.
        overrides: extra ``GPTConfig`` fields (e.g. ``attention="flash"``).
    """
    act = getattr(hf_config, "activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise ValueError(f"Unsupported GPT-2 activation_function {act!r}; supported: {sorted(_ACTIVATIONS)}.")
    n_inner = getattr(hf_config, "n_inner", None)
    if n_inner is not None and n_inner % hf_config.n_embd != 0:
        raise ValueError(f"GPT-2 n_inner={n_inner} is not a multiple of n_embd={hf_config.n_embd}.")
    for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        if getattr(hf_config, flag, False):
            raise ValueError(f"GPT-2 configs with {flag}=True are not supported by lightning_gpt.GPT.")
    fields = dict(
        vocab_size=hf_config.vocab_size,
        block_size=hf_config.n_positions,
        n_layer=hf_config.n_layer,
        n_head=hf_config.n_head,
        n_embd=hf_config.n_embd,
        dropout=0.0,
        bias=True,
        activation=_ACTIVATIONS[act],
        tie_weights=bool(getattr(hf_config, "tie_word_embeddings", True)),
        layer_norm_eps=hf_config.layer_norm_epsilon,
        mlp_ratio=(n_inner // hf_config.n_embd) if n_inner else 4,
    )
    fields.update(overrides)
    return GPTConfig(**fields)


def state_dict_from_hf_gpt2(hf_sd: dict[str, Any], config: GPTConfig) -> dict[str, Any]:
    """Map a Hugging Face GPT-2 state dict onto ``GPT``'s parameter names and layouts (no ``transformers`` needed).

    Keys may carry the ``transformer.`` prefix (``GPT2LMHeadModel``) or not (``GPT2Model``, as the hub's ``gpt2``
    files do). Conv1D matrices are transposed; a missing ``lm_head.weight`` is the tied ``transformer.wte.weight``.

    Args:
        hf_sd: the Hugging Face tensors (e.g. read from ``model.safetensors``).
        config: the ``GPTConfig`` the weights are for (see ``config_from_hf_gpt2``).

    Returns:
        A state dict that ``GPT(config).load_state_dict`` accepts (``lm_head.weight`` included).

    Raises:
        KeyError: a parameter is missing. ValueError: a shape does not fit ``config``.
    """
    hf_sd = {(k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}"): v for k, v in hf_sd.items()}
    with torch.device("meta"):  # only the names and shapes are needed
        expected = {k: v.shape for k, v in GPT(config).state_dict().items()}
    new_sd = {}
    for key, shape in expected.items():
        if key == "lm_head.weight":
            src = hf_sd.get("lm_head.weight", hf_sd.get("transformer.wte.weight"))
        else:
            src = hf_sd.get(key)
        if src is None:
            raise KeyError(f"{key} missing from the Hugging Face state dict")
        if key.endswith(_TRANSPOSED):
            src = src.t()
        if src.shape != shape:
            raise ValueError(f"Shape mismatch for {key}: HF {tuple(src.shape)} vs GPT {tuple(shape)}.")
        new_sd[key] = src.detach().clone()
    return new_sd


def state_dict_to_hf_gpt2(sd: dict[str, Any], tie_weights: bool = True) -> dict[str, Any]:
    """Map ``GPT``'s state dict onto ``GPT2LMHeadModel``'s names and Conv1D layouts (inverse of
    ``state_dict_from_hf_gpt2``).

    Args:
        sd: ``GPT.state_dict()`` (keys without ``model.`` prefixes).
        tie_weights: drop ``lm_head.weight`` (Hugging Face re-ties it to ``transformer.wte.weight`` on load).

    Returns:
        Contiguous tensors keyed as ``GPT2LMHeadModel.state_dict()`` names them.
    """
    out = {}
    for key, src in sd.items():
        if key == "lm_head.weight" and tie_weights:
            continue
        if key.endswith(_TRANSPOSED):
            src = src.t()
        out[key] = src.detach().contiguous()
    return out


def check_gpt2_compatible(config: GPTConfig) -> None:
    """Raise ``ValueError`` naming every field that the Hugging Face GPT-2 format cannot express.

    Args:
        config: the model's config.

    Raises:
        ValueError: e.g. ``attention='linear'``, ``bias=False`` or ``scale_embeddings=True``.
    """
    problems = []
    if config.attention not in ("standard", "flash"):
        problems.append(f"attention={config.attention!r} (GPT-2 has full softmax attention)")
    if not config.bias:
        problems.append("bias=False")
    if config.scale_embeddings:
        problems.append("scale_embeddings=True")
    if problems:
        raise ValueError(
            "Cannot export to Hugging Face GPT-2: "
            + ", ".join(problems)
            + ". Export the weights alone instead (lightning-gpt export --format safetensors)."
        )


def hf_gpt2_config_dict(config: GPTConfig) -> dict[str, Any]:
    """The ``transformers.GPT2Config`` fields that describe ``config`` (plain JSON data; checked for compatibility).

    Args:
        config: the model's config.

    Raises:
        ValueError: see ``check_gpt2_compatible``.
    """
    check_gpt2_compatible(config)
    return dict(
        vocab_size=config.padded_vocab_size,  # the whole table, padding rows included
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=config.mlp_ratio * config.n_embd,
        activation_function="gelu_new" if config.activation == "gelu_tanh" else "gelu",
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        layer_norm_epsilon=config.layer_norm_eps,
        tie_word_embeddings=config.tie_weights,
    )


def from_hf_gpt2(hf_model: Any, **config_overrides: Any) -> GPT:
    """Build a ``GPT`` with the weights of a ``transformers.GPT2LMHeadModel``.

    Args:
        hf_model: a ``GPT2LMHeadModel`` (random or pretrained).
        config_overrides: ``GPTConfig`` fields to change, e.g. ``attention="flash"`` or ``dropout=0.1``.

    Returns:
        A ``GPT`` in the same train/eval mode, on the same device and dtype as ``hf_model``.
    """
    config = config_from_hf_gpt2(hf_model.config, **config_overrides)
    model = GPT(config)
    model.load_state_dict(state_dict_from_hf_gpt2(hf_model.state_dict(), config))
    param = next(hf_model.parameters())
    return model.to(device=param.device, dtype=param.dtype).train(hf_model.training)


def to_hf_gpt2(model: GPT, hf_config_overrides: Optional[dict[str, Any]] = None) -> Any:
    """Build a ``transformers.GPT2LMHeadModel`` with the weights of ``model``.

    Only GPT-2 compatible architectures convert: standard/flash attention (the math is the same), biases, tied weights,
    no embedding scaling.

    Args:
        model: the ``GPT`` to export.
        hf_config_overrides: extra ``GPT2Config`` fields.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_config = GPT2Config(**{**hf_gpt2_config_dict(model.config), **(hf_config_overrides or {})})
    hf_model = GPT2LMHeadModel(hf_config)
    hf_sd = hf_model.state_dict()
    mapped = state_dict_to_hf_gpt2(model.state_dict(), tie_weights=False)
    new_sd = {k: mapped[k].clone().to(target.dtype) for k, target in hf_sd.items() if k in mapped}
    missing, _ = hf_model.load_state_dict(new_sd, strict=False)
    missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing:
        raise ValueError(f"Conversion left Hugging Face weights unset: {missing}")
    param = next(model.parameters())
    module: torch.nn.Module = hf_model  # transformers types its decorated ``to`` as an unbound wrapper
    return module.to(device=param.device).train(model.training)
