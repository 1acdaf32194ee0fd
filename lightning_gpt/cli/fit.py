"""``lightning-gpt fit | validate | test | predict``: ``GPTLightningCLI``, the ``LightningCLI`` wiring of ``GPTModule``
with ``TextDataModule`` (``PromptDataModule`` for ``predict``).

Only the parser and the order of things live here; the rules are beside it: ``checks`` (settings refused before
anything is built), ``ckpt_args`` (model arguments from a checkpoint, weights folder or ``init_from``; explicit ones
win), ``lightning_gpt.training.run_folder`` (one run per checkpoint folder: claim, lock, overwrite),
``lightning_gpt.training.callbacks`` (the default callbacks, the Ctrl-C checkpoint).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import typing
import warnings
from typing import Any, Iterator, Optional

from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_gpt.cli.checks import check_clipping, check_data_paths, check_trainer_settings, check_training_length
from lightning_gpt.cli.ckpt_args import apply_init_from, parse_ckpt_path
from lightning_gpt.cli.flags import did_you_mean
from lightning_gpt.errors import lead_with_reason
from lightning_gpt.training import run_folder
from lightning_gpt.training._lightning_internals import (
    cli_model_class,
    cli_subcommand_parser,
    cli_value,
    parser_actions,
)
from lightning_gpt.training.callbacks.interrupt import InterruptCheckpoint
from lightning_gpt.training.callbacks.logger_version import LoggerVersion, resume_logger_versions
from lightning_gpt.training.checkpoint_io import AtomicSaveConfigCallback

__all__ = [
    "COMMAND_PARSER_KWARGS",
    "DESCRIPTION",
    "GPTLightningCLI",
    "InterruptCheckpoint",
    "fit_command",
    "lightning_command",
    "predict_command",
    "test_command",
    "validate_command",
]

DESCRIPTION = (
    "Train GPT language models and decode text from them. Also: `lightning-gpt generate --ckpt_path RUN --prompt "
    "TEXT` streams a completion (see `lightning-gpt generate --help`); `lightning-gpt export --ckpt_path RUN "
    "--output_dir DIR` writes a Hugging Face GPT-2 folder (see `lightning-gpt export --help`)."
)
COMMAND_PARSER_KWARGS = {"description": DESCRIPTION, "prog": "lightning-gpt"}
"""The ``parser_kwargs`` of the ``lightning-gpt`` command's ``GPTLightningCLI`` (``help_cache`` builds the same)."""


def lightning_command(subcommand: str, argv: list[str]) -> None:
    """Run ``lightning-gpt <subcommand> ARGV`` (``fit``, ``validate``, ``test`` or ``predict``).

    Args:
        subcommand: the subcommand.
        argv: its arguments.
    """
    args = [subcommand, *argv]
    # The console script's own command line is read by LightningCLI itself (it warns when given both).
    parser_kwargs = dict(COMMAND_PARSER_KWARGS)
    GPTLightningCLI(args=None if sys.argv[1:] == args else args, parser_kwargs=parser_kwargs, remember_help=True)


