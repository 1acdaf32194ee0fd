"""The Lightning side of the ``lightning-gpt`` command: ``GPTLightningCLI`` (``fit | validate | test | predict``) and
the Ctrl-C checkpoint callback. ``lightning_gpt.cli.main`` dispatches here; see that module for the commands."""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from typing import Any, Optional

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from lightning_gpt._lightning_internals import last_global_step_saved
from lightning_gpt.checkpoint import find_checkpoint

__all__ = ["GPTLightningCLI", "InterruptCheckpoint"]

log = logging.getLogger(__name__)


class _DropAdvert(logging.Filter):
    """Lightning prints a product tip (install litlogger) at every fit; the command's output is the run's own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip:")


_DROP_ADVERT = _DropAdvert()


def _quiet_lightning() -> None:
    # Same filter object each time: addFilter (like filterwarnings) ignores a repeat, so many CLIs in one process
    # do not stack filters.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DROP_ADVERT)
    # Lightning 2.6's own pytree helper trips a torch deprecation warning on every fit; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


class InterruptCheckpoint(Callback):
    """Ctrl-C during ``fit`` saves a resumable checkpoint, then stops.

    The first SIGINT only sets a flag; at the end of the current optimizer step (a consistent state: weights, optimizer,
    loop counters, sampler position and RNG all agree) every rank saves ``<checkpoint dir>/last.ckpt`` and training
    stops with ``KeyboardInterrupt``. ``lightning-gpt fit ... --ckpt_path last`` then continues exactly from there.
    A second Ctrl-C interrupts immediately, without a checkpoint. When ``fit`` ends (``max_steps``) after the last
    periodic checkpoint, ``last.ckpt`` is brought up to the final step as well (saved at the last batch's end).

    Args:
        filename: file name of the checkpoint inside the ``ModelCheckpoint`` directory; ``last.ckpt`` is what
            ``--ckpt_path last`` picks up.
    """

    def __init__(self, filename: str = "last.ckpt") -> None:
        self.filename = filename
        self._requested = False
        self._previous_handler: Any = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._requested:  # second Ctrl-C: give up on the graceful path
            self._restore()
            raise KeyboardInterrupt
        self._requested = True
        rank_zero_info("Ctrl-C: finishing the current step, then saving a checkpoint (Ctrl-C again to abort).")

    def _restore(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._requested = False
        try:
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread (e.g. a notebook worker): keep Lightning's default behaviour
            self._previous_handler = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self._final_step_unsaved(trainer):
            # fit is about to stop at max_steps; save here (mid-epoch state Lightning resumes exactly), not at
            # on_train_end (where the epoch already counts as finished).
            trainer.save_checkpoint(self.checkpoint_path(trainer), weights_only=False)
        requested = self._requested
        if trainer.world_size > 1:  # every rank must agree, or the collective save would hang
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if not requested:
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)
        rank_zero_info(
            f"Interrupted at step {trainer.global_step}: saved {path}. Resume with the same command plus "
            "--ckpt_path last."
        )
        self._restore()
        raise KeyboardInterrupt

    @staticmethod
    def _final_step_unsaved(trainer: Trainer) -> bool:
        callback = trainer.checkpoint_callback
        saved = last_global_step_saved(callback)
        return (
            getattr(callback, "save_last", False)
            and saved is not None
            and 0 < trainer.max_steps <= trainer.global_step
            and saved < trainer.global_step
        )

    def checkpoint_path(self, trainer: Trainer) -> str:
        """Where the interrupt checkpoint goes: next to the ``ModelCheckpoint`` files."""
        callback = trainer.checkpoint_callback
        folder = getattr(callback, "dirpath", None) or os.path.join(trainer.default_root_dir, "checkpoints")
        return os.path.join(str(folder), self.filename)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore()


class CompactUsageParser(LightningArgumentParser):
    """On a parse error, one usage line before the message instead of the synopsis of all ~150 options."""

    def print_usage(self, file: Any = None) -> None:
        (file or sys.stdout).write(f"usage: {self.prog.replace(' [options]', '')} [options]\n")


DESCRIPTION = (
    "Train GPT language models and decode text from them. Also: `lightning-gpt generate --ckpt_path RUN --prompt "
    "TEXT` streams a completion (see `lightning-gpt generate --help`)."
)


class GPTLightningCLI(LightningCLI):
    """``LightningCLI`` for ``GPTModule`` with ``TextDataModule`` (fit/validate/test) or ``PromptDataModule`` (predict).

    A project with its own ``GPTModule`` subclass gets the same command line with ``GPTLightningCLI(MyModule)`` in a
    script.

    Args:
        model_class: the LightningModule (default ``GPTModule``).
        datamodule_class: the data module of fit/validate/test (default ``TextDataModule``).
        args: arguments to parse instead of ``sys.argv[1:]`` (a list of strings or a dict).
        run: whether to run the subcommand (``False`` only builds the classes).
        kwargs: forwarded to ``LightningCLI``.
    """

    def __init__(
        self,
        model_class: Optional[type] = None,
        datamodule_class: Optional[type] = None,
        args: Any = None,
        run: bool = True,
        **kwargs: Any,
    ) -> None:
        from lightning_gpt.data import TextDataModule
        from lightning_gpt.module import GPTModule

        self._building: Optional[str] = None
        kwargs.setdefault("subclass_mode_model", False)
        kwargs.setdefault("seed_everything_default", 1337)
        kwargs.setdefault("auto_configure_optimizers", False)  # GPTModule builds AdamW; the schedule is a callback
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("trainer_defaults", _trainer_defaults())
        kwargs.setdefault("parser_kwargs", {"description": DESCRIPTION})
        kwargs.setdefault("parser_class", CompactUsageParser)
        _quiet_lightning()
        super().__init__(model_class or GPTModule, datamodule_class or TextDataModule, args=args, run=run, **kwargs)

    # -- parser ------------------------------------------------------------------------------------------------------

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        # Remember which subcommand is being built: predict gets a different data module and a prediction writer.
        self._building = subcommand
        try:
            return super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        finally:
            self._building = None

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Trainer and model as usual; ``data`` is the ``PromptDataModule`` for ``predict``."""
        if self._building != "predict":
            super().add_core_arguments_to_parser(parser)
            return
        from lightning_gpt.generation.prompts import PromptDataModule

        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        parser.set_defaults({"trainer.logger": False})  # predict writes JSONL; no empty log folders in the cwd
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=self.subclass_mode_model)
        parser.add_lightning_class_args(PromptDataModule, "data")

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Configurable default callbacks (``clip.*``, ``lr_schedule.*``, ``sampling.*``, ``nonfinite.*``,
        ``checkpoint.*``) and, for ``predict``, the JSONL writer (``writer.*``)."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        from lightning_gpt.callbacks import GradientClipping, LRSchedule, NonFiniteGuard, SampleGeneration

        if self._building == "predict":
            from lightning_gpt.callbacks.prediction_writer import JSONLPredictionWriter

            parser.add_lightning_class_args(JSONLPredictionWriter, "writer")
            return
        parser.add_lightning_class_args(GradientClipping, "clip")
        parser.add_lightning_class_args(LRSchedule, "lr_schedule")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        parser.add_lightning_class_args(SampleGeneration, "sampling")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})

    # -- checkpoint hyperparameters ----------------------------------------------------------------------------------

    def _parse_ckpt_path(self) -> None:
        """Take the model's arguments from the checkpoint, but let the ones given explicitly on the command line (or
        in a ``--config``) win: Lightning's own version lets the checkpoint override everything."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if ckpt_path and os.path.isdir(ckpt_path) and not _is_sharded_checkpoint(ckpt_path):
            ckpt_path = self.config[subcommand]["ckpt_path"] = find_checkpoint(ckpt_path)
        if not ckpt_path or ckpt_path in ("last", "best", "hpc") or not os.path.isfile(ckpt_path):
            if ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry") and not os.path.exists(ckpt_path):
                raise FileNotFoundError(
                    f"--ckpt_path {ckpt_path!r} does not exist. Pass a .ckpt file, a run directory, or 'last' (fit: "
                    "resume from the newest checkpoint of this run)."
                )
            return
        parser = self._parser(subcommand)
        defaults = parser.get_defaults()
        explicit = {
            key: value
            for key, value in self.config[subcommand].items()
            if key.startswith("model.") and _differs(value, _get_or_missing(defaults, key))
        }
        from lightning_gpt.checkpoint import read_checkpoint

        read_checkpoint(ckpt_path)  # a damaged file fails here with one paragraph, not torch's multi-page message
        try:
            super()._parse_ckpt_path()
        except SystemExit:
            raise
        except Exception as err:  # noqa: BLE001 - e.g. hyperparameters that no longer parse
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(
                f"--ckpt_path {ckpt_path!r}: its saved model arguments could not be used ({first_line}). Point it at "
                "a checkpoint written by this version of lightning-gpt, e.g. <run>/checkpoints/last.ckpt."
            ) from None
        for key, value in explicit.items():
            self.config[subcommand][key] = value

    # -- trainer ------------------------------------------------------------------------------------------------------

    def before_instantiate_classes(self) -> None:
        """Checkpoints go to ``<default_root_dir>/checkpoints`` (not a per-version logger folder), so that
        ``--ckpt_path last`` finds them from a new process."""
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand == "predict":
            self.save_config_callback = None  # nothing to reproduce; do not drop a config.yaml in the working dir
            return
        if cfg.get("checkpoint.dirpath") is None:
            root = cfg.get("trainer.default_root_dir") or os.getcwd()
            cfg["checkpoint.dirpath"] = os.path.join(str(root), "checkpoints")

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Add the atomic checkpoint IO plugin and, when a logger is on, a ``LearningRateMonitor``."""
        from lightning.fabric.plugins import CheckpointIO
        from lightning.pytorch.callbacks import LearningRateMonitor

        from lightning_gpt.checkpoint_io import AtomicCheckpointIO

        trainer_cfg = self._get(self.config_init, "trainer", default={})
        plugins = trainer_cfg.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        kwargs["plugins"] = plugins
        trainer = super().instantiate_trainer(**kwargs)
        if trainer.loggers and not any(isinstance(c, LearningRateMonitor) for c in trainer.callbacks):
            trainer.callbacks.insert(0, LearningRateMonitor(logging_interval="step"))
        return trainer


def _trainer_defaults() -> dict[str, Any]:
    # TextDataModule's samplers are DistributedSamplers (rank-sharded, resumable), which Lightning keeps as they are,
    # so use_distributed_sampler stays at its default. LRSchedule decays over trainer.max_steps unless told otherwise.
    return {"callbacks": [InterruptCheckpoint()]}


_MISSING = object()


def _is_sharded_checkpoint(path: str) -> bool:
    """A distributed (FSDP) checkpoint is a directory itself; a run directory only contains checkpoints."""
    return any(os.path.exists(os.path.join(path, name)) for name in (".metadata", "meta.pt"))


def _get_or_missing(namespace: Any, key: str) -> Any:
    try:
        return namespace[key]
    except (KeyError, TypeError):
        return _MISSING


def _differs(a: Any, b: Any) -> bool:
    if b is _MISSING:
        return a is not None
    try:
        return bool(a != b)
    except Exception:  # noqa: BLE001 - tensors and exotic objects
        return True
