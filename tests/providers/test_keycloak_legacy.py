"""Tests for oauthgate.providers.keycloak_legacy (``--provider=keycloak``), against a fake
Keycloak realm's token and userinfo endpoints."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request

from oauthgate.errors import ConfigError, TokenError
from oauthgate.plugins import Plugins
from oauthgate.providers.keycloak_legacy import KeycloakProvider, factory
from oauthgate.session import Session
from oauthgate.testing import (
    GateTestCase,
    ProviderConformance,
    ProviderSubject,
    provider_config,
)
from tests.providers.fakes import (
    REDIRECT,
    T0,
    Call,
    FakeOAuth2API,
    PlainProvider,
    PlainProviderTests,
    code_error,
    enrich_error,
    token_error,
)

REALM = "https://kc.test/realms/main/protocol/openid-connect"
CLIENT_ID = "dashboard"
CLIENT_SECRET = "kc-secret"
URLS = {
    "login_url": REALM + "/auth",
    "redeem_url": REALM + "/token",
    "profile_url": REALM + "/userinfo",
}


class FakeKeycloakRealm(FakeOAuth2API):
    """A Keycloak realm's ``/token`` and ``/userinfo`` (with a Group Membership mapper)."""

    outage_body = b"<html><body>Service Unavailable</body></html>"

    def __init__(self) -> None:
        super().__init__()
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

    def answer(self, request: Request, call: Call) -> bytes:
        if call.path.endswith(b"/token"):
            user = self.take_code(call)
            if call.form.get("client_secret") != [CLIENT_SECRET]:
                return self.fail(
                    request,
                    401,
                    b'{"error": "unauthorized_client", "error_description": "Invalid client"}',
                )
            if user is None:
                return self.fail(
                    request,
                    400,
                    b'{"error": "invalid_grant", "error_description": "Code not valid"}',
                )
            token = self.issue(f"kc-at-{user}", user)
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
        if call.path.endswith(b"/userinfo"):
            user = self.bearer_user(call)
            if user is None:
                request.setHeader(b"www-authenticate", b'Bearer error="invalid_token"')
                return self.fail(request, 401, b'{"error": "invalid_token"}')
            return json.dumps(self.users[user]).encode()
        return super().answer(request, call)


PLAIN = PlainProvider(
    kind=KeycloakProvider,
    factory=factory,
    name="keycloak",
    display_name="Keycloak",
    fake=FakeKeycloakRealm,
    hosts=("kc.test",),
    config={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **URLS},
)


class KeycloakLegacyTests(PlainProviderTests[KeycloakProvider, FakeKeycloakRealm], GateTestCase):
    plain = PLAIN

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
        call = self.api.requests[1]
        self.assertEqual(call.path, b"/realms/main/protocol/openid-connect/userinfo")
        self.assertEqual(call.headers[b"Authorization"], [b"Bearer kc-at-alice"])

    def test_a_user_field_wins_over_the_subject(self) -> None:
        self.api.codes["b"] = "bob"
        provider = self.build(insecure_oidc_allow_unverified_email=True)
        self.assertEqual(self.login("b", provider).user, "bob-the-user")

    def test_an_unverified_email_is_refused(self) -> None:
        self.api.codes["b"] = "bob"
        enrich_error(self, self.provider, "b", TokenError)

    def test_keycloak_group_admits_members_only(self) -> None:
        provider = self.build(keycloak_groups=("/ops", "/admins"))
        session = self.login(provider=provider)
        self.assertTrue(self.get_success(provider.authorize(session)))
        outsider = Session(email="eve@example.com", groups=("/staff", "admins"))
        self.assertFalse(self.get_success(provider.authorize(outsider)))

    def test_without_keycloak_group_everyone_passes_the_provider_check(self) -> None:
        self.assertTrue(self.get_success(self.provider.authorize(Session(email="x@y.z"))))

    def test_a_refused_code_is_a_provider_error(self) -> None:
        self.assertIn("invalid_grant", str(code_error(self, self.provider, "bad")))

    def test_an_expired_access_token_is_a_provider_error(self) -> None:
        self.assertIn("HTTP 401", str(token_error(self, self.provider, "old")))

    def test_sessions_are_not_refreshed(self) -> None:
        self.assertIsNone(self.get_success(self.provider.refresh(self.login())))


class KeycloakLegacyConformanceTests(ProviderConformance, SynchronousTestCase):
    def make_subject(self, clock: Clock) -> ProviderSubject:
        return PLAIN.subject(clock)
