"""Tests for oauthgate.providers.digitalocean, against a fake of DigitalOcean's OAuth and API."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request

from oauthgate.errors import ProviderError, TokenError
from oauthgate.providers.digitalocean import DigitalOceanProvider, factory
from oauthgate.testing import GateTestCase, ProviderConformance, ProviderSubject
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

CLIENT_ID = "do-client"
CLIENT_SECRET = "do-secret"


def account(email: str, verified: bool = True) -> dict[str, Any]:
    return {
        "droplet_limit": 25,
        "floating_ip_limit": 5,
        "email": email,
        "uuid": "b6fr89dbf6d9156cace5f3c78dc9851d957381ef",
        "email_verified": verified,
        "status": "active",
        "status_message": "",
    }


class FakeDigitalOcean(FakeOAuth2API):
    """cloud.digitalocean.com's token endpoint and api.digitalocean.com's ``/v2/account``."""

    outage_body = b'{"id": "service_unavailable", "message": "try again"}'

    def __init__(self) -> None:
        super().__init__()
        self.codes = {"good-code": "sammy"}
        self.accounts: dict[str, dict[str, Any]] = {
            "sammy": account("sammy@example.com"),
            "newbie": account("newbie@example.com", verified=False),
        }
        self.account_answer: bytes | None = None  # served by /v2/account instead, when set

    def answer(self, request: Request, call: Call) -> bytes:
        if call.path == b"/v1/oauth/token":
            return self._token(request, call)
        if call.path == b"/v2/account":
            user = self.bearer_user(call)
            if user is None:
                return self.fail(
                    request,
                    401,
                    b'{"id": "Unauthorized", "message": "Unable to authenticate you."}',
                )
            if self.account_answer is not None:
                return self.account_answer
            return json.dumps({"account": self.accounts[user]}).encode()
        missing = {
            "id": "not_found",
            "message": "The resource you were accessing could not be found.",
        }
        return self.fail(request, 404, json.dumps(missing).encode())

    def _token(self, request: Request, call: Call) -> bytes:
        form = call.form
        user = self.take_code(call)
        if (
            form.get("client_id") != [CLIENT_ID]
            or form.get("client_secret") != [CLIENT_SECRET]
            or form.get("redirect_uri") != [REDIRECT]
            or user is None
        ):
            return self.fail(
                request,
                401,
                b'{"error": "invalid_grant", "error_description": "The provided grant is invalid"}',
            )
        token = self.issue(f"do-at-{user}-{len(self.tokens)}", user)
        info = {"name": user, "email": self.accounts[user]["email"], "uuid": "e028b1b9"}
        return json.dumps(
            {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": 2592000,
                "refresh_token": f"do-rt-{user}",
                "scope": "read",
                "info": info,
            }
        ).encode()


PLAIN = PlainProvider(
    kind=DigitalOceanProvider,
    factory=factory,
    name="digitalocean",
    display_name="DigitalOcean",
    fake=FakeDigitalOcean,
    hosts=("cloud.digitalocean.com", "api.digitalocean.com"),
    config={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
    email="sammy@example.com",
)


class DigitalOceanTests(PlainProviderTests[DigitalOceanProvider, FakeDigitalOcean], GateTestCase):
    plain = PLAIN

    def test_login_url_is_digitaloceans_with_the_read_scope(self) -> None:
        url = self.get_success(self.provider.authorize_url("st", "n", None, None, REDIRECT, []))
        parts = urlsplit(url)
        self.assertEqual(parts.netloc + parts.path, "cloud.digitalocean.com/v1/oauth/authorize")
        self.assertEqual(parse_qs(parts.query)["scope"], ["read"])
        self.assertEqual(parse_qs(parts.query)["redirect_uri"], [REDIRECT])

    def test_login_gives_the_account_email(self) -> None:
        session = self.login()
        self.assertEqual(session.email, "sammy@example.com")
        self.assertEqual(session.user, "sammy@example.com")
        self.assertEqual(session.access_token, "do-at-sammy-0")
        self.assertEqual(session.expires_on, T0 + 2592000)

    def test_the_account_is_asked_with_the_access_token(self) -> None:
        self.login()
        call = self.api.requests[1]
        self.assertEqual(
            (call.path, call.header(b"authorization")), (b"/v2/account", "Bearer do-at-sammy-0")
        )

    def test_a_configured_profile_url_is_used(self) -> None:
        provider = self.build(profile_url="https://api.digitalocean.com/v2/account?x=1")
        self.assertEqual(self.login(provider=provider).email, "sammy@example.com")

    def test_an_unverified_email_is_refused(self) -> None:
        self.api.codes["new"] = "newbie"
        e = enrich_error(self, self.provider, "new", TokenError)
        self.assertIn("not verified", str(e))

    def test_an_unverified_email_passes_with_the_insecure_option(self) -> None:
        provider = self.build(insecure_oidc_allow_unverified_email=True)
        self.api.codes["new"] = "newbie"
        self.assertEqual(self.login("new", provider).email, "newbie@example.com")

    def test_a_refused_code_is_a_provider_error(self) -> None:
        self.assertIn("invalid_grant", str(code_error(self, self.provider, "bad")))

    def test_a_revoked_token_is_a_provider_error(self) -> None:
        self.assertIn("HTTP 401", str(token_error(self, self.provider, "old")))

    def test_an_answer_without_an_account_is_a_provider_error(self) -> None:
        session = self.get_success(self.provider.redeem("good-code", None, REDIRECT, "n"))
        for answer in (b'{"id": "x"}', b"[]", b"not json", b'{"account": {"uuid": "u"}}'):
            self.api.account_answer = answer
            self.get_failure(self.provider.enrich(session), ProviderError)

    def test_sessions_are_not_refreshed_even_with_a_refresh_token(self) -> None:
        session = self.login()
        self.assertIsNone(self.get_success(self.provider.refresh(session)))
        self.assertEqual(len(self.api.requests), 2)


class DigitalOceanConformanceTests(ProviderConformance, SynchronousTestCase):
    def make_subject(self, clock: Clock) -> ProviderSubject:
        return PLAIN.subject(clock)
