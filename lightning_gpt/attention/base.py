"""The attention-core protocol and the registry that maps names to cores.

An attention *core* receives already-projected queries, keys and values and returns the attended values. The outer
``CausalSelfAttention`` (in ``lightning_gpt.model``) owns the projections and hands the core its decoding state.

Every core supports the same two calls:

* ``forward(q, k, v, key_mask=None)``: a full causal pass over a sequence that starts at position 0.
* ``step(q, k, v, state, start_pos, key_mask=None)``: extend the decoding ``state`` (from ``init_state``) with
  ``T_new`` new tokens at positions ``start_pos .. start_pos + T_new - 1`` and return their outputs.

``key_mask`` is a ``(B, T_keys)`` bool tensor, True for real tokens and False for (left) padding; for ``step`` it
covers every position seen so far, ``0 .. start_pos + T_new - 1``. A padded query position still attends to itself,
so its (ignored) output stays finite. ``start_pos`` and the key indices are positions in the padded buffer; a core
whose pattern depends on absolute positions (not only on query - key distances) must count them from each row's
first real token, ``pad_offsets(key_mask)``, so a left-padded row decodes exactly like its prompt alone.

The decoding state is a ``dict`` of tensors whose first dimension is the batch, so beam search can reorder any
core's state with one ``index_select``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from lightning_gpt.config import GPTConfig

__all__ = [
    "AttentionCore",
    "KVCacheCore",
    "register_attention",
    "get_attention",
    "available_attention",
    "pad_offsets",
    "State",
]

State = dict[str, Tensor]

_REGISTRY: dict[str, Callable[["GPTConfig"], "AttentionCore"]] = {}


class AttentionCore(nn.Module):
    """Base class of attention cores. Tensors are ``(B, nh, T, hs)``.

    Args:
        config: the model config (cores read their own options from it).
    """

    def __init__(self, config: "GPTConfig") -> None:
        super().__init__()
        self.config = config
        self.head_size = config.head_size
        self.scale = 1.0 / config.head_size**0.5
        self.dropout_p = float(config.dropout)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor] = None) -> Tensor:
        """Causal attention over the whole sequence; returns ``(B, nh, T, hs)``."""
        raise NotImplementedError

    def init_state(self, batch_size: int, max_seq_len: int, device: torch.device, dtype: torch.dtype) -> State:
        """Allocate an empty decoding state for ``batch_size`` rows and up to ``max_seq_len`` positions."""
        raise NotImplementedError

    def step(
        self, q: Tensor, k: Tensor, v: Tensor, state: State, start_pos: int, key_mask: Optional[Tensor] = None
    ) -> Tensor:
        """Extend ``state`` in place with new tokens and return their outputs ``(B, nh, T_new, hs)``."""
        raise NotImplementedError

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token of this core's attention itself (scores and weighted sum), one layer, forward and
        backward; the q/k/v/output projections are counted with the parameters, not here.

        The default is full causal attention as in the PaLM appendix / nanoGPT (``12 T d`` for ``d = n_embd``: the
        ``T x T`` scores and the weighted sum, 2 FLOPs per multiply-add, times 3 for forward + backward). A core that
        attends to fewer keys overrides it.

        Args:
            seq_len: the training sequence length ``T``.

        Returns:
            FLOPs per token.
        """
        return 12 * seq_len * self.config.n_embd


class KVCacheCore(AttentionCore):
    """A core whose decoding state is a full key/value cache ``(B, nh, max_seq_len, hs)``.

    Subclasses implement ``attend_cached`` (attention of the new queries over every cached key); ``init_state`` and
    ``step`` are shared.
    """

    def init_state(self, batch_size: int, max_seq_len: int, device: torch.device, dtype: torch.dtype) -> State:
        return kv_cache_state(batch_size, self.config.n_head, max_seq_len, self.head_size, device, dtype)

    def step(
        self, q: Tensor, k: Tensor, v: Tensor, state: State, start_pos: int, key_mask: Optional[Tensor] = None
    ) -> Tensor:
        k_all, v_all = kv_cache_update(state, k, v, start_pos)  # (B, nh, start_pos + T_new, hs)
        return self.attend_cached(q, k_all, v_all, start_pos, key_mask)

    def attend_cached(
        self, q: Tensor, k_all: Tensor, v_all: Tensor, start_pos: int, key_mask: Optional[Tensor]
    ) -> Tensor:
        """Outputs ``(B, nh, T_new, hs)`` of queries at ``start_pos..`` over the cached keys/values ``0..``.

        Args:
            q: the new queries ``(B, nh, T_new, hs)``.
            k_all, v_all: every key/value so far ``(B, nh, start_pos + T_new, hs)``.
            start_pos: position of the first new query.
            key_mask: ``(B, start_pos + T_new)`` bool, False at padding; ``None`` for no padding.
        """
        raise NotImplementedError


