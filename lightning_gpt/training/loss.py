"""The token-weighted loss of ``GPTModule``: one optimizer step weighs every target token the same, whatever the
padding, the split into accumulated micro-batches or the number of ranks.

The loss of one optimizer step is (sum of the token losses) / (number of target tokens), both over the whole
accumulated batch (``Trainer(accumulate_grad_batches)`` micro-batches) and over every rank, so batch 8 x accumulation 1
on one device, 2 x 2 on two devices and 1 x 8 on one device give the same gradient. The token count of a step is only
known once its last micro-batch is seen, and gradients are linear, so:

1. each ``training_step`` backpropagates its token sum divided by a run constant (``config.block_size``), and adds
   ``(loss sum, tokens)`` to an ``AccumulationWindow`` (``AccumulationWindow.add``);
2. right after the step's last backward (and the DDP/FSDP gradient reduction), before clipping, the non-finite check
   and the update, ``normalize_gradients`` all-reduces the window's two counts once and rescales the gradients by
   ``block_size * accumulate_grad_batches * world_size / tokens`` (Lightning divided each micro-batch's loss by
   ``accumulate_grad_batches``; DDP/FSDP average over the ranks).

This needs nothing from the data side (no look-ahead; any data module works). A micro-batch whose targets are all
``IGNORE_INDEX`` adds zero loss and zero gradient; a step without any target token changes no weight (its gradients
are dropped, so AdamW does not even apply weight decay or momentum). Validation and test losses are token-weighted
means over the whole set (``TokenMeanLoss``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from lightning_gpt.config import IGNORE_INDEX
from lightning_gpt.training._torch_internals import foreach_mul_

__all__ = [
    "AccumulationWindow",
    "StepLoss",
    "TargetBytes",
    "TokenMeanLoss",
    "check_accumulation",
    "normalize_gradients",
    "token_mean_cross_entropy",
]


class TokenMeanLoss(Metric):
    """Token-weighted mean of per-batch mean losses: (sum over batches of mean x tokens) / (sum of tokens), summed
    over ranks. A batch without target tokens adds nothing; a real NaN stays NaN (torchmetrics' ``MeanMetric`` drops
    NaN values by default). When batches also give the UTF-8 bytes their targets stand for, ``bits_per_byte`` is the
    same loss per byte in bits (Gao et al. 2020, The Pile, section 4.1: ``total_nats / ln 2 / total_bytes``)."""

    full_state_update = False
    loss_sum: Tensor
    tokens: Tensor
    n_bytes: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("loss_sum", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("tokens", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("n_bytes", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, loss: Tensor, n_tokens: Tensor, n_bytes: Optional[Tensor] = None) -> None:
        """Add one batch.

        Args:
            loss: the batch's mean loss per target token (a scalar; ``0`` when it has none).
            n_tokens: the batch's target-token count.
            n_bytes: the UTF-8 bytes of text its target tokens stand for (``None``: unknown, no ``bits_per_byte``).
        """
        tokens = torch.as_tensor(n_tokens, device=self.tokens.device).float()
        self.loss_sum += loss.detach().float() * tokens
        self.tokens += tokens
        if n_bytes is not None:
            self.n_bytes += torch.as_tensor(n_bytes, device=self.n_bytes.device).long()

    def compute(self) -> Tensor:
        """The mean loss per target token (NaN when no batch had any target token)."""
        return self.loss_sum / self.tokens

    def summary(self) -> dict[str, Tensor]:
        """``loss`` (``compute``), ``ppl`` (its exp) and, when bytes were counted, ``bpb`` (``bits_per_byte``)."""
        loss = self.compute()
        bpb = self.bits_per_byte()
        return {"loss": loss, "ppl": loss.exp(), **({"bpb": bpb} if bpb is not None else {})}

    def bits_per_byte(self) -> Optional[Tensor]:
        """The summed loss in bits per UTF-8 byte of the scored text, or ``None`` when no batch counted bytes."""
        if int(self.n_bytes) <= 0:
            return None
        return self.loss_sum / math.log(2) / self.n_bytes.float()


class TargetBytes:
    """How many UTF-8 bytes of text a batch's target ids stand for, for bits per byte (``TokenMeanLoss``): a table of
    bytes per id (``lightning_gpt.evaluation.metrics.token_byte_lengths``), built once per tokenizer and moved once to
    the targets' device; special and ignored ids count 0."""

    def __init__(self) -> None:
        self._table: Optional[Tensor] = None
        self._of: Any = None

    def __call__(self, tokenizer: Any, size: int, targets: Tensor) -> Optional[Tensor]:
        """The bytes behind ``targets`` ``(B, T)`` (a 0-d long tensor), or ``None`` without a tokenizer.

        Args:
            tokenizer: the tokenizer the ids come from (``None``: unknown, no bits per byte).
            size: the table's length, the model's ``padded_vocab_size``.
            targets: next-token ids, ``IGNORE_INDEX`` where ignored.
        """
        if tokenizer is None:
            return None
        if self._table is None or self._of is not tokenizer:
            from lightning_gpt.evaluation.metrics import token_byte_lengths

            self._table, self._of = token_byte_lengths(tokenizer, size), tokenizer
        if self._table.device != targets.device:
            self._table = self._table.to(targets.device)
        return self._table[targets.clamp(min=0)].masked_fill(targets == IGNORE_INDEX, 0).sum()


