"""Fixtures of the serving tests: a tiny checkpoint, and a real ``lightning-gpt serve`` process on a free port."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
import torch

from tests.helpers import python_env

TEXT = "hello world, the quick brown fox jumps over the lazy dog. ROMEO: JULIET! 0123456789\n"
BLOCK_SIZE = 1024  # long enough that a generation runs for a while (the disconnect test stops one midway)


def write_tiny_checkpoint(path: Path, *, tokenizer: bool = True, block_size: int = BLOCK_SIZE) -> Path:
    """A 2-layer, 32-wide GPT with a character tokenizer; its LM head is scaled up so that greedy text varies."""
    from lightning_gpt import GPT, GPTConfig
    from lightning_gpt.data.tokenizers import CharTokenizer

    tok = CharTokenizer.train([TEXT])
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32, tie_weights=False
    )
    model = GPT(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)  # peaked, varied next-token distributions
        # The special tokens (BOS, EOS, PAD, UNK) get logit 0 while the best character's is about +7: greedy decoding
        # never ends early, so a long request really runs long (the disconnect and batching tests need that).
        model.lm_head.weight[len(tok.chars) :] = 0.0
    checkpoint: dict[str, Any] = {
        "gpt_config": dataclasses.asdict(config),
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
    }
    if tokenizer:
        checkpoint["tokenizer"] = tok.state_dict()
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny.ckpt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # If the test process dies without its teardown (SIGKILL), the server gets SIGTERM and shuts its workers down.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclasses.dataclass
class Server:
    """A running ``lightning-gpt serve``: its base URL, process and log file."""

    url: str
    port: int
    proc: subprocess.Popen
    log: Path

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return json.loads(response.read())

    def post(self, path: str, body: Any, raw: Optional[bytes] = None) -> tuple[int, Any]:
        """POST JSON (or ``raw`` bytes); return the status and the decoded JSON body (errors included)."""
        data = raw if raw is not None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def stats(self) -> dict[str, int]:
        return self.get("/stats")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False


def stop(proc: subprocess.Popen, wait_s: float = 30.0) -> None:
    """SIGTERM the server (it shuts its HTTP process and worker down), then SIGKILL whatever is left of its group."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    for last in (False, True):
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader, so that an empty group is seen as gone
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        if not last:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def running_server(ckpt: Path, workdir: Path, *args: str, startup_s: float = 240.0) -> Iterator[Server]:
    """Start ``python -m lightning_gpt serve --ckpt_path ckpt --port <free> *args``; wait for ``/health``; always
    stop it (and every process it started) at the end, on failure and on Ctrl-C too."""
    port = free_port()
    log = workdir / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "lightning_gpt", "serve", "--ckpt_path", str(ckpt), "--port", str(port), *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=python_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches the workers too
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    try:
        server = Server(f"http://127.0.0.1:{port}", port, proc, log)
        deadline = time.monotonic() + startup_s
        while not server.healthy():
            if proc.poll() is not None:
                raise AssertionError(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the server was not healthy after {startup_s} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield server
    finally:
        stop(proc)
