"""The Lightning side of the ``lightning-gpt`` command: ``GPTLightningCLI`` (``fit | validate | test | predict``) and
the Ctrl-C checkpoint callback. ``lightning_gpt.cli.main`` dispatches here; see that module for the commands."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import warnings
from typing import Any, Optional

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from lightning_gpt.errors import lead_with_reason
from lightning_gpt.io.checkpoint import find_checkpoint
from lightning_gpt.training._lightning_internals import (
    last_global_step_saved,
    mark_step_saved,
    register_last_checkpoint,
)

__all__ = ["GPTLightningCLI", "InterruptCheckpoint"]

log = logging.getLogger(__name__)


class _DropAdvert(logging.Filter):
    """Lightning prints a product tip (install litlogger) at every fit; the command's output is the run's own."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Also Lightning's note that it skipped its own model summary: the CLI adds GPTModelSummary on purpose.
        return not str(record.msg).startswith(
            ("\N{ELECTRIC LIGHT BULB} Tip:", "Trainer already configured with model summary callbacks")
        )


_DROP_ADVERT = _DropAdvert()


def _quiet_lightning() -> None:
    # Same filter object each time: addFilter (like filterwarnings) ignores a repeat, so many CLIs in one process
    # do not stack filters.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DROP_ADVERT)
    # Lightning 2.6's own pytree helper trips a torch deprecation warning on every fit; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # A fit only writes into a non-empty checkpoint folder when it resumes there or was told --overwrite true.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


