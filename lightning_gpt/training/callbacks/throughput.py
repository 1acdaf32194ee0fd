"""Tokens/s, FLOPs/s and MFU in every logger, from the first logging step: ``GPTThroughputMonitor``.

Training FLOPs per token follow the PaLM appendix / nanoGPT's ``estimate_mfu``: ``6 N`` (forward + backward of every
matmul, ``N`` the parameters without the position table, counted from the model) plus each layer's attention term,
which its core gives (``AttentionCore.flops_per_token``: ``12 T d`` for full attention, less for ``sparse`` and
``linear``). ``GPTModule.flops_per_batch`` returns this times the tokens of the last batch (Lightning's own
``ThroughputMonitor`` reads it too).

Why not Lightning's ``ThroughputMonitor``: it logs nothing until a window of ``window_size`` batches is full (100 by
default: nothing in a short run), its names are per device (``train/device/items_per_sec``), and it logs every batch.
This one measures between logging steps (``Trainer(log_every_n_steps)``), so the first value comes at the first one.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Union

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_gpt.batch import split_batch
from lightning_gpt.config import GPTConfig
from lightning_gpt.model import GPT
from lightning_gpt.training._lightning_internals import should_update_logs

__all__ = ["GPTThroughputMonitor", "batch_flops", "flops_per_token", "num_parameters", "peak_flops"]


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


_FLOPS_CACHE: dict[tuple[int, int], tuple[Any, int]] = {}  # (id(model), T) -> (model, FLOPs per token)


def batch_flops(model: GPT, shape: tuple[int, ...]) -> int:
    """Training FLOPs of one batch of ``shape`` ``(B, T)``: ``flops_per_token(model, T) * B * T``.

    The per-token count walks the model's parameters, so it is computed once per model and ``T``.

    Args:
        model: the model.
        shape: the batch's input shape ``(B, T)``.
    """
    batch_size, seq_len = int(shape[0]), int(shape[-1])
    key = (id(model), seq_len)
    cached = _FLOPS_CACHE.get(key)
    if cached is None or cached[0] is not model:  # an id can be reused by a later model
        if len(_FLOPS_CACHE) > 64:
            _FLOPS_CACHE.clear()
        cached = _FLOPS_CACHE[key] = (model, model.flops_per_token(seq_len))
    return cached[1] * batch_size * seq_len


def compute_dtype(trainer: Any) -> torch.dtype:
    """The dtype the matrix products run in: from ``Trainer(precision)``, or an FSDP2 strategy's ``param_dtype``."""
    param_dtype = getattr(trainer.strategy, "param_dtype", None)
    if isinstance(param_dtype, torch.dtype):
        return param_dtype
    precision = str(trainer.precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float64 if precision.startswith("64") else torch.float32


def peak_flops(device: torch.device, dtype: torch.dtype) -> Optional[float]:
    """The device's peak FLOP/s for ``dtype`` from Lightning's table of GPUs and TPUs (``None``: unknown, e.g. CPUs).

    Args:
        device: the training device.
        dtype: the compute dtype.
    """
    if device.type not in ("cuda", "xla"):
        return None
    from lightning.fabric.utilities.throughput import get_available_flops

    flops = get_available_flops(device, dtype)
    return float(flops) if flops else None


class GPTThroughputMonitor(Callback):
    """Log ``train/tokens_per_sec``, ``train/flops_per_sec`` and ``train/mfu`` on every logging step of ``fit``.

    Each value covers the training time since the previous logging step (the first: since training started;
    validation time is left out). Tokens are the input tokens of the batches (padding included, as the FLOPs are
    spent on them), summed over all ranks (this rank's count times the number of ranks); FLOPs are
    ``GPTModule.flops_per_batch`` (``6 N + attention`` per token) summed the same way; MFU is FLOPs/s divided by the
    peak of all devices, logged where the peak is known (Lightning's table of GPUs and TPUs, or ``peak_flops``).
    A default callback of ``GPTModule`` (``--throughput.*`` on the command line).

    Args:
        peak_flops: one device's peak FLOP/s for MFU (e.g. ``312e12`` for an A100 in bf16); ``None``: from the table.
        log: log the values; ``False`` measures nothing (the switch to turn the monitor off).
    """

    def __init__(self, peak_flops: Optional[float] = None, log: bool = True) -> None:
        if peak_flops is not None and not peak_flops > 0:
            raise ValueError(f"GPTThroughputMonitor.peak_flops must be > 0 FLOP/s (or null), got {peak_flops!r}.")
        self.peak_flops = peak_flops
        self.log = log
        self._peak: Optional[float] = None
        self._start = 0.0  # when the clock last (re)started
        self._elapsed = 0.0  # training seconds before that, since the last logging step
        self._tokens = 0
        self._flops: Optional[int] = 0
        self._step_at_batch_start = -1

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._peak = self.peak_flops or peak_flops(pl_module.device, compute_dtype(trainer))
        self._tokens, self._flops, self._elapsed = 0, 0, 0.0
        self._start = time.perf_counter()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.log:
            return
        self._tokens += int(split_batch(batch)[0].numel())
        flops = getattr(pl_module, "flops_per_batch", None)
        self._flops = self._flops + int(flops) if self._flops is not None and flops is not None else None
        # After an optimizer step (not inside an accumulation window), on the steps the loggers record.
        if trainer.global_step == self._step_at_batch_start or not should_update_logs(trainer):
            return
        _synchronize(pl_module.device)
        now = time.perf_counter()
        elapsed = max(self._elapsed + now - self._start, 1e-9)
        world = trainer.world_size
        pl_module.log("train/tokens_per_sec", self._tokens * world / elapsed)
        if self._flops:
            flops_per_sec = self._flops * world / elapsed
            pl_module.log("train/flops_per_sec", flops_per_sec)
            if self._peak:
                pl_module.log("train/mfu", flops_per_sec / (self._peak * world))
        self._tokens, self._flops, self._elapsed, self._start = 0, 0, 0.0, now

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:  # validation is not training time: pause
            _synchronize(pl_module.device)
            self._elapsed += time.perf_counter() - self._start

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._start = time.perf_counter()


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a clock read measures it (once per logging step, not per batch)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
