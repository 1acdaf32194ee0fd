"""``InterruptCheckpoint``: Ctrl-C or SIGTERM during ``fit`` saves a resumable ``last.ckpt``, then stops."""

from __future__ import annotations

import os
import signal
from typing import Any, Optional

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from lightning_gpt.training._lightning_internals import (
    last_global_step_saved,
    mark_step_saved,
    register_last_checkpoint,
)

__all__ = ["InterruptCheckpoint"]


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

    With several processes (DDP, FSDP2; one node or many) the signal often reaches only some ranks: ``torchrun`` on
    one node forwards its SIGTERM to that node's workers only. Lightning's handler would then broadcast from inside
    the signal handler on that rank alone (a collective the other ranks never join: the job hangs until the process
    group times out, and ``torchrun`` SIGKILLs its workers 30 s after the SIGTERM), and raise on that rank alone at the
    step's end. So from ``on_train_start`` on, a multi-process run's SIGTERM handler is this callback's: it only sets a
    flag (and forwards the signal to the ranks Lightning itself started, as Lightning's does); at the end of the
    optimizer step the ranks agree through the process group (``reduce_boolean_decision``), all save ``last.ckpt``
    together (the sharded save is a collective) and all exit with status 143. A SIGTERM during validation then stops
    at the next step's end.

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
        self._previous_sigterm: Any = None
        self._sigterm = False
        self._launcher: Any = None
        self._step_at_batch_start = -1

    @property
    def sigterm_received(self) -> bool:
        """Whether this process got SIGTERM during a multi-process ``fit`` (handled at the next step's end)."""
        return self._sigterm

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if not self._sigterm and self._launcher is not None:
            self._launcher.kill(signum)  # the local ranks Lightning started (its own handler does the same)
        self._sigterm = True

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
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._requested = False
        self._saved_at = None
        callback = trainer.checkpoint_callback
        if isinstance(callback, ModelCheckpoint) and callback.save_last and not callback.last_model_path:
            # A run started fresh, or resumed from a folder that moved (Lightning then forgets the path): without this,
            # Lightning's first save of `last` finds our last.ckpt there and writes last-v1.ckpt beside it.
            callback.last_model_path = self.checkpoint_path(trainer)
        self._sigterm = False
        try:
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
            if trainer.world_size > 1:  # Lightning's handler holds a collective of one rank (see the class docstring)
                self._launcher = trainer.strategy.launcher
                self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
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
        requested, sigterm = self._requested, self._sigterm or bool(getattr(trainer, "received_sigterm", False))
        if trainer.world_size > 1:  # every rank must agree, or the collective save would hang
            # One collective (a host sync) per step decides whether anyone stops; which signal, only then.
            if not trainer.strategy.reduce_boolean_decision(requested or sigterm, all=False):
                return
            sigterm = trainer.strategy.reduce_boolean_decision(sigterm, all=False)
            requested = not sigterm
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
    return SIGTERMException(143)
