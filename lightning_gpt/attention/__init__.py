"""Attention cores, selectable by name. Add a kind with one file here plus one ``register_attention`` line."""

from lightning_gpt.attention.base import (
    AttentionCore,
    KVCacheCore,
    State,
    available_attention,
    get_attention,
    register_attention,
)
from lightning_gpt.attention.flash import FlashAttention
from lightning_gpt.attention.linear import LinearAttention
from lightning_gpt.attention.sparse import SparseAttention
from lightning_gpt.attention.standard import StandardAttention

register_attention("standard", StandardAttention)
register_attention("flash", FlashAttention)
register_attention("linear", LinearAttention)
register_attention("sparse", SparseAttention)

__all__ = [
    "AttentionCore",
    "FlashAttention",
    "KVCacheCore",
    "LinearAttention",
    "SparseAttention",
    "State",
    "StandardAttention",
    "available_attention",
    "get_attention",
    "register_attention",
]