class InterruptCheckpoint(Callback):
    """Ctrl-C or SIGTERM during ``fit`` saves a resumable checkpoint, then stops with a non-zero exit status.

    The first SIGINT only sets a flag; at the end of the current optimizer step (a consistent state: weights, optimizer,
    loop counters, sampler position and RNG all agree) every rank saves ``<checkpoint dir>/last.ckpt`` and training
    stops with ``KeyboardInterrupt`` (exit status 1). ``lightning-gpt fit ... --ckpt_path last`` then continues exactly
    from there. A second Ctrl-C interrupts immediately, without a checkpoint. With gradient accumulation, a step
    ends with its last micro-batch (a checkpoint cannot hold half a step).

    SIGTERM (what schedulers send before a kill) is received by Lightning's own handler (``trainer.received_sigterm``;
    under SLURM with auto-requeue it also requeues the job); this callback reads that flag, so the two coexist: the
    step finishes, ``last.ckpt`` is saved and training stops with ``SIGTERMException(143)`` (exit status 143, as a
    process killed by SIGTERM). A SIGTERM that Lightning acts on first (during validation) saves in ``on_exception``.

    When ``fit`` ends (``max_steps``) after the last periodic checkpoint, ``last.ckpt`` is brought up to the final step
    as well (saved at the last batch's end). Every save is registered with the ``ModelCheckpoint``, so Lightning's own
    end-of-fit save neither repeats it nor writes a second ``last-v1.ckpt``: a run has exactly one ``last.ckpt``.

    Args:
        filename: file name of the checkpoint inside the ``ModelCheckpoint`` directory; ``last.ckpt`` is what
            ``--ckpt_path last`` picks up.
    """

    def __init__(self, filename: str = "last.ckpt") -> None:
        self.filename = filename
        self._requested = False
        self._saved_at: Optional[int] = None
        self._previous_handler: Any = None
        self._step_at_batch_start = -1

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
        self._saved_at = None
        callback = trainer.checkpoint_callback
        if getattr(callback, "save_last", False) and not getattr(callback, "last_model_path", "x"):
            # A run started fresh, or resumed from a folder that moved (Lightning then forgets the path): without this,
            # Lightning's first save of `last` finds our last.ckpt there and writes last-v1.ckpt beside it.
            callback.last_model_path = self.checkpoint_path(trainer)
        try:
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread (e.g. a notebook worker): keep Lightning's default behaviour
            self._previous_handler = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if trainer.global_step == self._step_at_batch_start:
            # A micro-batch inside a gradient-accumulation step: its gradients are not in a checkpoint, so wait for
            # the step's last micro-batch (the same on every rank, so no rank waits on another here).
            return
        if self._final_step_unsaved(trainer):
            # fit is about to stop at max_steps; save here (mid-epoch state Lightning resumes exactly), not at
            # on_train_end (where the epoch already counts as finished).
            self._save(trainer)
        requested, sigterm = self._requested, bool(getattr(trainer, "received_sigterm", False))
        if trainer.world_size > 1:  # every rank must agree, or the collective save would hang
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
            sigterm = trainer.strategy.reduce_boolean_decision(sigterm, all=False)
        if not (requested or sigterm):
            return
        path = self._save(trainer)
        self._restore()
        if sigterm:
            rank_zero_info(_stopped_message("SIGTERM", trainer.global_step, path))
            raise _sigterm_exit()
        rank_zero_info(_stopped_message("Interrupted", trainer.global_step, path))
        raise KeyboardInterrupt

    def _save(self, trainer: Trainer) -> str:
        """Save ``last.ckpt`` and tell the ``ModelCheckpoint`` that this step is saved (see the class docstring)."""
        path = self.checkpoint_path(trainer)
        if self._saved_at == trainer.global_step and os.path.isfile(path):
            return path
        trainer.save_checkpoint(path, weights_only=False)
        self._saved_at = trainer.global_step
        callback = trainer.checkpoint_callback
        if getattr(callback, "save_last", False) and os.path.basename(path) == os.path.basename(
            getattr(callback, "last_model_path", "") or path
        ):
            # Lightning-private bookkeeping of ModelCheckpoint (covered by tests/training/test_run_folder.py):
            # last.ckpt is its own `last` (so it is never written again under another name, nor replaced at
            # on_train_end by a state whose epoch already counts as finished).
            register_last_checkpoint(callback, path)
        return path

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Runs before ModelCheckpoint's epoch-end save: the final step is saved (mid-epoch state, which resumes
        # exactly), so that save must not write the same step again as an "epoch finished" state. Not set earlier, at
        # the batch end, where ModelCheckpoint's own periodic save of this step still has to happen.
        callback = trainer.checkpoint_callback
        if self._saved_at == trainer.global_step:
            mark_step_saved(callback, trainer.global_step)

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
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if not isinstance(exception, SIGTERMException) or exception.code:
            return  # ours (already saved) or not a signal
        # Lightning stopped on SIGTERM before a training batch ended (during validation or at an epoch end): the
        # training state is still at a step boundary, so save it.
        if trainer.state.fn == "fit" and not trainer.sanity_checking and trainer.global_step > 0:
            path = self._save(trainer)
            rank_zero_info(_stopped_message("SIGTERM", trainer.global_step, path))


def _stopped_message(what: str, step: int, path: str) -> str:
    return f"{what} at step {step}: saved {path}. Resume with the same command plus --ckpt_path last."


def _sigterm_exit() -> BaseException:
    """Lightning's ``SIGTERMException`` (so ``on_exception`` hooks recognise it) with exit status 143 (128 + 15)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    return SIGTERMException(143)


class CompactUsageParser(LightningArgumentParser):
    """On a parse error, one usage line before the message instead of the synopsis of all ~150 options."""

    def print_usage(self, file: Any = None) -> None:
        (file or sys.stdout).write(f"usage: {self.prog.replace(' [options]', '')} [options]\n")

    def error(self, message: str, ex: Optional[Exception] = None) -> Any:
        """jsonargparse's message, led by the real reason (a misspelled nested key names the nearest valid one)."""
        return super().error(lead_with_reason(message), ex)