@dataclass(frozen=True)
class StepLoss:
    """The loss of one optimizer step over its micro-batches and ranks.

    Attributes:
        loss: the token-weighted mean loss (a float32 scalar on the module's device); ``0``, or NaN for a real fault,
            when the step had no target token.
        n_tokens: the step's target tokens over all ranks.
    """

    loss: Tensor
    n_tokens: int


class AccumulationWindow:
    """``(summed token losses, target tokens)`` of the optimizer step being accumulated, on this rank, and the run
    constant ``scale`` each micro-batch's token sum is divided by before backward (``config.block_size``)."""

    def __init__(self) -> None:
        self.scale = 1
        self.sums: Optional[Tensor] = None  # float64 keeps token counts exact (MPS has no float64: float32 there)

    @property
    def pending(self) -> bool:
        """Whether micro-batches were added since the last ``normalize_gradients`` (or ``reset``)."""
        return self.sums is not None

    def reset(self) -> None:
        """Forget what was accumulated (a new fit starts)."""
        self.sums = None

    def check_normalized(self) -> None:
        """Raise when micro-batches are pending at the optimizer step (their gradients were never normalized).

        Raises:
            RuntimeError: a subclass overrides ``optimizer_step`` without calling ``super().optimizer_step(...)``.
        """
        if self.sums is not None:
            raise RuntimeError(
                "GPTModule's gradients were not normalized before the optimizer step: a subclass overrides "
                "optimizer_step without calling super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)."
            )

    def add(self, loss: Tensor, n_tokens: Tensor, scale: int) -> Tensor:
        """Add one micro-batch; returns what ``training_step`` returns.

        Args:
            loss: the micro-batch's mean loss per target token (``0`` over no tokens).
            n_tokens: its target-token count.
            scale: the run constant (``config.block_size``).

        Returns:
            A scalar whose value is ``loss`` and whose gradient is that of the micro-batch's summed token losses
            divided by ``scale`` (corrected in ``normalize_gradients``).
        """
        self.scale = scale
        loss_sum = loss * n_tokens  # a per-token mean (0 over no tokens), so this is the token sum
        if self.sums is None:
            dtype = torch.float32 if loss.device.type == "mps" else torch.float64
            self.sums = torch.zeros(2, dtype=dtype, device=loss.device)
        self.sums += torch.stack([loss_sum.detach(), n_tokens]).to(self.sums.dtype)
        scaled = loss_sum / self.scale
        return scaled + (loss - scaled).detach()


