"""Every use of Lightning's and jsonargparse's private internals, in one place, each with a test
(``tests/training/test_lightning_internals.py``; ``tests/training/test_private_names.py`` finds any outside it, and
torch's are in ``_torch_internals.py``).

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
* ``RichProgressBar._console``, ``._initialize_train_progress_bar_id``, ``._update``, ``._update_metrics``: the rich
  console, and the bar's task and metrics updates that ``GPTProgressBar`` reuses to count optimizer steps.
* ``lightning.pytorch.utilities.imports._RICH_AVAILABLE``: whether ``rich`` is installed.
* ``Trainer.fit_loop.epoch_loop.batch_progress.current.ready``: batches started in this epoch (the bar's count).
* ``lightning.pytorch.utilities.model_summary.ModelSummary._get_summary_data``: the summary table's columns.
* ``LightningCLI._get``, ``._model_class``, ``._parser``: a value of a parsed config, the model class, the parser of
  a subcommand; jsonargparse's ``ArgumentParser._actions``: the parser's options (``fit --help`` text).

Overridden or called in subclasses (the names are listed in ``OVERRIDDEN`` and their presence is tested):

* ``LightningCLI._prepare_subcommand_parser``, ``LightningCLI._parse_ckpt_path`` (``lightning_gpt.cli.fit``);
* ``ModelParallelStrategy._setup_distributed`` (``lightning_gpt.training.strategies``);
* ``RichProgressBar._get_train_description`` (``lightning_gpt.training.callbacks.progress``).

Relied on: ``LightningCLI._run_subcommand`` calls ``GPTLightningCLI.fit`` (a method named after the subcommand) instead
of ``trainer.fit`` (tested).

The subclasses' overrides also call the originals through ``super()`` (``super()._parse_ckpt_path()``): those names
are defined in this package too, so the private-name test lets them through, and ``OVERRIDDEN`` keeps them tested.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

__all__ = [
    "OVERRIDDEN",
    "add_train_progress_task",
    "attached_trainer",
    "batches_processed_this_epoch",
    "batches_ready_this_epoch",
    "cli_model_class",
    "cli_subcommand_parser",
    "cli_value",
    "last_global_step_saved",
    "logger_version_given",
    "mark_step_saved",
    "register_last_checkpoint",
    "load_raw_module_state",
    "model_parallel_sizes",
    "parser_actions",
    "progress_console",
    "rich_available",
    "saves_distributed_checkpoint",
    "set_data_parallel_size",
    "set_logger_version",
    "should_update_logs",
    "summary_columns",
    "unwrap_optimizer",
    "update_progress_metrics",
    "update_progress_task",
]

OVERRIDDEN: dict[str, tuple[str, ...]] = {
    "lightning.pytorch.cli.LightningCLI": ("_prepare_subcommand_parser", "_parse_ckpt_path"),
    "lightning.pytorch.strategies.ModelParallelStrategy": ("_setup_distributed",),
    "lightning.pytorch.callbacks.RichProgressBar": ("_get_train_description",),
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


def batches_ready_this_epoch(trainer: Any) -> int:
    """Training batches started in the current epoch (``batch_progress.current.ready``)."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)


def rich_available() -> bool:
    """Whether ``rich`` (the library of Lightning's ``RichProgressBar``) is installed."""
    from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

    return bool(_RICH_AVAILABLE)


def progress_console(bar: Any) -> Optional[Any]:
    """The ``rich`` console of a ``RichProgressBar``, or ``None`` before the bar started."""
    return getattr(bar, "_console", None)


def add_train_progress_task(bar: Any) -> None:
    """Create a ``RichProgressBar``'s training task (its ``train_progress_bar_id``), e.g. when resumed mid-epoch."""
    bar._initialize_train_progress_bar_id()


def update_progress_task(bar: Any, task_id: Any, completed: float) -> None:
    """Set a ``RichProgressBar`` task's completed count (redrawn at the bar's refresh rate)."""
    bar._update(task_id, completed)


def update_progress_metrics(bar: Any, trainer: Any, pl_module: Any) -> None:
    """Refresh the metrics a ``RichProgressBar`` shows beside its training task."""
    bar._update_metrics(trainer, pl_module)


def summary_columns(summary: Any) -> list[tuple[str, list[str]]]:
    """The columns of a model summary table (``summarize(...)``): ``(header, values)`` pairs."""
    return list(summary._get_summary_data())


def cli_value(cli: Any, config: Any, key: str, default: Any = None) -> Any:
    """``key`` of a ``LightningCLI``'s parsed ``config`` for the running subcommand (``default`` when absent)."""
    return cli._get(config, key, default=default)


def cli_model_class(cli: Any) -> type:
    """The LightningModule class a ``LightningCLI`` was built with."""
    return cli._model_class


def cli_subcommand_parser(cli: Any, subcommand: Optional[str]) -> Any:
    """The parser of ``subcommand`` of a ``LightningCLI`` (its top parser when ``subcommand`` is ``None``)."""
    return cli._parser(subcommand) if subcommand else cli.parser


def logger_version_given(logger: Any) -> bool:
    """Whether a TensorBoard / CSV logger's version is already fixed (given, or its folder already chosen)."""
    return getattr(logger, "_version", None) is not None


def set_logger_version(logger: Any, version: Any) -> None:
    """Fix a TensorBoard / CSV logger's version (``version_N`` folder) before it is first used (no public setter)."""
    logger._version = version


def parser_actions(parser: Any) -> list[Any]:
    """A jsonargparse ``ArgumentParser``'s options (argparse actions: ``dest``, ``help``...)."""
    return list(parser._actions)