DESCRIPTION = (
    "Train GPT language models and decode text from them. Also: `lightning-gpt generate --ckpt_path RUN --prompt "
    "TEXT` streams a completion (see `lightning-gpt generate --help`); `lightning-gpt export --ckpt_path RUN "
    "--output_dir DIR` writes a Hugging Face GPT-2 folder (see `lightning-gpt export --help`)."
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
        from lightning_gpt.training import TextDataModule
        from lightning_gpt.training.module import GPTModule

        self._building: Optional[str] = None
        kwargs.setdefault("subclass_mode_model", False)
        kwargs.setdefault("seed_everything_default", 1337)
        kwargs.setdefault("auto_configure_optimizers", False)  # GPTModule builds AdamW; the schedule is a callback
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("save_config_callback", _atomic_save_config())
        kwargs.setdefault("trainer_defaults", _trainer_defaults())
        kwargs.setdefault("parser_kwargs", {"description": DESCRIPTION})
        kwargs.setdefault("parser_class", CompactUsageParser)
        self._run_lock: Optional[Any] = None
        self._overwrite = False
        _quiet_lightning()
        try:
            super().__init__(model_class or GPTModule, datamodule_class or TextDataModule, args=args, run=run, **kwargs)
        finally:
            if self._run_lock is not None:  # held from before the model was built to the end of fit
                self._run_lock.release()
                self._run_lock = None

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
        from lightning_gpt.training.prompts import PromptDataModule

        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        parser.set_defaults({"trainer.logger": False})  # predict writes JSONL; no empty log folders in the cwd
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=self.subclass_mode_model)
        parser.add_lightning_class_args(PromptDataModule, "data")

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Configurable default callbacks (``clip.*``, ``lr_schedule.*``, ``sampling.*``, ``nonfinite.*``,
        ``loss_curve.*``, ``checkpoint.*``) and, for ``predict``, the JSONL writer (``writer.*``)."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        from lightning_gpt.training.callbacks import (
            GradientClipping,
            LossCurve,
            LRSchedule,
            NonFiniteGuard,
            SampleGeneration,
        )

        parser.add_argument(
            "--trust_checkpoint",
            type=bool,
            default=False,
            help="Load --ckpt_path (and a tokenizer .ckpt) even when it needs a full unpickle, which can run code "
            "from the file. Only for files from a trusted source; by default such a file is refused.",
        )
        if self._building == "predict":
            from lightning_gpt.training.callbacks.prediction_writer import JSONLPredictionWriter

            parser.add_lightning_class_args(JSONLPredictionWriter, "writer")
            return
        _document_config_fields(parser)
        parser.add_lightning_class_args(GradientClipping, "clip")
        parser.add_lightning_class_args(LRSchedule, "lr_schedule")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        parser.add_lightning_class_args(SampleGeneration, "sampling")
        parser.add_lightning_class_args(LossCurve, "loss_curve")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        if self._building == "fit":
            parser.add_argument(
                "--overwrite",
                type=bool,
                default=False,
                help="Start a new run in a checkpoint folder that holds an earlier run's checkpoints, deleting them "
                "first. Without it such a fit is refused (to continue the earlier run, pass --ckpt_path last).",
            )

    # -- checkpoint hyperparameters ----------------------------------------------------------------------------------

    def _parse_ckpt_path(self) -> None:
        """Take the model's arguments from the checkpoint, but let the ones given explicitly on the command line (or
        in a ``--config``) win: Lightning's own version lets the checkpoint override everything."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        trust = bool(self.config[subcommand].get("trust_checkpoint"))
        from lightning_gpt.io.hf import is_pretrained_path

        if ckpt_path and is_pretrained_path(ckpt_path):
            self._parse_weights_folder(subcommand, str(ckpt_path))
            return
        if subcommand == "fit" and ckpt_path == "last":
            ckpt_path = self._resolve_last(self.config[subcommand]) or "last"
            self.config[subcommand]["ckpt_path"] = ckpt_path
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
        from lightning_gpt.io.checkpoint import (
            UnsafeCheckpointError,
            check_config_for_checkpoint,
            read_checkpoint,
            read_model_checkpoint,
        )

        # A damaged or unsafe file, or a gpt_config that does not describe the weights, fails here with one
        # paragraph, before anything is built (the tensors are memory-mapped, not read).
        read_model_checkpoint(ckpt_path, trust_checkpoint=trust)
        if trust:
            try:
                read_checkpoint(ckpt_path)
            except UnsafeCheckpointError:
                # Lightning re-reads the arguments weights-only, which this trusted file cannot pass; the module's
                # on_load_checkpoint still adopts its model config.
                return
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
        # The config about to be built (the checkpoint's saved arguments, merged with the explicit ones) must
        # describe the weights: checked before the model is allocated.
        check_config_for_checkpoint(self.config[subcommand].get("model.config"), ckpt_path, trust_checkpoint=trust)

    def _parse_weights_folder(self, subcommand: str, path: str) -> None:
        """``--ckpt_path`` is a weights folder (``lightning-gpt export`` or Hugging Face GPT-2): the model config
        comes from its JSON, as from a checkpoint's arguments, and validate/test use its tokenizer unless one is
        named."""
        from lightning_gpt.io.hf import read_pretrained_config

        # A foreign folder, or a config that does not describe the weights, fails here in one paragraph.
        source = read_pretrained_config(path, trust_checkpoint=bool(self.config[subcommand].get("trust_checkpoint")))
        defaults = self._parser(subcommand).get_defaults()
        explicit = {
            key: value
            for key, value in self.config[subcommand].items()
            if key.startswith("model.") and _differs(value, _get_or_missing(defaults, key))
        }
        self.config = self.parser.parse_object({subcommand: {"model": {"config": source.to_dict()}}}, self.config)
        for key, value in explicit.items():
            self.config[subcommand][key] = value
        cfg = self.config[subcommand]
        tokenizer = cfg.get("data.tokenizer")
        if isinstance(tokenizer, str) and not _differs(tokenizer, _get_or_missing(defaults, "data.tokenizer")):
            cfg["data.tokenizer"] = path

    @staticmethod
    def _resolve_last(cfg: Any) -> Optional[str]:
        """``--ckpt_path last``: the newest complete checkpoint of the run folder (see ``run_folder``), or ``None``
        when the folder holds none yet (Lightning then warns and starts the first run)."""
        from lightning_gpt.training.run_folder import resolve_last_checkpoint

        path, note = resolve_last_checkpoint(_checkpoint_dir(cfg))
        if note:
            rank_zero_warn(f"--ckpt_path last: {note}")
        return path

    # -- trainer ------------------------------------------------------------------------------------------------------

    def before_instantiate_classes(self) -> None:
        """Checkpoints go to ``<default_root_dir>/checkpoints`` (not a per-version logger folder), so that
        ``--ckpt_path last`` finds them from a new process. For ``fit``, before anything is built: the folder must be
        writable, no other ``fit`` may be using it, and an earlier run's checkpoints are only replaced when asked."""
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        check_trainer_settings(cfg)
        if self.subcommand == "fit":
            check_training_length(cfg)
        if cfg.get("model.init_from"):
            self._apply_init_from(cfg, str(cfg["model.init_from"]))
        if self.subcommand == "predict":
            self.save_config_callback = None  # nothing to reproduce; do not drop a config.yaml in the working dir
            return
        if cfg.get("trust_checkpoint") and cfg.get("data.trust_checkpoint") is not None:
            cfg["data.trust_checkpoint"] = True  # the same opt-in covers a tokenizer=<file>.ckpt
        if cfg.get("checkpoint.dirpath") is None:
            cfg["checkpoint.dirpath"] = _checkpoint_dir(cfg)
        if self.subcommand == "fit" and _is_launch_rank_zero():
            self._claim_run_folder(cfg)  # once per job: the other ranks (launched later) write into the same folder

    def _claim_run_folder(self, cfg: Any) -> None:
        """Read-only checks of the run folder, before anything is built: an earlier run's checkpoints are only
        replaced when asked. Nothing is created here (a run refused later, e.g. for a bad model setting, leaves no
        folder behind); ``before_fit`` takes the lock and checks that the folder is writable."""
        from lightning_gpt.training.run_folder import check_fresh_run

        folder = str(cfg["checkpoint.dirpath"])
        self._overwrite = bool(cfg.get("overwrite"))
        cfg["overwrite"] = False  # the saved config.yaml must not carry a deletion into a later run
        ckpt_path = cfg.get("ckpt_path")
        resumes_here = ckpt_path is not None and (
            ckpt_path in ("last", "hpc") or os.path.dirname(os.path.abspath(str(ckpt_path))) == os.path.abspath(folder)
        )
        if resumes_here or self._overwrite or _slurm_requeue_resumes(cfg):
            return
        check_fresh_run(folder)

    def before_fit(self) -> None:
        """Once every class is built and before any data is read: the run folder must be writable and no other
        ``fit`` may be using it (a lock, dropped by the OS when the process dies). ``--overwrite true`` without
        ``--ckpt_path``: delete the earlier run's checkpoints (the run folder holds one run, so ``--ckpt_path last``
        and ``generate --ckpt_path <run>`` cannot pick the old one)."""
        from lightning_gpt.training.run_folder import RunFolderLock, check_writable, remove_checkpoints

        cfg = self.config[self.subcommand]
        if not _is_launch_rank_zero():
            return
        folder = str(cfg["checkpoint.dirpath"])
        self._new_run_folder = folder if not os.path.exists(folder) else None
        check_writable(folder)
        self._run_lock = RunFolderLock(folder).acquire()
        if self._overwrite and cfg.get("ckpt_path") is None:
            removed = remove_checkpoints(folder)
            if removed:
                rank_zero_info(f"--overwrite: deleted {len(removed)} checkpoint(s) of the earlier run in {folder}.")

    def fit(self, model: LightningModule, **kwargs: Any) -> None:
        """``trainer.fit``; a run that fails before its first checkpoint leaves no empty checkpoint folder behind
        (LightningCLI calls a method named after the subcommand when the CLI class defines one)."""
        try:
            self.trainer.fit(model, **kwargs)
        except BaseException:
            folder = getattr(self, "_new_run_folder", None)
            if folder is not None:
                with contextlib.suppress(OSError):
                    os.rmdir(folder)  # only succeeds while it is empty
            raise

    def _apply_init_from(self, cfg: Any, path: str) -> None:
        """``--model.init_from``: the model config fields not given explicitly take PATH's values (the explicit ones
        are checked by ``GPTModule``), and the data module uses PATH's tokenizer unless one is named."""
        from lightning_gpt.config import GPTConfig
        from lightning_gpt.io.init_from import init_config

        defaults = self._parser(self.subcommand).get_defaults() if self.subcommand else self.parser.get_defaults()
        source = init_config(path, trust_checkpoint=bool(cfg.get("trust_checkpoint")))
        if cfg.get("model.config") is not None:
            plain = GPTConfig()
            for name, value in source.to_dict().items():
                key = f"model.config.{name}"
                default = _get_or_missing(defaults, key)
                if not _differs(cfg.get(key), getattr(plain, name) if default is _MISSING else default):
                    cfg[key] = value
        tokenizer = cfg.get("data.tokenizer")
        if isinstance(tokenizer, str) and not _differs(tokenizer, _get_or_missing(defaults, "data.tokenizer")):
            cfg["data.tokenizer"] = path

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Add the atomic checkpoint IO plugin and, when a logger is on, a ``LearningRateMonitor``."""
        from lightning.fabric.plugins import CheckpointIO
        from lightning.pytorch.callbacks import LearningRateMonitor

        from lightning_gpt.training.checkpoint_io import AtomicCheckpointIO

        trainer_cfg = self._get(self.config_init, "trainer", default={})
        plugins = trainer_cfg.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        trust = bool(self._get(self.config, "trust_checkpoint", default=False))
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO(trust_checkpoint=trust))
        elif trust:
            for plugin in plugins:
                if isinstance(plugin, AtomicCheckpointIO):
                    plugin.trust_checkpoint = True
        kwargs["plugins"] = plugins
        if (
            self.subcommand != "predict"
        ):  # steps and loss lines (plain when stdout is a log file); summary without FLOPs 0
            from lightning_gpt.training.callbacks.progress import default_progress_callbacks

            callbacks = trainer_cfg.get("callbacks") or []
            callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
            kwargs["callbacks"] = callbacks + default_progress_callbacks(trainer_cfg, callbacks)
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except Exception as err:  # noqa: BLE001 - Lightning's MisconfigurationException is a user error: one paragraph
            if type(err).__name__ != "MisconfigurationException":
                raise
            raise ValueError(f"{err} Change the --trainer.* setting it names (see lightning-gpt fit --help).") from None
        if trainer.loggers and not any(isinstance(c, LearningRateMonitor) for c in trainer.callbacks):
            trainer.callbacks.insert(0, LearningRateMonitor(logging_interval="step"))
        return trainer


def check_trainer_settings(cfg: Any) -> None:
    """Reject trainer settings Lightning would only reject later with a traceback (or after building the model).

    Args:
        cfg: the subcommand's parsed configuration (keys ``trainer.*``).

    Raises:
        ValueError: ``max_steps`` below -1; ``devices`` 0 or below -1; a GPU accelerator on a machine without one.
    """
    import torch

    max_steps = cfg.get("trainer.max_steps")
    if isinstance(max_steps, int) and max_steps < -1:
        raise ValueError(
            f"--trainer.max_steps {max_steps}: must be a number of optimizer steps >= 1 (e.g. --trainer.max_steps "
            "1000), or -1 for no step limit (then --trainer.max_epochs ends training)."
        )
    devices = cfg.get("trainer.devices")
    count = int(devices) if isinstance(devices, str) and devices.strip().lstrip("-").isdigit() else devices
    if (isinstance(count, int) and not isinstance(count, bool) and (count == 0 or count < -1)) or devices == []:
        raise ValueError(
            f"--trainer.devices {devices!r}: needs a positive number of devices, -1 or 'auto' (all of them), or a "
            "list of GPU indices such as [0, 1]. Use --trainer.devices 1 for one device."
        )
    accelerator = cfg.get("trainer.accelerator")
    if not isinstance(accelerator, str):
        return
    name = accelerator.lower()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    missing = {
        "cuda": not torch.cuda.is_available(),
        "gpu": not (torch.cuda.is_available() or mps),
        "mps": not mps,
    }.get(name, False)
    if not missing:
        return
    why = "no CUDA GPU" if name == "cuda" else "no Apple MPS device" if name == "mps" else "no GPU"
    if name != "mps" and torch.version.cuda is None:
        why += " (this torch is a CPU-only build)"
    extra = []
    if isinstance(count, int) and count > 1 or isinstance(devices, (list, tuple)):
        extra.append("--trainer.devices 1")
    precision = str(cfg.get("trainer.precision") or "")
    if precision.startswith("16") or precision.endswith("true") and "16" in precision:
        extra.append("--trainer.precision 32-true")
    strategy = cfg.get("trainer.strategy")
    if strategy not in (None, "auto"):
        extra.append("--trainer.strategy auto")
    fix = " ".join(["--trainer.accelerator cpu", *extra])
    raise ValueError(
        f"--trainer.accelerator {accelerator!r}: this machine has {why}. Run on the CPU with {fix} (a GPU recipe "
        "then runs, slowly; shrink it with e.g. --model.config.n_layer 2 --trainer.max_steps 20), or run on a machine "
        "with a GPU."
    )


def check_training_length(cfg: Any) -> None:
    """``fit`` needs to know how long it trains before anything is built: the LR schedule decays over ``max_steps``.

    Args:
        cfg: the ``fit`` configuration.

    Raises:
        ValueError: neither ``--trainer.max_steps`` nor ``--lr_schedule.decay_steps`` is set (a bare ``fit``).
    """
    max_steps = cfg.get("trainer.max_steps")
    schedule = cfg.get("lr_schedule.schedule")
    if cfg.get("lr_schedule.decay_steps") is not None or schedule == "constant":
        return
    if max_steps is None or max_steps < 0:
        raise ValueError(
            "fit needs a training length: the learning-rate schedule decays over --trainer.max_steps, which is not "
            "set. Start from a recipe, e.g. lightning-gpt fit --config recipes/quickstart.yaml (a 4-layer character "
            "model on the Python standard library, minutes on a CPU), or set --trainer.max_steps N (and a model size "
            "such as --model.config.n_layer 4 --model.config.n_head 4 --model.config.n_embd 128; the default is GPT-2 "
            "small, 124M parameters)."
        )


def _document_config_fields(parser: LightningArgumentParser) -> None:
    """``fit --help`` names every architecture field: ``--model.config`` is a dataclass that jsonargparse shows as
    one option, so its help lists the fields as ``--model.config.<field>`` with their defaults."""
    import dataclasses

    from lightning_gpt.config import GPTConfig

    action = next((a for a in parser._actions if getattr(a, "dest", None) == "model.config"), None)
    if action is None:
        return
    fields = ", ".join(f"--model.config.{f.name} ({f.default!r})" for f in dataclasses.fields(GPTConfig))
    action.help = (
        f"{action.help or ''} Architecture fields (defaults: GPT-2 small): {fields}. "
        "`lightning-gpt fit --model.config.help` describes each."
    )


def _atomic_save_config() -> type:
    from lightning_gpt.training.checkpoint_io import AtomicSaveConfigCallback

    return AtomicSaveConfigCallback


def _trainer_defaults() -> dict[str, Any]:
    # TextDataModule's samplers are DistributedSamplers (rank-sharded, resumable), which Lightning keeps as they are,
    # so use_distributed_sampler stays at its default. LRSchedule decays over trainer.max_steps unless told otherwise.
    return {"callbacks": [InterruptCheckpoint()]}


_MISSING = object()


def _checkpoint_dir(cfg: Any) -> str:
    """The run's checkpoint folder: ``--checkpoint.dirpath``, else ``<trainer.default_root_dir>/checkpoints``."""
    if cfg.get("checkpoint.dirpath") is not None:
        return str(cfg["checkpoint.dirpath"])
    root = cfg.get("trainer.default_root_dir") or os.getcwd()
    return os.path.join(str(root), "checkpoints")


def _is_launch_rank_zero() -> bool:
    """Whether this process is the job's first one, before any process group exists: torchrun, SLURM and Lightning's
    launcher set ``RANK``/``SLURM_PROCID``/``NODE_RANK``/``LOCAL_RANK`` to non-zero values for the others (Lightning's
    launcher starts them from rank 0 during ``fit``, after rank 0 has claimed the run folder)."""
    names = ("RANK", "SLURM_PROCID", "NODE_RANK", "GROUP_RANK", "LOCAL_RANK")
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in names)


def _slurm_requeue_resumes(cfg: Any) -> bool:
    """A requeued SLURM job reruns the same command; Lightning resumes it from its ``hpc_ckpt_*.ckpt``."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    root = str(cfg.get("trainer.default_root_dir") or os.getcwd())
    if not SLURMEnvironment.detect() or not os.path.isdir(root):
        return False
    return any(n.startswith("hpc_ckpt_") and n.endswith(".ckpt") for n in os.listdir(root))


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
