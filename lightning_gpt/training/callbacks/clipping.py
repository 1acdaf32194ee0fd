"""Gradient clipping by global norm, logging the norm before clipping."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_gpt.training.module import is_logging_step

__all__ = ["GradientClipping", "clip_grad_norm"]


def clip_grad_norm(parameters: list[torch.Tensor], max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
    """Clip gradients in place to a global norm of ``max_norm`` and return the norm before clipping.

    Correct for FSDP2: with ``DTensor`` (sharded) gradients the per-shard norms are reduced over the ranks
    (``full_tensor``) before the clip coefficient is computed, so every rank clips by the same global norm.

    Args:
        parameters: parameters whose ``.grad`` is clipped (those without a gradient are ignored).
        max_norm: the largest allowed global norm.
        norm_type: the p of the p-norm (``inf`` for the max norm).
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.nn.utils.get_total_norm(grads, norm_type=norm_type)
    if hasattr(total, "full_tensor"):  # DTensor: reduce the partial norms over the mesh
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_([p for p in parameters if p.grad is not None], max_norm, total)
    return total


class GradientClipping(Callback):
    """Clip gradients to a global norm before each optimizer step and log ``train/grad_norm`` (before clipping).

    Runs in ``on_before_optimizer_step``: Lightning calls it after the backward pass and, with fp16 mixed precision,
    after the ``GradScaler`` has unscaled the gradients (this callback unscales them itself for fused optimizers, which
    Lightning leaves scaled), so the norm is in true units. Use this callback *instead of*
    ``Trainer(gradient_clip_val=...)``, not both (the Trainer would clip a second time; this callback refuses).

    Args:
        max_norm: the largest allowed global gradient norm.
        norm_type: the p of the p-norm (2.0 is the usual L2 norm; ``inf`` for the max norm).
        log: log the pre-clip norm as ``train/grad_norm`` (on logging steps, see ``Trainer(log_every_n_steps)``).
    """

    def __init__(self, max_norm: float = 1.0, norm_type: float = 2.0, log: bool = True) -> None:
        if not max_norm > 0:
            raise ValueError(f"GradientClipping.max_norm must be > 0, got {max_norm!r}.")
        if not norm_type > 0:
            raise ValueError(f"GradientClipping.norm_type must be > 0 (or inf), got {norm_type!r}.")
        self.max_norm = float(max_norm)
        self.norm_type = float(norm_type)
        self.log = log

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if trainer.gradient_clip_val:
            raise ValueError(
                f"Trainer(gradient_clip_val={trainer.gradient_clip_val}) is set while the GradientClipping callback is "
                "used; gradients would be clipped twice. Remove gradient_clip_val and configure "
                "GradientClipping(max_norm=...) instead."
            )

    def on_before_optimizer_step(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", optimizer: torch.optim.Optimizer
    ) -> None:
        _ensure_unscaled(trainer, optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        norm = clip_grad_norm(params, self.max_norm, self.norm_type)
        if self.log and is_logging_step(trainer):
            pl_module.log("train/grad_norm", norm.detach())


def _ensure_unscaled(trainer: "pl.Trainer", optimizer: torch.optim.Optimizer) -> None:
    # Lightning's fp16 AMP unscales before this hook, except for optimizers that unscale inside their step (fused
    # AdamW, which GPTModule picks on CUDA): unscale those here, or the norm would be in scaled units. GradScaler then
    # knows the gradients are unscaled and steps the fused optimizer accordingly.
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is None:
        return
    from torch.amp.grad_scaler import OptState

    state = scaler._per_optimizer_states[id(optimizer)]
    if state["stage"] is OptState.READY:
        scaler.unscale_(optimizer)
