"""One run seed, and the seeds every random stream derives from it (plain Python + torch, no Lightning import).

A run has one seed: the one ``seed_everything`` (``--seed_everything`` on the command line) set. The data order, the
window shifts, the dropout streams and the sampling callback's generator each derive their own seed from it (mixed
with a purpose name, so the streams are unrelated), unless the user sets that seed on purpose.
"""

from __future__ import annotations

import os
import zlib
from typing import Optional

import torch

__all__ = ["derive_seed", "mix_seed", "run_seed"]

_MASK64 = 0xFFFFFFFFFFFFFFFF


def mix_seed(*values: int) -> int:
    """A 63-bit seed from several integers (splitmix64 rounds): distinct inputs give unrelated streams.

    Args:
        values: the integers to mix (any sign or size; each is taken modulo 2**64).

    Returns:
        A non-negative integer below 2**63 (valid for ``torch.manual_seed`` and ``numpy``).
    """
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK64
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def run_seed() -> int:
    """The run's one seed: what ``seed_everything`` set (``PL_GLOBAL_SEED``), else ``torch.initial_seed()``.

    The environment variable is read first because training steps reseed torch's generator (see
    ``GPTModule.on_train_batch_start``), after which ``torch.initial_seed()`` no longer names the run.
    """
    value = os.environ.get("PL_GLOBAL_SEED")
    if value is not None:
        try:
            return int(value)
        except ValueError:
            pass
    return int(torch.initial_seed())


def derive_seed(purpose: str, seed: Optional[int] = None) -> int:
    """The seed of one random stream: ``seed`` when given (an explicit override), else derived from ``run_seed()``.

    Args:
        purpose: names the stream (``"data"``, ``"dropout"``, ``"samples"``...); purposes give unrelated seeds.
        seed: an explicit seed, returned unchanged.

    Returns:
        The seed to use.
    """
    if seed is not None:
        return int(seed)
    return mix_seed(run_seed(), zlib.crc32(purpose.encode("utf-8"))) & 0x7FFFFFFF
