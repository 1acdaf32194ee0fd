"""The default training callbacks of ``GPTModule``: what every ``fit`` gets, through the CLI or a plain ``Trainer``.

``GPTModule.configure_callbacks`` returns, at ``fit``, a default instance of each type below that the ``Trainer`` does
not already hold (an instance of the type, or of a subclass, given by the user wins; Lightning's own
``configure_callbacks`` would *replace* a Trainer callback of the same type, so only the missing ones are returned).
The command line configures each of them through its own flags (``--clip.*``, ``--lr_schedule.*``...), so the two
behave the same. ``GPTModule(default_callbacks=False)`` adds none.

Each, what it does by default, and how to switch it off (give the ``Trainer`` an instance configured so):

- ``GradientClipping``: clip the global gradient norm to 1.0, log ``train/grad_norm``. Off:
  ``GradientClipping(max_norm=None)`` (the norm is still logged), or ``Trainer(gradient_clip_val=...)`` (Lightning's
  own clipping instead; then none is added).
- ``LRSchedule``: 100 warmup steps, cosine decay to 10% at ``max_steps``, log ``train/lr``. Off:
  ``LRSchedule(warmup_steps=0, schedule="constant")``.
- ``NonFiniteGuard``: stop at a NaN/inf loss or gradient before it reaches the weights. ``NonFiniteGuard(policy=
  "skip")`` skips such steps instead.
- ``SampleGeneration``: decode and show a sample every 500 steps. Off: ``SampleGeneration(every_n_steps=0)``.
- ``LossCurve``: ``<default_root_dir>/loss.png`` at the end of ``fit``. Off: ``LossCurve(filename="")``.
- ``GPTThroughputMonitor``: log ``train/tokens_per_sec``, ``train/flops_per_sec``, ``train/mfu``. Off:
  ``GPTThroughputMonitor(log=False)``.

The progress bar and the model summary stay with the command line (``progress.default_progress_callbacks``): a
plain ``Trainer`` already adds Lightning's own, which a module cannot remove, and two bars would draw over each other.
The run-folder policy (``ModelCheckpoint(save_last=True)`` in ``<run>/checkpoints``, the Ctrl-C checkpoint, atomic
writes) is the command line's too.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback

from lightning_gpt.training.callbacks.clipping import GradientClipping
from lightning_gpt.training.callbacks.loss_curve import LossCurve
from lightning_gpt.training.callbacks.lr_schedule import LRSchedule
from lightning_gpt.training.callbacks.nonfinite import NonFiniteGuard
from lightning_gpt.training.callbacks.sampling import SampleGeneration
from lightning_gpt.training.callbacks.throughput import GPTThroughputMonitor

__all__ = ["DEFAULT_CALLBACKS", "missing_default_callbacks"]

DEFAULT_CALLBACKS: tuple[type[Callback], ...] = (
    GradientClipping,
    LRSchedule,
    NonFiniteGuard,
    SampleGeneration,
    LossCurve,
    GPTThroughputMonitor,
)
"""The default callback types, in the order they run (clipping before the non-finite check, as in the CLI)."""


def missing_default_callbacks(trainer: Any) -> list[Callback]:
    """A default instance of each type of ``DEFAULT_CALLBACKS`` that ``trainer`` does not hold.

    Args:
        trainer: the ``Trainer`` about to fit (``callbacks``, ``gradient_clip_val``).

    Returns:
        The callbacks to add (none of a type the trainer holds; no ``GradientClipping`` when the ``Trainer`` clips).
    """
    missing: list[Callback] = []
    for kind in DEFAULT_CALLBACKS:
        if any(isinstance(c, kind) for c in trainer.callbacks):
            continue
        if kind is GradientClipping and trainer.gradient_clip_val:
            continue  # the user asked for Lightning's own clipping
        missing.append(kind())
    return missing
