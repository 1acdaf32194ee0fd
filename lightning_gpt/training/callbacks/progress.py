"""Progress that reads in a terminal and in a log file, and a model summary without an empty FLOPs column.

``GPTProgressBar``: in a terminal, Lightning's rich bar counting optimizer steps (``412/500``, right after a resume
too) instead of batches of an epoch whose total is unknown (``Epoch 0/-2``, ``501/49``). When stdout is not a
terminal (``nohup``, SLURM, CI, ``| tee``), no bar: one plain line every ``log_every_n_steps``, in the spirit of
nanoGPT's ``iter N: loss X, time Y ms``::

    step 100/500: loss 2.1234, lr 1.96e-03, 61.2 ms/step, 33,457 tok/s
    step 100/500: val loss 2.2345

``GPTModelSummary``: Lightning's summary measures FLOPs only with an ``example_input_array`` and otherwise prints a
column of zeros and ``Total FLOPs: 0``; this one drops that column and states the training FLOPs per token from the
model's config (``6 N + 12 L T d``, the number MFU is computed from).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.callbacks.progress.rich_progress import RichProgressBar
from lightning.pytorch.utilities.model_summary import get_human_readable_count, summarize
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from lightning_gpt.training._lightning_internals import (
    add_train_progress_task,
    attached_trainer,
    batches_ready_this_epoch,
    progress_console,
    rich_available,
    summary_columns,
    update_progress_metrics,
    update_progress_task,
)

__all__ = ["GPTProgressBar", "GPTModelSummary", "stdout_is_terminal"]


def stdout_is_terminal() -> bool:
    """Whether standard output is an interactive terminal (a bar can redraw itself there)."""
    try:
        return bool(sys.stdout.isatty())
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


def _float(value: Any) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class GPTProgressBar(RichProgressBar):
    """A step-counting rich bar in a terminal; plain periodic lines (loss, lr, ms/step, tokens/s, val loss) elsewhere.

    Args:
        plain_lines: ``True``: always print lines; ``False``: always draw the bar; ``None``: lines when stdout is not
            a terminal.
        every_n_steps: steps between lines; ``None``: the Trainer's ``log_every_n_steps``.
        kwargs: forwarded to ``RichProgressBar`` (``refresh_rate``, ``leave``, ``theme``, ``console_kwargs``).
    """

    def __init__(self, plain_lines: Optional[bool] = None, every_n_steps: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plain_lines = (not stdout_is_terminal()) if plain_lines is None else bool(plain_lines)
        self.every_n_steps = every_n_steps
        self._last_time = 0.0
        self._last_step = 0
        self._last_tokens = 0
        if self.plain_lines:
            self.disable()

    # -- plain lines --------------------------------------------------------------------------------------------------

    def _interval(self, trainer: Trainer) -> int:
        return max(1, int(self.every_n_steps or getattr(trainer, "log_every_n_steps", None) or 50))

    def _step_text(self, trainer: Trainer) -> str:
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        return f"step {trainer.global_step}" + (f"/{total}" if total else "")

    def _write(self, text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.plain_lines:
            self.disable()  # a bar that redraws itself is noise in a log file

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_time = time.perf_counter()
        self._last_step = trainer.global_step
        self._last_tokens = int(getattr(pl_module, "tokens_seen", 0))

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        if not self.plain_lines:
            self._bar_train_batch_end(trainer, pl_module)
            return
        step = trainer.global_step
        if not trainer.is_global_zero or step == self._last_step:
            return
        last = 0 < trainer.max_steps <= step
        if step % self._interval(trainer) and not last:
            return
        now = time.perf_counter()
        steps, elapsed = step - self._last_step, max(now - self._last_time, 1e-9)
        tokens = int(getattr(pl_module, "tokens_seen", 0)) - self._last_tokens  # target tokens, already all ranks
        parts = [self._step_text(trainer) + ":"]
        loss = _float(trainer.callback_metrics.get("train/loss"))
        if loss is not None:
            parts.append(f"loss {loss:.4f},")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.2e},")
        parts.append(f"{1000 * elapsed / steps:.1f} ms/step,")
        parts.append(f"{tokens / elapsed:,.0f} tok/s")
        self._write(" ".join(parts))
        self._last_time, self._last_step = now, step
        self._last_tokens = int(getattr(pl_module, "tokens_seen", 0))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.plain_lines:
            super().on_validation_end(trainer, pl_module)
            return
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        loss = _float(trainer.callback_metrics.get("val/loss"))
        if loss is not None:
            self._write(f"{self._step_text(trainer)}: val loss {loss:.4f}")
        # validation time is not training time: the next ms/step starts now
        self._last_time = time.perf_counter()

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        """Print above the bar (on its own line, never glued to it), or as plain lines when there is no bar."""
        text = sep.join(str(a) for a in args)
        console = progress_console(self)
        if self.plain_lines or self.progress is None or console is None:
            self._write(text)
        else:
            console.print(text, markup=False, highlight=False)

    # -- the bar in a terminal: optimizer steps, not batches of an unbounded epoch -------------------------------------

    def _stepwise(self) -> bool:
        trainer = attached_trainer(self)
        return trainer is not None and trainer.max_steps is not None and trainer.max_steps > 0

    @property
    def total_train_batches(self) -> Any:
        """``max_steps`` when training is bounded by steps, else the batches of one epoch."""
        return self.trainer.max_steps if self._stepwise() else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:  # overrides RichProgressBar's (OVERRIDDEN)
        if self._stepwise():
            text = "Step"
        elif self.trainer.max_epochs is None or self.trainer.max_epochs < 1:
            text = f"Epoch {current_epoch}"
        else:
            text = f"Epoch {current_epoch}/{self.trainer.max_epochs - 1}"
        if len(self.validation_description) > len(text):
            text = f"{text:{len(self.validation_description)}}"
        return text

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if self._stepwise() and self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, completed=trainer.global_step)

    def _bar_train_batch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.is_disabled:
            return
        if self.train_progress_bar_id is None:  # resumed mid-epoch
            add_train_progress_task(self)
        done = trainer.global_step if self._stepwise() else batches_ready_this_epoch(trainer)
        update_progress_task(self, self.train_progress_bar_id, done)
        update_progress_metrics(self, trainer, pl_module)
        self.refresh()


class GPTModelSummary(ModelSummary):
    """The layer table (name, type, parameters, mode) without the FLOPs column Lightning leaves at zero, plus the
    training FLOPs per token from the config (``6 N + 12 L T d``, see ``lightning_gpt.training.callbacks.throughput``).

    Args:
        max_depth: depth of nested layers shown (``-1``: all, ``0``: no summary).
        summarize_kwargs: forwarded to Lightning's ``ModelSummary``.
    """

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        super().__init__(max_depth, **summarize_kwargs)
        self.max_depth = max_depth

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.max_depth or not trainer.is_global_zero:
            return
        summary = summarize(pl_module, max_depth=self.max_depth)
        data = [(name, values) for name, values in summary_columns(summary) if name not in ("FLOPs",)]
        lines = _table(data)
        lines.append(f"Trainable params: {get_human_readable_count(summary.trainable_parameters)}")
        lines.append(f"Total params: {get_human_readable_count(summary.total_parameters)}")
        config = getattr(pl_module, "config", None)
        if config is not None and hasattr(config, "n_layer"):
            from lightning_gpt.training.callbacks.throughput import flops_per_token

            per_token = flops_per_token(config)
            lines.append(f"Training FLOPs per token (6N + 12LTd): {get_human_readable_count(per_token)}")
        rank_zero_info("\n".join(lines))


def _table(columns: list[tuple[str, list[str]]]) -> list[str]:
    names = [name for name, _ in columns]
    rows = [tuple(map(str, row)) for row in zip(*(values for _, values in columns))]
    widths = [max([len(n)] + [len(r[j]) for r in rows]) for j, n in enumerate(names)]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*names).rstrip(), "-" * (sum(widths) + 3 * (len(widths) - 1))]
    out += [fmt.format(*row).rstrip() for row in rows]
    return out


def default_progress_callbacks(trainer_cfg: dict[str, Any], callbacks: list[Any]) -> list[Any]:
    """Our progress bar and model summary, unless turned off or the user configured their own.

    Args:
        trainer_cfg: the ``trainer`` section of the parsed configuration.
        callbacks: the callbacks already configured.

    Returns:
        The callbacks to add.
    """
    from lightning.pytorch.callbacks import ModelSummary as _Summary
    from lightning.pytorch.callbacks import ProgressBar

    extra: list[Any] = []
    if trainer_cfg.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
        if rich_available():
            extra.append(GPTProgressBar())
    if trainer_cfg.get("enable_model_summary") is not False and not any(isinstance(c, _Summary) for c in callbacks):
        extra.append(GPTModelSummary())
    return extra
