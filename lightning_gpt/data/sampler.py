"""A seeded, DDP-sharded sampler that resumes mid-epoch, in O(1) memory, also on another number of devices.

It subclasses ``torch.utils.data.DistributedSampler`` so Lightning keeps it as is (Lightning only swaps in its own
distributed sampler when the loader's sampler is not already one), whatever ``use_distributed_sampler`` says.

The order of an epoch is a seeded bijection of ``[0, n)`` computed index by index (``permuted_index``: a 4-round
Feistel network on the next power of two, with cycle walking), never a list: no ``randperm(n).tolist()`` (385 MB and
seconds per rank at 8.8M windows). Rank ``r`` of ``W`` reads global positions ``r, r + W, r + 2W, ...``. The position
is the number of *global* samples consumed, so a resume on ``W'`` devices continues the same epoch order from there,
striped over the new ranks: no sample is repeated or skipped (the uneven tail, fewer than ``W'`` samples, is dropped
as ``drop_last`` always does).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Iterator, Optional

from torch.utils.data import DistributedSampler

from lightning_gpt.seeding import derive_seed

__all__ = ["ResumableSampler", "permuted_index", "restored_position", "sampler_position", "train_sampler"]


def _round_keys(seed: int, epoch: int) -> tuple[int, ...]:
    digest = hashlib.blake2b(f"{seed}:{epoch}".encode(), digest_size=32).digest()
    return tuple(int.from_bytes(digest[i : i + 8], "little") for i in range(0, 32, 8))


def _mix(x: int, key: int) -> int:
    # splitmix64's finalizer: a good 64-bit mix in a few integer operations (Steele et al., 2014).
    x = (x + key + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def permuted_index(i: int, n: int, keys: tuple[int, ...]) -> int:
    """Position ``i`` of a seeded permutation of ``range(n)``, without building it.

    A balanced Feistel network over ``2 * half`` bits (the smallest even width that holds ``n``) is a bijection of
    ``[0, 4**half)``; values that land outside ``[0, n)`` are walked through it again until they fall inside (cycle
    walking: Black & Rogaway, "Ciphers with Arbitrary Finite Domains", 2002), which keeps it a bijection of ``[0, n)``.
    Expected cost: under 4 walks, 4 rounds each.

    Args:
        i: the position, ``0 <= i < n``.
        n: the domain size.
        keys: round keys (``_round_keys(seed, epoch)``).
    """
    half = max(1, math.ceil(math.log2(max(n, 2)) / 2))
    mask = (1 << half) - 1
    x = i
    while True:
        left, right = x >> half, x & mask
        for key in keys:
            left, right = right, left ^ (_mix(right, key) & mask)
        x = (left << half) | right
        if x < n:
            return x


class ResumableSampler(DistributedSampler):
    """Indices of a per-epoch seeded permutation, striped across ranks, optionally starting at a saved position.

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
        drop_last: drop the uneven tail (every rank gets the same count, so DDP never waits on a rank with an extra
            batch) instead of wrapping around to pad it.
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
        self.start_global = 0  # global samples consumed in start_epoch before the resume ...
        self.start_local = 0  # ... of which this rank's share of batches as Lightning counts them (see __len__)
        self.start_epoch = -1
        self.epoch_offset = 0  # our epoch minus the number Lightning passes to set_epoch (nonzero after a restart)
        self.pending_start = False  # set_start was called and no iterator has started from that position yet
        self._caller_epoch: Optional[int] = None  # the last set_epoch argument while a start is pending
        self.num_samples = self._count(0)
        self.total_size = self.num_samples * num_replicas

    def _count(self, start: int) -> int:
        """Samples this rank reads from global position ``start`` to the end of the epoch."""
        rest = max(0, self.dataset_len - start)
        return rest // self.num_replicas if self.drop_last else math.ceil(rest / self.num_replicas)

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

    def set_start(self, epoch: int, global_consumed: int, local_consumed: int = 0) -> None:
        """Resume: in ``epoch``, start after the first ``global_consumed`` samples of the epoch's global order.

        The next iterator starts there, whatever ``set_epoch`` is called with before it.

        Args:
            epoch: the epoch the saved position belongs to (becomes the current epoch).
            global_consumed: samples consumed in that epoch by all ranks together.
            local_consumed: samples of this rank the caller already counts as done in that epoch (Lightning's batch
                counter times the batch size); ``__len__`` adds them, so the caller's count of the epoch stays right.
        """
        self.epoch = int(epoch)
        self.start_epoch = int(epoch)
        self.start_global = max(0, int(global_consumed))
        self.start_local = max(0, int(local_consumed))
        self.pending_start = True
        self._caller_epoch = None

    def global_position(self, epoch: int, local_index: int) -> int:
        """The global position of this rank's ``local_index``-th sample of ``epoch`` (counted from its start)."""
        start = self.start_global if epoch == self.start_epoch else 0
        return start + local_index * self.num_replicas + self.rank

    def index_at(self, epoch: int, position: int) -> int:
        """The dataset index at global ``position`` of ``epoch``'s order."""
        position %= max(1, self.dataset_len)  # padding (drop_last=False) wraps around
        if not self.shuffle:
            return position
        return permuted_index(position, self.dataset_len, _round_keys(self.seed, epoch))

    def __iter__(self) -> Iterator[int]:
        if self.pending_start:  # the restored position wins; align the caller's epoch numbers with it
            if self._caller_epoch is not None:
                self.epoch_offset = self.epoch - self._caller_epoch
            self.pending_start = False
        epoch = self.epoch
        start = self.start_global if epoch == self.start_epoch else 0
        count = self._count(start)
        keys = _round_keys(self.seed, epoch) if self.shuffle else ()
        n = self.dataset_len
        base = epoch * n if self.epoch_in_index else 0
        for k in range(count):
            position = (start + k * self.num_replicas + self.rank) % max(1, n)
            index = permuted_index(position, n, keys) if self.shuffle else position
            yield base + index

    def __len__(self) -> int:
        # What the caller counts for this epoch: after a resume, the batches it already counts as done plus what is
        # left (equal to the full shard length unless the number of devices changed).
        if self.epoch == self.start_epoch and (self.start_global or self.start_local):
            return self.start_local + self._count(self.start_global)
        return self.num_samples

    def state_dict(self) -> dict[str, Any]:
        """The sampler's settings and current epoch (the consumed position is tracked by the data module)."""
        return {"epoch": self.epoch, "seed": self.seed, "num_replicas": self.num_replicas, "rank": self.rank}