def register_attention(name: str, core: Callable[["GPTConfig"], AttentionCore], *, overwrite: bool = False) -> None:
    """Make an attention core selectable by ``GPTConfig(attention=name)``.

    Args:
        name: the name configs use.
        core: a class (or factory) taking a ``GPTConfig`` and returning an ``AttentionCore``.
        overwrite: allow replacing an existing registration.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"Attention name must be a non-empty string, got {name!r}.")
    if name in _REGISTRY and not overwrite and _REGISTRY[name] is not core:
        raise ValueError(f"Attention kind {name!r} is already registered; pass overwrite=True to replace it.")
    _REGISTRY[name] = core


def get_attention(name: str) -> Callable[["GPTConfig"], AttentionCore]:
    """The registered core factory for ``name`` (where ``GPTConfig.attention`` is checked: when the model is built).

    Args:
        name: a registered attention kind.

    Returns:
        The class (or factory) that builds the core from a ``GPTConfig``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the known kinds and how to register one).
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"GPTConfig.attention={name!r} is not a registered attention kind. Known kinds: {sorted(_REGISTRY)}. "
            "Register your own with lightning_gpt.attention.register_attention(name, CoreClass), in a module that is "
            "imported before the model is built."
        )
    return _REGISTRY[name]


def available_attention() -> list[str]:
    """Names of every registered attention core."""
    return list(_REGISTRY)


# ---------------------------------------------------------------------------------------------------------------
# Helpers shared by the cores that keep a key/value cache.


def pad_offsets(key_mask: Optional[Tensor]) -> Optional[Tensor]:
    """``(B,)`` buffer index of each row's first real token (its count of left padding); ``None`` without a mask.

    A row's position ``p`` (counted from its first real token) sits at buffer index ``p + pad_offsets(key_mask)[b]``.

    Args:
        key_mask: ``(B, T_keys)`` bool, False for left padding; ``None`` when there is no padding.
    """
    if key_mask is None:
        return None
    # Index of the first True (argmax returns the first maximum); 0 for right padding or no padding.
    return key_mask.to(torch.uint8).argmax(dim=-1)


def causal_mask(q_len: int, k_len: int, start_pos: int, device: torch.device) -> Tensor:
    """``(q_len, k_len)`` bool mask, True where query ``start_pos + i`` may see key ``j`` (``j <= start_pos + i``)."""
    q_pos = torch.arange(start_pos, start_pos + q_len, device=device)
    k_pos = torch.arange(k_len, device=device)
    return k_pos[None, :] <= q_pos[:, None]


def combine_masks(allowed: Tensor, key_mask: Optional[Tensor], start_pos: int) -> Tensor:
    """Merge a ``(Tq, Tk)`` structural mask with a ``(B, Tk)`` padding mask into ``(B, 1, Tq, Tk)``.

    A query always keeps itself, so rows of padding never become empty (which would make softmax NaN).
    """
    if key_mask is None:
        return allowed[None, None]
    q_len, k_len = allowed.shape
    self_pos = torch.arange(start_pos, start_pos + q_len, device=allowed.device)
    is_self = torch.arange(k_len, device=allowed.device)[None, :] == self_pos[:, None]  # (Tq, Tk)
    mask = allowed[None] & key_mask[:, None, :k_len].bool()  # (B, Tq, Tk)
    return (mask | is_self[None])[:, None]  # (B, 1, Tq, Tk)


def kv_cache_state(
    batch_size: int, n_head: int, max_seq_len: int, head_size: int, device: torch.device, dtype: torch.dtype
) -> State:
    """A zero key/value cache: ``k`` and ``v`` of shape ``(B, nh, max_seq_len, hs)``."""
    shape = (batch_size, n_head, max_seq_len, head_size)
    return {"k": torch.zeros(shape, device=device, dtype=dtype), "v": torch.zeros(shape, device=device, dtype=dtype)}


def kv_cache_update(state: State, k: Tensor, v: Tensor, start_pos: int) -> tuple[Tensor, Tensor]:
    """Write new keys/values at ``start_pos`` and return the filled prefix ``(B, nh, start_pos + T_new, hs)``."""
    end = start_pos + k.size(2)
    if end > state["k"].size(2):
        raise ValueError(
            f"The decoding cache holds {state['k'].size(2)} positions but position {end - 1} was requested; "
            "set up the cache with a larger max_seq_len."
        )
    state["k"][:, :, start_pos:end] = k
    state["v"][:, :, start_pos:end] = v
    return state["k"][:, :, :end], state["v"][:, :, :end]
