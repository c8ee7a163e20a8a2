"""Shared pieces of the front-proxy tests (nginx, Caddy): the fake provider and echo
application on real ports, oauthgate as a child process, and a browser that reaches every
``*.localtest`` host name through the front proxy's port on 127.0.0.1."""

from __future__ import annotations

import base64
import os
import socket
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import deferLater
from twisted.web.client import Agent
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from oauthgate.testing import Browser, EchoResource, FakeIdP
from tests.integration.test_end_to_end import ROOT, ChildProcess

CLIENT_ID = "front-proxy-client"
CLIENT_SECRET = "front-proxy-secret"
DOCS = ROOT / "docs" / "integrations"


@implementer(IAgentEndpointFactory)
class LocalNames:
    """Connects ``*.localtest`` host names to ``127.0.0.1:port``; others as they are."""

    def __init__(self, port: int) -> None:
        self.port = port

    def endpointForURI(self, uri: object) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")  # type: ignore[attr-defined]
        if host.endswith(".localtest"):
            return TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        return TCP4ClientEndpoint(reactor, host, uri.port)  # type: ignore[attr-defined]


def browser_via(port: int) -> Browser:
    return Browser.over_agent(Agent.usingEndpointFactory(reactor, LocalNames(port)), reactor)


def render(template: Path, values: dict[str, str]) -> str:
    """The documented file with its ``{{NAME}}`` placeholders filled in."""
    text = template.read_text("utf-8")
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", value)
    assert "{{" not in text, f"unfilled placeholder in {template}"
    return text


class Backends:
    """The fake provider (auto-logging in ``alice``) and the echo application."""

    def __init__(self) -> None:
        idp_site = Site(Resource())
        self.idp_listener = reactor.listenTCP(0, idp_site, interface="127.0.0.1")  # type: ignore[arg-type]
        self.idp_url = f"http://127.0.0.1:{self.idp_listener.getHost().port}"  # type: ignore[attr-defined]
        self.idp = FakeIdP(
            self.idp_url, reactor, clients={CLIENT_ID: CLIENT_SECRET}, auto_login="alice"
        )
        idp_site.resource = self.idp.resource()
        app = Site(EchoResource(sign_out_url=None))
        self.app_listener = reactor.listenTCP(0, app, interface="127.0.0.1")  # type: ignore[arg-type]
        self.app_address = f"127.0.0.1:{self.app_listener.getHost().port}"  # type: ignore[attr-defined]

    def gate_args(self, *extra: str) -> list[str]:
        secret = base64.urlsafe_b64encode(os.urandom(32)).decode()
        return [
            "--provider=oidc",
            f"--oidc-issuer-url={self.idp_url}",
            f"--client-id={CLIENT_ID}",
            f"--client-secret={CLIENT_SECRET}",
            f"--cookie-secret={secret}",
            "--cookie-secure=false",
            "--email-domain=example.com",
            "--reverse-proxy",
            "--set-xauthrequest",
            "--skip-provider-button",
            "--upstream=static://202",
            *extra,
        ]

    async def stop(self) -> None:
        await maybeDeferred(self.idp_listener.stopListening)
        await maybeDeferred(self.app_listener.stopListening)


class FrontProxy(ChildProcess):
    """A front proxy as a child process, its output kept in ``proxy.log``."""

    async def wait_until_serving(self, port: int, timeout: float = 20.0) -> None:
        waited = 0.0
        while waited < timeout:
            if self.process.poll() is not None:
                raise AssertionError(f"exited with {self.process.returncode}:\n{self.log()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            await deferLater(reactor, 0.1, lambda: None)
            waited += 0.1
        raise AssertionError(f"not listening on {port} within {timeout}s:\n{self.log()}")
