"""A whole login over real sockets: ``twistd -n oauthgate`` in a subprocess, the fake
identity provider and an echo upstream on free loopback ports, and a cookie-keeping
browser that walks GET / -> sign-in -> start -> provider -> callback -> /.

Marked ``integration``. It never skips: if oauthgate cannot start, the test fails and
shows oauthgate's output.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent
from twisted.web.resource import Resource
from twisted.web.server import Site

from oauthgate.testing import Browser, EchoResource, FakeIdP

ROOT = Path(__file__).resolve().parents[2]
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
CLIENT_ID = "e2e-client"
CLIENT_SECRET = "e2e-client-secret"
_SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    what: str, check: Callable[[], Any], process: ChildProcess | None = None, timeout: float = 10.0
) -> Any:
    """Poll ``check`` (an OSError counts as false) until it returns something true; fail
    after ``timeout`` or once ``process`` has exited, with its output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.process.poll() is not None:
            raise AssertionError(f"exited with {process.process.returncode}:\n{process.log()}")
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.05)
    output = f":\n{process.log()}" if process is not None else ""
    raise AssertionError(f"{what} not within {timeout}s{output}")


class ChildProcess:
    """A child process, its output kept in ``workdir/NAME.log``; ``stop`` sends SIGTERM
    (SIGKILL after 10 s)."""

    def __init__(
        self,
        command: list[str],
        workdir: Path,
        env: dict[str, str] | None = None,
        name: str = "proxy",
    ) -> None:
        self.output = workdir / f"{name}.log"
        self._out = open(self.output, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=self._out, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        return self.output.read_text("utf-8", "replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._out.close()


class OAuthGateProcess(ChildProcess):
    """``twistd -n oauthgate ...`` as a child process, its output kept in a file.

    It never inherits systemd's ``$NOTIFY_SOCKET``/``$WATCHDOG_*``; ``env`` adds to (or
    overrides) the rest of the environment."""

    def __init__(self, args: list[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        environ = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_VARIABLES}
        environ.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **(env or {}))
        command = [
            sys.executable,
            "-c",
            TWISTD,
            "-n",
            "--pidfile=",
            "oauthgate",
            f"--http-address=127.0.0.1:{self.port}",
            *args,
        ]
        super().__init__(command, workdir, environ, name="oauthgate")

    async def wait_until_serving(self, browser: Browser, timeout: float = 20.0) -> None:
        waited = 0.0
        while waited < timeout:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"oauthgate exited with {self.process.returncode}:\n{self.log()}"
                )
            try:
                response = await browser.get(self.base + "/ping")
                if response.status == 200:
                    return
            except Exception:
                pass
            await deferLater(reactor, 0.1, lambda: None)
            waited += 0.1
        raise AssertionError(f"oauthgate did not answer /ping within {timeout}s:\n{self.log()}")


class EndToEndTests(TestCase):
    timeout = 90

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._setUp())

    async def _setUp(self) -> None:
        workdir = Path(self.mktemp())
        workdir.mkdir(parents=True)
        # The issuer URL must be known before the IdP is built: listen first, then mount it.
        idp_site = Site(Resource())
        self.idp_listener = reactor.listenTCP(0, idp_site, interface="127.0.0.1")
        idp_url = f"http://127.0.0.1:{self.idp_listener.getHost().port}"
        self.idp = FakeIdP(idp_url, reactor, clients={CLIENT_ID: CLIENT_SECRET}, auto_login="alice")
        idp_site.resource = self.idp.resource()
        self.addCleanup(self.idp_listener.stopListening)
        self.echo_listener = reactor.listenTCP(0, Site(EchoResource()), interface="127.0.0.1")
        self.addCleanup(self.echo_listener.stopListening)
        echo_url = f"http://127.0.0.1:{self.echo_listener.getHost().port}/"

        secret = base64.urlsafe_b64encode(os.urandom(32)).decode()
        self.gate = OAuthGateProcess(
            [
                "--provider=oidc",
                f"--oidc-issuer-url={idp_url}",
                f"--client-id={CLIENT_ID}",
                f"--client-secret={CLIENT_SECRET}",
                f"--cookie-secret={secret}",
                "--cookie-secure=false",
                "--email-domain=example.com",
                f"--upstream={echo_url}",
                "--code-challenge-method=S256",
                "--set-xauthrequest",
            ],
            workdir,
        )
        self.addCleanup(self.gate.stop)
        self.browser = Browser.over_agent(Agent(reactor), reactor)
        await self.gate.wait_until_serving(self.browser)

    def run_async(self, coro) -> Deferred[None]:  # type: ignore[no-untyped-def]
        return Deferred.fromCoroutine(coro)

    async def login(self, browser: Browser, path: str = "/some/page?x=1") -> object:
        base = self.gate.base
        first = await browser.get(base + path)
        self.assertEqual(first.status, 403, first.text)
        self.assertIn("Sign in with", first.text)
        self.assertIn('action="/oauth2/start"', first.text)
        self.assertIn('value="/some/page?x=1"' if path == "/some/page?x=1" else "rd", first.text)
        return await browser.get(f"{base}/oauth2/start?rd={quote(path, safe='')}")

    def test_login_reaches_the_upstream_with_identity_headers(self) -> Deferred[None]:
        async def go() -> None:
            landed = await self.login(self.browser)
            self.assertEqual(landed.status, 200, self.gate.log())
            urls = landed.urls
            self.assertTrue(urls[0].startswith(self.gate.base + "/oauth2/start"), urls)
            self.assertTrue(urls[1].startswith(self.idp.issuer + "/authorize"), urls)
            self.assertTrue(urls[2].startswith(self.gate.base + "/oauth2/callback"), urls)
            self.assertEqual(urls[-1], self.gate.base + "/some/page?x=1")
            self.assertIn("alice@example.com", landed.text)

            # The upstream saw the identity headers, not the client's forgeries, nor our cookie.
            echo = (
                await self.browser.get(
                    self.gate.base + "/api/data?format=json",
                    headers={
                        "X-Forwarded-Email": "mallory@example.com",
                        "X_Forwarded_User": "mallory",
                    },
                )
            ).json()
            headers = {k.lower(): v for k, v in echo["headers"].items()}
            self.assertEqual(headers["x-forwarded-email"], ["alice@example.com"])
            self.assertNotIn("x_forwarded_user", headers)
            self.assertIn("admins", headers["x-forwarded-groups"][0])
            self.assertNotIn("_oauth2_proxy", str(headers.get("cookie", "")))

            # PKCE was used: the provider saw a challenge.
            self.assertEqual(self.idp.authorize_requests[-1]["code_challenge_method"], "S256")

            auth = await self.browser.get(self.gate.base + "/oauth2/auth")
            self.assertEqual(auth.status, 202)
            self.assertEqual(auth.header("x-auth-request-email"), "alice@example.com")

            info = await self.browser.get(self.gate.base + "/oauth2/userinfo")
            self.assertEqual(info.json()["email"], "alice@example.com")

            stranger = Browser.over_agent(Agent(reactor), reactor)
            self.assertEqual((await stranger.get(self.gate.base + "/oauth2/auth")).status, 401)
            api = await stranger.get(
                self.gate.base + "/api/data", headers={"Accept": "application/json"}
            )
            self.assertEqual(api.status, 401)

            # Sign out: the cookie is cleared and the session no longer passes.
            out = await self.browser.get(self.gate.base + "/oauth2/sign_out")
            self.assertEqual(out.urls[-1], self.gate.base + "/")
            self.assertIsNone(self.browser.cookie("_oauth2_proxy"))
            self.assertEqual((await self.browser.get(self.gate.base + "/oauth2/auth")).status, 401)

        return self.run_async(go())

    def test_a_tampered_cookie_is_no_session(self) -> Deferred[None]:
        async def go() -> None:
            await self.login(self.browser)
            value = self.browser.cookie("_oauth2_proxy")
            self.assertIsNotNone(value)
            assert value is not None
            flipped = value[:-6] + ("A" if value[-6] != "A" else "B") + value[-5:]
            forger = Browser.over_agent(Agent(reactor), reactor)
            response = await forger.get(
                self.gate.base + "/oauth2/auth", headers={"Cookie": f"_oauth2_proxy={flipped}"}
            )
            self.assertEqual(response.status, 401)
            # ...and the process went on serving.
            self.assertEqual((await self.browser.get(self.gate.base + "/oauth2/auth")).status, 202)
            self.assertNotIn(value, self.gate.log())

        return self.run_async(go())

    def test_an_email_outside_the_domain_gets_403_saying_why(self) -> Deferred[None]:
        async def go() -> None:
            self.idp.auto_login = "bob"  # bob@example.org
            landed = await self.login(self.browser)
            self.assertEqual(landed.status, 403)
            self.assertIn("bob@example.org", landed.text)
            self.assertIn("not allowed", landed.text)
            self.assertIsNone(self.browser.cookie("_oauth2_proxy"))
            # No loop back to the login: the 403 page is where the browser stopped.
            self.assertTrue(landed.url.startswith(self.gate.base + "/oauth2/callback"))

        return self.run_async(go())


