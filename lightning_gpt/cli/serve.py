"""``lightning-gpt serve``: serve a checkpoint over HTTP (LitServe), with an OpenAI-compatible completions endpoint.

```bash
lightning-gpt serve --ckpt_path runs/quickstart                     # http://127.0.0.1:8000, this machine only
lightning-gpt serve --ckpt_path runs/quickstart --host 0.0.0.0 --port 8080 --max_batch_size 32
curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\
    -d '{"model": "quickstart", "prompt": "def ", "max_tokens": 32, "temperature": 0}'
```

Plain ``argparse`` (no Trainer), like ``lightning-gpt generate``. Every setting and the checkpoint are checked before
the server starts, so a mistake is one paragraph and exit status 2, never a half-started server.
"""

from __future__ import annotations

import argparse
import dataclasses

from lightning_gpt.cli.options import checkpoint_parser

__all__ = ["serve_command"]


def _parser() -> argparse.ArgumentParser:
    parser = checkpoint_parser(
        "serve",
        "Serve a checkpoint over HTTP: POST /v1/completions (OpenAI's completions API, stream: true for "
        "server-sent events), POST /predict (prompt + GenerationConfig fields), GET /v1/models, GET /health, GET "
        "/stats. Concurrent requests are decoded together in batches.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="127.0.0.1 (this machine only; default), 0.0.0.0 or :: (every interface)")
    add("--port", type=int, default=8000, help="TCP port, 1024-65535 (default 8000)")
    add("--model_name", default=None, help="the model's id in /v1/models and requests (default: the run's name)")
    add("--max_batch_size", type=int, default=16, help="most requests decoded together; 1: one at a time (default 16)")
    add(
        "--batch_timeout",
        type=float,
        default=0.05,
        help="seconds the worker gathers queued requests into a batch before decoding it (stops early at "
        "--max_batch_size; default 0.05)",
    )
    add("--max_batch_rows", type=int, default=64, help="most sequences in one forward pass (default 64)")
    add("--max_rows_per_request", type=int, default=16, help="most sequences (prompts x n) per request (default 16)")
    add("--timeout", type=float, default=300.0, help="seconds a request may wait in the queue before a 504 (300)")
    add("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    add("--dtype", default=None, help="decode in float32, bfloat16 or float16 (default: the checkpoint's)")
    add("--threads", type=int, default=None, help="torch threads of the model worker (default: torch's)")
    add("--log_level", default="warning", help="critical, error, warning (default) or info (logs every request)")
    return parser


def serve_command(argv: list[str]) -> None:
    """``lightning-gpt serve``: check the settings and the checkpoint, then serve until Ctrl-C or SIGTERM.

    Args:
        argv: the arguments after ``serve`` (see ``lightning-gpt serve --help``).

    Raises:
        ValueError: a bad setting, host or port, or a checkpoint without a tokenizer (before the server starts).
        FileNotFoundError: no checkpoint at ``--ckpt_path``.
    """
    opts = _parser().parse_args(argv)
    try:
        from lightning_gpt.serve import ServeOptions, run_server
    except ImportError as err:
        raise ValueError(
            f"lightning-gpt serve needs LitServe ({err}). Install the serve extra: pip install 'lightning-gpt[serve]'."
        ) from None
    options = ServeOptions(**{f.name: getattr(opts, f.name) for f in dataclasses.fields(ServeOptions)})
    run_server(opts.ckpt_path, options, host=opts.host, port=opts.port, log_level=opts.log_level)
