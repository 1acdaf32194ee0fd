"""``LoggerVersion``: a resumed run logs into the logger version of the run it continues, not a new one.

TensorBoard's and the CSV logger's ``version`` is "the next free ``version_N``" unless given, so ``fit --ckpt_path
last`` would split one run's curves over two folders. The callback stores each logger's version in the checkpoints it
saves; ``resume_logger_versions`` gives a resumed Trainer's loggers those versions back before anything is logged.
The CSV logger deletes an existing ``metrics.csv`` when it opens a version folder; its earlier rows are kept.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from lightning_gpt.training._lightning_internals import logger_version_given, set_logger_version

__all__ = ["LoggerVersion", "resume_logger_versions", "stored_logger_versions"]

KEY = "lightning_gpt_logger_versions"  # the checkpoint's entry: [[logger class name, version], ...]
_LOCAL = (TensorBoardLogger, CSVLogger)  # loggers whose version is a local folder the next run would not reuse


class LoggerVersion(Callback):
    """Store the version of each TensorBoard / CSV logger in every checkpoint (``checkpoint[KEY]``)."""

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[KEY] = [[type(lg).__name__, lg.version] for lg in trainer.loggers if isinstance(lg, _LOCAL)]


def stored_logger_versions(path: str) -> list[tuple[str, Any]]:
    """The ``(logger class name, version)`` pairs stored in checkpoint ``path`` (``[]`` when none or unreadable).

    The file is read with ``weights_only=True`` and its tensors memory-mapped: no code runs, no weights are read.
    """
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not ours to judge here: Lightning's own restore reports a bad file
        return []
    entries = state.get(KEY) if isinstance(state, dict) else None
    if not isinstance(entries, list):
        return []
    return [(str(e[0]), e[1]) for e in entries if isinstance(e, (list, tuple)) and len(e) == 2]


def resume_logger_versions(trainer: Trainer, ckpt_path: str) -> None:
    """Give ``trainer``'s TensorBoard / CSV loggers the versions stored in ``ckpt_path``, before ``trainer.fit``.

    A logger whose version was given explicitly (``--trainer.logger.init_args.version``) keeps it; loggers are paired
    with the stored versions in order, by class. On rank zero, a CSV logger's earlier ``metrics.csv`` is kept (the
    logger would delete it when it opens the folder) and the new rows are appended to it.
    """
    stored = stored_logger_versions(ckpt_path)
    loggers = [lg for lg in trainer.loggers if isinstance(lg, _LOCAL)]
    for logger, (name, version) in zip(loggers, stored):
        if type(logger).__name__ != name or logger_version_given(logger) or version is None:
            continue
        set_logger_version(logger, version)
        if isinstance(logger, CSVLogger) and trainer.is_global_zero:
            _keep_csv_rows(logger)
        rank_zero_info(f"Resuming: logging into {logger.log_dir} (the run's own logger version).")


def _keep_csv_rows(logger: CSVLogger) -> None:
    """Open the CSV logger's writer now, with the earlier ``metrics.csv`` moved aside, then put the file back."""
    import csv
    import warnings

    path = os.path.join(logger.log_dir, "metrics.csv")
    if not os.path.isfile(path):
        return
    aside = f"{path}.resume-{os.getpid()}"
    os.replace(path, aside)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
            writer = logger.experiment
    finally:
        os.replace(aside, path)
    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    writer.metrics_keys.extend(k for k in header if k not in writer.metrics_keys)  # rows appended under this header
