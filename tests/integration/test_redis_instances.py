"""Two ``twistd -n oauthgate`` processes sharing one Redis: a login through one is
recognised by the other, a sign-out through the second ends the session on the first
(for every copy of the cookie), and both report Redis outages on ``/ready`` and answer
503 (never a logout) until Redis is back.

Marked ``integration``; never skipped: without redis-server this test fails.
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent
from twisted.web.resource import Resource
from twisted.web.server import Site

from oauthgate.testing import Browser, EchoResource, FakeIdP
from tests.integration.redis_servers import RedisServer
from tests.integration.test_end_to_end import OAuthGateProcess

pytestmark = pytest.mark.integration

CLIENT_ID = "redis-client"
CLIENT_SECRET = "redis-client-secret"
COOKIE = "_oauth2_proxy"


class SharedRedisInstancesTests(TestCase):
    timeout = 120

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._setUp())

    async def _setUp(self) -> None:
        workdir = Path(self.mktemp())
        workdir.mkdir(parents=True)
        self.redis = RedisServer(workdir).start()
        self.addCleanup(self.redis.stop)
        idp_site = Site(Resource())
        idp_listener = reactor.listenTCP(0, idp_site, interface="127.0.0.1")
        self.addCleanup(idp_listener.stopListening)
        idp_url = f"http://127.0.0.1:{idp_listener.getHost().port}"
        self.idp = FakeIdP(idp_url, reactor, clients={CLIENT_ID: CLIENT_SECRET}, auto_login="alice")
        idp_site.resource = self.idp.resource()
        echo_listener = reactor.listenTCP(0, Site(EchoResource()), interface="127.0.0.1")
        self.addCleanup(echo_listener.stopListening)
        echo_url = f"http://127.0.0.1:{echo_listener.getHost().port}/"

        secret = base64.urlsafe_b64encode(os.urandom(32)).decode()
        args = [
            "--provider=oidc",
            f"--oidc-issuer-url={idp_url}",
            f"--client-id={CLIENT_ID}",
            f"--client-secret={CLIENT_SECRET}",
            f"--cookie-secret={secret}",
            "--cookie-secure=false",
            "--email-domain=example.com",
            f"--upstream={echo_url}",
            "--session-store-type=redis",
            f"--redis-connection-url={self.redis.url}/0",
        ]
        self.gates = []
        for name in ("one", "two"):
            directory = workdir / name
            directory.mkdir()
            gate = OAuthGateProcess(args, directory)
            self.addCleanup(gate.stop)
            self.gates.append(gate)
        self.browser = Browser.over_agent(Agent(reactor), reactor)
        for gate in self.gates:
            await gate.wait_until_serving(self.browser)

    async def status(self, url: str, cookie: str | None = None) -> int:
        client = Browser.over_agent(Agent(reactor), reactor)
        headers = {"Cookie": f"{COOKIE}={cookie}"} if cookie else None
        return (await client.get(url, headers=headers)).status

    async def eventually(self, url: str, expected: int, what: str) -> float:
        started = time.monotonic()
        while time.monotonic() - started < 20:
            if await self.status(url) == expected:
                return time.monotonic() - started
            await deferLater(reactor, 0.1, lambda: None)
        raise AssertionError(f"{what}: {url} did not answer {expected} within 20 s")

    def logs(self) -> str:
        return "\n".join(gate.log() for gate in self.gates)

    def test_login_on_one_sign_out_on_the_other(self) -> Deferred[None]:
        async def go() -> None:
            one, two = (gate.base for gate in self.gates)
            landed = await self.browser.get(f"{one}/oauth2/start?rd=%2Fpage")
            self.assertEqual(landed.status, 200, self.logs())
            self.assertEqual(landed.url, one + "/page")
            value = self.browser.cookie(COOKIE)
            assert value is not None
            # The cookie is a small sealed ticket; the session is in Redis.
            self.assertLess(len(value), 200)
            keys = self.redis.cli("KEYS", "*").split()
            self.assertEqual(len(keys), 1)
            self.assertTrue(keys[0].startswith(f"{COOKIE}-"))

            # Recognised by the other instance (cookies do not depend on the port).
            self.assertEqual((await self.browser.get(f"{two}/oauth2/auth")).status, 202)
            info = await self.browser.get(f"{two}/oauth2/userinfo")
            self.assertEqual(info.json()["email"], "alice@example.com")
            # A copy of the cookie works too, on both, until...
            self.assertEqual(await self.status(f"{one}/oauth2/auth", value), 202)

            # ...the user signs out through the second instance:
            out = await self.browser.get(f"{two}/oauth2/sign_out")
            self.assertEqual(out.urls[-1], two + "/")
            self.assertEqual(self.redis.cli("KEYS", "*").strip(), "")
            # the first instance no longer accepts the (stolen) copy of the cookie.
            self.assertEqual(await self.status(f"{one}/oauth2/auth", value), 401)
            self.assertEqual(await self.status(f"{two}/oauth2/auth", value), 401)
            self.assertNotIn(value, self.logs())

        return Deferred.fromCoroutine(go())

    def test_an_outage_is_a_503_and_ready_follows_redis(self) -> Deferred[None]:
        async def go() -> None:
            one, two = (gate.base for gate in self.gates)
            await self.browser.get(f"{one}/oauth2/start?rd=%2F")
            value = self.browser.cookie(COOKIE)
            assert value is not None
            for base in (one, two):
                self.assertEqual(await self.status(f"{base}/ready"), 200)

            self.redis.kill()
            for base in (one, two):
                self.assertEqual(await self.status(f"{base}/ready"), 503)
            page = await self.browser.get(f"{one}/page")
            self.assertEqual(page.status, 503, page.text)
            self.assertIn("try again", page.text.lower())
            # Not a logout: the browser keeps its cookie.
            self.assertEqual(self.browser.cookie(COOKIE), value)

            self.redis.start()
            took = await self.eventually(f"{one}/ready", 200, "after Redis came back")
            await self.eventually(f"{two}/ready", 200, "after Redis came back")
            print(f"\n/ready back to 200 {took:.2f}s after redis-server restarted")
            # Redis kept nothing (no persistence): a new login works on both.
            await self.browser.get(f"{two}/oauth2/start?rd=%2F")
            self.assertEqual((await self.browser.get(f"{one}/oauth2/auth")).status, 202)
            self.assertNotIn("Traceback", self.logs())

        return Deferred.fromCoroutine(go())
