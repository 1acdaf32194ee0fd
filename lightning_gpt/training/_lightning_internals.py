"""Every use of Lightning's private internals, in one place, each with a test
(``tests/training/test_lightning_internals.py``).

Lightning keeps these names out of its public API, so a minor release may move them. ``pyproject.toml`` bounds
``lightning`` to the versions the tests ran against; when an upgrade breaks, it breaks here and in that test file.

Accessed here (wrapped in a function):

* ``LightningModule._trainer``: the trainer, or ``None`` when detached (the public property raises then).
* ``Trainer._logger_connector.should_update_logs``: whether this step's metrics reach the loggers.
* ``Trainer.fit_loop.epoch_loop.batch_progress.current.processed``: batches trained in this epoch.
* ``ModelCheckpoint._last_global_step_saved``: the step of the newest checkpoint it wrote (read, and set so that it
  does not save a step again), and ``ModelCheckpoint._last_checkpoint_saved`` (our ``last.ckpt`` counts as its own).
* ``LightningOptimizer._optimizer``: the wrapped torch optimizer.
* ``ModelParallelStrategy._data_parallel_size`` / ``_tensor_parallel_size`` / ``_save_distributed_checkpoint``.
* ``lightning.fabric.strategies.model_parallel._load_raw_module_state``: load a full state dict into a sharded model.

Overridden or called in subclasses (the names are listed in ``OVERRIDDEN`` and their presence is tested):

* ``LightningCLI._prepare_subcommand_parser``, ``LightningCLI._parse_ckpt_path``, ``LightningCLI._parser``
  (``lightning_gpt.cli.lightning_cli``);
* ``ModelParallelStrategy._setup_distributed`` (``lightning_gpt.training.strategies``).

Relied on: ``LightningCLI._run_subcommand`` calls ``GPTLightningCLI.fit`` (a method named after the subcommand) instead
of ``trainer.fit`` (tested).
"""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

__all__ = [
    "OVERRIDDEN",
    "attached_trainer",
    "batches_processed_this_epoch",
    "last_global_step_saved",
    "mark_step_saved",
    "register_last_checkpoint",
    "load_raw_module_state",
    "model_parallel_sizes",
    "saves_distributed_checkpoint",
    "set_data_parallel_size",
    "should_update_logs",
    "unwrap_optimizer",
]

OVERRIDDEN: dict[str, tuple[str, ...]] = {
    "lightning.pytorch.cli.LightningCLI": ("_prepare_subcommand_parser", "_parse_ckpt_path", "_parser"),
    "lightning.pytorch.strategies.ModelParallelStrategy": ("_setup_distributed",),
}
"""Private methods our subclasses override or call: ``class path -> method names``."""


def attached_trainer(module: Any) -> Optional[Any]:
    """The trainer ``module`` (a ``LightningModule``) is attached to, or ``None`` (``module.trainer`` raises then)."""
    return getattr(module, "_trainer", None)


def should_update_logs(trainer: Any) -> bool:
    """Whether the current step is one whose metrics the loggers record (``Trainer(log_every_n_steps)``).

    ``True`` when the trainer has no logger connector (e.g. a stand-in in a test).
    """
    connector = getattr(trainer, "_logger_connector", None)
    if connector is None:
        return True
    return bool(connector.should_update_logs)


def batches_processed_this_epoch(trainer: Any) -> int:
    """Training batches completed in the current epoch, from the fit loop's own progress tracking."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)


def last_global_step_saved(callback: Any) -> Optional[int]:
    """The global step of the newest checkpoint a ``ModelCheckpoint`` wrote, or ``None`` (not a ModelCheckpoint)."""
    return getattr(callback, "_last_global_step_saved", None)


def mark_step_saved(callback: Any, step: int) -> None:
    """Tell a ``ModelCheckpoint`` that ``step`` is saved, so it writes no second checkpoint of that step (no-op for
    other callbacks)."""
    if hasattr(callback, "_last_global_step_saved"):
        callback._last_global_step_saved = step


def register_last_checkpoint(callback: Any, path: str) -> None:
    """Make ``path`` a ``ModelCheckpoint``'s own ``last`` checkpoint, so it is never written again under another name
    (``last-v1.ckpt``) nor replaced by a later save of the same state."""
    callback.last_model_path = path
    callback._last_checkpoint_saved = path


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside a ``LightningOptimizer`` (any other object is returned as is)."""
    return getattr(optimizer, "_optimizer", optimizer)


def model_parallel_sizes(strategy: Any) -> tuple[Any, Any]:
    """``(data_parallel_size, tensor_parallel_size)`` of a ``ModelParallelStrategy`` (either may still be "auto")."""
    return strategy._data_parallel_size, strategy._tensor_parallel_size


def set_data_parallel_size(strategy: Any, size: int) -> None:
    """Set the data-parallel size of a ``ModelParallelStrategy`` (after ``_setup_distributed`` resolved "auto")."""
    strategy._data_parallel_size = int(size)


def saves_distributed_checkpoint(strategy: Any) -> bool:
    """Whether a ``ModelParallelStrategy`` saves sharded checkpoints (``save_distributed_checkpoint=True``)."""
    return bool(strategy._save_distributed_checkpoint)


def load_raw_module_state(state_dict: dict[str, Any], module: nn.Module, strict: bool = True) -> None:
    """Load a full (unsharded) ``state_dict`` into a possibly FSDP2-sharded ``module``, as Lightning's loader does.

    Args:
        state_dict: parameter name -> full tensor.
        module: the (sharded) module.
        strict: fail on missing or unexpected keys.
    """
    from lightning.fabric.strategies.model_parallel import _load_raw_module_state

    _load_raw_module_state(state_dict, module, strict=strict)
