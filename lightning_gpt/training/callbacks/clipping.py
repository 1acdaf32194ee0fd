"""Gradient clipping by global norm, logging the norm before clipping."""

from __future__ import annotations

from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_gpt.training._lightning_internals import should_update_logs
from lightning_gpt.training._torch_internals import scaler_has_unscaled

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
    total = _total_norm(grads, norm_type)
    torch.nn.utils.clip_grads_with_norm_([p for p in parameters if p.grad is not None], max_norm, total)
    return total


def _total_norm(grads: list[torch.Tensor], norm_type: float) -> torch.Tensor:
    total = torch.nn.utils.get_total_norm(grads, norm_type=norm_type)
    if hasattr(total, "full_tensor"):  # DTensor: reduce the partial norms over the mesh
        total = total.full_tensor()
    return total


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class GradientClipping(Callback):
    """Clip gradients to a global norm before each optimizer step and log ``train/grad_norm`` (before clipping).

    Runs in ``on_before_optimizer_step``: Lightning calls it after the backward pass and, with fp16 mixed precision,
    after the ``GradScaler`` has unscaled the gradients (this callback unscales them itself for fused optimizers, which
    Lightning leaves scaled), so the norm is in true units. Use this callback *instead of*
    ``Trainer(gradient_clip_val=...)``, not both (the Trainer would clip a second time; this callback refuses).

    Args:
        max_norm: the largest allowed global gradient norm; ``None`` (``--clip.max_norm null``): no clipping, the
            norm is still measured and logged.
        norm_type: the p of the p-norm (2.0 is the usual L2 norm; ``inf`` for the max norm).
        log: log the pre-clip norm as ``train/grad_norm`` (on logging steps, see ``Trainer(log_every_n_steps)``).

    Raises:
        ValueError: ``max_norm`` or ``norm_type`` is not a positive number.
    """

    def __init__(self, max_norm: Optional[float] = 1.0, norm_type: float = 2.0, log: bool = True) -> None:
        if max_norm is not None and not (_is_number(max_norm) and max_norm > 0):
            raise ValueError(
                f"GradientClipping.max_norm (--clip.max_norm) must be a positive number, the largest global gradient "
                f"norm (e.g. 1.0), or null for no clipping; got {max_norm!r}."
            )
        if not (_is_number(norm_type) and norm_type > 0):
            raise ValueError(
                f"GradientClipping.norm_type (--clip.norm_type) must be a positive number (2.0: the L2 norm) or inf; "
                f"got {norm_type!r}."
            )
        self.max_norm = float(max_norm) if max_norm is not None else None
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
        log = self.log and should_update_logs(trainer)
        if self.max_norm is not None:
            norm = clip_grad_norm(params, self.max_norm, self.norm_type)
        elif log and any(p.grad is not None for p in params):  # no clipping: the norm only when it is logged
            norm = _total_norm([p.grad for p in params if p.grad is not None], self.norm_type)
        else:
            return
        if log:
            pl_module.log("train/grad_norm", norm.detach())


def _ensure_unscaled(trainer: "pl.Trainer", optimizer: torch.optim.Optimizer) -> None:
    # Lightning's fp16 AMP unscales before this hook, except for optimizers that unscale inside their step (fused
    # AdamW, which GPTModule picks on CUDA): unscale those here, or the norm would be in scaled units. GradScaler then
    # knows the gradients are unscaled and steps the fused optimizer accordingly.
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is not None and not scaler_has_unscaled(scaler, optimizer):
        scaler.unscale_(optimizer)
