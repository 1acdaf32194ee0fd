"""Every use of PyTorch's private names, in one place, each with a test (``tests/training/test_torch_internals.py``).

PyTorch keeps these out of its public API, so a release may move them. ``pyproject.toml`` bounds ``torch`` to the
versions the tests ran against; when an upgrade breaks, it breaks here and in that test file.

Accessed here (wrapped in a function):

* ``torch._foreach_mul_``: one multiply over a list of tensors (one kernel launch per device instead of one per
  tensor) for the gradient rescaling of every step.
* ``torch.distributed._composable.checkpoint``: activation checkpointing that keeps the module's parameter names
  (``checkpoint_wrapper`` would insert ``_checkpoint_wrapped_module.`` into them).
* ``torch.amp.GradScaler._per_optimizer_states``: whether a ``GradScaler`` has unscaled an optimizer's gradients yet.
* ``Tensor._base``: whether a tensor is a view of another (``lightning_gpt.training.meta_init`` cannot replay an
  initializer called on a view of a parameter).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["checkpoint_activations", "foreach_mul_", "is_view", "scaler_has_unscaled"]


def foreach_mul_(tensors: list[Tensor], factor: float) -> None:
    """Multiply every tensor of ``tensors`` in place by ``factor`` (``torch._foreach_mul_``).

    Args:
        tensors: tensors on one or more devices (same dtype per device).
        factor: the scalar.
    """
    torch._foreach_mul_(tensors, factor)


def checkpoint_activations(module: nn.Module) -> None:
    """Recompute ``module``'s activations in the backward pass instead of keeping them (composable
    ``torch.distributed._composable.checkpoint``: applied in place, parameter names unchanged).

    Args:
        module: the module, e.g. one transformer ``Block``.
    """
    from torch.distributed._composable import checkpoint

    checkpoint(module)


def scaler_has_unscaled(scaler: Any, optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``scaler`` (a ``torch.amp.GradScaler``) has already unscaled ``optimizer``'s gradients in this step.

    Args:
        scaler: the grad scaler.
        optimizer: the optimizer.
    """
    from torch.amp.grad_scaler import OptState

    return scaler._per_optimizer_states[id(optimizer)]["stage"] is not OptState.READY


def is_view(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a view of another tensor (``Tensor._base`` is set)."""
    return tensor._base is not None
