"""Serving a trained GPT over HTTP with LitServe (``lightning-gpt serve``; needs the ``serve`` extra).

* ``run_server(ckpt_path, host=..., port=...)`` / ``build_server``: the server (``server.py``); ``ServeOptions``:
  its settings, one field a ``lightning-gpt serve`` flag (``options.py``).
* ``CompletionsSpec``: the routes: OpenAI's ``POST /v1/completions`` (streaming as server-sent events),
  ``POST /predict``, ``GET /v1/models``, ``GET /stats`` (``spec.py``); request checks in ``requests.py``.
* ``GPTServeAPI``: the inference worker (``api.py``); ``decode_jobs``: concurrent requests decoded together as
  left-padded batches (``batching.py``); ``SharedState``: cancellations and counters across processes
  (``shared.py``).

Plain PyTorch and LitServe: nothing here imports Lightning.
"""

from lightning_gpt.serve.api import GPTServeAPI
from lightning_gpt.serve.batching import decode_jobs
from lightning_gpt.serve.options import ServeOptions
from lightning_gpt.serve.requests import Limits, RequestError, parse_completions, parse_predict
from lightning_gpt.serve.server import build_server, run_server
from lightning_gpt.serve.shared import SharedState
from lightning_gpt.serve.spec import CompletionsSpec

__all__ = [
    "CompletionsSpec",
    "GPTServeAPI",
    "Limits",
    "RequestError",
    "ServeOptions",
    "SharedState",
    "build_server",
    "decode_jobs",
    "parse_completions",
    "parse_predict",
    "run_server",
]