def normalize_gradients(window: AccumulationWindow, optimizer: Any, trainer: Any, device: Any) -> Optional[StepLoss]:
    """Divide the step's gradients by its target tokens over all ranks (see the module docstring); empties ``window``.

    Args:
        window: the step's accumulated counts.
        optimizer: the optimizer about to step (its parameters' ``.grad`` are rescaled in place).
        trainer: the ``Trainer``: its ``accumulate_grad_batches`` (Lightning divided each micro-batch's loss by it),
            ``world_size`` (DDP/FSDP averaged the gradients over the ranks) and ``strategy.reduce`` (sums the counts
            over the ranks; not called on one).
        device: where the returned loss lives.

    Returns:
        The step's loss, or ``None`` when no micro-batch was added.
    """
    sums, window.sums = window.sums, None
    if sums is None:
        return None
    world_size = int(trainer.world_size)
    if world_size > 1:
        sums = trainer.strategy.reduce(sums, reduce_op="sum")
    loss_sum, tokens = sums.tolist()
    n_tokens = int(tokens)
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if n_tokens == 0:
        # No target token in the whole step: nothing to learn from. Drop the (zero) gradients so that AdamW changes
        # nothing, not even by weight decay or momentum.
        for p in params:
            p.grad = None
        return StepLoss(torch.tensor(loss_sum, device=device), 0)  # 0, or NaN for a real fault
    factor = window.scale * trainer.accumulate_grad_batches * world_size / n_tokens
    grads = [p.grad for p in params]
    if any(hasattr(g, "to_local") for g in grads):  # FSDP2 DTensor gradients
        for g in grads:
            g.mul_(factor)
    elif grads:
        foreach_mul_(grads, factor)
    return StepLoss(torch.tensor(loss_sum / n_tokens, dtype=torch.float32, device=device), n_tokens)


def token_mean_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross-entropy over the targets that are not ``IGNORE_INDEX``; ``0`` (with a zero gradient)
    when every target is ignored.

    Args:
        logits: ``(B, T, vocab_size)`` (computed in float32 whatever their dtype).
        targets: ``(B, T)`` next-token ids, ``IGNORE_INDEX`` where ignored.
    """
    targets = targets.flatten()
    total = F.cross_entropy(logits.flatten(0, 1).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)


def check_accumulation(accumulate_grad_batches: int, batches_per_epoch: float) -> None:
    """Refuse an accumulation longer than an epoch: each optimizer step would then be a partial window (Lightning
    steps at every epoch's end), so the batch the user asked for is never seen in one step.

    Args:
        accumulate_grad_batches: ``Trainer(accumulate_grad_batches)``.
        batches_per_epoch: training batches in one epoch (``trainer.num_training_batches``; ``inf`` when unknown,
            e.g. a streamed dataset, and then nothing is checked).

    Raises:
        ValueError: ``accumulate_grad_batches`` is below 1 (Lightning accepts it: 0 divides by zero, a negative number
            flips the gradients' sign), or larger than ``batches_per_epoch``.
    """
    if accumulate_grad_batches < 1:
        raise ValueError(
            f"Trainer(accumulate_grad_batches={accumulate_grad_batches}): must be a number of micro-batches >= 1 per "
            "optimizer step (1: no accumulation)."
        )
    if math.isinf(batches_per_epoch) or batches_per_epoch <= 0 or accumulate_grad_batches <= batches_per_epoch:
        return
    raise ValueError(
        f"Trainer(accumulate_grad_batches={accumulate_grad_batches}) (--trainer.accumulate_grad_batches) is larger "
        f"than the {int(batches_per_epoch)} training batch(es) of one epoch: each optimizer step would end at the "
        f"epoch's end with only those batches, never the {accumulate_grad_batches} asked for. Set it to at most "
        f"{int(batches_per_epoch)} (a larger batch size gives the same tokens per step), or give the run more data (or "
        "a larger limit_train_batches); nothing was trained."
    )
