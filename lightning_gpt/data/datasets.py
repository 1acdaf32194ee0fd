"""Map-style datasets over a cached token stream: packed windows or padded documents.

Both yield ``(input_ids, targets)`` LongTensors of shape ``(block_size,)``; ``targets`` is ``input_ids`` shifted by
one, with ``-100`` (ignored by the loss) at padding. The memmap is opened lazily in each process, so pickling the
dataset into ``num_workers`` worker processes never copies the corpus.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_gpt.config import IGNORE_INDEX
from lightning_gpt.data.cache import TokenArray, load_token_cache

__all__ = ["IGNORE_INDEX", "PackedDataset", "PaddedDataset"]


class _CachedTokens(Dataset):
    def __init__(self, cache: TokenArray) -> None:
        self.path = cache.path
        self._cache: Optional[TokenArray] = cache

    @property
    def cache(self) -> TokenArray:
        if self._cache is None:
            self._cache = load_token_cache(self.path)
        return self._cache

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = None  # reopened (memory-mapped) in the worker, not pickled
        return state


class PackedDataset(_CachedTokens):
    """Documents joined into one stream (they already end with EOS) and cut into windows of ``block_size + 1``.

    Window ``i`` covers stream positions ``[shift + (first_window + i) * block_size, ... + block_size + 1)``:
    consecutive windows share one boundary token, so every token is a target exactly once per epoch.

    With ``shift_seed`` set, the grid moves by a seeded offset in ``[0, block_size)`` that changes with the epoch, so
    later epochs see differently cut sequences (instead of the same windows again). The epoch is read from the index
    (``index = epoch * len(self) + i``, as ``ResumableSampler(epoch_in_index=True)`` yields), which stays correct in
    persistent worker processes. One window is given up so that shifted windows never reach past the exposed range.

    Args:
        cache: the tokenized corpus.
        block_size: the model's context length.
        first_window: index of the first window this dataset exposes (for a train/val split of the stream).
        num_windows: how many windows; ``None`` takes all from ``first_window`` on.
        shift_seed: seed of the per-epoch grid offset; ``None`` keeps the grid fixed (offset 0).
    """

    def __init__(
        self,
        cache: TokenArray,
        block_size: int,
        first_window: int = 0,
        num_windows: Optional[int] = None,
        shift_seed: Optional[int] = None,
    ):
        super().__init__(cache)
        self.block_size = block_size
        total = self.total_windows(cache.n_tokens, block_size)
        self.first_window = first_window
        self.num_windows = total - first_window if num_windows is None else num_windows
        if first_window < 0 or self.num_windows < 0 or first_window + self.num_windows > total:
            raise ValueError(
                f"PackedDataset: windows [{first_window}, +{self.num_windows}) exceed the {total} available."
            )
        self.shift_seed = shift_seed if self.num_windows > 1 else None
        if self.shift_seed is not None:
            self.num_windows -= 1  # room for the shift

    def shift(self, epoch: int) -> int:
        """The grid offset (in tokens) used in ``epoch`` (computed once per epoch: a Generator costs ~20 us)."""
        if self.shift_seed is None:
            return 0
        memo = self.__dict__.setdefault("_shifts", {})
        if epoch not in memo:
            memo[epoch] = int(np.random.default_rng([self.shift_seed, epoch]).integers(self.block_size))
        return memo[epoch]

    @staticmethod
    def total_windows(n_tokens: int, block_size: int) -> int:
        """How many full ``block_size + 1`` windows a stream of ``n_tokens`` holds."""
        return max(0, (n_tokens - 1) // block_size)

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(int(index), self.num_windows) if self.num_windows else (0, index)
        if index < 0 or self.num_windows == 0 or (self.shift_seed is None and epoch > 0):
            raise IndexError(index)
        start = self.shift(epoch) + (self.first_window + i) * self.block_size
        chunk = torch.from_numpy(self.cache.tokens[start : start + self.block_size + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]  # (T,), (T,)

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A batch of windows in one gather (``DataLoader`` calls this instead of ``__getitem__`` per index).

        Args:
            indices: dataset indices (as the sampler yields them).
        """
        n = self.num_windows
        starts = np.empty(len(indices), dtype=np.int64)
        for k, index in enumerate(indices):
            epoch, i = divmod(int(index), n) if n else (0, index)
            if index < 0 or n == 0 or (self.shift_seed is None and epoch > 0):
                raise IndexError(index)
            starts[k] = self.shift(epoch) + (self.first_window + i) * self.block_size
        rows = self.cache.tokens[starts[:, None] + np.arange(self.block_size + 1)]  # (B, T + 1) fancy-index gather
        batch = torch.from_numpy(rows.astype(np.int64))
        return [(row[:-1], row[1:]) for row in batch]


class PaddedDataset(_CachedTokens):
    """One document per row: ``[BOS] ids EOS`` truncated to ``block_size + 1`` tokens, right-padded with ``pad_id``.

    Args:
        cache: the tokenized corpus.
        block_size: the model's context length.
        pad_id: the id written into padded input positions (their targets are ``-100``).
        doc_indices: which documents (indices into the cache) this dataset exposes; ``None`` for all.
    """

    def __init__(self, cache: TokenArray, block_size: int, pad_id: int, doc_indices: Optional[np.ndarray] = None):
        super().__init__(cache)
        self.block_size = block_size
        self.pad_id = pad_id
        self.doc_indices = np.arange(cache.n_docs) if doc_indices is None else np.asarray(doc_indices)

    def __len__(self) -> int:
        return len(self.doc_indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        d = int(self.doc_indices[i])
        lo, hi = int(self.cache.offsets[d]), int(self.cache.offsets[d + 1])
        row = torch.from_numpy(self.cache.tokens[lo : min(hi, lo + self.block_size + 1)].astype(np.int64))
        n = len(row) - 1  # real (input, target) pairs
        x = torch.full((self.block_size,), self.pad_id, dtype=torch.long)
        y = torch.full((self.block_size,), IGNORE_INDEX, dtype=torch.long)
        x[:n] = row[:-1]
        y[:n] = row[1:]
        return x, y  # (T,), (T,)
