"""lightning-gpt: train GPT language models with PyTorch Lightning and decode text from them.

``GPT`` and ``GPTConfig`` are plain PyTorch; the Lightning pieces (``GPTModule``, ``TextDataModule``) are imported
lazily, so ``from lightning_gpt import GPT`` does not import Lightning. ``GPT`` too is imported on first use, so that
``import lightning_gpt.cli`` (``lightning-gpt --help``) does not import torch.
"""

from typing import TYPE_CHECKING, Any

from lightning_gpt.config import GPTConfig

if TYPE_CHECKING:
    from lightning_gpt.model import GPT

__version__ = "0.1.0"

_LAZY = {
    "GPT": "lightning_gpt.model",
    "GPTModule": "lightning_gpt.training.module",
    "TextDataModule": "lightning_gpt.training.datamodule",
}

__all__ = ["GPT", "GPTConfig", "GPTModule", "TextDataModule", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_gpt' has no attribute {name!r}")
