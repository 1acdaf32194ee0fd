"""Training callbacks: gradient clipping, LR schedule, sample generation, non-finite guard, throughput/MFU, loss curve,
progress, the Ctrl-C/SIGTERM checkpoint; ``defaults.DEFAULT_CALLBACKS``: the ones ``GPTModule`` adds by default.

Lightning's own ``ModelCheckpoint``, ``LearningRateMonitor``, ``ThroughputMonitor`` and progress bars are re-exported
so a YAML can name them from one place.
"""

from typing import Any

from lightning.pytorch.callbacks import (
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
    ThroughputMonitor,
    TQDMProgressBar,
)

from lightning_gpt.training.callbacks.clipping import GradientClipping, clip_grad_norm
from lightning_gpt.training.callbacks.defaults import DEFAULT_CALLBACKS
from lightning_gpt.training.callbacks.interrupt import InterruptCheckpoint
from lightning_gpt.training.callbacks.loss_curve import LossCurve
from lightning_gpt.training.callbacks.lr_schedule import LRSchedule, lr_at
from lightning_gpt.training.callbacks.nonfinite import NonFiniteError, NonFiniteGuard
from lightning_gpt.training.callbacks.progress import GPTModelSummary, GPTProgressBar
from lightning_gpt.training.callbacks.sampling import SampleGeneration
from lightning_gpt.training.callbacks.throughput import GPTThroughputMonitor, flops_per_token, num_parameters

__all__ = [
    "DEFAULT_CALLBACKS",
    "GPTModelSummary",
    "GPTProgressBar",
    "GPTThroughputMonitor",
    "GradientClipping",
    "InterruptCheckpoint",
    "JSONLPredictionWriter",
    "LRSchedule",
    "LossCurve",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "NonFiniteError",
    "NonFiniteGuard",
    "RichProgressBar",
    "SampleGeneration",
    "TQDMProgressBar",
    "ThroughputMonitor",
    "clip_grad_norm",
    "flops_per_token",
    "lr_at",
    "num_parameters",
]


def __getattr__(name: str) -> Any:
    # The prediction writer lives with the generation code; imported on first use.
    if name == "JSONLPredictionWriter":
        from lightning_gpt.training.callbacks.prediction_writer import JSONLPredictionWriter

        return JSONLPredictionWriter
    raise AttributeError(f"module 'lightning_gpt.training.callbacks' has no attribute {name!r}")
