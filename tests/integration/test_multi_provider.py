"""Two identity providers in one oauthgate, over real sockets: ``twistd -n oauthgate
--alpha-config=...`` in a subprocess, two fake identity providers (other issuers, other
users) and an echo upstream on free loopback ports, and cookie-keeping browsers.

Marked ``integration``. It never skips: if oauthgate cannot start, the test fails and
shows oauthgate's output.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent
from twisted.web.resource import Resource
from twisted.web.server import Site

from oauthgate.testing import Browser, BrowserResponse, EchoResource, FakeIdP, default_users
from tests.integration.test_end_to_end import OAuthGateProcess

pytestmark = pytest.mark.integration

ALPHA = """\
upstreamConfig:
  upstreams:
  - {{id: echo, path: /, uri: "{echo}"}}
injectRequestHeaders:
- name: X-Forwarded-Email
  values: [{{claimSource: {{claim: email}}}}]
providers:
- id: corp
  provider: oidc
  name: Corp SSO
  clientID: corp-client
  clientSecret: corp-secret
  code_challenge_method: S256
  allowedGroups: [admins]
  oidcConfig: {{issuerURL: "{corp}"}}
- id: partner
  provider: oidc
  name: Partner Login
  clientID: partner-client
  clientSecret: partner-secret
  code_challenge_method: S256
  oidcConfig: {{issuerURL: "{partner}"}}
"""


def port(listener: IListeningPort) -> int:
    address = listener.getHost()
    assert isinstance(address, IPv4Address)
    return address.port


def partner_users() -> dict[str, dict[str, Any]]:
    """The partner's users: bob (another subject than at corp) and carol, unknown to corp."""
    users = default_users()
    return {
        "bob": {**users["bob"], "sub": "p-bob"},
        "carol": {
            "sub": "p-carol",
            "email": "carol@example.org",
            "email_verified": True,
            "groups": ["partners"],
        },
    }


class TwoProvidersTests(TestCase):
    timeout = 90

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        return Deferred.fromCoroutine(self._setUp())

    def idp(self, client_id: str, secret: str, **kwargs: Any) -> FakeIdP:
        """A FakeIdP on a free port; the issuer URL is known once it listens."""
        site = Site(Resource())
        listener = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(listener.stopListening)
        issuer = f"http://127.0.0.1:{port(listener)}"
        idp = FakeIdP(issuer, reactor, clients={client_id: secret}, **kwargs)
        site.resource = idp.resource()
        return idp

    async def _setUp(self) -> None:
        workdir = Path(self.mktemp())
        workdir.mkdir(parents=True)
        self.corp = self.idp("corp-client", "corp-secret", auto_login="alice")
        self.partner = self.idp(
            "partner-client", "partner-secret", users=partner_users(), auto_login="carol"
        )
        echo = reactor.listenTCP(0, Site(EchoResource()), interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(echo.stopListening)
        alpha = workdir.resolve() / "alpha.yaml"
        alpha.write_text(
            ALPHA.format(
                echo=f"http://127.0.0.1:{port(echo)}/",
                corp=self.corp.issuer,
                partner=self.partner.issuer,
            ),
            "utf-8",
        )
        secret = base64.urlsafe_b64encode(os.urandom(32)).decode()
        self.gate = OAuthGateProcess(
            [
                f"--alpha-config={alpha}",
                f"--cookie-secret={secret}",
                "--cookie-secure=false",
                "--email-domain=*",
            ],
            workdir,
        )
        self.addCleanup(self.gate.stop)
        await self.gate.wait_until_serving(self.browser())

    def browser(self) -> Browser:
        return Browser.over_agent(Agent(reactor), reactor)

    async def login(self, browser: Browser, provider: str) -> BrowserResponse:
        """Press the provider's button on the sign-in page and follow it to the end."""
        page = await browser.get(self.gate.base + "/page")
        self.assertEqual(page.status, 403, self.gate.log())
        self.assertIn(f'name="provider" value="{provider}"', page.text)
        rd = quote("/page?format=json", safe="")
        return await browser.get(f"{self.gate.base}/oauth2/start?provider={provider}&rd={rd}")

    def test_the_sign_in_page_offers_both_providers(self) -> Deferred[None]:
        async def go() -> None:
            page = await self.browser().get(self.gate.base + "/oauth2/sign_in")
            self.assertEqual(page.status, 200, self.gate.log())
            self.assertIn("Sign in with Corp SSO</button>", page.text)
            self.assertIn("Sign in with Partner Login</button>", page.text)
            choice = await self.browser().get(self.gate.base + "/oauth2/start")
            self.assertEqual(choice.status, 200)
            self.assertIn('name="provider" value="partner"', choice.text)
            unknown = await self.browser().get(self.gate.base + "/oauth2/start?provider=x")
            self.assertEqual(unknown.status, 400)

        return Deferred.fromCoroutine(go())

    def test_a_login_through_each_provider(self) -> Deferred[None]:
        async def go() -> None:
            alice = self.browser()
            landed = await self.login(alice, "corp")
            self.assertEqual(landed.status, 200, self.gate.log())
            hosts = [urlsplit(url).netloc for url in landed.urls]
            self.assertEqual(hosts[1], urlsplit(self.corp.issuer).netloc)
            self.assertEqual(landed.json()["headers"]["X-Forwarded-Email"], ["alice@example.com"])

            carol = self.browser()
            landed = await self.login(carol, "partner")
            self.assertEqual(landed.status, 200, self.gate.log())
            hosts = [urlsplit(url).netloc for url in landed.urls]
            self.assertEqual(hosts[1], urlsplit(self.partner.issuer).netloc)
            self.assertEqual(landed.json()["headers"]["X-Forwarded-Email"], ["carol@example.org"])
            self.assertEqual(len(self.corp.token_requests), 1)
            self.assertEqual(len(self.partner.token_requests), 1)

            # Each session stays with its provider, up to signing out there.
            out = await carol.get(self.gate.base + "/oauth2/sign_out?rd=%2Fbye")
            self.assertEqual(out.urls[1].split("?")[0], self.partner.issuer + "/end_session")
            self.assertEqual(out.urls[-1], self.gate.base + "/bye")
            self.assertEqual(self.corp.end_session_requests, [])
            self.assertEqual((await alice.get(self.gate.base + "/oauth2/auth")).status, 202)
            self.assertEqual((await carol.get(self.gate.base + "/oauth2/auth")).status, 401)

        return Deferred.fromCoroutine(go())

    def test_a_per_provider_rule_refuses_only_where_it_applies(self) -> Deferred[None]:
        """corp admits admins only; bob (staff) is refused there, not at the partner."""

        async def go() -> None:
            self.corp.auto_login = "bob"
            self.partner.auto_login = "bob"
            browser = self.browser()
            refused = await self.login(browser, "corp")
            self.assertEqual(refused.status, 403, self.gate.log())
            self.assertIn("allowed groups", refused.text)
            self.assertIsNone(browser.cookie("_oauth2_proxy"))
            allowed = await self.login(browser, "partner")
            self.assertEqual(allowed.status, 200, self.gate.log())
            self.assertEqual(allowed.json()["headers"]["X-Forwarded-Email"], ["bob@example.org"])

        return Deferred.fromCoroutine(go())
