"""Tokens/s and MFU: a ThroughputMonitor preset for GPT batches, and the FLOPs-per-token estimate it reports.

Training FLOPs per token follow the PaLM appendix / nanoGPT's ``estimate_mfu``: ``6 N`` (forward + backward of every
matmul, ``N`` the parameters without the position table, counted from the model) plus each layer's attention term,
which its core gives (``AttentionCore.flops_per_token``: ``12 T d`` for full attention, less for ``sparse`` and
``linear``). ``GPTModule.flops_per_batch`` returns this times the tokens of the last batch, which Lightning's
``ThroughputMonitor`` reads to log ``flops_per_sec`` and, on GPUs it knows, ``mfu``.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from lightning.pytorch.callbacks import ThroughputMonitor

from lightning_gpt.batch import split_batch
from lightning_gpt.config import GPTConfig
from lightning_gpt.model import GPT

__all__ = ["flops_per_token", "num_parameters", "GPTThroughputMonitor"]


def _as_model(model: Union[GPT, GPTConfig]) -> GPT:
    if isinstance(model, GPTConfig):
        with torch.device("meta"):  # shapes only: no memory, no initialization
            return GPT(model)
    return model


def num_parameters(model: Union[GPT, GPTConfig], non_embedding: bool = True) -> int:
    """Parameters of ``model``, counted from its tensors (a custom attention core's parameters included).

    Args:
        model: the model, or a config (a shape-only model is built on the meta device to count).
        non_embedding: leave out the position table (the convention of FLOP estimates; a tied token table stays).
    """
    return _as_model(model).num_parameters(non_embedding=non_embedding)


def flops_per_token(model: Union[GPT, GPTConfig], seq_len: Optional[int] = None) -> int:
    """Training FLOPs per token: ``6 N`` plus each layer's attention term (see ``GPT.flops_per_token``).

    Args:
        model: the model, or a config (a shape-only model is built on the meta device).
        seq_len: the sequence length ``T``; default ``config.block_size``.
    """
    return _as_model(model).flops_per_token(seq_len)


def _batch_size(batch: Any) -> int:
    return int(split_batch(batch)[0].size(0))


def _tokens(batch: Any) -> int:
    return int(split_batch(batch)[0].numel())


class GPTThroughputMonitor(ThroughputMonitor):
    """Lightning's ``ThroughputMonitor`` set up for GPT batches: logs samples/s, tokens/s (``items_per_sec``),
    FLOPs/s from ``GPTModule.flops_per_batch`` and MFU where the device's peak FLOPs are known.

    Args:
        window_size: number of batches averaged over.
        separator: between the stage prefix and the metric name.
    """

    def __init__(self, window_size: int = 100, separator: str = "/") -> None:
        super().__init__(batch_size_fn=_batch_size, length_fn=_tokens, window_size=window_size, separator=separator)
