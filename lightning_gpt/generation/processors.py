"""Logits processors: small pure functions ``(B, V) -> (B, V)``, semantics as Hugging Face's logits processors.

Masked-out tokens get ``-inf``. The sampling loop applies them in Hugging Face's order:
repetition penalty -> temperature -> top-k -> top-p -> min-p, then one ``torch.multinomial`` draw per row.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = [
    "apply_repetition_penalty",
    "apply_temperature",
    "apply_top_k",
    "apply_top_p",
    "apply_min_p",
    "process_logits",
    "sample_from_logits",
]

FILTER_VALUE = float("-inf")


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """Divide logits by ``temperature`` (> 0); sharper below 1, flatter above.

    Args:
        logits: ``(B, V)`` scores.
        temperature: strictly positive divisor (temperature 0 means greedy and is handled by the caller).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 here, got {temperature!r} (temperature 0 means greedy decoding).")
    return logits if temperature == 1.0 else logits / temperature


def apply_top_k(logits: Tensor, top_k: Optional[int], min_tokens_to_keep: int = 1) -> Tensor:
    """Keep the ``top_k`` highest logits per row; every token tied with the k-th value is kept too.

    Args:
        logits: ``(B, V)`` scores.
        top_k: how many to keep; ``None`` or 0 disables the filter.
        min_tokens_to_keep: never keep fewer than this many tokens.
    """
    if not top_k:
        return logits
    k = min(max(top_k, min_tokens_to_keep), logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, FILTER_VALUE)


def apply_top_p(logits: Tensor, top_p: Optional[float], min_tokens_to_keep: int = 1) -> Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability reaches ``top_p``.

    The token whose probability crosses ``top_p`` is kept (as in Hugging Face's ``TopPLogitsWarper``).

    Args:
        logits: ``(B, V)`` scores.
        top_p: probability mass in ``(0, 1]``; ``None`` or 1 disables the filter.
        min_tokens_to_keep: never keep fewer than this many tokens.
    """
    if top_p is None or top_p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, descending=False, dim=-1)  # (B, V) ascending
    cum_probs = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # Ascending order: drop the low-probability tail whose total mass stays within 1 - top_p.
    remove_sorted = cum_probs <= (1.0 - top_p)
    remove_sorted[..., -min_tokens_to_keep:] = False
    remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
    return logits.masked_fill(remove, FILTER_VALUE)


def apply_min_p(logits: Tensor, min_p: Optional[float], min_tokens_to_keep: int = 1) -> Tensor:
    """Min-p filter: drop tokens whose probability is below ``min_p`` times the top token's probability.

    Args:
        logits: ``(B, V)`` scores.
        min_p: relative threshold in ``[0, 1]``; ``None`` or 0 disables the filter.
        min_tokens_to_keep: never keep fewer than this many tokens.
    """
    if not min_p:
        return logits
    probs = logits.softmax(dim=-1)  # (B, V)
    remove = probs < min_p * probs.amax(dim=-1, keepdim=True)
    keep_idx = torch.topk(probs, min(min_tokens_to_keep, probs.size(-1)), dim=-1).indices
    remove.scatter_(-1, keep_idx, False)
    return logits.masked_fill(remove, FILTER_VALUE)


def apply_repetition_penalty(
    logits: Tensor, previous_ids: Tensor, penalty: float, valid: Optional[Tensor] = None
) -> Tensor:
    """CTRL-style repetition penalty on every token id already present in the row.

    A seen token's logit is divided by ``penalty`` when positive and multiplied by it when negative, so
    ``penalty > 1`` discourages repeats (Hugging Face's ``RepetitionPenaltyLogitsProcessor``).

    Args:
        logits: ``(B, V)`` scores.
        previous_ids: ``(B, T)`` ids seen so far (prompt and generated tokens).
        penalty: > 0; 1 disables it.
        valid: optional ``(B, T)`` bool mask of which entries of ``previous_ids`` count (False for padding).
    """
    if penalty == 1.0 or previous_ids.numel() == 0:
        return logits
    V = logits.size(-1)
    ids = previous_ids.clamp(0, V - 1)
    if valid is not None:
        ids = ids.masked_fill(~valid, V)  # route padding to a spare column that is dropped below
    padded = torch.cat([logits, logits.new_zeros(logits.size(0), 1)], dim=-1)  # (B, V + 1)
    seen = torch.gather(padded, 1, ids)  # (B, T)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return padded.scatter(1, ids, seen)[:, :V]


def process_logits(
    logits: Tensor,
    *,
    previous_ids: Optional[Tensor] = None,
    previous_valid: Optional[Tensor] = None,
    repetition_penalty: float = 1.0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    min_p: Optional[float] = None,
) -> Tensor:
    """Apply the configured processors in Hugging Face's order; the sampling filters only when ``do_sample``.

    Args:
        logits: ``(B, V)`` float scores.
        previous_ids: ``(B, T)`` ids so far, for the repetition penalty.
        previous_valid: ``(B, T)`` bool, False where ``previous_ids`` is padding.
        repetition_penalty: see ``apply_repetition_penalty``.
        do_sample: whether temperature/top-k/top-p/min-p apply.
        temperature: see ``apply_temperature``.
        top_k: see ``apply_top_k``.
        top_p: see ``apply_top_p``.
        min_p: see ``apply_min_p``.
    """
    if repetition_penalty != 1.0 and previous_ids is not None:
        logits = apply_repetition_penalty(logits, previous_ids, repetition_penalty, previous_valid)
    if do_sample:
        logits = apply_temperature(logits, temperature)
        logits = apply_top_k(logits, top_k)
        logits = apply_top_p(logits, top_p)
        logits = apply_min_p(logits, min_p)
    return logits


def sample_from_logits(logits: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """One multinomial draw per row from ``softmax(logits)``: ``(B, V) -> (B,)`` (same call as Hugging Face).

    Args:
        logits: ``(B, V)`` processed scores (``-inf`` for filtered tokens).
        generator: optional seeded ``torch.Generator``; the global RNG otherwise.
    """
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
