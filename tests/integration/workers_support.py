"""Blocking helpers for the ``--workers`` and PROXY protocol tests: oauthgate in a child
process, plain HTTP requests, an echo upstream in a thread, and log polling."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.integration.test_end_to_end import OAuthGateProcess

WORKER_LINE = re.compile(r"\[worker (\d+) pid (\d+)\] (.*)")


def gate_args(upstream: str, *extra: str) -> list[str]:
    """A gate whose provider is never reached (the tests need no login)."""
    secret = base64.urlsafe_b64encode(os.urandom(32)).decode()
    return [
        "--provider=oidc",
        "--oidc-issuer-url=http://127.0.0.1:9/",
        "--client-id=workers",
        "--client-secret=workers-secret",
        f"--cookie-secret={secret}",
        "--email-domain=*",
        f"--upstream={upstream}",
        *extra,
    ]


def start_gate(workdir: Path, args: list[str]) -> OAuthGateProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    return OAuthGateProcess(args, workdir)


def get(
    port: int, path: str, *, source: str | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    """GET over a new connection (from ``source`` when given)."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=timeout, source_address=(source, 0) if source else None
    )
    try:
        connection.request("GET", path, headers={"Accept": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_for(
    what: str, check: Callable[[], Any], gate: OAuthGateProcess, timeout: float = 10.0
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gate.process.poll() is not None:
            raise AssertionError(f"oauthgate exited with {gate.process.returncode}:\n{gate.log()}")
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"{what} not within {timeout}s:\n{gate.log()}")


def serving(gate: OAuthGateProcess, port: int | None = None) -> None:
    wait_for("/ping", lambda: get(port or gate.port, "/ping", timeout=1)[0] == 200, gate)


def request_lines(gate: OAuthGateProcess) -> list[tuple[int, int, str]]:
    """(worker number, pid, access log line) for every request a worker logged."""
    return [(int(m[1]), int(m[2]), m[3]) for m in WORKER_LINE.finditer(gate.log())]


class EchoUpstream:
    """An upstream in a thread that answers every GET with its request headers (JSON)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
