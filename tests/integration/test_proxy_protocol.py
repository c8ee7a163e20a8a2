"""``--http-address=haproxy:tcp:...`` behind a real HAProxy (``send-proxy`` and
``send-proxy-v2``): the client address HAProxy saw, not HAProxy's own, is what oauthgate
logs, matches ``--trusted-ip`` against and sends upstream in X-Forwarded-For.

The client connects to HAProxy from 127.0.0.5 (any 127/8 address works on Linux's
loopback); HAProxy connects to oauthgate from 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from twisted.trial.unittest import SynchronousTestCase

from tests.integration.test_end_to_end import free_port, wait_for
from tests.integration.workers_support import (
    EchoUpstream,
    gate_args,
    get,
    serving,
    start_gate,
)

pytestmark = pytest.mark.integration

CLIENT = "127.0.0.5"
HAPROXY_CFG = """\
global
  maxconn 100
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend in
  bind 127.0.0.1:{front}
  default_backend gate
backend gate
  server gate 127.0.0.1:{gate} {send}
"""


class ProxyProtocolTests(SynchronousTestCase):
    def start(self, send: str, *extra: str) -> int:
        haproxy = shutil.which("haproxy")
        if haproxy is None:  # .ci/run installs it; fail loudly rather than skip
            self.fail("haproxy is not installed (apt-get install haproxy)")
        workdir = Path(self.mktemp())
        upstream = EchoUpstream()
        self.addCleanup(upstream.stop)
        gate_port = free_port()
        self.gate = start_gate(
            workdir,
            gate_args(
                upstream.url,
                f"--http-address=haproxy:tcp:{gate_port}:interface=127.0.0.1",
                f"--trusted-ip={CLIENT}/32",
                *extra,
            ),
        )
        self.addCleanup(self.gate.stop)
        front = free_port()
        config = workdir / "haproxy.cfg"
        config.write_text(HAPROXY_CFG.format(front=front, gate=gate_port, send=send))
        log = open(workdir / "haproxy.log", "wb")  # noqa: SIM115 - closed by cleanup
        self.addCleanup(log.close)
        process = subprocess.Popen(
            [haproxy, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        self.addCleanup(process.wait, 10)
        self.addCleanup(process.terminate)
        serving(self.gate, front)

        def listening() -> bool:
            with socket.create_connection(("127.0.0.1", front), timeout=1):
                return True

        wait_for("haproxy", listening, self.gate)
        return front

    def check_client_address_is_the_proxied_one(self, front: int) -> None:
        # The trusted address passes without a login, and the upstream sees it.
        status, body = get(front, "/whoami", source=CLIENT)
        self.assertEqual(status, 200, self.gate.log())
        self.assertEqual(json.loads(body)["x-forwarded-for"], CLIENT)
        # HAProxy's own address (the TCP peer) is not trusted.
        self.assertIn(get(front, "/whoami", source="127.0.0.1")[0], (401, 403))
        # The access log names the client too.
        wait_for(
            "the access log line",
            lambda: any(
                f"{CLIENT} - " in line and "/whoami" in line and " 200 " in line
                for line in self.gate.log().splitlines()
            ),
            self.gate,
        )

    def test_proxy_protocol_v1_gives_the_client_address(self) -> None:
        self.check_client_address_is_the_proxied_one(self.start("send-proxy"))

    def test_proxy_protocol_v2_gives_the_client_address_with_workers(self) -> None:
        self.check_client_address_is_the_proxied_one(self.start("send-proxy-v2", "--workers=2"))
