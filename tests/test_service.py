"""Service assembly: the components a configuration names, and where the service listens."""

from __future__ import annotations

import base64
from typing import Any

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.testing import MemoryReactorClock

from oauthgate.config.options import Config
from oauthgate.errors import PluginError
from oauthgate.interfaces import IAuthorizer, IProvider, ISessionStore, IUpstream
from oauthgate.plugins import Plugins
from oauthgate.service import build_components, build_service
from oauthgate.testing import GateTestCase
from oauthgate.web.gate import Gate

COOKIE_SECRET = base64.urlsafe_b64encode(bytes(range(32))).decode("ascii")


def config(**changes: Any) -> Config:
    options: dict[str, Any] = {
        "provider": "oidc",
        "oidc_issuer_url": "https://idp.test",
        "client_id": "app",
        "client_secret": "app-secret",
        "cookie_secret": COOKIE_SECRET,
        "email_domains": ("example.com",),
        "upstreams": ("http://upstream.test/",),
        "http_address": "127.0.0.1:4180",
    }
    options.update(changes)
    return attrs.evolve(Config(), **options)


def listeners(service: MultiService) -> list[StreamServerEndpointService]:
    return [s for s in service if isinstance(s, StreamServerEndpointService)]


class BuildServiceTests(GateTestCase):
    def start(self, cfg: Config) -> MemoryReactorClock:
        """Build and start the service on a memory reactor; stopped at test end."""
        reactor = MemoryReactorClock()
        service = build_service(cfg, reactor=reactor, plugins=Plugins.from_entry_points())
        self.assertIsInstance(service, MultiService)
        # Checked before starting, so a listener on the global reactor never binds a port.
        for listener in listeners(service):
            self.assertIs(
                getattr(listener.endpoint, "_reactor", None),
                reactor,
                f"{listener.endpoint!r} listens on another reactor than the one given",
            )
        service.startService()
        self.addCleanup(service.stopService)
        return reactor

    def test_the_service_listens_on_the_configured_address(self) -> None:
        reactor = self.start(config())
        self.assertEqual([(p, i) for p, _, _, i in reactor.tcpServers], [(4180, "127.0.0.1")])

    def test_demo_mode_also_serves_the_idp_and_the_echo_upstream(self) -> None:
        reactor = self.start(
            config(demo=True, oidc_issuer_url="http://127.0.0.1:4181", cookie_secure=False)
        )
        self.assertEqual(
            sorted((p, i) for p, _, _, i in reactor.tcpServers),
            [(4180, "127.0.0.1"), (4181, "127.0.0.1"), (4182, "127.0.0.1")],
        )


class BuildComponentsTests(GateTestCase):
    def test_an_unknown_provider_is_a_plugin_error_naming_it(self) -> None:
        with self.assertRaises(PluginError) as raised:
            build_components(
                config(provider="no-such-idp"),
                reactor=MemoryReactorClock(),
                plugins=Plugins.from_entry_points(),
            )
        self.assertIn("no-such-idp", str(raised.exception))

    def test_every_component_provides_its_interface(self) -> None:
        components = build_components(
            config(allowed_groups=("admins",), upstreams=("http://a.test/", "http://b.test/b/")),
            reactor=MemoryReactorClock(),
            plugins=Plugins.from_entry_points(),
        )
        self.assert_provides(IProvider, components.provider)
        self.assert_provides(ISessionStore, components.store)
        self.assertEqual(len(components.authorizers), 2)
        for authorizer in components.authorizers:
            self.assert_provides(IAuthorizer, authorizer)
        self.assertEqual(len(components.upstreams), 2)
        for upstream in components.upstreams:
            self.assert_provides(IUpstream, upstream)
        self.assertIsInstance(components.gate, Gate)

    def test_upstreams_are_tried_longest_path_first(self) -> None:
        components = build_components(
            config(upstreams=("http://a.test/", "http://b.test/b/")),
            reactor=MemoryReactorClock(),
            plugins=Plugins.from_entry_points(),
        )
        self.assertEqual([u.path for u in components.gate.upstreams], ["/b/", "/"])
