"""Blocking helpers for the ``--workers`` and PROXY protocol tests: oauthgate in a child
process, plain HTTP requests, an echo upstream in a thread, and access-log lines."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.integration.test_end_to_end import OAuthGateProcess, wait_for

# oauth2-proxy's default request line: client - request id - user [time] host method
# upstream "uri" protocol "agent" status size duration
REQUEST_LINE = re.compile(
    r'\S+ - \S+ - \S+ \[\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\] \S+ [A-Z]+ \S+ "[^"]*" '
    r'HTTP/1\.1 "[^"]*" \d{3} \d+ \d+\.\d{3}'
)


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


def serving(gate: OAuthGateProcess, port: int | None = None) -> None:
    wait_for("/ping", lambda: get(port or gate.port, "/ping", timeout=1)[0] == 200, gate)


def request_lines(gate: OAuthGateProcess, marker: str) -> list[str]:
    """The access log lines (oauth2-proxy's default format) whose URI contains ``marker``;
    fails on a line that is not whole (workers share stdout)."""
    lines = [line for line in gate.log().splitlines() if marker in line]
    for line in lines:
        assert REQUEST_LINE.fullmatch(line), f"not a whole request line: {line!r}"
    return lines


def writes(pid: int) -> int:
    """The write system calls ``pid`` made so far: a worker that serves a request writes
    its answer; an idle one writes nothing."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError(f"no syscw in /proc/{pid}/io")


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
