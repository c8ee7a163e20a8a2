"""Tests for oauthgate.providers.adfs: OpenID Connect against a fake ADFS farm."""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from oauthgate.config.options import Config
from oauthgate.errors import ProviderError, RefreshError, TokenError
from oauthgate.interfaces import IProvider
from oauthgate.plugins import Plugins
from oauthgate.providers.adfs import AdfsProvider, adfs_scope, factory
from oauthgate.testing import (
    ByHost,
    ProviderConformance,
    ProviderSubject,
    memory_http_client,
    provider_config,
)
from oauthgate.testing.conformance import NONCE as CONFORMANCE_NONCE
from tests.providers.fakes import (
    OIDC_NONCE,
    REDIRECT,
    T0,
    FakeTokenServer,
    FlushingTestCase,
    started_clock,
    subject,
)

T = TypeVar("T")

ISSUER = "https://adfs.test/adfs"
CLIENT_ID = "7d2f6c1e-adfs-client"
CLIENT_SECRET = "adfs-secret"


def adfs_server(clock: Clock) -> FakeTokenServer:
    """An ADFS farm's OpenID Connect endpoints, as ADFS 2016+ publishes them."""
    server = FakeTokenServer(
        clock,
        issuer=ISSUER,
        client_id=CLIENT_ID,
        routes={
            "/adfs/.well-known/openid-configuration": "discovery",
            "/adfs/discovery/keys": "jwks",
            "/adfs/oauth2/token": "token",
        },
        discovery={
            "issuer": ISSUER,
            "authorization_endpoint": ISSUER + "/oauth2/authorize/",
            "token_endpoint": ISSUER + "/oauth2/token/",
            "jwks_uri": ISSUER + "/discovery/keys",
            "userinfo_endpoint": ISSUER + "/userinfo",
            "end_session_endpoint": ISSUER + "/oauth2/logout",
        },
    )
    server.routes["/adfs/oauth2/token/"] = "token"
    server.claims = {
        "sub": "adfs-sub-alice",
        "upn": "alice@corp.example",
        "unique_name": "CORP\\alice",
        "preferred_username": "alice",
        "groups": ["CORP\\Admins"],
    }
    return server


def adfs_config(**changes: Any) -> Config:
    options: dict[str, Any] = {
        "provider": "adfs",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "oidc_issuer_url": ISSUER,
    }
    return provider_config(**{**options, **changes})


class AdfsTests(FlushingTestCase):
    def setUp(self) -> None:
        self.clock = started_clock()
        self.server = adfs_server(self.clock)
        self.http = memory_http_client(ByHost({"adfs.test": self.server}), clock=self.clock)

    def provider(self, **changes: Any) -> AdfsProvider:
        built = factory.build(adfs_config(**changes), self.http, self.clock)
        assert isinstance(built, AdfsProvider)
        self.assertTrue(verifyObject(IProvider, built))
        return built

    def login_params(self, provider: AdfsProvider, **extra: str) -> dict[str, list[str]]:
        url = self.get(
            provider.authorize_url("st-1", OIDC_NONCE, None, None, REDIRECT, list(extra.items()))
        )
        self.assertTrue(url.startswith(ISSUER + "/oauth2/authorize/?"), url)
        return parse_qs(urlsplit(url).query)

    def test_the_entry_point_finds_the_factory(self) -> None:
        self.assertIs(Plugins.from_entry_points().provider_factory("adfs"), factory)
        self.assertEqual(self.provider().display_name, "ADFS")

    def test_login_url_without_a_resource(self) -> None:
        params = self.login_params(self.provider())
        self.assertEqual(params["scope"], ["openid email profile"])
        self.assertNotIn("resource", params)
        self.assertEqual(params["state"], ["st-1"])

    def test_a_resource_prefixes_the_scope_and_is_sent(self) -> None:
        params = self.login_params(self.provider(resource="https://api.corp.example"))
        self.assertEqual(params["scope"], ["https://api.corp.example/openid email profile"])
        self.assertEqual(params["resource"], ["https://api.corp.example"])

    def test_the_scope_is_prefixed_only_once(self) -> None:
        self.assertEqual(adfs_scope("urn:api/openid", "urn:api/"), "urn:api/openid")
        self.assertEqual(adfs_scope("openid", ""), "openid")

    def test_the_state_is_escaped_once(self) -> None:
        """oauthgate's state is URL-safe: ADFS gets it, and sends it back, unchanged."""
        url = self.get(self.provider().authorize_url("a-b_c", OIDC_NONCE, None, None, REDIRECT, []))
        self.assertIn("state=a-b_c&", url)

    def test_login_takes_the_upn_as_email_when_there_is_no_email(self) -> None:
        session = self.get(self.login(self.provider()))
        self.assertEqual(session.user, "adfs-sub-alice")
        self.assertEqual(session.email, "alice@corp.example")
        self.assertEqual(session.groups, ("CORP\\Admins",))
        self.assertEqual(session.provider, "adfs")

    def test_an_email_claim_wins_over_the_upn(self) -> None:
        self.server.claims["email"] = "alice.smith@corp.example"
        self.assertEqual(self.get(self.login(self.provider())).email, "alice.smith@corp.example")

    def test_the_resource_is_sent_when_redeeming(self) -> None:
        self.get(self.login(self.provider(resource="https://api.corp.example")))
        self.assertEqual(self.server.token_forms[0]["resource"], "https://api.corp.example")

    def test_an_id_token_from_another_issuer_is_refused(self) -> None:
        self.server.claims["iss"] = "http://adfs.test/adfs/services/trust"
        self.fail_with(self.login(self.provider()), TokenError)

    def test_without_email_or_upn_the_login_fails(self) -> None:
        del self.server.claims["upn"]
        self.fail_with(self.login(self.provider()), ProviderError)

    def test_refresh_gives_new_tokens_for_the_same_user(self) -> None:
        provider = self.provider()
        session = self.get(self.login(provider))
        self.clock.advance(30)
        refreshed = self.get(provider.refresh(session))
        assert refreshed is not None
        self.assertEqual(refreshed.email, "alice@corp.example")
        self.assertEqual(refreshed.created_at, T0 + 30)
        self.assertNotEqual(refreshed.access_token, session.access_token)

    def test_a_revoked_grant_ends_the_session(self) -> None:
        provider = self.provider()
        session = self.get(self.login(provider))
        self.server.refresh_error = "invalid_grant"
        error = self.fail_with(provider.refresh(session), RefreshError)
        assert isinstance(error, RefreshError)
        self.assertTrue(error.fatal)

    def test_adfs_down_is_a_provider_error(self) -> None:
        self.server.broken = True
        self.fail_with(self.login(self.provider()), ProviderError)


class AdfsConformanceTests(ProviderConformance, SynchronousTestCase):
    def make_subject(self, clock: Clock) -> ProviderSubject:
        server = adfs_server(clock)
        http = memory_http_client(ByHost({"adfs.test": server}), clock=clock)
        return subject(
            factory.build(adfs_config(), http, clock),
            http,
            [server],
            "alice@corp.example",
            code=server.issue_code(CONFORMANCE_NONCE),
            refreshes=True,
        )
