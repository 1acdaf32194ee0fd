"""The attention-core protocol and the registry that maps names to cores.

An attention *core* receives already-projected queries, keys and values and returns the attended values. The outer
``CausalSelfAttention`` (in ``lightning_gpt.model``) owns the projections and hands the core its decoding state.

Every core supports the same two calls:

* ``forward(q, k, v, key_mask=None)``: a full causal pass over a sequence that starts at position 0.
* ``step(q, k, v, state, input_pos, key_mask=None)``: extend the decoding ``state`` (from ``init_state``) with
  ``T_new`` new tokens at the consecutive buffer positions ``input_pos`` (a ``(T_new,)`` long tensor; an ``int``
  ``start_pos`` is accepted and means ``arange(start_pos, start_pos + T_new)``) and return their outputs.

``key_mask`` is a ``(B, T_keys)`` bool tensor, True for real tokens and False for (left) padding; for ``step`` it
covers at least every position seen so far, ``0 .. input_pos[-1]`` (the generation passes its whole buffer, so the
shapes stay the same from step to step). A padded query position still attends to itself, so its (ignored) output
stays finite. ``input_pos`` and the key indices are positions in the padded buffer; a core whose pattern depends on
absolute positions (not only on query - key distances) must count them from each row's first real token,
``pad_offsets(key_mask)``, so a left-padded row decodes exactly like its prompt alone.

Static shapes: a key/value core writes the new keys by index (``index_copy_``) into a buffer preallocated at
``max_seq_len`` and attends over the whole buffer with a mask, so a one-token step has the same shapes at every
position and can be compiled once (and captured as a CUDA graph). Entries past the last position written are masked
out, which also makes rolling back a speculative step free (``rollback_free``).

The decoding state is a ``dict`` of tensors whose first dimension is the batch, so beam search can reorder any
core's state with one ``index_select`` (or in place: ``t.copy_(t.index_select(0, index))``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Union

import torch
import torch.nn.functional as F
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
    "positions",
    "Positions",
    "State",
]

State = dict[str, Tensor]
#: Buffer positions of new tokens: a ``(T_new,)`` long tensor, or an ``int`` start (``arange(start, start + T_new)``).
Positions = Union[int, Tensor]

_REGISTRY: dict[str, Callable[["GPTConfig"], "AttentionCore"]] = {}


class AttentionCore(nn.Module):
    """Base class of attention cores. Tensors are ``(B, nh, T, hs)``.

    Args:
        config: the model config (cores read their own options from it).
    """

    #: Whether the decoding state is indexed by position with later entries ignored (a full key/value cache), so
    #: forgetting the last tokens (rejected speculative drafts) needs no work. ``False``: the state folds tokens in
    #: (a recurrent sum, a rolling window) and speculative decoding snapshots and replays it instead.
    rollback_free: bool = False

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
        self, q: Tensor, k: Tensor, v: Tensor, state: State, input_pos: Positions, key_mask: Optional[Tensor] = None
    ) -> Tensor:
        """Extend ``state`` in place with new tokens at buffer positions ``input_pos`` ``(T_new,)`` (or an ``int``
        start) and return their outputs ``(B, nh, T_new, hs)``.

        Turns an ``int`` start into positions and calls ``_step``, which a core implements (or it overrides ``step``
        itself, as ``KVCacheCore`` does)."""
        return self._step(q, k, v, state, positions(input_pos, q.size(2), q.device), key_mask)

    def _step(
        self, q: Tensor, k: Tensor, v: Tensor, state: State, input_pos: Tensor, key_mask: Optional[Tensor]
    ) -> Tensor:
        """``step`` with ``input_pos`` already a ``(T_new,)`` long tensor."""
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
    """A core whose decoding state is a full key/value cache ``(B, nh, max_seq_len, hs)``, written by index.

    Subclasses implement ``attend_cached`` (attention of the new queries over the whole buffer, under the mask that
    ``cache_mask`` builds); ``init_state`` and ``step`` are shared.
    """

    rollback_free = True

    def init_state(self, batch_size: int, max_seq_len: int, device: torch.device, dtype: torch.dtype) -> State:
        return kv_cache_state(batch_size, self.config.n_head, max_seq_len, self.head_size, device, dtype)

    def step(
        self, q: Tensor, k: Tensor, v: Tensor, state: State, input_pos: Positions, key_mask: Optional[Tensor] = None
    ) -> Tensor:
        # Overrides the template step rather than implementing _step: one call fewer per layer and decoded token, the
        # hot path (tests/generation/test_profile.py holds it to a call budget).
        if not isinstance(input_pos, Tensor):
            input_pos = positions(input_pos, q.size(2), q.device)
        k_all, v_all = state["k"], state["v"]  # (B, nh, S, hs), S = max_seq_len (kv_cache_update, inlined: hot path)
        k_all.index_copy_(2, input_pos, k.to(k_all.dtype))
        v_all.index_copy_(2, input_pos, v.to(v_all.dtype))
        return self.attend_cached(q, k_all, v_all, input_pos, cache_mask(input_pos, k_all.size(2), key_mask))

    def attend_cached(self, q: Tensor, k_all: Tensor, v_all: Tensor, input_pos: Tensor, mask: Tensor) -> Tensor:
        """Outputs ``(B, nh, T_new, hs)`` of the queries at ``input_pos`` over the whole key/value buffer.

        Args:
            q: the new queries ``(B, nh, T_new, hs)``.
            k_all, v_all: the buffers ``(B, nh, S, hs)``; entries past ``input_pos[-1]`` are stale or zero.
            input_pos: ``(T_new,)`` buffer positions of the queries.
            mask: ``(B or 1, 1, T_new, S)`` bool, True where a query may see a key (``cache_mask``).
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