def sampler_position(
    sampler: Optional[ResumableSampler],
    resume: Optional[dict[str, int]],
    batches_done: Optional[int],
    batches_per_epoch: Any,
    batch_size: int,
    world_size: int,
) -> dict[str, int]:
    """Where the training data stands: ``{"epoch", "global_consumed", "local_consumed"}`` (what a checkpoint holds).

    Args:
        sampler: the training sampler (``None`` before the first loader).
        resume: a restored position not applied to a sampler yet, or ``None``.
        batches_done: the batches this rank finished in the current epoch (the trainer's own count, not the
            sampler's, which runs ahead when workers prefetch), or ``None`` without a trainer.
        batches_per_epoch: the trainer's batches per epoch (honours ``limit_train_batches``); not an int: from the
            sampler.
        batch_size: samples per batch per rank.
        world_size: the number of ranks.
    """
    if resume is not None:
        return dict(resume)
    if sampler is None:
        return {"epoch": 0, "global_consumed": 0, "local_consumed": 0}
    if sampler.pending_start:  # restored, no batch drawn yet: still the position
        return {
            "epoch": sampler.start_epoch,
            "global_consumed": sampler.start_global,
            "local_consumed": sampler.start_local,
        }
    if batches_done is None:
        return {"epoch": sampler.epoch, "global_consumed": 0, "local_consumed": 0}
    per_epoch = batches_per_epoch
    if not isinstance(per_epoch, int) or per_epoch <= 0:
        per_epoch = math.ceil(len(sampler) / batch_size)
    if batches_done >= per_epoch:  # the epoch is over: the next one starts at its beginning
        return {"epoch": sampler.epoch + 1, "global_consumed": 0, "local_consumed": 0}
    resumed = sampler.epoch == sampler.start_epoch
    local = batches_done * batch_size
    # Every rank drew the same number of samples (drop_last): global = restored start + new local samples x ranks.
    start_global, start_local = (sampler.start_global, sampler.start_local) if resumed else (0, 0)
    return {
        "epoch": sampler.epoch,
        "global_consumed": start_global + (local - start_local) * world_size,
        "local_consumed": local,
    }


def restored_position(state: dict[str, Any], batch_size: int) -> dict[str, int]:
    """The position in a checkpoint's data state (also one written before positions were global).

    Args:
        state: the data module's saved state.
        batch_size: samples per batch per rank (for states that counted batches).
    """
    local, glob = state.get("local_consumed"), state.get("global_consumed")
    if local is None or glob is None:  # an earlier version: batches consumed per rank
        local = int(state.get("batches_consumed") or 0) * batch_size
        glob = local * int(state.get("world_size") or 1)
    return {"epoch": int(state["epoch"]), "global_consumed": int(glob), "local_consumed": int(local)}


def train_sampler(
    n: int,
    world: int,
    rank: int,
    seed: int,
    epoch_in_index: bool,
    resume: Optional[dict[str, int]],
    previous: Optional[ResumableSampler],
) -> ResumableSampler:
    """The training sampler of a (re)built loader: at a restored position, or where the previous one stood.

    Args:
        n: dataset length.
        world: number of ranks.
        rank: this rank.
        seed: the data seed.
        epoch_in_index: see ``ResumableSampler``.
        resume: a restored position (used once), or ``None``.
        previous: the sampler of the loader built before (e.g. ``reload_dataloaders_every_n_epochs``), or ``None``.
    """
    sampler = ResumableSampler(n, world, rank, shuffle=True, seed=seed, epoch_in_index=epoch_in_index)
    if resume is not None:
        sampler.set_start(resume["epoch"], resume["global_consumed"], resume["local_consumed"])
    elif previous is not None:  # keep the epoch and its position
        sampler.epoch_offset = previous.epoch_offset
        if previous.pending_start:
            sampler.set_start(previous.start_epoch, previous.start_global, previous.start_local)
        else:
            sampler.epoch = previous.epoch
    return sampler
