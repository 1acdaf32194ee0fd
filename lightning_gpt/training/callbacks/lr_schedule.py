"""Learning-rate schedule as a pure function of the global step: warmup, then cosine/linear decay to a floor."""

from __future__ import annotations

import math
from typing import Any, Literal, Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from lightning_gpt.training._lightning_internals import should_update_logs

__all__ = ["LRSchedule", "lr_at"]

SCHEDULES = ("cosine", "linear", "constant")


def lr_at(
    step: int,
    *,
    base_lr: float,
    warmup_steps: int,
    decay_steps: int,
    min_lr: float,
    schedule: str = "cosine",
) -> float:
    """The learning rate at optimizer step ``step`` (0-based).

    Linear warmup ``base_lr * (step + 1) / (warmup_steps + 1)`` for ``step < warmup_steps`` (as nanoGPT), then
    ``cosine`` or ``linear`` decay from ``base_lr`` to ``min_lr`` at ``decay_steps`` and ``min_lr`` after it; or
    ``constant`` ``base_lr`` after the warmup.

    Args:
        step: the optimizer step about to be taken.
        base_lr: the peak learning rate.
        warmup_steps: length of the linear warmup.
        decay_steps: the step at which the decay reaches ``min_lr`` (counted from 0, warmup included).
        min_lr: the floor.
        schedule: ``cosine``, ``linear`` or ``constant``.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return base_lr
    if step >= decay_steps:
        return min_lr
    ratio = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio)) if schedule == "cosine" else 1.0 - ratio
    return min_lr + coeff * (base_lr - min_lr)


class LRSchedule(Callback):
    """Set every optimizer param group's learning rate from ``trainer.global_step`` before each batch.

    The rate depends only on the step, so a resumed run follows the schedule exactly, as long as the decay length is
    the same: with ``decay_steps=None`` it follows ``Trainer(max_steps)``, so resuming with another ``max_steps``
    stretches the curve and the rate jumps. The decay length used is saved with the checkpoint, and a resumed run that
    would change it warns and names the ``decay_steps`` that keeps the original curve. The peak rate of a group is its
    initial ``lr`` (``GPTModule.learning_rate``), stored once as ``initial_lr`` in the group (which the optimizer's
    state dict, hence the checkpoint, keeps). Works with ``LearningRateMonitor``; also logs ``train/lr`` (on logging
    steps).

    Args:
        warmup_steps: steps of linear warmup.
        decay_steps: step where the decay reaches the floor; ``None`` uses ``Trainer(max_steps)``, or without it the
            optimizer steps of ``Trainer(max_epochs)`` (``trainer.estimated_stepping_batches``).
        min_lr: the floor (absolute, for the group with the module's ``learning_rate``; other groups scale alike).
            ``None`` uses ``min_lr_ratio``.
        min_lr_ratio: the floor as a fraction of the peak rate when ``min_lr`` is not given.
        schedule: ``cosine``, ``linear`` (decay after the warmup) or ``constant``.
        log: log the rate of the first group as ``train/lr``.
    """

    def __init__(
        self,
        warmup_steps: int = 100,
        decay_steps: Optional[int] = None,
        min_lr: Optional[float] = None,
        min_lr_ratio: float = 0.1,
        schedule: Literal["cosine", "linear", "constant"] = "cosine",
        log: bool = True,
    ) -> None:
        problems = {
            "schedule": (schedule not in SCHEDULES, f"must be one of {SCHEDULES}, got {schedule!r}"),
            "warmup_steps": (warmup_steps < 0, f"must be >= 0, got {warmup_steps!r}"),
            "decay_steps": (
                decay_steps is not None and decay_steps < warmup_steps,
                f"({decay_steps}) must be >= warmup_steps ({warmup_steps}): the decay starts after the warmup",
            ),
            "min_lr": (min_lr is not None and min_lr < 0, f"must be >= 0, got {min_lr!r}"),
            "min_lr_ratio": (not 0.0 <= min_lr_ratio <= 1.0, f"must be in [0, 1], got {min_lr_ratio!r}"),
        }
        for name, (bad, what) in problems.items():
            if bad:
                raise ValueError(f"LRSchedule.{name} {what}.")
        self.warmup_steps, self.decay_steps, self.schedule, self.log = warmup_steps, decay_steps, schedule, log
        self.min_lr, self.min_lr_ratio = min_lr, min_lr_ratio
        self._used_decay_steps: Optional[int] = None
        self._saved_decay_steps: Optional[int] = None

    def _decay_steps(self, trainer: "pl.Trainer") -> int:
        if self.decay_steps is not None:
            return self.decay_steps
        if self.schedule == "constant":
            return self.warmup_steps
        return max(self._run_length(trainer), self.warmup_steps)

    @staticmethod
    def _run_length(trainer: "pl.Trainer") -> int:
        if trainer.max_steps is not None and trainer.max_steps >= 0:
            return trainer.max_steps
        # No max_steps: the optimizer steps of Trainer(max_epochs) over the training data, when they are known.
        steps = trainer.estimated_stepping_batches
        if math.isinf(steps):
            raise ValueError(
                "LRSchedule(decay_steps=None) takes the decay length from Trainer(max_steps), which is not set, and "
                "the number of steps of Trainer(max_epochs) is unknown (the training data has no length). Set "
                "LRSchedule(decay_steps=...) (--lr_schedule.decay_steps) or Trainer(max_steps=...)."
            )
        return int(steps)

    def state_dict(self) -> dict[str, Any]:
        """The decay length in use (checked against the new run's when resuming)."""
        return {} if self._used_decay_steps is None else {"decay_steps": self._used_decay_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved_decay_steps = state_dict.get("decay_steps")

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        saved, self._saved_decay_steps = self._saved_decay_steps, None
        decay_steps = self._used_decay_steps = self._decay_steps(trainer)
        if self.schedule != "constant" and trainer.global_step == 0:
            self._check_warmup(self.decay_steps if self.decay_steps is not None else self._run_length(trainer))
        if saved is None or saved == decay_steps or self.schedule == "constant" or not trainer.optimizers:
            return
        step = trainer.global_step
        before, after = self._first_lr(trainer, pl_module, saved), self._first_lr(trainer, pl_module, decay_steps)
        source = "trainer.max_steps" if self.decay_steps is None else "lr_schedule.decay_steps"
        rank_zero_warn(
            f"Resuming at step {step}: the learning-rate schedule now decays over {decay_steps} steps ({source}), but "
            f"the checkpoint's run decayed over {saved}, so the curve from here on is not the original one (at this "
            f"step {after:.3g}; the original: {before:.3g}). To keep the original curve, add --lr_schedule.decay_steps "
            f"{saved} (the rate stays at its floor after that step); to decay over the new length, ignore this warning."
        )

    def _check_warmup(self, end: int) -> None:
        if 0 < end <= self.warmup_steps:
            rank_zero_warn(
                f"LRSchedule: the warmup ({self.warmup_steps} steps) lasts at least the whole run ({end} steps): the "
                "learning rate never reaches its peak. Set a shorter warmup (--lr_schedule.warmup_steps) or train "
                "longer."
            )

    def _group_lr(self, step: int, group: dict[str, Any], reference: Optional[float], decay_steps: int) -> float:
        """The rate of one param group at ``step``: its peak is its ``initial_lr``; the floor is ``min_lr`` scaled
        like the group (against the module's ``learning_rate``), else ``min_lr_ratio`` of its peak."""
        base = group.get("initial_lr", group["lr"])
        ratio = self.min_lr / (reference if reference else base) if self.min_lr is not None else self.min_lr_ratio
        return lr_at(
            step,
            base_lr=base,
            warmup_steps=self.warmup_steps,
            decay_steps=decay_steps,
            min_lr=base * ratio,
            schedule=self.schedule,
        )

    def _first_lr(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", decay_steps: int) -> float:
        group = trainer.optimizers[0].param_groups[0]
        return self._group_lr(trainer.global_step, group, getattr(pl_module, "learning_rate", None), decay_steps)

    def on_train_batch_start(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any, batch_idx: int
    ) -> None:
        decay_steps = self._used_decay_steps
        if decay_steps is None:  # on_train_start sets it; a hand-driven loop may not call it
            decay_steps = self._used_decay_steps = self._decay_steps(trainer)
        reference = getattr(pl_module, "learning_rate", None)
        first_lr = None
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
                group["lr"] = self._group_lr(trainer.global_step, group, reference, decay_steps)
                first_lr = group["lr"] if first_lr is None else first_lr
        if self.log and first_lr is not None and should_update_logs(trainer):
            pl_module.log("train/lr", first_lr)