def positions(input_pos: Positions, length: int, device: torch.device) -> Tensor:
    """``(length,)`` long buffer positions: ``input_pos`` itself, or ``arange(input_pos, input_pos + length)`` for an
    ``int`` start."""
    if isinstance(input_pos, Tensor):
        return input_pos
    return torch.arange(input_pos, input_pos + length, device=device)


def padded_to(
    length: int, q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor]
) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """``q, k, v`` ``(B, nh, T, hs)`` padded with zeros to ``length`` positions, ``key_mask`` ``(B, T)`` with False.

    The padded positions come after every real query, so causal attention over the padded sequence gives the real
    positions the same outputs."""
    extra = length - q.size(2)
    q, k, v = (F.pad(t, (0, 0, 0, extra)) for t in (q, k, v))
    if key_mask is not None:
        key_mask = F.pad(key_mask.bool(), (0, extra), value=False)
    return q, k, v, key_mask


def static_when_traced(
    attend: Callable[[Tensor, Tensor, Tensor, Optional[Tensor]], Tensor],
    block_size: int,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_mask: Optional[Tensor],
) -> Tensor:
    """``attend(q, k, v, key_mask)`` ``(B, nh, T, hs)``, run at the static ``block_size`` when ``T`` is traced.

    For torch.export / ONNX with a dynamic length: a core whose plan depends on ``T`` (a chunk or block size
    ``min(c, T)``, a block count, a pattern's extra positions) would pin the traced graph to the example's case, so
    with a symbolic ``T`` (``T <= block_size``) the inputs are padded to ``block_size`` (``padded_to``) and the real
    positions are taken from the output. An eager call runs ``attend`` as it is.
    """
    T = q.size(2)
    if not isinstance(T, torch.SymInt):
        return attend(q, k, v, key_mask)
    y = attend(*padded_to(block_size, q, k, v, key_mask))  # (B, nh, block_size, hs)
    # index_select, not y[:, :, :T]: a slice's strides would make the tracer guard on T == block_size.
    return y.index_select(2, torch.arange(T, device=y.device))  # (B, nh, T, hs)


def cache_mask(input_pos: Tensor, size: int, key_mask: Optional[Tensor]) -> Tensor:
    """``(B or 1, 1, T_new, size)`` bool: query at ``input_pos[i]`` may see buffer key ``j`` when ``j <= input_pos[i]``
    and ``j`` is not padding; a query always keeps itself (so a padded query's row is never empty).

    Args:
        input_pos: ``(T_new,)`` positions of the queries.
        size: the buffer length ``S``.
        key_mask: ``(B, T_keys)`` bool or 0/1, False at padding, ``T_keys <= S`` (missing keys count as real: they
            lie after every query); ``None`` for no padding.
    """
    k_pos = torch.arange(size, device=input_pos.device)
    allowed = k_pos[None, :] <= input_pos[:, None]  # (T_new, S)
    if key_mask is None:
        return allowed[None, None]
    key_mask = key_mask.bool()
    if key_mask.size(1) < size:
        key_mask = F.pad(key_mask, (0, size - key_mask.size(1)), value=True)
    is_self = k_pos[None, :] == input_pos[:, None]  # (T_new, S)
    return ((allowed[None] & key_mask[:, None, :size]) | is_self[None])[:, None]  # (B, 1, T_new, S)


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


def kv_cache_update(state: State, k: Tensor, v: Tensor, input_pos: Tensor) -> tuple[Tensor, Tensor]:
    """Write the new keys/values ``(B, nh, T_new, hs)`` at buffer positions ``input_pos`` ``(T_new,)`` (in place, by
    index: the shapes do not depend on the position) and return the whole buffers ``(B, nh, S, hs)``.

    Raises:
        RuntimeError: (from ``index_copy_``, on CPU) a position is not in ``[0, S)``: the cache was allocated for
            fewer positions (``max_seq_len``).
    """
    k_buf, v_buf = state["k"], state["v"]
    k_buf.index_copy_(2, input_pos, k.to(k_buf.dtype))
    v_buf.index_copy_(2, input_pos, v.to(v_buf.dtype))
    return k_buf, v_buf
