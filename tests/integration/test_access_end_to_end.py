"""Access rules and non-browser credentials over real sockets.

``twistd -n oauthgate`` in a subprocess (see :mod:`tests.integration.test_end_to_end`),
the fake identity provider and an echo upstream on loopback ports, and API clients that
send bearer JWTs the provider signed, htpasswd credentials, or nothing.

Marked ``integration``; never skips.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, cast

import bcrypt
import pytest
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent
from twisted.web.resource import Resource
from twisted.web.server import Site

from oauthgate.testing import Browser, BrowserResponse, EchoResource, FakeIdP
from tests.integration.test_end_to_end import OAuthGateProcess

CLIENT_ID = "e2e-access-client"
CLIENT_SECRET = "e2e-access-secret"
RESOURCE = "https://api.example.test"
METADATA_URL = RESOURCE + "/.well-known/oauth-protected-resource"
JSON = {"Accept": "application/json"}
FORGED = {
    "X-Forwarded-Email": "mallory@example.com",
    "X-Forwarded-User": "mallory",
    "X-Forwarded-Groups": "admins",
    "X_Forwarded_User": "mallory",
    "X-Auth-Request-Email": "mallory@example.com",
}

pytestmark = pytest.mark.integration


def listen(site: Site) -> IListeningPort:
    """``site`` on a free loopback port."""
    listener: IListeningPort = reactor.listenTCP(
        0,
        site,  # type: ignore[arg-type]
        interface="127.0.0.1",
    )
    return listener


def port_of(listener: IListeningPort) -> int:
    return int(cast(IPv4Address, listener.getHost()).port)


def echoed_headers(response: BrowserResponse) -> dict[str, list[str]]:
    """The headers the echo upstream received, names lower-cased."""
    return {k.lower(): v for k, v in response.json()["headers"].items()}


class AccessEndToEndTests(TestCase):
    timeout = 90

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        return Deferred.fromCoroutine(self._setUp())

    async def _setUp(self) -> None:
        workdir = Path(self.mktemp()).absolute()
        workdir.mkdir(parents=True)
        idp_site = Site(Resource())
        idp_listener = listen(idp_site)
        self.addCleanup(idp_listener.stopListening)
        idp_url = f"http://127.0.0.1:{port_of(idp_listener)}"
        self.idp = FakeIdP(idp_url, reactor, clients={CLIENT_ID: CLIENT_SECRET})
        idp_site.resource = self.idp.resource()
        echo_listener = listen(Site(EchoResource()))
        self.addCleanup(echo_listener.stopListening)
        echo_url = f"http://127.0.0.1:{port_of(echo_listener)}/"

        htpasswd = workdir / "users.htpasswd"
        hashed = bcrypt.hashpw(b"carol's password", bcrypt.gensalt(rounds=4)).decode()
        htpasswd.write_text(f"carol:{hashed}\n", "utf-8")
        self.gate = OAuthGateProcess(
            [
                "--provider=oidc",
                f"--oidc-issuer-url={idp_url}",
                f"--client-id={CLIENT_ID}",
                f"--client-secret={CLIENT_SECRET}",
                f"--cookie-secret={base64.urlsafe_b64encode(os.urandom(32)).decode()}",
                "--cookie-secure=false",
                "--email-domain=example.com",
                f"--upstream={echo_url}",
                "--set-xauthrequest",
                "--skip-jwt-bearer-tokens",
                f"--protected-resource-metadata={RESOURCE}",
                "--skip-auth-route=GET=^/public/",
                "--api-route=^/api/",
                f"--htpasswd-file={htpasswd}",
                "--htpasswd-user-group=ops",
            ],
            workdir,
        )
        self.addCleanup(self.gate.stop)
        self.client = Browser.over_agent(Agent(reactor), reactor)
        await self.gate.wait_until_serving(self.client)

    def run_async(self, coro: Coroutine[Any, Any, None]) -> Deferred[None]:
        return Deferred.fromCoroutine(coro)

    async def get(self, path: str, headers: dict[str, str] | None = None) -> BrowserResponse:
        return await self.client.get(self.gate.base + path, headers=headers)

    def test_a_bearer_token_from_the_provider_reaches_the_upstream_as_its_user(
        self,
    ) -> Deferred[None]:
        async def go() -> None:
            token = self.idp.issue_id_token("alice", audience=CLIENT_ID)
            headers = {**JSON, **FORGED, "Authorization": f"Bearer {token}"}
            answer = await self.get("/api/orders?page=2", headers)
            self.assertEqual(answer.status, 200, self.gate.log())
            echoed = echoed_headers(answer)
            self.assertEqual(echoed["x-forwarded-email"], ["alice@example.com"])
            self.assertEqual(echoed["x-forwarded-user"], ["1001"])
            self.assertEqual(echoed["x-forwarded-groups"], ["admins,staff"])
            self.assertNotIn("x_forwarded_user", echoed)
            self.assertNotIn("x-auth-request-email", echoed)
            self.assertEqual(answer.json()["path"], "/api/orders")
            self.assertIsNone(answer.header("set-cookie"))

            auth = await self.get("/oauth2/auth", {"Authorization": f"Bearer {token}"})
            self.assertEqual(auth.status, 202)
            self.assertEqual(auth.header("x-auth-request-email"), "alice@example.com")
            self.assertNotIn(token.split(".")[2], self.gate.log())

        return self.run_async(go())

    def test_without_a_token_the_client_gets_401_json_with_the_rfc9728_challenge(
        self,
    ) -> Deferred[None]:
        async def go() -> None:
            for headers in (JSON, {"Accept": "*/*"}, {"Accept": "text/html"}):
                answer = await self.get("/api/orders", headers)
                self.assertEqual(answer.status, 401, headers)
                self.assertEqual(answer.header("content-type"), "application/json")
                answer.json()
                self.assertEqual(
                    answer.header("www-authenticate"),
                    f'Bearer resource_metadata="{METADATA_URL}"',
                )

            now = int(reactor.seconds())
            expired = self.idp.issue_id_token(
                "alice", audience=CLIENT_ID, iat=now - 7200, exp=now - 3600
            )
            refused = await self.get("/api/orders", {**JSON, "Authorization": f"Bearer {expired}"})
            self.assertEqual(refused.status, 401)
            challenge = refused.header("www-authenticate") or ""
            self.assertTrue(
                challenge.startswith(f'Bearer resource_metadata="{METADATA_URL}", '), challenge
            )
            self.assertIn('error="invalid_token"', challenge)
            self.assertNotIn(expired.split(".")[2], self.gate.log())

            metadata = await self.get("/.well-known/oauth-protected-resource")
            self.assertEqual(metadata.status, 200)
            document = metadata.json()
            self.assertEqual(document["resource"], RESOURCE)
            self.assertEqual(document["authorization_servers"], [self.idp.issuer])
            self.assertEqual(document["bearer_methods_supported"], ["header"])

        return self.run_async(go())

    def test_a_skipped_route_reaches_the_upstream_with_spoofed_identity_removed(
        self,
    ) -> Deferred[None]:
        async def go() -> None:
            answer = await self.get("/public/status", {**JSON, **FORGED})
            self.assertEqual(answer.status, 200, self.gate.log())
            echoed = echoed_headers(answer)
            self.assertEqual(answer.json()["path"], "/public/status")
            for name in ("x-forwarded-email", "x-forwarded-user", "x-forwarded-groups"):
                self.assertNotIn(name, echoed)
            self.assertNotIn("x_forwarded_user", echoed)
            self.assertNotIn("x-auth-request-email", echoed)
            self.assertNotIn("mallory", str(echoed))

            # Only GET is skipped, and only the path counts.
            posted = await self.client.request(
                "POST", self.gate.base + "/public/status", headers=JSON
            )
            self.assertEqual(posted.status, 401)
            for path in ("/private?/public/x", "/private%23/public/x", "/public/../private"):
                self.assertEqual((await self.get(path, JSON)).status, 401, path)

        return self.run_async(go())

    def test_htpasswd_basic_auth_is_checked_off_the_reactor_and_reaches_the_upstream(
        self,
    ) -> Deferred[None]:
        async def go() -> None:
            good = base64.b64encode(b"carol:carol's password").decode()
            answer = await self.get("/api/x", {**JSON, "Authorization": f"Basic {good}"})
            self.assertEqual(answer.status, 200, self.gate.log())
            echoed = echoed_headers(answer)
            self.assertEqual(echoed["x-forwarded-user"], ["carol"])
            self.assertEqual(echoed["x-forwarded-groups"], ["ops"])

            bad = base64.b64encode(b"carol:wrong").decode()
            refused = await self.get("/api/x", {**JSON, "Authorization": f"Basic {bad}"})
            self.assertEqual(refused.status, 401)
            self.gate.stop()  # the auth log is buffered: written every 0.5 s and at stop
            log = self.gate.log()
            self.assertNotIn("carol's password", log)
            self.assertNotIn(good, log)
            self.assertIn("carol", log)

        return self.run_async(go())
