"""Sparse attention: a causal sliding window, optionally plus a few extra key positions every query may see.

Patterns (``GPTConfig.sparse_pattern``), with window ``w = attention_window``:

* ``local``: query ``i`` sees keys ``max(0, i - w + 1) .. i``. O(n w) time and memory.
* ``strided`` (Sparse Transformer, Child et al. 2019): the local window plus the "summary" keys ``j <= i`` with
  ``j % stride == stride - 1`` (``stride = attention_stride``, default ``w``). O(n (w + n / stride)), i.e.
  O(n sqrt(n)) with ``w = stride ~ sqrt(n)``.
* ``longformer``: the local window plus the first ``n_global_tokens`` positions, which every later token sees
  (causally, so a global token itself sees only the tokens before it, all of which are global).

No ``n x n`` matrix is ever built. Queries are cut into blocks of ``L = min(w, T)``; block ``n`` attends to a window of
``L + w - 1`` keys taken as an overlapping ``unfold`` view of the (left-padded) keys, which gives a
``(B, nh, T / L, L, L + w - 1)`` score tensor. The extra keys (summary or global positions) are gathered once and
scored against every query ``(B, nh, T / L, L, M)``; a key already inside a query's window is masked out of the extra
set so nothing is counted twice, and both score sets share one softmax.

Decoding: ``local`` keeps a rolling key/value cache of ``w`` slots (position ``p`` in slot ``p % w``), so its memory
is O(w) however long the sequence; ``strided`` and ``longformer`` keep a full key/value cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_gpt.attention.base import (
    AttentionCore,
    State,
    kv_cache_state,
    kv_cache_update,
    pad_offsets,
    static_when_traced,
)

if TYPE_CHECKING:
    from lightning_gpt.config import GPTConfig

__all__ = ["ExtraKeys", "SparseAttention", "sparse_attention", "extra_positions"]


class ExtraKeys(NamedTuple):
    """The keys outside the window that a pattern adds (summary or global positions), gathered once per call.

    Args:
        k, v: their keys and values ``(B, nh, M, hs)``.
        pos: their buffer positions, ``(M,)`` (same for every row) or ``(B, M)`` (per row, e.g. shifted by each row's
            left padding); entries past a row's last key are never causal, so they are unused.
    """

    k: Tensor
    v: Tensor
    pos: Tensor


def sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int,
    *,
    start_pos: int = 0,
    k_prev: Optional[Tensor] = None,
    v_prev: Optional[Tensor] = None,
    key_mask: Optional[Tensor] = None,
    extra: Optional[ExtraKeys] = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Sliding-window causal attention (plus optional extra keys) for queries at ``start_pos .. start_pos + T - 1``.

    Args:
        q, k, v: the new tokens ``(B, nh, T, hs)``.
        window: each query sees itself and the ``window - 1`` keys before it.
        start_pos: position of the first new token.
        k_prev, v_prev: keys/values of the positions just before ``start_pos`` ``(B, nh, P, hs)``; at least
            ``min(window - 1, start_pos)`` of them are needed (extra earlier ones are ignored).
        key_mask: ``(B, start_pos + T)`` bool, False for padded positions; None for no padding.
        extra: keys that every query may see when they are causal and outside its window (``ExtraKeys``).
        dropout_p: dropout on the attention weights.

    Returns:
        ``(B, nh, T, hs)``.
    """
    B, nh, T, hs = q.shape
    device = q.device
    scale = 1.0 / hs**0.5
    W = min(window, start_pos + T)  # no key lies further back than position 0
    P = W - 1  # keys of context needed before the first new token
    Lq = min(window, T)  # query block
    N = -(-T // Lq)
    K = Lq + P  # keys in each block's window
    tail = N * Lq - T

    # Keys at positions start_pos - P .. start_pos + N * Lq - 1 (zeros where there is nothing).
    have = 0 if k_prev is None else min(P, k_prev.size(2))
    parts_k, parts_v = [], []
    if P > have:
        parts_k.append(k.new_zeros(B, nh, P - have, hs))
        parts_v.append(v.new_zeros(B, nh, P - have, v.size(-1)))
    if have:
        assert k_prev is not None and v_prev is not None  # have > 0 only with earlier keys
        parts_k.append(k_prev[:, :, k_prev.size(2) - have :])
        parts_v.append(v_prev[:, :, v_prev.size(2) - have :])
    parts_k.append(k)
    parts_v.append(v)
    if tail:
        parts_k.append(k.new_zeros(B, nh, tail, hs))
        parts_v.append(v.new_zeros(B, nh, tail, v.size(-1)))
    k_full = torch.cat(parts_k, dim=2) if len(parts_k) > 1 else k  # (B, nh, P + N * Lq, hs)
    v_full = torch.cat(parts_v, dim=2) if len(parts_v) > 1 else v  # (B, nh, P + N * Lq, hs)
    kw = k_full.unfold(2, K, Lq)  # (B, nh, N, hs, K), a view: windows overlap
    vw = v_full.unfold(2, K, Lq).transpose(-2, -1)  # (B, nh, N, K, hs)
    qb = (F.pad(q, (0, 0, 0, tail)) if tail else q).view(B, nh, N, Lq, hs)  # (B, nh, N, Lq, hs)

    q_pos = start_pos + torch.arange(N * Lq, device=device).view(N, Lq)  # (N, Lq)
    k_pos = start_pos - P + torch.arange(N * Lq + P, device=device).unfold(0, K, Lq)  # (N, K)
    rel = q_pos[:, :, None] - k_pos[:, None, :]  # (N, Lq, K): query position minus key position
    allowed = (rel >= 0) & (rel < window) & (k_pos[:, None, :] >= 0)  # (N, Lq, K)
    if key_mask is not None:
        flat = torch.arange(start_pos - P, start_pos + N * Lq, device=device)
        in_range = (flat >= 0) & (flat < start_pos + T)
        km = key_mask[:, flat.clamp(0, start_pos + T - 1)].bool() & in_range  # (B, P + N * Lq)
        km = km.unfold(1, K, Lq)  # (B, N, K)
        # A query always keeps itself, so padded rows stay finite.
        allowed = (allowed[None] & km[:, :, None, :]) | (rel == 0)[None]  # (B, N, Lq, K)
    else:
        allowed = allowed[None]  # (1, N, Lq, K)

    scores = (qb @ kw) * scale  # (B, nh, N, Lq, K)
    if extra is not None:
        extra_scores = (qb @ extra.k.transpose(-2, -1)[:, :, None]) * scale  # (B, nh, N, Lq, M)
        # Causal and outside the window (keys inside it are already in the local set).
        row_pos = extra.pos if extra.pos.dim() == 2 else extra.pos[None]  # (B or 1, M)
        extra_allowed = row_pos[:, None, None, :] <= q_pos[None, :, :, None] - window  # (B or 1, N, Lq, M)
        if key_mask is not None:
            idx = row_pos.clamp(max=key_mask.size(1) - 1).expand(B, -1)  # (B, M)
            extra_allowed = extra_allowed & key_mask.bool().gather(1, idx)[:, None, None, :]  # (B, N, Lq, M)
        scores = torch.cat([scores, extra_scores], dim=-1)  # (B, nh, N, Lq, K + M)
        allowed = torch.cat([allowed.expand(extra_allowed.size(0), -1, -1, -1), extra_allowed], dim=-1)
    att = scores.masked_fill(~allowed[:, None], float("-inf"))
    att = F.softmax(att, dim=-1)
    if dropout_p > 0:
        att = F.dropout(att, p=dropout_p)
    y = att[..., :K] @ vw  # (B, nh, N, Lq, hs)
    if extra is not None:
        y = y + att[..., K:] @ extra.v[:, :, None]  # (B, nh, N, Lq, hs)
    return y.reshape(B, nh, N * Lq, -1)[:, :, :T]  # (B, nh, T, hs)


def extra_positions(
    pattern: str, window: int, stride: int, n_global: int, last_pos: int, device: Union[torch.device, str]
) -> Tensor:
    """Positions of the non-window keys a pattern adds, limited to those some query ``<= last_pos`` can see.

    Args:
        pattern: ``local``, ``strided`` or ``longformer``.
        window: the local window.
        stride: the summary stride (``strided``).
        n_global: number of leading global positions (``longformer``).
        last_pos: the position of the last query.
        device: where to build the index.
    """
    limit = last_pos - window + 1  # extra keys at positions < limit can be outside some query's window
    if pattern == "strided":
        return torch.arange(stride - 1, max(limit, stride - 1), stride, device=device)
    if pattern == "longformer":
        return torch.arange(0, max(min(n_global, limit), 0), device=device)
    return torch.arange(0, device=device)


class SparseAttention(AttentionCore):
    """Sliding-window sparse attention with the ``local``, ``strided`` and ``longformer`` patterns.

    Reads ``sparse_pattern``, ``attention_window``, ``attention_stride`` and ``n_global_tokens`` from the config.

    Args:
        config: the model config.
    """

    def __init__(self, config: "GPTConfig") -> None:
        super().__init__(config)  # the options were validated by GPTConfig
        self.pattern = config.sparse_pattern
        self.window = config.attention_window
        self.stride = config.stride
        self.n_global = config.n_global_tokens
        self.rollback_free = self.pattern != "local"  # strided/longformer: a full key/value cache

    def attended_keys(self, seq_len: int) -> int:
        """Keys a query of a ``seq_len``-token sequence is scored against: its window plus the pattern's extra keys.

        Counted as the full-attention estimate counts ``T`` (the mask's causal half is not subtracted).

        Args:
            seq_len: the sequence length ``T``.
        """
        window = min(self.window, seq_len)
        n_extra = extra_positions(self.pattern, self.window, self.stride, self.n_global, seq_len - 1, "cpu").numel()
        return window + n_extra

    def flops_per_token(self, seq_len: int) -> int:
        """``12 K d`` with ``K = attended_keys(T)`` keys per query instead of full attention's ``T``."""
        return 12 * self.attended_keys(seq_len) * self.config.n_embd

    def _extra(self, k: Tensor, v: Tensor, last_pos: int, key_mask: Optional[Tensor]) -> Optional[ExtraKeys]:
        # The pattern's positions count from each row's first real token: shift them by the row's left padding.
        pos = extra_positions(self.pattern, self.window, self.stride, self.n_global, last_pos, k.device)  # (M,)
        offsets = pad_offsets(key_mask)
        if pos.numel() == 0:
            return None
        if offsets is None:
            return ExtraKeys(k[:, :, pos], v[:, :, pos], pos)  # (B, nh, M, hs)
        B, nh, T_k, hs = k.shape
        row_pos = pos[None, :] + offsets[:, None]  # (B, M) buffer positions
        idx = row_pos.clamp(max=T_k - 1)[:, None, :, None]  # (B, 1, M, 1); clamped ones are never causal
        extra_k = k.gather(2, idx.expand(B, nh, -1, hs))  # (B, nh, M, hs)
        extra_v = v.gather(2, idx.expand(B, nh, -1, v.size(-1)))  # (B, nh, M, hs)
        return ExtraKeys(extra_k, extra_v, row_pos)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor] = None) -> Tensor:
        # Traced with a dynamic length, min(window, T), the block count and the pattern's extra positions would pin
        # the graph: see static_when_traced.
        return static_when_traced(self._attend, self.config.block_size, q, k, v, key_mask)  # (B, nh, T, hs)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor]) -> Tensor:
        extra = self._extra(k, v, q.size(2) - 1, key_mask)
        p = self.dropout_p if self.training else 0.0
        return sparse_attention(q, k, v, self.window, key_mask=key_mask, extra=extra, dropout_p=p)  # (B, nh, T, hs)

    def init_state(self, batch_size: int, max_seq_len: int, device: torch.device, dtype: torch.dtype) -> State:
        if self.pattern == "local":
            # Rolling cache: the last `window` positions only.
            slots = min(self.window, max_seq_len)
            return kv_cache_state(batch_size, self.config.n_head, slots, self.head_size, device, dtype)
        return kv_cache_state(batch_size, self.config.n_head, max_seq_len, self.head_size, device, dtype)

    def _step(
        self, q: Tensor, k: Tensor, v: Tensor, state: State, input_pos: Tensor, key_mask: Optional[Tensor]
    ) -> Tensor:
        T_new = q.size(2)
        if T_new == 1:
            return self._step_one(q, k, v, state, input_pos, key_mask)
        start_pos = int(input_pos[0])
        key_mask = None if key_mask is None else key_mask[:, : start_pos + T_new]
        if self.pattern == "local":
            return self._step_rolling(q, k, v, state, start_pos, key_mask)
        end = start_pos + T_new
        k_all, v_all = kv_cache_update(state, k, v, torch.arange(start_pos, end, device=q.device))
        k_all, v_all = k_all[:, :, :end], v_all[:, :, :end]  # (B, nh, start_pos + T_new, hs)
        return sparse_attention(
            q,
            k,
            v,
            self.window,
            start_pos=start_pos,
            k_prev=k_all[:, :, max(0, start_pos - self.window + 1) : start_pos],
            v_prev=v_all[:, :, max(0, start_pos - self.window + 1) : start_pos],
            key_mask=key_mask,
            extra=self._extra(k_all, v_all, end - 1, key_mask),
        )

    def _step_one(
        self, q: Tensor, k: Tensor, v: Tensor, state: State, input_pos: Tensor, key_mask: Optional[Tensor]
    ) -> Tensor:
        """One new token at buffer position ``input_pos`` ``(1,)`` with shapes independent of the position (a compiled
        step): write its key/value by index, then attend over the whole buffer under the pattern's mask.

        ``local``: slot ``s`` of the rolling buffer holds position ``p - ((p - s) mod slots)``, the latest position
        ``<= p`` stored there; ``strided`` / ``longformer``: the full buffer, the window plus the pattern's extra keys
        (counted from the row's first real token).
        """
        k_buf, v_buf = state["k"], state["v"]
        S = k_buf.size(2)
        slot = input_pos % S if self.pattern == "local" else input_pos
        k_buf.index_copy_(2, slot, k)
        v_buf.index_copy_(2, slot, v)
        s = torch.arange(S, device=q.device)
        if self.pattern == "local":
            key_pos = input_pos - (input_pos - s) % S  # (S,) position held in each slot
        else:
            key_pos = s
        rel = input_pos - key_pos  # (S,)
        allowed = (rel >= 0) & (rel < self.window) & (key_pos >= 0)  # (S,)
        if key_mask is not None:
            key_mask = key_mask.bool()
            if key_mask.size(1) < S:  # it need only cover 0 .. input_pos: the later keys are never causal
                key_mask = F.pad(key_mask, (0, S - key_mask.size(1)), value=True)
            allowed = allowed[None] & key_mask.gather(1, key_pos.clamp(min=0)[None].expand(key_mask.size(0), -1))
        else:
            allowed = allowed[None]  # (1, S)
        if self.pattern != "local":
            offsets = pad_offsets(key_mask)
            own = key_pos[None] - (0 if offsets is None else offsets[:, None])  # (B or 1, S): counted from the row
            if self.pattern == "strided":
                extra = (own >= 0) & (own % self.stride == self.stride - 1)
            else:
                extra = (own >= 0) & (own < self.n_global)
            causal = (rel >= 0)[None] if key_mask is None else (rel >= 0)[None] & key_mask
            allowed = allowed | (extra & causal)
        allowed = allowed | (rel == 0)[None]  # a query always keeps itself
        att = (q @ k_buf.transpose(-2, -1)) * self.scale  # (B, nh, 1, S)
        att = att.masked_fill(~allowed[:, None, None, :], float("-inf"))
        return F.softmax(att, dim=-1) @ v_buf  # (B, nh, 1, hs)

    def _step_rolling(
        self, q: Tensor, k: Tensor, v: Tensor, state: State, start_pos: int, key_mask: Optional[Tensor]
    ) -> Tensor:
        T_new = q.size(2)
        slots = state["k"].size(2)
        # The previous (up to window - 1) positions, read from their slots before the new tokens overwrite any.
        prev_pos = torch.arange(max(0, start_pos - self.window + 1), start_pos, device=q.device)
        k_prev = state["k"][:, :, prev_pos % slots]  # (B, nh, P, hs)
        v_prev = state["v"][:, :, prev_pos % slots]  # (B, nh, P, hs)
        y = sparse_attention(q, k, v, self.window, start_pos=start_pos, k_prev=k_prev, v_prev=v_prev, key_mask=key_mask)
        keep = min(T_new, slots)  # only the last `slots` new tokens can still be needed
        new_pos = torch.arange(start_pos + T_new - keep, start_pos + T_new, device=q.device)
        state["k"].index_copy_(2, new_pos % slots, k[:, :, T_new - keep :])
        state["v"].index_copy_(2, new_pos % slots, v[:, :, T_new - keep :])
        return y
