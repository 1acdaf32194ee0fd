"""Flash attention: O(n^2 d) time but O(n) memory; the n x n matrix is never materialized.

Uses the ``flash_attn`` kernels when the package is installed, the tensors are on CUDA in fp16/bf16 and there is no
padding mask; otherwise ``torch.nn.functional.scaled_dot_product_attention``, whose fused kernels (flash, memory-
efficient, or the CPU flash kernel) also work block by block.
"""

from __future__ import annotations

import importlib.util
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_gpt.attention.base import KVCacheCore, causal_mask, combine_masks

FLASH_ATTN_AVAILABLE = importlib.util.find_spec("flash_attn") is not None


def _use_flash_attn(q: Tensor, key_mask: Optional[Tensor]) -> bool:
    return FLASH_ATTN_AVAILABLE and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and key_mask is None


class FlashAttention(KVCacheCore):
    """Memory-efficient exact attention (flash-attn kernels or PyTorch SDPA)."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor] = None) -> Tensor:
        p = self.dropout_p if self.training else 0.0
        if _use_flash_attn(q, key_mask):
            from flash_attn import flash_attn_func

            # flash_attn takes (B, T, nh, hs).
            y = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=p, causal=True)
            return y.transpose(1, 2)  # (B, nh, T, hs)
        if key_mask is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        T = q.size(2)
        mask = combine_masks(causal_mask(T, T, 0, q.device), key_mask, 0)  # (B, 1, T, T)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)

    def attend_cached(self, q: Tensor, k_all: Tensor, v_all: Tensor, input_pos: Tensor, mask: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
