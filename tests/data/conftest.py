"""A real S3 API on loopback for the object-store tests: moto's server (``moto[server]``, the ``dev`` extra) in a
thread of the test process, on a free port of 127.0.0.1. Skips cleanly where moto is not installed."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest


class HoldPuts:
    """WSGI middleware in front of moto: a ``PUT`` of a key ending in ``suffix`` is held (``arrived`` is set) until
    ``released`` is set, then answered ``503 SlowDown`` without being stored: a slow store, to kill a client in the
    middle of an upload at a known object."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.suffix: Optional[str] = None
        self.arrived = threading.Event()
        self.released = threading.Event()

    def hold(self, suffix: str) -> None:
        self.suffix = suffix
        self.arrived.clear()
        self.released.clear()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        suffix = self.suffix
        if suffix and environ.get("REQUEST_METHOD") == "PUT" and environ.get("PATH_INFO", "").endswith(suffix):
            self.arrived.set()
            self.released.wait(120)
            start_response("503 Slow Down", [("Content-Type", "application/xml")])
            return [b"<Error><Code>SlowDown</Code><Message>held by the test</Message></Error>"]
        return self.app(environ, start_response)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, Any]]:
    """A moto S3 server on a free port of 127.0.0.1, started once per test session (per pytest-xdist worker), as
    moto's ``ThreadedMotoServer`` runs it (a thread per request), behind ``HoldPuts``: ``{"endpoint", "hold"}``."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e '.[dev]')")
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request in every failure report
    hold = HoldPuts(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, hold, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"endpoint": f"http://127.0.0.1:{server.server_port}", "hold": hold}
    finally:
        hold.released.set()
        server.shutdown()
        thread.join()


@pytest.fixture(scope="session")
def s3_endpoint(s3_server) -> str:
    """``http://127.0.0.1:<port>`` of the session's moto S3 server."""
    return s3_server["endpoint"]


def store_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, endpoint: str) -> None:
    """Point boto3 (ours and litdata's) at ``endpoint`` the way a user points it at MinIO or R2: ``AWS_ENDPOINT_URL``,
    credentials and a region in the environment; no shared config files, profile or instance-metadata lookups."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch, tmp_path) -> str:
    """A new empty bucket on the loopback server, with the environment pointing at it; returns ``s3://<bucket>``."""
    import boto3

    store_env(monkeypatch, tmp_path, s3_endpoint)
    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.session.Session().client("s3").create_bucket(Bucket=name)
    assert os.environ["AWS_ENDPOINT_URL"] == s3_endpoint
    return f"s3://{name}"
