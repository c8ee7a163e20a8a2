"""Tests for oauthgate.providers.keycloak_legacy (``--provider=keycloak``), against a fake
Keycloak realm's token and userinfo endpoints."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from oauthgate.errors import ConfigError, ProviderError, TokenError
from oauthgate.interfaces import IProvider, IProviderFactory
from oauthgate.plugins import Plugins
from oauthgate.providers.keycloak_legacy import KeycloakProvider, factory
from oauthgate.session import Session
from oauthgate.testing import (
    ByHost,
    GateTestCase,
    MemoryHTTPClient,
    ProviderConformance,
    ProviderSubject,
    memory_http_client,
    provider_config,
)

REALM = "https://kc.test/realms/main/protocol/openid-connect"
CLIENT_ID = "dashboard"
CLIENT_SECRET = "kc-secret"
REDIRECT = "https://app.test/oauth2/callback"
T0 = 1_700_000_000.0
URLS = {
    "login_url": REALM + "/auth",
    "redeem_url": REALM + "/token",
    "profile_url": REALM + "/userinfo",
}


class FakeKeycloakRealm(Resource):
    """A Keycloak realm's ``/token`` and ``/userinfo`` (with a Group Membership mapper)."""

    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)
        self.codes: dict[str, str] = {"good-code": "alice"}
        self.tokens: dict[str, str] = {}
        self.users: dict[str, dict[str, Any]] = {
            "alice": {
                "sub": "f7c0a3b2-1111-4e3a-9d0e-3c3b6f1d2a01",
                "email_verified": True,
                "preferred_username": "alice",
                "email": "alice@example.com",
                "groups": ["/admins", "/staff", ""],
            },
            "bob": {
                "sub": "0b0b",
                "user": "bob-the-user",
                "email_verified": False,
                "email": "bob@example.com",
            },
        }
        self.broken = False
        self.requests: list[tuple[bytes, dict[str, list[str]], dict[bytes, Sequence[bytes]]]] = []

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        form = parse_qs(request.content.read().decode())
        self.requests.append((request.path, form, dict(request.requestHeaders.getAllRawHeaders())))
        request.setHeader(b"content-type", b"application/json")
        if self.broken:
            request.setResponseCode(503)
            return b"<html><body>Service Unavailable</body></html>"
        if request.path.endswith(b"/token"):
            user = self.codes.pop(form.get("code", [""])[0], None)
            if form.get("client_secret") != [CLIENT_SECRET]:
                request.setResponseCode(401)
                return b'{"error": "unauthorized_client", "error_description": "Invalid client"}'
            if user is None:
                request.setResponseCode(400)
                return b'{"error": "invalid_grant", "error_description": "Code not valid"}'
            token = f"kc-at-{user}"
            self.tokens[token] = user
            return json.dumps(
                {
                    "access_token": token,
                    "expires_in": 300,
                    "refresh_expires_in": 1800,
                    "refresh_token": f"kc-rt-{user}",
                    "token_type": "Bearer",
                    "scope": "api",
                }
            ).encode()
        if request.path.endswith(b"/userinfo"):
            user = self.tokens.get((request.getHeader(b"authorization") or b"").decode()[7:])
            if user is None:
                request.setResponseCode(401)
                request.setHeader(b"www-authenticate", b'Bearer error="invalid_token"')
                return b'{"error": "invalid_token"}'
            return json.dumps(self.users[user]).encode()
        request.setResponseCode(404)
        return b"{}"


def build(
    api: FakeKeycloakRealm, clock: Clock, **options: Any
) -> tuple[KeycloakProvider, MemoryHTTPClient]:
    http = memory_http_client(ByHost({"kc.test": api}), clock=clock)
    config = provider_config(
        provider="keycloak",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        **{**URLS, **options},
    )
    provider = factory.build(config, http, clock)
    assert isinstance(provider, KeycloakProvider)
    return provider, http


