"""The inference worker of ``lightning-gpt serve``: a LitServe ``LitAPI`` that decodes batches of requests.

LitServe runs this object in its own (spawned) process: ``setup`` loads the checkpoint there, then its batched
streaming loop collects up to ``max_batch_size`` queued requests (during at most ``batch_timeout`` seconds) and
iterates ``predict`` over them, sending each request its update after every step. ``predict`` is
``lightning_gpt.serve.batching.decode_jobs``. The requests were checked on the HTTP side (``CompletionsSpec``), so
``decode_request`` passes them through.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import litserve as ls
from litserve.loops import BatchedStreamingLoop

from lightning_gpt.serve.batching import decode_jobs
from lightning_gpt.serve.options import ServeOptions, resolve_device
from lightning_gpt.serve.shared import SharedState
from lightning_gpt.serve.spec import CompletionsSpec

__all__ = ["GPTServeAPI"]


class GPTServeAPI(ls.LitAPI):
    """Decode batches of ``Job`` dicts with the checkpoint's model.

    LitServe's batched streaming loop is used for every batch size (also 1), so a request takes the same path
    whether or not it is batched.

    Args:
        ckpt_path: what ``lightning_gpt.io.load_checkpoint`` reads (a ``.ckpt`` file or a weights folder).
        spec: the routes (``CompletionsSpec``).
        state: counters and cancellations shared with the HTTP processes.
        options: the server's settings; the worker reads ``max_batch_size``, ``batch_timeout``, ``max_batch_rows``,
            ``device`` (``auto`` resolved here), ``dtype``, ``trust_checkpoint`` and ``threads``. Default
            ``ServeOptions()``.

    Raises:
        ValueError: ``options.device`` is not a device this machine has.
    """

    def __init__(
        self, ckpt_path: str, *, spec: CompletionsSpec, state: SharedState, options: Optional[ServeOptions] = None
    ) -> None:
        options = ServeOptions() if options is None else options
        super().__init__(
            max_batch_size=options.max_batch_size,
            batch_timeout=options.batch_timeout,
            spec=spec,
            loop=BatchedStreamingLoop(),
        )
        self.ckpt_path = ckpt_path
        self.state = state
        self.max_batch_rows = options.max_batch_rows
        self.torch_device = resolve_device(options.device)
        self.threads = options.threads
        self.load_options = options.load_options  # what setup() passes to load_checkpoint
        self.model: Any = None
        self.tokenizer: Any = None

    def setup(self, device: Any) -> None:
        """Load the checkpoint onto ``torch_device`` (LitServe's own ``device`` is not used: one worker, ours)."""
        import torch

        from lightning_gpt.io.checkpoint import load_checkpoint

        if self.threads:
            torch.set_num_threads(self.threads)
        model, tokenizer = load_checkpoint(self.ckpt_path, **self.load_options)
        self.model = model.to(self.torch_device).eval()
        self.tokenizer = tokenizer

    def decode_request(self, request: Any, **kwargs: Any) -> Any:
        """The ``Job`` (checked before it was queued)."""
        return request

    def batch(self, inputs: list[Any]) -> list[Any]:
        """The jobs as a list."""
        return list(inputs)

    def predict(self, x: list[dict[str, Any]], **kwargs: Any) -> Iterator[list[Optional[dict[str, Any]]]]:
        """Decode the jobs together; yield one update (or ``None``) per job after each step."""
        yield from decode_jobs(self.model, self.tokenizer, x, state=self.state, max_batch_rows=self.max_batch_rows)

    def encode_response(self, output: Any, **kwargs: Any) -> Iterator[Any]:
        """The updates, unchanged (LitServe writes each dict as one JSON line)."""
        yield from output
