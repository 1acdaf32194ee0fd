"""Attention cores, selectable by name. Add a kind with one file here plus one ``register_attention`` line."""

from lightning_gpt.attention.base import (
    AttentionCore,
    State,
    available_attention,
    get_attention,
    register_attention,
)
from lightning_gpt.attention.flash import FlashAttention
from lightning_gpt.attention.standard import StandardAttention

register_attention("standard", StandardAttention)
register_attention("flash", FlashAttention)

__all__ = [
    "AttentionCore",
    "FlashAttention",
    "State",
    "StandardAttention",
    "available_attention",
    "get_attention",
    "register_attention",
]
