"""A seeded, DDP-sharded sampler that can resume mid-epoch.

It subclasses ``torch.utils.data.DistributedSampler`` so Lightning keeps it as is (Lightning only swaps in its own
distributed sampler when the loader's sampler is not already one), whatever ``use_distributed_sampler`` says.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Optional

import torch
from torch.utils.data import DistributedSampler

from lightning_gpt.seeding import derive_seed

__all__ = ["ResumableSampler"]


class ResumableSampler(DistributedSampler):
    """Indices of a per-epoch seeded permutation, split across ranks, optionally starting at a saved position.

    Every rank draws the same permutation (``seed + epoch``) and takes ``perm[rank::num_replicas]``, so the ranks'
    shards are disjoint. With ``drop_last`` the tail that does not divide evenly is dropped (every rank gets the same
    count, so DDP never waits on a rank with an extra batch); otherwise the permutation is wrapped around to pad it.

    A position restored with ``set_start`` is the truth about where the data stands. Lightning's own epoch counter
    can disagree with it: restarting from a checkpoint written at an epoch end, Lightning re-enters the finished epoch
    and calls ``set_epoch`` twice (``e`` for the finished one, then ``e + 1``) before it iterates, one ahead of the
    data. So after ``set_start`` the ``set_epoch`` calls only record Lightning's number until the next ``__iter__``,
    which starts at the restored position and fixes the offset between the two counters; later ``set_epoch(e)`` calls
    select epoch ``e + offset``.

    Args:
        num_samples: length of the dataset.
        num_replicas: world size.
        rank: this process's rank.
        shuffle: permute each epoch (``False``: dataset order).
        seed: base seed of the permutation; ``None``: derived from the run seed (``seed_everything``), the same one
            ``TextDataModule`` derives.
        drop_last: drop the uneven tail instead of padding it.
        epoch_in_index: yield ``epoch * num_samples + index`` so the dataset can vary with the epoch (the packed
            dataset shifts its window grid) even inside persistent worker processes.
    """

    def __init__(
        self,
        num_samples: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: Optional[int] = None,
        drop_last: bool = True,
        epoch_in_index: bool = False,
    ) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"ResumableSampler: need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}."
            )
        # Deliberately not calling DistributedSampler.__init__: it needs a dataset and may query torch.distributed.
        self.dataset_len = num_samples
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = derive_seed("data", seed)
        self.drop_last = drop_last
        self.epoch_in_index = epoch_in_index
        self.epoch = 0
        self.start_index = 0  # position (in this rank's shard) to resume from ...
        self.start_epoch = -1  # ... in this epoch only
        self.epoch_offset = 0  # our epoch minus the number Lightning passes to set_epoch (nonzero after a restart)
        self.pending_start = False  # set_start was called and no iterator has started from that position yet
        self._caller_epoch: Optional[int] = None  # the last set_epoch argument while a start is pending
        if drop_last:
            self.num_samples = num_samples // num_replicas
        else:
            self.num_samples = math.ceil(num_samples / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of epoch ``epoch + epoch_offset`` (Lightning calls this at each epoch start).

        While a restored position is pending (see the class docstring) the call only records ``epoch``.

        Args:
            epoch: the caller's epoch number.
        """
        if self.pending_start:
            self._caller_epoch = int(epoch)
        else:
            self.epoch = int(epoch) + self.epoch_offset

    def set_start(self, epoch: int, index: int) -> None:
        """Resume: in ``epoch``, skip the first ``index`` indices of this rank's shard (full length is unchanged).

        The next iterator starts there, whatever ``set_epoch`` is called with before it.

        Args:
            epoch: the epoch the saved position belongs to (becomes the current epoch).
            index: how many of this rank's samples were already consumed in that epoch.
        """
        self.epoch = int(epoch)
        self.start_epoch = int(epoch)
        self.start_index = max(0, int(index))
        self.pending_start = True
        self._caller_epoch = None

    def shard(self, epoch: int) -> list[int]:
        """This rank's full index list for ``epoch``."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            order = torch.randperm(self.dataset_len, generator=g).tolist()
        else:
            order = list(range(self.dataset_len))
        if self.drop_last:
            order = order[: self.total_size]
        elif order:
            order = (order * math.ceil(self.total_size / len(order)))[: self.total_size]
        return order[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        if self.pending_start:  # the restored position wins; align the caller's epoch numbers with it
            if self._caller_epoch is not None:
                self.epoch_offset = self.epoch - self._caller_epoch
            self.pending_start = False
        indices = self.shard(self.epoch)
        if self.epoch == self.start_epoch:
            indices = indices[self.start_index :]
        if self.epoch_in_index:
            base = self.epoch * self.dataset_len
            indices = [base + i for i in indices]
        return iter(indices)

    def __len__(self) -> int:
        # The full shard length, also when resuming: Lightning counts the already-consumed batches itself.
        return self.num_samples

    def state_dict(self) -> dict[str, Any]:
        """The sampler's settings and current epoch (the consumed position is tracked by the data module)."""
        return {"epoch": self.epoch, "seed": self.seed, "num_replicas": self.num_replicas, "rank": self.rank}
