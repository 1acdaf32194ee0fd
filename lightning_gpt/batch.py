"""The batch formats a GPT trains on, read into ``(input_ids, targets)`` (plain PyTorch, no Lightning import)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

__all__ = ["split_batch"]


def split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    """``(input_ids, targets)``, each ``(B, T)``, from one of the accepted batch forms.

    Args:
        batch: a ``(input_ids, targets)`` tuple/list, a dict with ``input_ids`` and ``targets`` (or ``labels``), or a
            ``(B, T + 1)`` tensor of tokens (the targets are the inputs shifted by one).

    Returns:
        ``(input_ids, targets)``.

    Raises:
        ValueError: the batch has none of these forms.
    """
    if isinstance(batch, Tensor):
        return batch[:, :-1], batch[:, 1:]
    if isinstance(batch, dict):
        targets = batch.get("targets", batch.get("labels"))
        if "input_ids" not in batch or targets is None:
            raise ValueError(f"A dict batch needs 'input_ids' and 'targets' (or 'labels'); got keys {sorted(batch)}.")
        return batch["input_ids"], targets
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError(
        f"GPTModule cannot read a batch of type {type(batch).__name__}: expected (input_ids, targets), a dict with "
        "'input_ids' and 'targets', or a (B, T + 1) tensor of token ids."
    )