class _DropAdvert(logging.Filter):
    """Lightning prints a product tip (install litlogger) at every fit; the command's output is the run's own."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Also Lightning's note that it skipped its own model summary: the CLI adds GPTModelSummary on purpose.
        return not str(record.msg).startswith(
            ("\N{ELECTRIC LIGHT BULB} Tip:", "Trainer already configured with model summary callbacks")
        )


_DROP_ADVERT = _DropAdvert()


# Lightning's warnings that read like a problem where there is none, silenced by message only where they are noise:
# validate/test/predict need no training callback's state (their "Be aware ... callbacks used to create the checkpoint
# need to be provided"), and a run folder that moved loses no checkpoint bookkeeping of its own (InterruptCheckpoint
# re-registers last.ckpt) unless a monitored top-k is kept ("The dirpath has changed ... won't be reloaded").
_CALLBACKS_NOT_GIVEN = (
    r"Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be provided"
)
_DIRPATH_CHANGED = r"The dirpath has changed from .* won't be reloaded"


@contextlib.contextmanager
def _ignoring(*messages: str) -> Iterator[None]:
    """Warnings matching ``messages`` (regular expressions, matched at the start) are dropped inside the block."""
    with warnings.catch_warnings():
        for message in messages:
            warnings.filterwarnings("ignore", message=message)
        yield


def _quiet_lightning() -> None:
    # Same filter object each time: addFilter (like filterwarnings) ignores a repeat, so many CLIs in one process
    # do not stack filters.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DROP_ADVERT)
    # Lightning 2.6's own pytree helper trips a torch deprecation warning on every fit; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # A fit only writes into a non-empty checkpoint folder when it resumes there or was told --overwrite true.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


class CompactUsageParser(LightningArgumentParser):
    """On a parse error, one usage line before the message instead of the synopsis of all ~150 options; a flag is
    never abbreviated (``--trainer.max_step`` is an error, not ``--trainer.max_steps``), and an unknown one is named
    with the nearest valid flags (``lightning_gpt.cli.flags``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def print_usage(self, file: Any = None) -> None:
        (file or sys.stdout).write(f"usage: {self.prog.replace(' [options]', '')} [options]\n")

    def error(self, message: str, ex: Optional[Exception] = None) -> Any:
        """jsonargparse's message, led by the real reason (a misspelled nested key names the nearest valid one)."""
        message = did_you_mean(lead_with_reason(message), (f for a in parser_actions(self) for f in a.option_strings))
        return super().error(message, ex)


class GPTLightningCLI(LightningCLI):
    """``LightningCLI`` for ``GPTModule`` with ``TextDataModule`` (fit/validate/test) or ``PromptDataModule`` (predict).

    A project with its own ``GPTModule`` subclass gets the same command line with ``GPTLightningCLI(MyModule)`` in a
    script.

    Args:
        model_class: the LightningModule (default ``GPTModule``).
        datamodule_class: the data module of fit/validate/test (default ``TextDataModule``).
        args: arguments to parse instead of ``sys.argv[1:]`` (a list of strings or a dict).
        run: whether to run the subcommand (``False`` only builds the classes).
        remember_help: store each subcommand's help and flags (unless the shipped ones fit), from which the
            ``lightning-gpt`` command answers ``--help`` and mistyped flags without importing Lightning
            (``lightning_gpt.cli.help_cache``); only that command sets it.
        kwargs: forwarded to ``LightningCLI``.
    """

    def __init__(
        self,
        model_class: Optional[type] = None,
        datamodule_class: Optional[type] = None,
        args: Any = None,
        run: bool = True,
        *,
        remember_help: bool = False,
        **kwargs: Any,
    ) -> None:
        from lightning_gpt.training import TextDataModule
        from lightning_gpt.training.module import GPTModule  # looked up at each construction (tests may replace it)

        self._building: Optional[str] = None
        self._remember_help = remember_help
        kwargs.setdefault("subclass_mode_model", False)
        kwargs.setdefault("seed_everything_default", 1337)
        kwargs.setdefault("auto_configure_optimizers", False)  # GPTModule builds AdamW; the schedule is a callback
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("save_config_callback", AtomicSaveConfigCallback)  # config.yaml written atomically
        # TextDataModule's samplers are DistributedSamplers (rank-sharded, resumable), which Lightning keeps.
        kwargs.setdefault("trainer_defaults", {"callbacks": [InterruptCheckpoint()]})
        kwargs.setdefault("parser_kwargs", {"description": DESCRIPTION})
        kwargs.setdefault("parser_class", CompactUsageParser)
        self._run_lock: Optional[run_folder.RunFolderLock] = None
        self._new_run_folder: Optional[str] = None
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
        parser.add_lightning_class_args(cli_model_class(self), "model", subclass_mode=self.subclass_mode_model)
        parser.add_lightning_class_args(PromptDataModule, "data")

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """The default callbacks, configurable (``clip.*``, ``lr_schedule.*``, ``nonfinite.*``, ``sampling.*``,
        ``loss_curve.*``, ``throughput.*``, ``checkpoint.*``) and, for ``predict``, the JSONL writer (``writer.*``)."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        from lightning_gpt.training.callbacks import (
            GPTThroughputMonitor,
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
        # The order is the order they run in (clipping before the non-finite check), as GPTModule's defaults.
        for callback, key in (
            (GradientClipping, "clip"),
            (LRSchedule, "lr_schedule"),
            (NonFiniteGuard, "nonfinite"),
            (SampleGeneration, "sampling"),
            (LossCurve, "loss_curve"),
            (GPTThroughputMonitor, "throughput"),
            (ModelCheckpoint, "checkpoint"),
        ):
            parser.add_lightning_class_args(callback, key)
        parser.set_defaults({"checkpoint.save_last": True})
        if self._building == "fit":
            parser.add_argument(
                "--overwrite",
                type=bool,
                default=False,
                help="Start a new run in a checkpoint folder that holds an earlier run's checkpoints, deleting them "
                "first. Without it such a fit is refused (to continue the earlier run, pass --ckpt_path last).",
            )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse as ``LightningCLI`` does; first, for the command, store the help and flags of each subcommand
        (``help_cache.remember``: only when neither the shipped nor the cached ones fit)."""
        if self._remember_help and run_folder.is_launch_rank_zero():
            from lightning_gpt.cli.help_cache import remember

            remember({name: cli_subcommand_parser(self, name) for name in self.subcommands()})
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """The model's arguments from the checkpoint or weights folder, the explicit ones winning (``ckpt_args``)."""
        parse_ckpt_path(self, super()._parse_ckpt_path)

    # -- before building ----------------------------------------------------------------------------------------------

    def before_instantiate_classes(self) -> None:
        """Checks that need nothing built (``checks``), ``init_from``'s arguments, checkpoints in
        ``<default_root_dir>/checkpoints`` (found by ``--ckpt_path last`` from a new process) and, for ``fit``, the run
        folder's read-only claim (``run_folder.claim_run_folder``)."""
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        check_trainer_settings(cfg)
        check_data_paths(cfg, str(self.subcommand))
        if self.subcommand == "fit":
            check_training_length(cfg)
            check_clipping(cfg)
        if cfg.get("model.init_from"):
            apply_init_from(self, self.subcommand, str(cfg["model.init_from"]))
            cfg = self.config[self.subcommand] if self.subcommand else self.config
        if self.subcommand == "predict":
            self.save_config_callback = None  # nothing to reproduce; do not drop a config.yaml in the working dir
            return
        if cfg.get("trust_checkpoint") and cfg.get("data.trust_checkpoint") is not None:
            cfg["data.trust_checkpoint"] = True  # the same opt-in covers a tokenizer=<file>.ckpt
        root = cfg.get("trainer.default_root_dir")
        cfg["checkpoint.dirpath"] = run_folder.checkpoint_dir(cfg.get("checkpoint.dirpath"), root)
        if self.subcommand == "fit" and run_folder.is_launch_rank_zero():
            # Once per job: the other ranks (launched later) write into the same folder.
            self._overwrite = bool(cfg.get("overwrite"))
            cfg["overwrite"] = False  # the saved config.yaml must not carry a deletion into a later run
            run_folder.claim_run_folder(str(cfg["checkpoint.dirpath"]), cfg.get("ckpt_path"), self._overwrite, root)

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """Add the atomic checkpoint IO plugin, the progress callbacks and, when a logger is on, a
        ``LearningRateMonitor``; a Lightning ``MisconfigurationException`` becomes one paragraph."""
        from lightning.fabric.plugins import CheckpointIO
        from lightning.pytorch.callbacks import LearningRateMonitor

        from lightning_gpt.training.callbacks.progress import default_progress_callbacks
        from lightning_gpt.training.checkpoint_io import AtomicCheckpointIO

        trainer_cfg = cli_value(self, self.config_init, "trainer", default={})
        plugins = trainer_cfg.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        trust = bool(cli_value(self, self.config, "trust_checkpoint", default=False))
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO(trust_checkpoint=trust))
        for plugin in plugins:
            if trust and isinstance(plugin, AtomicCheckpointIO):
                plugin.trust_checkpoint = True
        kwargs["plugins"] = plugins
        if self.subcommand != "predict":  # steps and loss lines (plain when stdout is a log file); summary
            callbacks = trainer_cfg.get("callbacks") or []
            callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
            kwargs["callbacks"] = [*callbacks, *default_progress_callbacks(trainer_cfg, callbacks), LoggerVersion()]
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except Exception as err:  # noqa: BLE001 - Lightning's MisconfigurationException is a user error: one paragraph
            if type(err).__name__ != "MisconfigurationException":
                raise
            raise ValueError(f"{err} Change the --trainer.* setting it names (see lightning-gpt fit --help).") from None
        monitors = trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning's callback connector
        if trainer.loggers and not any(isinstance(c, LearningRateMonitor) for c in monitors):
            monitors.insert(0, LearningRateMonitor(logging_interval="step"))
        return trainer

    # -- fit --------------------------------------------------------------------------------------------------------

    def before_fit(self) -> None:
        """Once every class is built and before any data is read: the run folder is writable and locked, and an
        earlier run's checkpoints are deleted on ``--overwrite true`` (``run_folder.open_run_folder``)."""
        if not run_folder.is_launch_rank_zero():
            return
        cfg = self.config[self.subcommand]
        folder = str(cfg["checkpoint.dirpath"])
        self._new_run_folder = folder if not os.path.exists(folder) else None
        self._run_lock = run_folder.open_run_folder(folder, self._overwrite and cfg.get("ckpt_path") is None)

    def fit(self, model: LightningModule, **kwargs: Any) -> None:
        """``trainer.fit``; a run that fails before its first checkpoint leaves no empty checkpoint folder behind
        (LightningCLI calls a method named after the subcommand when the CLI class defines one)."""
        ckpt_path = kwargs.get("ckpt_path")
        if ckpt_path and os.path.isfile(str(ckpt_path)):  # a resumed run logs into its own version_N
            resume_logger_versions(self.trainer, str(ckpt_path))
        monitored = cli_value(self, self.config[self.subcommand], "checkpoint.monitor")
        try:
            with _ignoring(*(() if monitored else (_DIRPATH_CHANGED,))):
                self.trainer.fit(model, **kwargs)
        except BaseException:
            if self._new_run_folder is not None:
                with contextlib.suppress(OSError):
                    os.rmdir(self._new_run_folder)  # only succeeds while it is empty
            raise

    # -- validate | test | predict -----------------------------------------------------------------------------------

    def validate(self, model: LightningModule, **kwargs: Any) -> Any:
        """``trainer.validate``, without Lightning's notes on the checkpoint's training callbacks (see above)."""
        with _ignoring(_CALLBACKS_NOT_GIVEN, _DIRPATH_CHANGED):
            return self.trainer.validate(model, **kwargs)

    def test(self, model: LightningModule, **kwargs: Any) -> Any:
        """``trainer.test``, without Lightning's notes on the checkpoint's training callbacks (see above)."""
        with _ignoring(_CALLBACKS_NOT_GIVEN, _DIRPATH_CHANGED):
            return self.trainer.test(model, **kwargs)

    def predict(self, model: LightningModule, **kwargs: Any) -> Any:
        """``trainer.predict``, without Lightning's notes on the checkpoint's training callbacks (see above)."""
        with _ignoring(_CALLBACKS_NOT_GIVEN, _DIRPATH_CHANGED):
            return self.trainer.predict(model, **kwargs)


