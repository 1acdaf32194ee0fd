"""Argument checks for ``generate``: every bad input becomes a ``ValueError`` that names the field and the fix."""

from __future__ import annotations

import logging
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from lightning_gpt.config import is_int

log = logging.getLogger(__name__)

__all__ = ["normalize_eos", "validate_generate_args", "validate_prompt"]


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


def validate_generate_args(
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: Optional[int],
    top_p: Optional[float],
    min_p: Optional[float],
    repetition_penalty: float,
    do_sample: bool,
    num_beams: int,
    length_penalty: float,
    early_stopping: Union[bool, str],
    num_return_sequences: int,
    pad_token_id: Optional[int],
    vocab_size: int,
) -> None:
    """Raise a ``ValueError`` for any out-of-range decoding setting (see ``generate`` for their meaning)."""
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}.")
    if temperature is None or not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(
            f"temperature must be a number >= 0, got {temperature!r}. Use temperature=0 (or do_sample=False) for "
            "greedy decoding, and values > 0 to sample."
        )
    if top_k is not None and (not is_int(top_k) or top_k < 0):
        raise ValueError(f"top_k must be None or an integer >= 0 (0 disables it), got {top_k!r}.")
    if top_p is not None and (not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {top_p!r}.")
    if min_p is not None and (not isinstance(min_p, (int, float)) or not 0.0 <= min_p <= 1.0):
        raise ValueError(f"min_p must be in [0, 1] (0 disables it), got {min_p!r}.")
    if not isinstance(repetition_penalty, (int, float)) or repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0 (1.0 disables it), got {repetition_penalty!r}.")
    if not is_int(num_beams) or num_beams < 1:
        raise ValueError(f"num_beams must be an integer >= 1, got {num_beams!r}.")
    if not is_int(num_return_sequences) or num_return_sequences < 1:
        raise ValueError(f"num_return_sequences must be an integer >= 1, got {num_return_sequences!r}.")
    if num_beams > 1 and num_return_sequences > num_beams:
        raise ValueError(
            f"num_return_sequences ({num_return_sequences}) cannot exceed num_beams ({num_beams}): beam search returns "
            "at most num_beams hypotheses. Raise num_beams or lower num_return_sequences."
        )
    if num_beams == 1 and num_return_sequences > 1 and not do_sample:
        raise ValueError(
            f"num_return_sequences={num_return_sequences} with greedy decoding would return {num_return_sequences} "
            "identical rows. Pass do_sample=True to draw different samples, or num_beams >= num_return_sequences."
        )
    if not isinstance(length_penalty, (int, float)):
        raise ValueError(f"length_penalty must be a number, got {length_penalty!r}.")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}.")
    if pad_token_id is not None and (not is_int(pad_token_id) or not 0 <= pad_token_id < vocab_size):
        raise ValueError(f"pad_token_id={pad_token_id!r} must be None or an integer in [0, {vocab_size}).")
    if not do_sample:
        ignored = [
            name
            for name, value, neutral in (
                ("temperature", temperature, (1.0, 0.0)),
                ("top_k", top_k, (None, 0)),
                ("top_p", top_p, (None, 1.0)),
                ("min_p", min_p, (None, 0.0)),
            )
            if value not in neutral
        ]
        if ignored:
            log.warning(
                "do_sample=False, so %s only matter when sampling and are ignored (greedy decoding). Pass "
                "do_sample=True to sample.",
                ", ".join(ignored),
            )


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
