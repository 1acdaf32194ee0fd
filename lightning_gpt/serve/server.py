"""Build and run the LitServe server of ``lightning-gpt serve`` (``build_server``, ``run_server``).

One inference worker holds the model (batching needs all requests on one model); one HTTP process takes the
requests. The checkpoint is read once in the calling process first, so that a bad path, a damaged file or a
checkpoint without a tokenizer is reported before anything starts, and the HTTP side gets the tokenizer and the
context length it checks requests against; the worker then loads the weights for itself.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Optional

import litserve as ls

from lightning_gpt.io.checkpoint import find_checkpoint, load_checkpoint
from lightning_gpt.io.hf import is_pretrained_path
from lightning_gpt.serve.api import GPTServeAPI
from lightning_gpt.serve.options import ServeOptions, resolve_device
from lightning_gpt.serve.requests import Limits
from lightning_gpt.serve.shared import SharedState
from lightning_gpt.serve.spec import CompletionsSpec

__all__ = ["HOSTS", "build_server", "default_model_name", "run_server"]

log = logging.getLogger(__name__)

HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServe binds to: loopback only, or every IPv4 / IPv6 interface
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024  # a request body larger than this is refused (413) before it is parsed


def default_model_name(ckpt_path: str) -> str:
    """The id ``/v1/models`` lists: the run folder's name for ``runs/x`` or ``runs/x/checkpoints/last.ckpt``, else
    the file or folder name without its extension."""
    path = Path(ckpt_path).resolve()
    if path.is_file() and path.parent.name == "checkpoints":
        return path.parent.parent.name
    if path.is_dir() and (path / "checkpoints").is_dir():
        return path.name
    return path.stem if path.is_file() else path.name


def build_server(ckpt_path: str, options: Optional[ServeOptions] = None, **settings: Any) -> tuple[Any, dict[str, Any]]:
    """A ``litserve.LitServer`` serving a checkpoint, not started yet (``server.run(host=..., port=...)``).

    Args:
        ckpt_path: a ``.ckpt`` file, a run folder (its newest checkpoint) or a weights folder (``lightning-gpt
            export``, Hugging Face GPT-2): anything ``lightning-gpt generate`` accepts.
        options: the server's settings (default ``ServeOptions()``; the ``serve`` command builds them from its flags).
        settings: fields of ``ServeOptions`` as keywords (``max_batch_size=4``); they win over ``options``.

    Returns:
        ``(server, info)``; ``info`` holds ``model_name``, ``ckpt_path`` (resolved), ``block_size``,
        ``vocab_size``, ``parameters`` and ``device``.

    Raises:
        FileNotFoundError: no checkpoint at ``ckpt_path``.
        ValueError: a setting out of range, an unreadable checkpoint, or one without a tokenizer.
    """
    options = ServeOptions.fold(options, **settings)
    options = dataclasses.replace(options, device=resolve_device(options.device))
    path = ckpt_path if is_pretrained_path(ckpt_path) else find_checkpoint(ckpt_path)
    model, tokenizer = load_checkpoint(path, **options.load_options)
    if tokenizer is None:
        raise ValueError(
            f"Checkpoint {path!r} holds no tokenizer, so the server could not encode prompts. Serve a checkpoint "
            "written by lightning-gpt fit (it stores the tokenizer) or an export folder with its tokenizer."
        )
    name = options.model_name or default_model_name(ckpt_path)
    info: dict[str, Any] = {
        "model_name": name,
        "ckpt_path": str(path),
        "block_size": int(model.config.block_size),
        "vocab_size": int(model.config.vocab_size),
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": options.device,
    }
    del model  # the worker loads its own copy
    limits = Limits(info["block_size"], info["vocab_size"], name, max_rows=options.max_rows_per_request)
    state = SharedState()
    spec = CompletionsSpec(tokenizer, limits, state, max_batch_size=options.max_batch_size)
    api = GPTServeAPI(str(path), spec=spec, state=state, options=options)
    # One worker process whatever the hardware: LitServe's "accelerator" only picks the device string handed to
    # setup(), and the worker places the model itself (``device``).
    server = ls.LitServer(
        api,
        accelerator="cpu",
        devices=1,
        workers_per_device=1,
        timeout=options.timeout,
        max_payload_size=MAX_PAYLOAD_BYTES,
        model_metadata={"model": name, "block_size": info["block_size"], "vocab_size": info["vocab_size"]},
    )
    return server, info


def run_server(
    ckpt_path: str,
    options: Optional[ServeOptions] = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "warning",
    **settings: Any,
) -> None:
    """Serve a checkpoint until interrupted (Ctrl-C or SIGTERM: both shut the worker and HTTP process down).

    Args:
        ckpt_path: see ``build_server``.
        options: the server's settings (see ``build_server``).
        host: ``127.0.0.1`` (this machine only; the default), ``0.0.0.0`` (every IPv4 interface) or ``::``.
        port: TCP port, 1024-65535.
        log_level: LitServe's and uvicorn's log level (``info`` logs every request).
        settings: fields of ``ServeOptions`` as keywords, as for ``build_server``.

    Raises:
        ValueError: a bad host, port or setting; see ``build_server`` for the checkpoint's errors.
    """
    if host not in HOSTS:
        raise ValueError(
            f"--host {host!r} is not one LitServe can bind: use 127.0.0.1 (this machine only, the default), 0.0.0.0 "
            "(every IPv4 interface) or :: (every IPv6 interface)."
        )
    if isinstance(port, bool) or not isinstance(port, int) or not 1024 <= port <= 65535:
        raise ValueError(f"--port must be an integer from 1024 to 65535, got {port!r}.")
    if log_level not in ("critical", "error", "warning", "info", "debug"):
        raise ValueError(f"--log_level must be critical, error, warning, info or debug, got {log_level!r}.")
    server, info = build_server(ckpt_path, options, **settings)
    shown = f"[{host}]" if ":" in host else host
    sys.stderr.write(
        f"lightning-gpt serve: {info['model_name']!r} ({info['parameters'] / 1e6:.1f}M parameters, context "
        f"{info['block_size']}) from {info['ckpt_path']} on {info['device']}, at http://{shown}:{port} "
        "(POST /v1/completions, POST /predict, GET /v1/models, GET /health, GET /stats); Ctrl-C stops it.\n"
    )
    sys.stderr.flush()
    # LitServe shuts its HTTP process, worker and queues down on Ctrl-C (KeyboardInterrupt) but installs nothing for
    # SIGTERM (docker stop, systemd, kill): the main process would die at once and leave them running. SIGTERM takes
    # the Ctrl-C path here.
    main_pid = os.getpid()

    def interrupt(signum: int, frame: Any) -> None:
        if os.getpid() != main_pid:  # a forked HTTP process re-raising the signal after its own clean shutdown
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        # LitServe writes a client.py example into the working directory unless told not to.
        server.run(host=host, port=port, log_level=log_level, generate_client_file=False, num_api_servers=1)
    except KeyboardInterrupt:  # before LitServe's own handler was in place (during start-up)
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    sys.stderr.write("lightning-gpt serve: stopped.\n")
