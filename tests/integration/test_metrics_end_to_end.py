"""``twistd -n oauthgate --metrics-address=...`` serves Prometheus metrics."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent
from twisted.web.resource import Resource
from twisted.web.server import Site

from oauthgate._version import __version__
from oauthgate.testing import Browser, EchoResource, FakeIdP
from tests.integration.test_end_to_end import (
    CLIENT_ID,
    CLIENT_SECRET,
    OAuthGateProcess,
    free_port,
)

pytestmark = pytest.mark.integration

reactor: Any = global_reactor


class MetricsEndToEndTests(TestCase):
    timeout = 60

    def test_the_metrics_listener_counts_requests(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._scrape_after_a_request())

    async def _scrape_after_a_request(self) -> None:
        workdir = Path(self.mktemp())
        workdir.mkdir(parents=True)
        idp_site = Site(Resource())
        idp_listener = reactor.listenTCP(0, idp_site, interface="127.0.0.1")
        self.addCleanup(idp_listener.stopListening)
        idp_url = f"http://127.0.0.1:{idp_listener.getHost().port}"
        idp_site.resource = FakeIdP(idp_url, reactor, clients={CLIENT_ID: CLIENT_SECRET}).resource()
        echo = reactor.listenTCP(0, Site(EchoResource()), interface="127.0.0.1")
        self.addCleanup(echo.stopListening)
        metrics_port = free_port()
        gate = OAuthGateProcess(
            [
                "--provider=oidc",
                f"--oidc-issuer-url={idp_url}",
                f"--client-id={CLIENT_ID}",
                f"--client-secret={CLIENT_SECRET}",
                f"--cookie-secret={base64.urlsafe_b64encode(os.urandom(32)).decode()}",
                "--email-domain=example.com",
                f"--upstream=http://127.0.0.1:{echo.getHost().port}/",
                f"--metrics-address=127.0.0.1:{metrics_port}",
            ],
            workdir,
        )
        self.addCleanup(gate.stop)
        browser = Browser.over_agent(Agent(reactor), reactor)
        await gate.wait_until_serving(browser)
        denied = await browser.get(gate.base + "/oauth2/auth")
        self.assertEqual(denied.status, 401)
        scraped = await browser.get(f"http://127.0.0.1:{metrics_port}/metrics")
        self.assertEqual(scraped.status, 200, gate.log())
        text = scraped.text
        self.assertIn(f'oauthgate_build_info{{version="{__version__}"}} 1.0', text)
        self.assertIn('oauth2_proxy_requests_total{code="401"} 1.0', text)
        self.assertIn('oauth2_proxy_requests_total{code="200"}', text)  # the /ping probes
        self.assertIn("oauthgate_requests_in_flight 0.0", text)
