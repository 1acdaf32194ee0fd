"""Compatibility path: the callbacks live in ``lightning_gpt.training.callbacks``; every public name is here too
(``from lightning_gpt.callbacks import SampleGeneration``, YAML ``class_path: lightning_gpt.callbacks.LossCurve``)."""

from typing import Any

from lightning_gpt.training import callbacks as _callbacks
from lightning_gpt.training.callbacks import *  # noqa: F403
from lightning_gpt.training.callbacks import __all__  # noqa: F401


def __getattr__(name: str) -> Any:
    return getattr(_callbacks, name)
