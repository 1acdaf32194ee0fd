"""moto's S3 server for the object-store tests, run as its own process (``python -m tests.data.s3_server``): it binds a
free port of 127.0.0.1 and prints it on a line of its own, then serves until stopped (SIGTERM) or until its stdin
closes (the test process is gone).

In its own process, not a thread of the test process: ``prepare`` forks litdata's workers only from a process with one
Python thread (``lightning_gpt.data.litdata_run.start_method``), so a server thread beside the tests would make every
in-process prepare of these tests spawn fresh interpreters (~5 CPU-seconds each).

``HoldPuts`` stands in front of moto: a ``PUT`` of a key ending in a chosen suffix is held until released, then
answered ``503 SlowDown`` without being stored (a slow store, to kill a client in the middle of an upload at a known
object). The tests drive it over HTTP (``HoldClient``): ``/__test__/hold?suffix=...``, ``/__test__/arrived?timeout=s``,
``/__test__/release``.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import urllib.parse
import urllib.request
from typing import Any, Optional

CONTROL = "/__test__/"


class HoldPuts:
    """WSGI middleware in front of moto (see the module docstring); its ``/__test__/`` paths control it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.suffix: Optional[str] = None
        self.arrived = threading.Event()
        self.released = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path.startswith(CONTROL):
            query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
            action, answer = path[len(CONTROL) :], "ok"
            if action == "hold":
                self.suffix = query["suffix"][0]
                self.arrived.clear()
                self.released.clear()
            elif action == "release":
                self.released.set()
            elif action == "arrived":
                answer = json.dumps(self.arrived.wait(float(query["timeout"][0])))
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [answer.encode()]
        suffix = self.suffix
        if suffix and environ.get("REQUEST_METHOD") == "PUT" and path.endswith(suffix):
            self.arrived.set()
            self.released.wait(120)
            start_response("503 Slow Down", [("Content-Type", "application/xml")])
            return [b"<Error><Code>SlowDown</Code><Message>held by the test</Message></Error>"]
        return self.app(environ, start_response)


class HoldClient:
    """The test side of ``HoldPuts``: ``hold(suffix)`` (``""``: hold nothing), ``arrived.wait(timeout) -> bool``,
    ``released.set()``."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        client = self

        class _Arrived:
            def wait(self, timeout: float) -> bool:
                return bool(json.loads(client._call("arrived", timeout=timeout, http_timeout=timeout + 30)))

        class _Released:
            def set(self) -> None:
                client._call("release")

        self.arrived, self.released = _Arrived(), _Released()

    def hold(self, suffix: str) -> None:
        self._call("hold", suffix=suffix)

    def _call(self, action: str, http_timeout: float = 30, **query: Any) -> str:
        url = f"{self.endpoint}{CONTROL}{action}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=http_timeout) as response:
            return response.read().decode()


def main() -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request in every failure report
    app = HoldPuts(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    print(server.server_port, flush=True)
    sys.stdin.read()  # until the test process closes it (or dies)
    app.released.set()
    server.shutdown()


if __name__ == "__main__":
    main()
