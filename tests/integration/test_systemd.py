"""``twistd -n oauthgate`` under a pretend systemd: notifications arrive on a datagram
socket the test binds (``$NOTIFY_SOCKET``), SIGTERM stops it gracefully with status 0,
and ``systemd-analyze verify`` accepts the unit files shipped in docs/deploy/systemd.

Marked ``integration``. Never skips: a missing ``systemd-analyze`` is a manual step
(docs/deploy/systemd.md), checked by the test that the tool is absent or used.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from oauthgate.testing import FakeIdP

from .test_end_to_end import ROOT, OAuthGateProcess, free_port

pytestmark = pytest.mark.integration

UNITS = ROOT / "docs" / "deploy" / "systemd"


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


class SlowResource(Resource):
    """An upstream that answers after ``delay`` seconds; counts the requests it got."""

    isLeaf = True

    def __init__(self, delay: float) -> None:
        Resource.__init__(self)
        self.delay = delay
        self.received = 0
        self.pending: list[Any] = []

    def render_GET(self, request: Request) -> Any:
        self.received += 1

        def answer() -> None:
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(b"slow answer")
                request.finish()

        self.pending.append(reactor.callLater(self.delay, answer))  # type: ignore[attr-defined]
        return NOT_DONE_YET


class NotifySocket:
    """The datagram socket systemd would listen on; read without blocking."""

    def __init__(self, name: str) -> None:
        self.name = name
        address = "\0" + name[1:] if name.startswith("@") else name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            self.messages.append(data.decode("utf-8"))

    def lines(self) -> list[str]:
        return [line for m in self.drain() for line in m.splitlines()]

    async def wait_for(self, line: str, process: Gate, timeout: float = 20.0) -> None:
        waited = 0.0
        while line not in self.lines():
            if waited > timeout:
                raise AssertionError(
                    f"no {line} within {timeout}s: {self.messages}\n{process.log()}"
                )
            await sleep(0.05)
            waited += 0.05

    def close(self) -> None:
        self.sock.close()


class Gate(OAuthGateProcess):
    """``twistd -n oauthgate`` with systemd's variables in ``env``; ``stop`` kills it."""

    async def wait_for_exit(self, timeout: float = 20.0) -> int:
        waited = 0.0
        while self.process.poll() is None:
            if waited > timeout:
                raise AssertionError(f"oauthgate still runs after {timeout}s:\n{self.log()}")
            await sleep(0.05)
            waited += 0.05
        return self.process.returncode

    def refuses_connections(self) -> bool:
        with socket.socket() as s:
            s.settimeout(1.0)
            try:
                s.connect(("127.0.0.1", self.port))
            except ConnectionRefusedError:
                return True
        return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        super().stop()


class SystemdTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.workdir = Path(self.mktemp())
        self.workdir.mkdir(parents=True)
        # A short folder for the notify socket: UNIX socket paths are limited to 107 bytes.
        self.sockdir = Path(tempfile.mkdtemp(prefix="og-sd-"))
        self.addCleanup(shutil.rmtree, self.sockdir, True)
        idp_site = Site(Resource())
        idp_listener = reactor.listenTCP(0, idp_site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(idp_listener.stopListening)
        self.idp_url = f"http://127.0.0.1:{idp_listener.getHost().port}"
        idp_site.resource = FakeIdP(
            self.idp_url, reactor, clients={"sd-client": "sd-secret"}, auto_login="alice"
        ).resource()
        self.slow = SlowResource(2.0)
        self.addCleanup(lambda: [c.cancel() for c in self.slow.pending if c.active()])
        upstream = reactor.listenTCP(0, Site(self.slow), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(upstream.stopListening)
        self.upstream_url = f"http://127.0.0.1:{upstream.getHost().port}/"
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=pool))

    def start(self, env: dict[str, str], *extra: str) -> Gate:
        secret = base64.urlsafe_b64encode(os.urandom(32)).decode()
        gate = Gate(
            [
                "--provider=oidc",
                f"--oidc-issuer-url={self.idp_url}",
                "--client-id=sd-client",
                "--client-secret=sd-secret",
                f"--cookie-secret={secret}",
                "--email-domain=example.com",
                f"--upstream={self.upstream_url}",
                "--skip-auth-regex=^/slow",
                *extra,
            ],
            self.workdir,
            env,
        )
        self.addCleanup(gate.stop)
        return gate

    def notify_socket(self, name: str) -> NotifySocket:
        notify = NotifySocket(name)
        self.addCleanup(notify.close)
        return notify

    def test_ready_when_serving_then_stopping_and_exit_status_0_on_sigterm(
        self,
    ) -> Deferred[None]:
        async def go() -> None:
            notify = self.notify_socket(str(self.sockdir / "notify"))
            gate = self.start({"NOTIFY_SOCKET": notify.name})
            await notify.wait_for("READY=1", gate)
            # READY=1 comes once the port answers: no polling needed by systemd's dependents.
            response = await self.http.get(gate.base + "/ping")
            self.assertEqual(response.code, 200)
            await response.content()
            self.assertNotIn("STOPPING=1", notify.lines())

            gate.process.send_signal(signal.SIGTERM)
            status = await gate.wait_for_exit()
            self.assertEqual(status, 0, gate.log())
            self.assertIn("STOPPING=1", notify.lines())

        return Deferred.fromCoroutine(go())

    def test_the_workers_supervisor_tells_systemd_it_is_ready_and_stopping(
        self,
    ) -> Deferred[None]:
        """With --workers, the main process is the one systemd watches (NotifyAccess=main)."""

        async def go() -> None:
            notify = self.notify_socket(str(self.sockdir / "notify-workers"))
            gate = self.start({"NOTIFY_SOCKET": notify.name}, "--workers=2")
            await notify.wait_for("READY=1", gate)
            for _ in range(50):
                try:
                    response = await self.http.get(gate.base + "/ping")
                    await response.content()
                    if response.code == 200:
                        break
                except Exception:
                    pass
                await sleep(0.1)
            self.assertEqual(response.code, 200, gate.log())
            gate.process.send_signal(signal.SIGTERM)
            await gate.wait_for_exit()
            self.assertIn("STOPPING=1", notify.lines())

        return Deferred.fromCoroutine(go())

    def test_watchdog_pings_every_half_watchdog_usec_on_an_abstract_socket(
        self,
    ) -> Deferred[None]:
        async def go() -> None:
            notify = self.notify_socket(f"@oauthgate-test-{os.getpid()}-{free_port()}")
            gate = self.start({"NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": "200000"})
            await notify.wait_for("READY=1", gate)
            pings = notify.lines().count("WATCHDOG=1")
            await sleep(1.0)  # pings every 0.1 s: about 10 more
            self.assertGreaterEqual(notify.lines().count("WATCHDOG=1") - pings, 4, gate.log())
            gate.process.send_signal(signal.SIGTERM)
            self.assertEqual(await gate.wait_for_exit(), 0, gate.log())

        return Deferred.fromCoroutine(go())

    def test_sigterm_finishes_the_request_in_flight_and_refuses_new_connections(
        self,
    ) -> Deferred[None]:
        async def go() -> None:
            notify = self.notify_socket(str(self.sockdir / "notify"))
            gate = self.start({"NOTIFY_SOCKET": notify.name})
            await notify.wait_for("READY=1", gate)

            in_flight = self.http.get(gate.base + "/slow")
            while self.slow.received == 0:  # the upstream has it: it is in flight
                await sleep(0.02)
            gate.process.send_signal(signal.SIGTERM)
            await notify.wait_for("STOPPING=1", gate)
            waited = 0.0
            while not gate.refuses_connections():
                self.assertLess(waited, 1.0, "still accepting connections after SIGTERM")
                await sleep(0.05)
                waited += 0.05
            self.assertIsNone(gate.process.poll(), "exited with a request in flight")

            response = await in_flight
            self.assertEqual(response.code, 200, gate.log())
            self.assertEqual(await response.content(), b"slow answer")
            self.assertEqual(await gate.wait_for_exit(), 0, gate.log())

        return Deferred.fromCoroutine(go())

    def test_the_shutdown_timeout_cuts_off_requests_that_take_longer(self) -> Deferred[None]:
        async def go() -> None:
            notify = self.notify_socket(str(self.sockdir / "notify"))
            gate = self.start({"NOTIFY_SOCKET": notify.name}, "--shutdown-timeout=200ms")
            await notify.wait_for("READY=1", gate)
            in_flight = self.http.get(gate.base + "/slow")
            in_flight.addErrback(lambda _: None)  # the connection is cut: no response
            while self.slow.received == 0:
                await sleep(0.02)
            gate.process.send_signal(signal.SIGTERM)
            # Exits well before the upstream's 2 s answer, with status 0.
            self.assertEqual(await gate.wait_for_exit(timeout=1.5), 0, gate.log())
            self.assertIn("Shutdown timeout", gate.log())
            self.assertIsNone(await in_flight)

        return Deferred.fromCoroutine(go())


class UnitFileTests(TestCase):
    def test_systemd_analyze_accepts_the_units_or_is_absent(self) -> None:
        """With systemd-analyze on the machine the unit files must verify; without it,
        verification is the manual step docs/deploy/systemd.md describes."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            self.assertIn("systemd-analyze verify", (ROOT / "docs/deploy/systemd.md").read_text())
            return
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir(parents=True)
        # ExecStart must name an executable that exists: point it at a copy of twistd's path.
        binary = workdir / "twistd"
        binary.write_text("#!/bin/sh\nexit 0\n")
        binary.chmod(0o755)
        for name in ("oauthgate.service", "oauthgate.socket"):
            text = (UNITS / name).read_text()
            (workdir / name).write_text(text.replace("/opt/oauthgate/bin/twistd", str(binary)))
        result = subprocess.run(
            [
                analyze,
                "verify",
                "--man=no",
                str(workdir / "oauthgate.service"),
                str(workdir / "oauthgate.socket"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        problems = [
            line
            for line in (result.stdout + result.stderr).splitlines()
            if "oauthgate" in line and "twistd" not in line
        ]
        self.assertEqual(problems, [], result.stdout + result.stderr)
