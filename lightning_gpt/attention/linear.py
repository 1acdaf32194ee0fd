"""Causal linear attention (Katharopoulos et al., 2020): O(n d^2) time, O(n d) memory, constant-size decoding state.

With a feature map ``phi`` the output of query ``i`` is

    y_i = phi(q_i) . S_i / (phi(q_i) . z_i),   S_i = sum_{j<=i} phi(k_j) v_j^T,   z_i = sum_{j<=i} phi(k_j).

Training uses the *chunked* form: the sequence is cut into chunks of ``linear_chunk_size``; inside a chunk the causal
sum is computed exactly as a small masked ``(C, C)`` product, and the contribution of earlier chunks comes from the
running state ``S`` ``(B, nh, hs, hs)`` and ``z`` ``(B, nh, hs)`` carried from chunk to chunk. Decoding keeps only that
state, so its memory does not grow with the sequence.

Notes:
    * Dropout on attention weights does not apply: the weights are never formed. ``GPTConfig.dropout`` still acts on
      the residual branches and embeddings.
    * The ``identity`` feature map can give a zero or negative denominator (the weights are not a proper average);
      it is provided for experiments, ``elu`` (elu(x) + 1, the default) is the safe choice.
    * Half-precision inputs are computed in float32: the running sums lose too much precision in fp16/bf16.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_gpt.attention.base import AttentionCore, State, static_when_traced

if TYPE_CHECKING:
    from lightning_gpt.config import GPTConfig

__all__ = ["LinearAttention", "feature_map", "chunked_linear_attention"]

EPS = 1e-6


def feature_map(x: Tensor, name: str) -> Tensor:
    """Apply the linear-attention feature map ``name`` (``elu``, ``relu``, ``softmax`` or ``identity``) to ``x``.

    Args:
        x: queries or keys ``(..., hs)``.
        name: the feature map; ``softmax`` normalizes over the head dimension.
    """
    if name == "elu":
        return F.elu(x) + 1.0
    if name == "relu":
        return F.relu(x)
    if name == "softmax":
        return F.softmax(x, dim=-1)
    if name == "identity":
        return x
    raise ValueError(f"Unknown feature_map {name!r}; expected one of 'elu', 'relu', 'softmax', 'identity'.")


def _safe_denominator(den: Tensor, eps: float) -> Tensor:
    # Keep the sign (the identity map can be negative) and stay at least eps away from zero.
    return torch.where(den >= 0, den + eps, den - eps)


def chunked_linear_attention(
    qf: Tensor,
    kf: Tensor,
    v: Tensor,
    chunk_size: int,
    S0: Optional[Tensor] = None,
    z0: Optional[Tensor] = None,
    eps: float = EPS,
) -> tuple[Tensor, Tensor, Tensor]:
    """Causal linear attention over featurized queries/keys, chunk by chunk.

    Args:
        qf: ``phi(q)`` of shape ``(B, nh, T, hs)``.
        kf: ``phi(k)`` of shape ``(B, nh, T, hs)`` (zero rows for padded keys).
        v: values ``(B, nh, T, hs)``.
        chunk_size: chunk length ``C``; need not divide ``T``.
        S0: state ``sum phi(k) v^T`` of earlier tokens ``(B, nh, hs, hs)``, or None for an empty prefix.
        z0: state ``sum phi(k)`` of earlier tokens ``(B, nh, hs)``, or None.
        eps: added to the denominator (away from zero).

    Returns:
        ``(y, S, z)``: outputs ``(B, nh, T, hs)`` and the state after the last token.
    """
    B, nh, T, hs = qf.shape
    hv = v.size(-1)
    C = max(1, min(chunk_size, T))
    N = -(-T // C)
    pad = N * C - T
    if pad:
        # Zero features at the end: they are later than every real query, so they change nothing.
        qf, kf, v = (F.pad(t, (0, 0, 0, pad)) for t in (qf, kf, v))
    # A ones column appended to v makes the denominator ride along with the numerator: column hv of every product
    # below is the phi(q) . z term, and column hv of the state is z.
    v1 = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # (B, nh, N * C, hv + 1)
    qc = qf.view(B, nh, N, C, hs)  # (B, nh, N, C, hs)
    kc = kf.view(B, nh, N, C, hs)  # (B, nh, N, C, hs)
    vc = v1.view(B, nh, N, C, hv + 1)  # (B, nh, N, C, hv + 1)

    # Inside each chunk: exact causal sum with the kernel weights.
    tril = torch.ones(C, C, dtype=torch.bool, device=qf.device).tril()
    A = (qc @ kc.transpose(-2, -1)).masked_fill(~tril, 0.0)  # (B, nh, N, C, C)

    # Across chunks: state of everything before each chunk (exclusive prefix sum over chunks, not over tokens).
    kv = kc.transpose(-2, -1) @ vc  # (B, nh, N, hs, hv + 1)
    S_incl = kv.cumsum(2)  # (B, nh, N, hs, hv + 1)
    S_prev = torch.cat([torch.zeros_like(kv[:, :, :1]), S_incl[:, :, :-1]], dim=2)  # (B, nh, N, hs, hv + 1)
    S_end = S_incl[:, :, -1]  # (B, nh, hs, hv + 1)
    if S0 is not None or z0 is not None:
        S0 = qf.new_zeros(B, nh, hs, hv) if S0 is None else S0
        z0 = qf.new_zeros(B, nh, hs) if z0 is None else z0
        Sz0 = torch.cat([S0, z0.unsqueeze(-1)], dim=-1)  # (B, nh, hs, hv + 1)
        S_prev = S_prev + Sz0[:, :, None]
        S_end = S_end + Sz0
    num = A @ vc + qc @ S_prev  # (B, nh, N, C, hv + 1)

    y = num[..., :hv] / _safe_denominator(num[..., hv:], eps)  # (B, nh, N, C, hv)
    y = y.reshape(B, nh, N * C, hv)[:, :, :T]  # (B, nh, T, hv)
    return y, S_end[..., :hv], S_end[..., hv]


class LinearAttention(AttentionCore):
    """Kernelized causal linear attention (chunked training form, recurrent decoding state).

    Reads ``feature_map`` and ``linear_chunk_size`` from the config. Attention dropout does not apply (see module
    docstring).

    Args:
        config: the model config.
    """

    def __init__(self, config: "GPTConfig") -> None:
        super().__init__(config)  # the options were validated by GPTConfig
        self.feature_map = config.feature_map
        self.chunk_size = config.linear_chunk_size

    def flops_per_token(self, seq_len: int) -> int:
        """FLOPs per token of the chunked form, forward + backward: ``12 d (C + hs)`` with ``C = min(chunk, T)``.

        Per head and token: ``2 C hs`` for the in-chunk scores, ``2 C hs`` for their weighted sum, ``2 hs^2`` for
        the token's share of the chunk state ``phi(k)^T v`` and ``2 hs^2`` to read the earlier chunks' state, i.e.
        ``4 hs (C + hs)``; times ``n_head`` heads (``d = n_head hs``) and 3 for forward + backward. Linear in ``T``
        overall, where full attention's ``12 T d`` per token is quadratic.

        Args:
            seq_len: the training sequence length ``T``.
        """
        chunk = max(1, min(self.chunk_size, seq_len))
        return 12 * self.config.n_embd * (chunk + self.head_size)

    def _featurize(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        work_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
        q, k, v = q.to(work_dtype), k.to(work_dtype), v.to(work_dtype)
        qf = feature_map(q, self.feature_map)  # (B, nh, T, hs)
        kf = feature_map(k, self.feature_map)  # (B, nh, T, hs)
        if key_mask is not None:
            # Padded keys contribute nothing to the sums.
            keep = key_mask[:, None, :, None].to(work_dtype)  # (B, 1, T, 1)
            kf, v = kf * keep, v * keep
        return qf, kf, v

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor] = None) -> Tensor:
        # Traced with a dynamic length, min(chunk, T) and the chunk count would pin the graph: see static_when_traced.
        return static_when_traced(self._attend, self.config.block_size, q, k, v, key_mask)  # (B, nh, T, hs)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor]) -> Tensor:
        qf, kf, vv = self._featurize(q, k, v, key_mask)
        y, _, _ = chunked_linear_attention(qf, kf, vv, self.chunk_size)
        return y.to(q.dtype)  # (B, nh, T, hs)

    def init_state(self, batch_size: int, max_seq_len: int, device: torch.device, dtype: torch.dtype) -> State:
        # Constant size, whatever max_seq_len is; kept in float32 for half-precision models.
        dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        nh, hs = self.config.n_head, self.head_size
        return {
            "S": torch.zeros(batch_size, nh, hs, hs, device=device, dtype=dtype),
            "z": torch.zeros(batch_size, nh, hs, device=device, dtype=dtype),
        }

    def _step(
        self, q: Tensor, k: Tensor, v: Tensor, state: State, input_pos: Tensor, key_mask: Optional[Tensor]
    ) -> Tensor:
        new_mask = None if key_mask is None else key_mask.index_select(1, input_pos)  # (B, T_new)
        qf, kf, vv = self._featurize(q, k, v, new_mask)
        S0, z0 = state["S"].to(qf.dtype), state["z"].to(qf.dtype)
        y, S, z = chunked_linear_attention(qf, kf, vv, self.chunk_size, S0=S0, z0=z0)
        state["S"].copy_(S)
        state["z"].copy_(z)
        return y.to(q.dtype)  # (B, nh, T_new, hs)
