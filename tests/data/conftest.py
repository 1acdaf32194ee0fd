"""A real S3 API on loopback for the object-store tests: moto's server (``moto[server]``, the ``dev`` extra) in a
thread of the test process, on a free port of 127.0.0.1. Skips cleanly where moto is not installed."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import pytest


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of a moto S3 server started once per test session (per pytest-xdist worker)."""
    server_module = pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e '.[dev]')")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


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
