"""``ServeOptions``: how ``lightning-gpt serve`` serves a checkpoint, as one frozen, self-checking object.

The ``serve`` command builds it from its flags (one flag a field, same names), ``build_server`` reads it and hands it
to the inference worker (``GPTServeAPI``), so the settings are spelled once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["ServeOptions", "resolve_device"]


def _check(name: str, value: Any, ok: bool, need: str) -> None:
    if not ok:
        raise ValueError(f"--{name} must be {need}, got {value!r}.")


@dataclass(frozen=True)
class ServeOptions:
    """The server's settings (the flags of ``lightning-gpt serve`` but the checkpoint, host, port and log level).

    Args:
        model_name: the id of the model in ``/v1/models`` and the ``model`` field; default from the checkpoint path.
        max_batch_size: the most requests decoded together (1: one at a time).
        batch_timeout: seconds the worker gathers queued requests into a batch before decoding it (it stops early at
            ``max_batch_size``); > 0. Clients that send their next request as soon as one returns need it longer
            than their round trip to land in the same batch (0.05 s: batches of 16 under the 16-client benchmark,
            where 0.01 s settled into two alternating batches of 8).
        max_batch_rows: the most rows (prompts x choices) in one forward pass.
        max_rows_per_request: the most rows one request may ask for (<= ``max_batch_rows``).
        timeout: seconds a request may wait in the queue before it is answered 504.
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:1``... (``resolve_device``).
        dtype: decode in ``float32``, ``bfloat16`` or ``float16`` (default: the checkpoint's).
        trust_checkpoint: allow a full unpickle of a checkpoint that needs it (trusted files only).
        threads: torch intra-op threads of the worker (default: torch's).

    Raises:
        ValueError: a setting out of range, named by its flag (``--max_batch_size must be ...``).
    """

    model_name: Optional[str] = None
    max_batch_size: int = 16
    batch_timeout: float = 0.05
    max_batch_rows: int = 64
    max_rows_per_request: int = 16
    timeout: float = 300.0
    device: str = "auto"
    dtype: Optional[str] = None
    trust_checkpoint: bool = False
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        batch_size, rows, timeout = self.max_batch_size, self.max_batch_rows, self.batch_timeout
        _check("max_batch_size", batch_size, isinstance(batch_size, int) and batch_size >= 1, "an integer >= 1")
        _check("batch_timeout", timeout, 0 < timeout <= 10, "a number of seconds in (0, 10]")
        _check("max_batch_rows", rows, isinstance(rows, int) and rows >= 1, "an integer >= 1")
        _check(
            "max_rows_per_request",
            self.max_rows_per_request,
            isinstance(self.max_rows_per_request, int) and 1 <= self.max_rows_per_request <= rows,
            f"an integer in [1, --max_batch_rows={rows}]",
        )
        _check("timeout", self.timeout, self.timeout > timeout, f"more seconds than --batch_timeout ({timeout})")
        threads = self.threads
        _check("threads", threads, threads is None or (isinstance(threads, int) and threads >= 1), "an integer >= 1")

    @property
    def load_options(self) -> dict[str, Any]:
        """What ``load_checkpoint`` is given, in the calling process (the check) and in the worker: on CPU first
        (the worker then moves the model to its device), with ``trust_checkpoint`` and ``dtype``."""
        return dict(map_location="cpu", trust_checkpoint=self.trust_checkpoint, dtype=self.dtype)

    @classmethod
    def fold(cls, options: Optional[ServeOptions] = None, **settings: Any) -> ServeOptions:
        """``options`` (default ``ServeOptions()``) with ``settings`` (field names) applied, checked once.

        Raises:
            ValueError: an unknown setting name, or a value out of range.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(settings) - set(names))
        if unknown:
            raise ValueError(
                f"Unknown server setting(s) {unknown}; the settings are the fields of ServeOptions: {names}."
            )
        options = cls() if options is None else options
        return dataclasses.replace(options, **settings) if settings else options


def resolve_device(device: str) -> str:
    """The torch device a server decodes on: ``auto`` becomes ``cuda`` where CUDA is available, else ``cpu``.

    Args:
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...

    Raises:
        ValueError: not a device name, CUDA asked for where there is none, or a CUDA index past the last device.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a device name; use auto, cpu, cuda or cuda:1.") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: CUDA is not available on this machine. Use --device cpu (or auto).")
    index = torch.device(device).index
    if kind == "cuda" and index is not None and index >= torch.cuda.device_count():
        raise ValueError(
            f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s). Use --device cuda:0."
        )
    return device
