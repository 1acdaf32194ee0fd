"""Detect a non-finite loss or gradient at the step where it appears, before it reaches the weights."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from lightning_gpt.errors import NonFiniteError

__all__ = ["NonFiniteGuard", "NonFiniteError"]

POLICIES = ("stop", "skip")


class NonFiniteGuard(Callback):
    """Check the loss and the gradients of every step before the optimizer applies them.

    The check runs in ``on_before_optimizer_step`` (after backward and gradient unscaling, before the update), so the
    weights never see a non-finite gradient:

    * ``policy="stop"`` (default): raise ``NonFiniteError`` naming the step. The optimizer step is not taken, so the
      weights, and every checkpoint saved before, stay finite; resume from the last checkpoint with a lower learning
      rate, or choose ``skip``.
    * ``policy="skip"``: drop this step's gradients (the optimizer updates nothing, its moments are untouched), log
      ``train/skipped_steps`` and go on.

    As a last line of defence, saving a checkpoint whose weights are not finite raises ``NonFiniteError`` (nothing is
    written). With fp16 mixed precision the ``GradScaler`` already skips steps with inf gradients (that is how it
    finds its scale), so only the loss is checked there. The check costs one device sync per step. Under DDP/FSDP the
    ranks agree on the decision. The loss checked is ``pl_module.last_loss``: for ``GPTModule`` the token-weighted
    loss of the whole step (every accumulated micro-batch, every rank), so a NaN in any micro-batch is seen, while a
    micro-batch whose targets are all ignored (a mean over no tokens) adds nothing and is not a fault.

    Args:
        policy: ``stop`` or ``skip``.
        check_gradients: also check the gradients (not only the loss).
    """

    def __init__(self, policy: Literal["stop", "skip"] = "stop", check_gradients: bool = True) -> None:
        if policy not in POLICIES:
            raise ValueError(f"NonFiniteGuard.policy must be one of {POLICIES}, got {policy!r}.")
        self.policy = policy
        self.check_gradients = check_gradients
        self.skipped_steps = 0

    def on_before_optimizer_step(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", optimizer: torch.optim.Optimizer
    ) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        checks = []
        loss = getattr(pl_module, "last_loss", None)
        if isinstance(loss, torch.Tensor):
            checks.append(loss.detach().float().reshape(()))
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if self.check_gradients and params and scaler is None:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
            if hasattr(norm, "full_tensor"):
                norm = norm.full_tensor()
            checks.append(norm.float().reshape(()).to(checks[0].device if checks else norm.device))
        if not checks:
            return
        values = torch.stack(checks)
        finite = bool(values.isfinite().all())
        if trainer.world_size > 1:
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return
        what = "loss" if not bool(values[0].isfinite()) and loss is not None else "gradients"
        detail = ", ".join(f"{v:.4g}" for v in values.tolist())
        where = f"step {trainer.global_step} (epoch {trainer.current_epoch})"
        if self.policy == "stop":
            raise NonFiniteError(
                f"Non-finite {what} at training {where}: loss / grad-norm = [{detail}]. The optimizer step was not "
                "taken, so the weights and every checkpoint saved before this step are finite. Resume from the last "
                "checkpoint with a lower learning rate (or stronger gradient clipping), check the data of this "
                "batch, or use NonFiniteGuard(policy='skip') to skip such steps."
            )
        for p in params:
            p.grad = None  # the optimizer skips parameters without a gradient: no update, no moment change
        self.skipped_steps += 1
        rank_zero_warn(f"NonFiniteGuard: non-finite {what} at {where}; skipped this optimizer step.")
        pl_module.log("train/skipped_steps", float(self.skipped_steps))

    def on_save_checkpoint(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", checkpoint: dict[str, Any]
    ) -> None:
        for name, tensor in checkpoint.get("state_dict", {}).items():
            if hasattr(tensor, "to_local"):
                tensor = tensor.to_local()
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(tensor.isfinite().all()):
                raise NonFiniteError(
                    f"Refusing to save a checkpoint: weight {name!r} holds NaN/inf at step {trainer.global_step}. The "
                    "previous checkpoint is kept unchanged; resume from it with a lower learning rate."
                )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
