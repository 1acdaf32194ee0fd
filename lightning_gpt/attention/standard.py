"""Standard attention: the explicit O(n^2 d) time, O(n^2) memory formulation of the seed."""

from __future__ import annotations

import math
from typing import Optional, Union

import torch.nn.functional as F
from torch import Tensor

from lightning_gpt.attention.base import KVCacheCore, causal_mask, combine_masks


class StandardAttention(KVCacheCore):
    """Scores matrix ``q k^T / sqrt(hs)``, causal mask with -inf, softmax, weighted sum of values."""

    def scores(self, q: Tensor, k: Tensor, start_pos: Union[int, Tensor]) -> Tensor:
        """Pre-mask attention scores ``(B, nh, Tq, Tk)`` of queries at ``start_pos..`` against keys at ``0..``.

        The one place a variant (e.g. a position bias such as ALiBi) needs to override; masking, softmax, dropout and
        the KV cache stay shared. While decoding, ``start_pos`` is a 0-d tensor (the first query's buffer position)
        and ``k`` is the whole cache buffer (keys past the queries are masked afterwards).
        """
        return (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, Tq, Tk)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, start_pos: int, key_mask: Optional[Tensor]) -> Tensor:
        T_q, T_k = q.size(2), k.size(2)
        att = self.scores(q, k, start_pos)  # (B, nh, Tq, Tk)
        if T_q > 1 or key_mask is not None:
            # (One new token without padding sees every cached key: nothing to mask.)
            allowed = combine_masks(causal_mask(T_q, T_k, start_pos, q.device), key_mask, start_pos)
            att = att.masked_fill(~allowed, float("-inf"))
        att = F.softmax(att, dim=-1)
        if self.training and self.dropout_p > 0:
            att = F.dropout(att, p=self.dropout_p)
        return att @ v  # (B, nh, Tq, hs)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor] = None) -> Tensor:
        return self._attend(q, k, v, 0, key_mask)

    def attend_cached(self, q: Tensor, k_all: Tensor, v_all: Tensor, input_pos: Tensor, mask: Tensor) -> Tensor:
        att = self.scores(q, k_all, input_pos[0]).masked_fill(~mask, float("-inf"))  # (B, nh, Tq, S)
        return F.softmax(att, dim=-1) @ v_all  # (B, nh, Tq, hs)
