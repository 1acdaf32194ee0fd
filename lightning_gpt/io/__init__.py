"""Reading and writing weights: safe checkpoint loading, Hugging Face GPT-2 folders, ``init_from``, export.

Plain PyTorch (never imports Lightning). ``load_checkpoint`` is the one entry point that turns any path a command
accepts (a ``.ckpt``, a run folder, an export folder) into ``(GPT, tokenizer)``.
"""

from lightning_gpt.io.checkpoint import find_checkpoint, load_checkpoint
from lightning_gpt.io.tokenizer import load_tokenizer

__all__ = ["find_checkpoint", "load_checkpoint", "load_tokenizer"]
