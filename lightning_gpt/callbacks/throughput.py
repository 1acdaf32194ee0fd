"""Tokens/s and MFU: the FLOPs-per-token formula of a GPT and a ThroughputMonitor preset that uses it.

Training FLOPs per token follow the PaLM appendix / nanoGPT's ``estimate_mfu``: ``6 N + 12 L T d`` where ``N`` is
the parameter count without the position table, ``L`` the layers, ``T`` the sequence length, ``d`` the width
(``6 N``: forward + backward of every matmul; ``12 L T d``: the attention scores and the weighted sum).
``GPTModule.flops_per_batch`` returns this times the tokens of the last batch, which Lightning's
``ThroughputMonitor`` reads to log ``flops_per_sec`` and, on GPUs it knows, ``mfu``.
"""

from __future__ import annotations

from typing import Any, Optional

from lightning.pytorch.callbacks import ThroughputMonitor

from lightning_gpt.config import GPTConfig

__all__ = ["flops_per_token", "num_parameters", "GPTThroughputMonitor"]


def num_parameters(config: GPTConfig, non_embedding: bool = True) -> int:
    """Parameter count of ``GPT(config)`` computed from the config (no model is built).

    Args:
        config: the architecture.
        non_embedding: leave out the position table (the convention of FLOP estimates; a tied token table stays).
    """
    d, L, V = config.n_embd, config.n_layer, config.vocab_size
    hidden = config.mlp_ratio * d
    ln = 2 * d if config.bias else d
    linear_bias = (3 * d + d + hidden + d) if config.bias else 0
    block = 2 * ln + 3 * d * d + d * d + d * hidden + hidden * d + linear_bias
    n = V * d + L * block + ln + (0 if config.tie_weights else V * d)
    if not non_embedding:
        n += config.block_size * d
    return n


def flops_per_token(config: GPTConfig, seq_len: Optional[int] = None) -> int:
    """Training FLOPs per token, ``6 N + 12 L T d`` (forward and backward).

    Args:
        config: the architecture.
        seq_len: the sequence length ``T``; default ``config.block_size``.
    """
    T = config.block_size if seq_len is None else seq_len
    return 6 * num_parameters(config) + 12 * config.n_layer * T * config.n_embd


def _batch_size(batch: Any) -> int:
    from lightning_gpt.module import GPTModule

    return int(GPTModule.split_batch(batch)[0].size(0))


def _tokens(batch: Any) -> int:
    from lightning_gpt.module import GPTModule

    return int(GPTModule.split_batch(batch)[0].numel())


class GPTThroughputMonitor(ThroughputMonitor):
    """Lightning's ``ThroughputMonitor`` set up for GPT batches: logs samples/s, tokens/s (``items_per_sec``),
    FLOPs/s from ``GPTModule.flops_per_batch`` and MFU where the device's peak FLOPs are known.

    Args:
        window_size: number of batches averaged over.
        separator: between the stage prefix and the metric name.
    """

    def __init__(self, window_size: int = 100, separator: str = "/") -> None:
        super().__init__(batch_size_fn=_batch_size, length_fn=_tokens, window_size=window_size, separator=separator)