class KeycloakLegacyTests(GateTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.api = FakeKeycloakRealm()
        self.provider, self.http = build(self.api, self.clock)

    def login(self, code: str = "good-code", provider: KeycloakProvider | None = None) -> Session:
        provider = provider or self.provider

        async def flow() -> Session:
            session = await provider.redeem(code, None, REDIRECT, "n")
            return await provider.enrich(session)

        return self.get_success(flow())

    def test_factory_and_provider_provide_their_interfaces(self) -> None:
        self.assert_provides(IProviderFactory, factory)
        self.assert_provides(IProvider, self.provider)
        self.assertIsInstance(self.provider, KeycloakProvider)
        self.assertEqual((self.provider.id, self.provider.display_name), ("keycloak", "Keycloak"))

    def test_the_entry_point_keycloak_is_this_provider_not_keycloak_oidc(self) -> None:
        plugins = Plugins.from_entry_points()
        self.assertIs(plugins.provider_factory("keycloak"), factory)
        self.assertIsNot(plugins.provider_factory("keycloak-oidc"), factory)

    def test_the_placeholder_urls_must_be_overridden(self) -> None:
        config = provider_config(provider="keycloak", client_id=CLIENT_ID)
        e = self.assertRaises(ConfigError, factory.build, config, None, self.clock)
        self.assertEqual(
            sorted(p.split(":")[0] for p in e.problems), ["login_url", "profile_url", "redeem_url"]
        )
        self.assertIn("placeholder", str(e))
        self.assertIn("/protocol/openid-connect/userinfo", str(e))

    def test_login_url_is_the_realms_with_the_api_scope(self) -> None:
        url = self.get_success(self.provider.authorize_url("st", "n", None, None, REDIRECT, []))
        parts = urlsplit(url)
        self.assertEqual(f"https://{parts.netloc}{parts.path}", URLS["login_url"])
        self.assertEqual(parse_qs(parts.query)["scope"], ["api"])

    def test_login_gives_email_groups_username_and_subject_from_userinfo(self) -> None:
        session = self.login()
        self.assertEqual(session.email, "alice@example.com")
        self.assertEqual(session.groups, ("/admins", "/staff"))
        self.assertEqual(session.preferred_username, "alice")
        self.assertEqual(session.user, "f7c0a3b2-1111-4e3a-9d0e-3c3b6f1d2a01")
        self.assertEqual(session.expires_on, T0 + 300)

    def test_userinfo_is_asked_with_the_access_token(self) -> None:
        self.login()
        path, _, headers = self.api.requests[1]
        self.assertEqual(path, b"/realms/main/protocol/openid-connect/userinfo")
        self.assertEqual(headers[b"Authorization"], [b"Bearer kc-at-alice"])

    def test_a_user_field_wins_over_the_subject(self) -> None:
        self.api.codes["b"] = "bob"
        provider, _ = build(self.api, self.clock, insecure_oidc_allow_unverified_email=True)
        self.assertEqual(self.login("b", provider).user, "bob-the-user")

    def test_an_unverified_email_is_refused(self) -> None:
        self.api.codes["b"] = "bob"
        session = self.get_success(self.provider.redeem("b", None, REDIRECT, "n"))
        self.get_failure(self.provider.enrich(session), TokenError)

    def test_keycloak_group_admits_members_only(self) -> None:
        provider, _ = build(self.api, self.clock, keycloak_groups=("/ops", "/admins"))
        session = self.login(provider=provider)
        self.assertTrue(self.get_success(provider.authorize(session)))
        outsider = Session(email="eve@example.com", groups=("/staff", "admins"))
        self.assertFalse(self.get_success(provider.authorize(outsider)))

    def test_without_keycloak_group_everyone_passes_the_provider_check(self) -> None:
        self.assertTrue(self.get_success(self.provider.authorize(Session(email="x@y.z"))))

    def test_a_refused_code_is_a_provider_error(self) -> None:
        e = self.get_failure(self.provider.redeem("bad", None, REDIRECT, "n"), ProviderError)
        self.assertIn("invalid_grant", str(e))

    def test_an_expired_access_token_is_a_provider_error(self) -> None:
        e = self.get_failure(self.provider.enrich(Session(access_token="old")), ProviderError)
        self.assertIn("HTTP 401", str(e))

    def test_sessions_are_not_refreshed(self) -> None:
        self.assertIsNone(self.get_success(self.provider.refresh(self.login())))


class KeycloakLegacyConformanceTests(ProviderConformance, SynchronousTestCase):
    def make_subject(self, clock: Clock) -> ProviderSubject:
        api = FakeKeycloakRealm()
        provider, http = build(api, clock)

        def break_api() -> None:
            api.broken = True

        return ProviderSubject(
            provider=provider,
            http=http,
            code="good-code",
            redirect_uri=REDIRECT,
            email="alice@example.com",
            break_api=break_api,
        )
