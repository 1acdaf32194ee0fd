"""State shared between the server's HTTP processes and its inference worker: request ids, cancellations, counters.

LitServe (0.2.x) carries requests to the worker and responses back, but has no channel the other way: when a client
disconnects, the HTTP process forgets the request while the worker goes on generating for nobody. ``SharedState``
is that missing channel, in shared memory (no extra process, no lock, no round trip per check): the HTTP side draws a
request number from ``next_seq`` and, when its client goes away, calls ``cancel(seq)``; the worker asks
``is_cancelled(seq)`` before every decoding step and drops the request's rows. The worker also counts what it did
(generated tokens, batches, the largest batch), which ``GET /stats`` reads: a way to see from outside that batching
happens and that a cancelled generation stops.
"""

from __future__ import annotations

import multiprocessing as mp
import secrets
from typing import Any

__all__ = ["COUNTERS", "SharedState"]

# The worker's counters, in the order they are stored.
COUNTERS = (
    "requests",  # requests the worker started decoding
    "generated_tokens",  # tokens generated for rows that were still wanted (finished or cancelled rows not counted)
    "batches",  # batches decoded (one LitServe batch: the requests collected together)
    "max_batch_requests",  # the most requests decoded together in one batch
    "max_batch_rows",  # the most rows (prompts x choices) decoded together in one forward pass
    "last_batch_requests",  # requests in the latest batch
    "cancelled",  # requests whose client went away before the end (their rows were dropped)
    "active_rows",  # rows being decoded right now
)


class SharedState:
    """Request numbers, cancellation flags and counters in shared memory (``multiprocessing`` ``Value``/``Array``).

    Created in the main process before the server starts; the HTTP processes inherit it (fork) and the inference
    worker receives it when it is spawned (pickled with the API object, as ``multiprocessing`` allows only then).

    Args:
        slots: cancellation slots; request ``seq`` uses slot ``seq % slots`` and stores ``seq`` itself there, so an old
            cancellation never matches a newer request that reuses the slot. Request numbers are random 62-bit
            integers (no counter to share between HTTP processes; a repeat is a 1 in 2**62 event).
    """

    def __init__(self, slots: int = 4096) -> None:
        if slots < 1:
            raise ValueError(f"slots must be a positive integer, got {slots!r}.")
        ctx = mp.get_context("spawn")
        self.slots = slots
        self._cancelled: Any = ctx.Array("q", slots, lock=False)  # written by HTTP processes, read by the worker
        self._counters: Any = ctx.Array("q", len(COUNTERS), lock=False)  # written by the worker only

    def next_seq(self) -> int:
        """A new request number (random, > 0), unique across the server's processes."""
        return secrets.randbits(62) + 1

    def cancel(self, seq: int) -> None:
        """Mark request ``seq`` as no longer wanted (its client went away)."""
        self._cancelled[seq % self.slots] = seq

    def is_cancelled(self, seq: int) -> bool:
        """Whether ``cancel(seq)`` was called."""
        return int(self._cancelled[seq % self.slots]) == seq

    def add(self, name: str, value: int = 1) -> None:
        """Add ``value`` to counter ``name`` (worker side)."""
        self._counters[COUNTERS.index(name)] += value

    def set(self, name: str, value: int) -> None:
        """Set counter ``name`` to ``value`` (worker side)."""
        self._counters[COUNTERS.index(name)] = value

    def raise_to(self, name: str, value: int) -> None:
        """Set counter ``name`` to ``value`` if that is larger (a running maximum)."""
        index = COUNTERS.index(name)
        if value > self._counters[index]:
            self._counters[index] = value

    def counters(self) -> dict[str, int]:
        """Every counter by name."""
        return {name: int(self._counters[i]) for i, name in enumerate(COUNTERS)}
