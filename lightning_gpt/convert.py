"""Weight conversion between Hugging Face ``transformers`` GPT-2 and ``lightning_gpt.GPT``.

``transformers`` is imported lazily; it is not a runtime dependency. Bring real GPT-2 weights from a local directory::

    from transformers import GPT2LMHeadModel
    from lightning_gpt.convert import from_hf_gpt2

    model = from_hf_gpt2(GPT2LMHeadModel.from_pretrained("/path/to/gpt2"))
"""

from __future__ import annotations

from typing import Any, Optional

from lightning_gpt.config import GPTConfig
from lightning_gpt.model import GPT

__all__ = ["from_hf_gpt2", "to_hf_gpt2", "config_from_hf_gpt2"]

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


def from_hf_gpt2(hf_model: Any, **config_overrides: Any) -> GPT:
    """Build a ``GPT`` with the weights of a ``transformers.GPT2LMHeadModel``.

    Args:
        hf_model: a ``GPT2LMHeadModel`` (random or pretrained).
        config_overrides: ``GPTConfig`` fields to change, e.g. ``attention="flash"`` or ``dropout=0.1``.

    Returns:
        A ``GPT`` in the same train/eval mode, on the same device and dtype as ``hf_model``.
    """
    config = config_from_hf_gpt2(hf_model.config, **config_overrides)
    hf_sd = hf_model.state_dict()
    model = GPT(config)
    sd = model.state_dict()
    new_sd = {}
    for key in sd:
        if key == "lm_head.weight":
            src = hf_sd.get("lm_head.weight", hf_sd["transformer.wte.weight"])
        else:
            if key not in hf_sd:
                raise KeyError(f"{key} missing from the Hugging Face state dict")
            src = hf_sd[key]
        if key.endswith(_TRANSPOSED):
            src = src.t()
        if src.shape != sd[key].shape:
            raise ValueError(f"Shape mismatch for {key}: HF {tuple(src.shape)} vs GPT {tuple(sd[key].shape)}.")
        new_sd[key] = src.detach().clone()
    model.load_state_dict(new_sd, strict=False)
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

    c = model.config
    problems = []
    if c.attention not in ("standard", "flash"):
        problems.append(f"attention={c.attention!r} (GPT-2 has full softmax attention)")
    if not c.bias:
        problems.append("bias=False")
    if c.scale_embeddings:
        problems.append("scale_embeddings=True")
    if problems:
        raise ValueError("Cannot export to Hugging Face GPT-2: " + ", ".join(problems) + ".")
    hf_config = GPT2Config(
        vocab_size=c.padded_vocab_size,  # the whole table; padding rows included (as nanoGPT's 50304)
        n_positions=c.block_size,
        n_embd=c.n_embd,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_inner=c.mlp_ratio * c.n_embd,
        activation_function="gelu_new" if c.activation == "gelu_tanh" else "gelu",
        resid_pdrop=c.dropout,
        embd_pdrop=c.dropout,
        attn_pdrop=c.dropout,
        layer_norm_epsilon=c.layer_norm_eps,
        tie_word_embeddings=c.tie_weights,
        **(hf_config_overrides or {}),
    )
    hf_model = GPT2LMHeadModel(hf_config)
    hf_sd = hf_model.state_dict()
    sd = model.state_dict()
    new_sd = {}
    for key, target in hf_sd.items():
        if key not in sd:
            continue  # non-persistent HF buffers (e.g. attention bias masks in old versions)
        src = sd[key]
        if key.endswith(_TRANSPOSED):
            src = src.t()
        new_sd[key] = src.detach().clone().to(target.dtype)
    missing, _ = hf_model.load_state_dict(new_sd, strict=False)
    missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing:
        raise ValueError(f"Conversion left Hugging Face weights unset: {missing}")
    param = next(model.parameters())
    return hf_model.to(device=param.device).train(model.training)
