"""Input checks for ``generate``: every bad prompt, mask or EOS id becomes a ``ValueError`` that names the field and the
fix. The decoding settings check themselves in ``GenerationConfig``."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from lightning_gpt.config import is_int

__all__ = ["normalize_eos", "validate_prompt"]


def normalize_eos(eos_token_id: Union[None, int, Sequence[int], Tensor], vocab_size: int) -> Optional[list[int]]:
    """``eos_token_id`` as a list of ids (or ``None``), checked against the vocabulary.

    Args:
        eos_token_id: one id, several ids, or ``None``.
        vocab_size: the model's vocabulary size.
    """
    if eos_token_id is None:
        return None
    if isinstance(eos_token_id, Tensor):
        eos_token_id = eos_token_id.flatten().tolist()
    ids = [eos_token_id] if is_int(eos_token_id) else list(eos_token_id)
    if not ids:
        return None
    for i in ids:
        if not is_int(i) or not 0 <= i < vocab_size:
            raise ValueError(f"eos_token_id={i!r} is not a valid token id: it must be an integer in [0, {vocab_size}).")
    return ids


def validate_prompt(
    input_ids: Tensor, attention_mask: Optional[Tensor], vocab_size: int
) -> tuple[Tensor, Optional[Tensor]]:
    """Check a ``(B, T)`` (or ``(T,)``) prompt batch and its mask; return them as ``(B, T)`` long tensors.

    Args:
        input_ids: prompt token ids, left-padded when rows differ in length.
        attention_mask: 1 for real tokens, 0 for padding, same shape as ``input_ids``.
        vocab_size: the model's vocabulary size.
    """
    if not isinstance(input_ids, Tensor):
        raise ValueError(f"input_ids must be a LongTensor of shape (B, T), got {type(input_ids).__name__}.")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}.")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
        attention_mask = None if attention_mask is None else attention_mask.reshape(1, -1)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (B, T), got {tuple(input_ids.shape)}.")
    B, T = input_ids.shape
    if B == 0 or T == 0:
        raise ValueError(
            f"The prompt is empty (input_ids shape {tuple(input_ids.shape)}): give at least one token, e.g. the "
            "tokenizer's BOS id."
        )
    input_ids = input_ids.long()
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} must equal input_ids shape "
                f"{tuple(input_ids.shape)}."
            )
        attention_mask = attention_mask.to(device=input_ids.device).long()
        if ((attention_mask != 0) & (attention_mask != 1)).any():
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token).")
        empty = (attention_mask.sum(dim=1) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"Prompt row(s) {empty} are empty (attention_mask all 0): every prompt needs at least one real token."
            )
        # Left padding: once a row starts, it must stay real to the end.
        if (attention_mask[:, 1:] < attention_mask[:, :-1]).any():
            raise ValueError(
                "attention_mask must describe LEFT padding (zeros first, then ones): decoding appends tokens on the "
                "right. Pad prompts on the left."
            )
        if bool(attention_mask.all()):
            attention_mask = None
    real = input_ids if attention_mask is None else input_ids[attention_mask.bool()]
    if real.numel() and (int(real.min()) < 0 or int(real.max()) >= vocab_size):
        bad = real[(real < 0) | (real >= vocab_size)][0].item()
        raise ValueError(
            f"input_ids contains token id {bad}, outside the model's vocabulary [0, {vocab_size}). Encode the prompt "
            "with the tokenizer the model was trained with."
        )
    return input_ids, attention_mask