class StartupErrorTests(TestCase):
    timeout = 60

    def twistd(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``twistd -n oauthgate ARGS`` run to its end, without OAUTHGATE_/OAUTH2_PROXY_
        variables from the caller's environment."""
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("OAUTHGATE_", "OAUTH2_PROXY_"))
        }
        env["PYTHONPATH"] = str(ROOT)
        workdir = Path(self.mktemp())
        workdir.mkdir(parents=True)
        return subprocess.run(
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "oauthgate", *args],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def test_bad_configuration_exits_1_with_one_line_per_problem(self) -> None:
        result = self.twistd(
            "--provider=oidc",
            "--cookie-secret=tooshort",
            "--email-domain=example.com",
            "--upstream=not a url",
        )
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        self.assertTrue(all(line.startswith("oauthgate: ") for line in lines), lines)
        joined = "\n".join(lines)
        self.assertIn("client_id", joined)
        self.assertIn("cookie_secret", joined)
        self.assertIn("upstream", joined)
        self.assertNotIn("tooshort", joined)

    def test_a_port_in_use_exits_1_with_one_line(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            result = self.twistd(
                "--provider=oidc",
                "--oidc-issuer-url=http://127.0.0.1:9",
                "--client-id=a",
                "--client-secret=b",
                "--cookie-secret=0123456789abcdef",
                "--email-domain=example.com",
                f"--http-address=127.0.0.1:{port}",
            )
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertEqual(
            result.stderr.strip(),
            f"oauthgate: cannot listen on 127.0.0.1:{port}: Address already in use",
        )