def _document_config_fields(parser: LightningArgumentParser) -> None:
    """``fit --help`` names every architecture field: ``--model.config`` is a dataclass that jsonargparse shows as
    one option, so its help lists the fields as ``--model.config.<field>`` with their defaults."""
    from lightning_gpt.config import GPTConfig

    action = next((a for a in parser_actions(parser) if getattr(a, "dest", None) == "model.config"), None)
    if action is None:
        return
    from lightning_gpt.attention import available_attention

    hints = typing.get_type_hints(GPTConfig)
    allowed = {"attention": [*available_attention(), "a registered plugin's name"]}
    allowed.update({f: list(typing.get_args(t)) for f, t in hints.items() if typing.get_origin(t) is typing.Literal})

    def field(f: dataclasses.Field) -> str:
        values = f" one of {', '.join(map(str, allowed[f.name]))}" if f.name in allowed else ""
        return f"--model.config.{f.name} ({f.default!r}{';' if values else ''}{values})"

    fields = ", ".join(field(f) for f in dataclasses.fields(GPTConfig))
    action.help = (
        f"{action.help or ''} Architecture fields (defaults: GPT-2 small): {fields}. "
        "`lightning-gpt fit --model.config.help` describes each."
    )


def fit_command(argv: list[str]) -> None:
    """``lightning-gpt fit ARGV``."""
    lightning_command("fit", argv)


def validate_command(argv: list[str]) -> None:
    """``lightning-gpt validate ARGV``."""
    lightning_command("validate", argv)


def test_command(argv: list[str]) -> None:
    """``lightning-gpt test ARGV``."""
    lightning_command("test", argv)


def predict_command(argv: list[str]) -> None:
    """``lightning-gpt predict ARGV``."""
    lightning_command("predict", argv)
