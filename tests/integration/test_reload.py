"""SIGHUP to ``twistd -n oauthgate``: the authenticated-emails file is read again at once.

The file is changed in place with its size and modification time kept, so the 5 s poll
cannot see the change: only the SIGHUP reload lets bob in.
"""

from __future__ import annotations

import base64
import os
import signal
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

from oauthgate.testing import Browser, BrowserResponse, EchoResource, FakeIdP
from tests.integration.test_end_to_end import CLIENT_ID, CLIENT_SECRET, OAuthGateProcess

pytestmark = pytest.mark.integration

BEFORE = "carol@example.org\n"
AFTER = "bob@example.org\n#\n"  # the same size as BEFORE


class SighupReloadTests(TestCase):
    timeout = 60

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        return Deferred.fromCoroutine(self._setUp())

    async def _setUp(self) -> None:
        workdir = Path(self.mktemp()).absolute()
        workdir.mkdir(parents=True)
        idp_site = Site(Resource())
        idp_listener: Any = reactor.listenTCP(0, idp_site, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(idp_listener.stopListening)
        idp_url = f"http://127.0.0.1:{idp_listener.getHost().port}"
        self.idp = FakeIdP(idp_url, reactor, clients={CLIENT_ID: CLIENT_SECRET}, auto_login="bob")
        idp_site.resource = self.idp.resource()
        echo_listener: Any = reactor.listenTCP(
            0,
            Site(EchoResource()),  # type: ignore[arg-type]
            interface="127.0.0.1",
        )
        self.addCleanup(echo_listener.stopListening)
        self.emails = workdir / "emails.txt"
        self.emails.write_text(BEFORE)
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
                f"--authenticated-emails-file={self.emails}",
                f"--upstream=http://127.0.0.1:{echo_listener.getHost().port}/",
            ],
            workdir,
        )
        self.addCleanup(self.gate.stop)
        await self.gate.wait_until_serving(Browser.over_agent(Agent(reactor), reactor))

    async def login(self) -> BrowserResponse:
        """A login as bob (bob@example.org) in a new browser; the page it lands on."""
        browser = Browser.over_agent(Agent(reactor), reactor)
        return await browser.get(f"{self.gate.base}/oauth2/start?rd={quote('/page', safe='')}")

    def rewrite_emails_unnoticed(self, text: str) -> None:
        """Replace the file's text in place, keeping its size and modification time."""
        before = os.stat(self.emails)
        self.assertEqual(len(text.encode()), before.st_size)
        self.emails.write_text(text)
        os.utime(self.emails, ns=(before.st_atime_ns, before.st_mtime_ns))

    def test_sighup_lets_a_newly_listed_email_in_at_once(self) -> Deferred[None]:
        async def go() -> None:
            denied = await self.login()
            self.assertEqual(denied.status, 403, self.gate.log())
            self.assertIn("bob@example.org", denied.text)

            self.rewrite_emails_unnoticed(AFTER)
            os.kill(self.gate.process.pid, signal.SIGHUP)
            for _ in range(100):
                if "SIGHUP: reloading" in self.gate.log():
                    break
                await deferLater(reactor, 0.05, lambda: None)
            self.assertIn("SIGHUP: reloading", self.gate.log())

            allowed = await self.login()
            self.assertEqual(allowed.status, 200, self.gate.log())
            self.assertIn("bob@example.org", allowed.text)
            self.assertIsNone(self.gate.process.poll(), "SIGHUP must not stop oauthgate")

        return Deferred.fromCoroutine(go())
