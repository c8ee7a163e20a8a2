"""oauthgate behind a real nginx in ``auth_request`` mode, configured with the very file
docs/integrations/nginx.conf shows: the login goes through nginx, the application gets the
identity from ``auth_request_set``, a second host name shares the session through the
parent cookie domain, sign-out ends it, and a per-location group restriction gives 403.

Marked ``integration``. Never skips: without nginx on PATH the test fails.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from oauthgate.testing import Browser
from tests.integration.front_proxies import (
    DOCS,
    Backends,
    FrontProxy,
    browser_via,
    render,
)
from tests.integration.test_end_to_end import OAuthGateProcess, free_port

pytestmark = pytest.mark.integration


class NginxCase(TestCase):
    """oauthgate and nginx running the documented file ``conf``."""

    timeout = 90
    conf = "nginx.conf"
    gate_extra: tuple[str, ...] = ()

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        return Deferred.fromCoroutine(self._setUp())

    async def _setUp(self) -> None:
        nginx = shutil.which("nginx") or next(
            (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
        )
        self.assertIsNotNone(nginx, "nginx is not installed (apt-get install nginx)")
        assert nginx is not None
        workdir = Path(self.mktemp())
        (workdir / "logs").mkdir(parents=True)
        self.backends = Backends()
        self.addCleanup(self.backends.stop)
        self.gate = OAuthGateProcess(
            self.backends.gate_args(
                "--cookie-domain=.localtest",
                "--whitelist-domain=.localtest",
                "--trusted-proxy-ip=127.0.0.1",
                *self.gate_extra,
            ),
            workdir,
        )
        self.addCleanup(self.gate.stop)
        self.port = free_port()
        conf = workdir / "nginx.conf"
        conf.write_text(
            render(
                DOCS / self.conf,
                {
                    "LISTEN": f"127.0.0.1:{self.port}",
                    "OAUTHGATE": f"127.0.0.1:{self.gate.port}",
                    "APP": self.backends.app_address,
                    "HOSTS": "app1.localtest app2.localtest",
                    "CACHE": str((workdir / "cache").resolve()),
                },
            )
        )
        directives = f"daemon off; pid {workdir.resolve()}/nginx.pid; error_log stderr;"
        if os.geteuid() == 0:
            directives += " user root;"
        self.nginx = FrontProxy(
            [nginx, "-p", str(workdir.resolve()), "-c", str(conf.resolve()), "-g", directives],
            workdir,
        )
        self.addCleanup(self.nginx.stop)
        self.browser = browser_via(self.port)
        await self.gate.wait_until_serving(self.browser)
        await self.nginx.wait_until_serving(self.port)
        self.app1 = f"http://app1.localtest:{self.port}"
        self.app2 = f"http://app2.localtest:{self.port}"

    def logs(self) -> str:
        return f"--- oauthgate\n{self.gate.log()}\n--- nginx\n{self.nginx.log()}"

    async def log_in(self, browser: Browser) -> None:
        landed = await browser.get(self.app1 + "/some/page?x=1&format=json")
        self.assertEqual(landed.status, 200, self.logs())
        urls = landed.urls
        self.assertTrue(urls[1].startswith(self.backends.idp_url + "/authorize"), urls)
        self.assertTrue(urls[2].startswith(self.app1 + "/oauth2/callback"), urls)
        self.assertEqual(urls[-1], self.app1 + "/some/page?x=1&format=json")


class NginxAuthRequestTests(NginxCase):
    def test_login_identity_shared_session_and_sign_out_through_nginx(self) -> Deferred[None]:
        async def go() -> None:
            await self.log_in(self.browser)
            # The application got the identity nginx took from the auth answer.
            echo = (await self.browser.get(self.app1 + "/data?format=json")).json()
            headers = {k.lower(): v for k, v in echo["headers"].items()}
            self.assertEqual(headers["x-forwarded-email"], ["alice@example.com"])
            self.assertNotEqual(headers["x-forwarded-user"], [""])  # the subject
            self.assertIn("admins", headers["x-forwarded-groups"][0])

            # The session cookie is on the parent domain: app2 needs no login of its own.
            self.assertIsNotNone(self.browser.cookie("_oauth2_proxy", domain="localtest"))
            before = len(self.backends.idp.authorize_requests)
            other = await self.browser.get(self.app2 + "/elsewhere?format=json")
            self.assertEqual(other.status, 200, self.logs())
            self.assertEqual(other.urls, (self.app2 + "/elsewhere?format=json",))
            self.assertEqual(len(self.backends.idp.authorize_requests), before)

            # A stranger is sent to the provider, never to the application.
            stranger = browser_via(self.port)
            first = await stranger.request("GET", self.app2 + "/x", follow_redirects=False)
            self.assertEqual(first.status, 302, self.logs())
            location = first.header("location") or ""
            self.assertTrue(location.startswith(self.backends.idp_url + "/authorize"), location)

            # Sign-out clears the shared cookie: both hosts want a login again.
            # (Not followed further: the provider's auto-login would log alice in again.)
            out = await self.browser.request(
                "GET", self.app2 + "/oauth2/sign_out", follow_redirects=False
            )
            self.assertEqual(out.status, 302, self.logs())
            self.assertIsNone(self.browser.cookie("_oauth2_proxy"))
            for app in (self.app1, self.app2):
                again = await self.browser.request("GET", app + "/", follow_redirects=False)
                self.assertEqual(again.status, 302)

        return Deferred.fromCoroutine(go())

    def test_a_location_restricted_to_another_group_answers_403(self) -> Deferred[None]:
        async def go() -> None:
            await self.log_in(self.browser)
            admins = await self.browser.get(self.app1 + "/admin/panel?format=json")
            self.assertEqual(admins.status, 200, self.logs())
            self.assertEqual(
                admins.json()["headers"].get("X-Forwarded-Email"), ["alice@example.com"]
            )
            ops = await self.browser.get(self.app1 + "/ops/panel")
            self.assertEqual(ops.status, 403, self.logs())
            self.assertNotIn("x=", ops.url)

        return Deferred.fromCoroutine(go())


class NginxAuthCacheTests(NginxCase):
    """docs/integrations/nginx-cache.conf: oauthgate's answers cached per session."""

    conf = "nginx-cache.conf"

    async def _setUp(self) -> None:
        self.metrics_port = free_port()
        self.gate_extra = (
            "--email-domain=example.org",  # bob's
            f"--metrics-address=127.0.0.1:{self.metrics_port}",
        )
        await super()._setUp()

    async def auth_requests(self) -> int:
        """How many 202 answers oauthgate has given: its /oauth2/auth checks that passed
        (nothing else answers 202 here), from its Prometheus metrics."""
        page = await self.browser.get(f"http://127.0.0.1:{self.metrics_port}/metrics")
        self.assertEqual(page.status, 200, page.text)
        prefix = 'oauthgate_requests_total{code="202"'
        return sum(
            int(float(line.rsplit(" ", 1)[1]))
            for line in page.text.splitlines()
            if line.startswith(prefix)
        )

    async def email_seen_by_app(self, browser: Browser) -> str:
        answer = await browser.get(self.app1 + "/data?format=json")
        self.assertEqual(answer.status, 200, self.logs())
        self.assertEqual(answer.urls, (self.app1 + "/data?format=json",))
        emails: list[str] = answer.json()["headers"]["X-Forwarded-Email"]
        return emails[0]

    def test_cached_answers_keep_users_logged_in_and_spare_oauthgate(self) -> Deferred[None]:
        async def go() -> None:
            await self.log_in(self.browser)
            self.assertEqual(await self.email_seen_by_app(self.browser), "alice@example.com")
            before = await self.auth_requests()
            self.assertGreater(before, 0, self.logs())  # the login's own checks
            for _ in range(5):
                self.assertEqual(await self.email_seen_by_app(self.browser), "alice@example.com")
            self.assertEqual(await self.auth_requests(), before, self.logs())

        return Deferred.fromCoroutine(go())

    def test_two_users_never_share_a_cached_answer(self) -> Deferred[None]:
        async def go() -> None:
            await self.log_in(self.browser)
            self.assertEqual(await self.email_seen_by_app(self.browser), "alice@example.com")

            self.backends.idp.auto_login = "bob"
            bob = browser_via(self.port)
            landed = await bob.get(self.app1 + "/some/page?format=json")
            self.assertEqual(landed.status, 200, self.logs())
            self.assertEqual(await self.email_seen_by_app(bob), "bob@example.org")
            self.assertEqual(await self.email_seen_by_app(self.browser), "alice@example.com")

            # Without a cookie nothing comes from the cache: the provider, not alice's answer.
            stranger = browser_via(self.port)
            first = await stranger.request("GET", self.app1 + "/data", follow_redirects=False)
            self.assertEqual(first.status, 302, self.logs())
            location = first.header("location") or ""
            self.assertTrue(location.startswith(self.backends.idp_url + "/authorize"), location)
            # A forged cookie is no key to someone else's answer either.
            forged = await stranger.request(
                "GET",
                self.app1 + "/data",
                headers={"Cookie": "_oauth2_proxy=forged"},
                follow_redirects=False,
            )
            self.assertEqual(forged.status, 302, self.logs())

        return Deferred.fromCoroutine(go())


class NginxDocTests(TestCase):
    def test_the_documented_configuration_is_the_tested_file(self) -> None:
        conf = (DOCS / "nginx.conf").read_text("utf-8")
        self.assertIn("```nginx\n" + conf + "```", (DOCS / "nginx.md").read_text("utf-8"))

    def test_the_documented_cache_variant_is_the_tested_file(self) -> None:
        conf = (DOCS / "nginx-cache.conf").read_text("utf-8")
        self.assertIn("```nginx\n" + conf + "```", (DOCS / "nginx.md").read_text("utf-8"))
