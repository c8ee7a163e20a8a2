"""oauthgate behind a real Caddy with ``forward_auth``, configured with the very file
docs/integrations/Caddyfile shows: ``/oauth2/auth`` answers a browser without a session
with a redirect to the sign-in (``--forward-auth-mode``), the login ends on the original
URL, and a forged forwarded host never becomes a redirect target.

Marked ``integration``. Never skips: without caddy on PATH the test fails.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent

from oauthgate.testing import Browser
from tests.integration.front_proxies import DOCS, Backends, FrontProxy, browser_via, render
from tests.integration.test_end_to_end import OAuthGateProcess, free_port

pytestmark = pytest.mark.integration


class CaddyForwardAuthTests(TestCase):
    timeout = 90

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        return Deferred.fromCoroutine(self._setUp())

    async def _setUp(self) -> None:
        caddy = shutil.which("caddy")
        self.assertIsNotNone(caddy, "caddy is not installed (apt-get install caddy)")
        assert caddy is not None
        workdir = Path(self.mktemp())
        (workdir / "home").mkdir(parents=True)
        self.backends = Backends()
        self.addCleanup(self.backends.stop)
        self.gate = OAuthGateProcess(
            self.backends.gate_args(
                "--cookie-domain=.localtest",
                "--whitelist-domain=.localtest:*",
                "--trusted-proxy-ip=127.0.0.1",
                "--forward-auth-mode=redirect",
            ),
            workdir,
        )
        self.addCleanup(self.gate.stop)
        self.port = free_port()
        self.app1 = f"http://app1.localtest:{self.port}"
        self.app2 = f"http://app2.localtest:{self.port}"
        conf = workdir / "Caddyfile"
        conf.write_text(
            render(
                DOCS / "Caddyfile",
                {
                    "SITES": f"{self.app1}, {self.app2}",
                    "BIND": "127.0.0.1",
                    "OAUTHGATE": f"127.0.0.1:{self.gate.port}",
                    "APP": self.backends.app_address,
                },
            )
        )
        home = str((workdir / "home").resolve())
        env = dict(os.environ, HOME=home, XDG_DATA_HOME=home, XDG_CONFIG_HOME=home)
        self.caddy = FrontProxy(
            [caddy, "run", "--config", str(conf.resolve()), "--adapter", "caddyfile"],
            workdir,
            env,
        )
        self.addCleanup(self.caddy.stop)
        self.browser = browser_via(self.port)
        await self.gate.wait_until_serving(self.browser)
        await self.caddy.wait_until_serving(self.port)

    def logs(self) -> str:
        return f"--- oauthgate\n{self.gate.log()}\n--- caddy\n{self.caddy.log()}"

    def test_login_through_caddy_ends_on_the_original_url(self) -> Deferred[None]:
        async def go() -> None:
            page = self.app1 + "/some/page?x=1&format=json"
            landed = await self.browser.get(page)
            self.assertEqual(landed.status, 200, self.logs())
            urls = landed.urls
            self.assertTrue(urls[1].startswith(self.app1 + "/oauth2/start?rd="), urls)
            self.assertEqual(parse_qs(urlsplit(urls[1]).query)["rd"], [page])
            self.assertTrue(urls[2].startswith(self.backends.idp_url + "/authorize"), urls)
            self.assertEqual(urls[-1], page)
            headers = {k.lower(): v for k, v in landed.json()["headers"].items()}
            self.assertEqual(headers.get("x-auth-request-email"), ["alice@example.com"], headers)

            forged = await self.browser.get(
                self.app1 + "/y?format=json", headers={"X-Auth-Request-Email": "eve@example.com"}
            )
            forged_headers = {k.lower(): v for k, v in forged.json()["headers"].items()}
            self.assertEqual(forged_headers["x-auth-request-email"], ["alice@example.com"])

            # The parent-domain cookie lets app2 in without another login.
            other = await self.browser.get(self.app2 + "/x?format=json")
            self.assertEqual(other.urls, (self.app2 + "/x?format=json",))

            # API clients without a session get 401, not a redirect.
            api = await browser_via(self.port).get(
                self.app1 + "/api", headers={"Accept": "application/json"}
            )
            self.assertEqual(api.status, 401, self.logs())

        return Deferred.fromCoroutine(go())

    def test_a_forged_forwarded_host_is_never_a_redirect_target(self) -> Deferred[None]:
        async def go() -> None:
            # Through Caddy: it sets X-Forwarded-Host itself.
            forged = await browser_via(self.port).request(
                "GET",
                self.app1 + "/p",
                headers={"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"},
                follow_redirects=False,
            )
            self.assertEqual(forged.status, 302, self.logs())
            self.assertNotIn("evil", forged.header("location") or "")
            # Straight from a trusted peer: a host outside --whitelist-domain gets 401.
            direct = Browser.over_agent(Agent(reactor), reactor)
            answer = await direct.request(
                "GET",
                self.gate.base + "/oauth2/auth",
                headers={
                    "X-Forwarded-Method": "GET",
                    "X-Forwarded-Proto": "https",
                    "X-Forwarded-Host": "evil.example",
                    "X-Forwarded-Uri": "/p",
                },
                follow_redirects=False,
            )
            self.assertEqual(answer.status, 401, self.gate.log())
            self.assertIsNone(answer.header("location"))

        return Deferred.fromCoroutine(go())


class CaddyDocTests(TestCase):
    def test_the_documented_caddyfile_is_the_tested_file(self) -> None:
        conf = (DOCS / "Caddyfile").read_text("utf-8")
        self.assertIn("```caddy\n" + conf + "```", (DOCS / "caddy.md").read_text("utf-8"))
