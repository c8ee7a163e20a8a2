"""``--standard-logging=false`` under ``twistd -n oauthgate``: the standard log (oauthgate's
own events, Twisted's and twistd's) is silenced but for errors; request and auth lines
still appear."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent

from oauthgate.testing import Browser
from tests.integration.test_end_to_end import OAuthGateProcess
from tests.integration.test_proxy import gate_config

pytestmark = pytest.mark.integration


class StandardLoggingTests(TestCase):
    timeout = 60

    async def run_gate(self, *extra: str) -> str:
        """oauthgate's whole output after serving ``GET /some/page`` and stopping."""
        workdir = Path(self.mktemp()).absolute()
        workdir.mkdir(parents=True)
        config = gate_config()
        gate = OAuthGateProcess(
            [
                "--provider=oidc",
                f"--oidc-issuer-url={config.oidc_issuer_url}",
                f"--client-id={config.client_id}",
                f"--client-secret={config.client_secret}",
                f"--cookie-secret={config.cookie_secret}",
                "--email-domain=example.com",
                "--upstream=static://200",
                "--skip-auth-route=^/some/",
                *extra,
            ],
            workdir,
        )
        self.addCleanup(gate.stop)
        browser = Browser.over_agent(Agent(reactor), reactor)
        await gate.wait_until_serving(browser)
        response = await browser.get(gate.base + "/some/page")
        self.assertEqual(response.status, 200, gate.log())
        gate.stop()  # the request lines are flushed at stop
        self.assertEqual(gate.process.returncode, 0, gate.log())
        return gate.log()

    def test_the_standard_log_is_on_by_default(self) -> Deferred[None]:
        async def go() -> None:
            output = await self.run_gate()
            self.assertIn("starting up", output)  # twistd's
            self.assertIn("Site starting", output)  # Twisted's
            self.assertIn("oauthgate is ready", output)  # oauthgate's
            self.assertIn('"/some/page"', output)  # the request line

        return Deferred.fromCoroutine(go())

    def test_standard_logging_false_leaves_only_the_request_lines(self) -> Deferred[None]:
        async def go() -> None:
            output = await self.run_gate("--standard-logging=false")
            self.assertNotIn("starting up", output)
            self.assertNotIn("Site starting", output)
            self.assertNotIn("oauthgate is ready", output)
            self.assertIn('"/some/page"', output)
            lines = [line for line in output.splitlines() if line.strip()]
            # Nothing but request and auth lines (which start with the client) and errors
            # (here the unreachable identity provider's, at times).
            others = [
                line
                for line in lines
                if not line.startswith("127.0.0.1 - ")
                and "#error]" not in line
                and "#critical]" not in line
            ]
            self.assertEqual(others, [], output)

        return Deferred.fromCoroutine(go())
