"""Tests for oauthgate.providers.digitalocean, against a fake of DigitalOcean's OAuth and API."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from oauthgate.errors import ProviderError, TokenError
from oauthgate.interfaces import IProvider, IProviderFactory
from oauthgate.plugins import Plugins
from oauthgate.providers.digitalocean import DigitalOceanProvider, factory
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

CLIENT_ID = "do-client"
CLIENT_SECRET = "do-secret"
REDIRECT = "https://app.test/oauth2/callback"
T0 = 1_700_000_000.0


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


class FakeDigitalOcean(Resource):
    """cloud.digitalocean.com's token endpoint and api.digitalocean.com's ``/v2/account``."""

    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)
        self.codes: dict[str, str] = {"good-code": "sammy"}
        self.tokens: dict[str, str] = {}
        self.accounts: dict[str, dict[str, Any]] = {
            "sammy": account("sammy@example.com"),
            "newbie": account("newbie@example.com", verified=False),
        }
        self.broken = False
        self.account_answer: bytes | None = None  # served by /v2/account instead, when set
        self.requests: list[tuple[bytes, dict[str, list[str]], str]] = []

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        form = parse_qs(request.content.read().decode())
        auth = (request.getHeader(b"authorization") or b"").decode()
        self.requests.append((request.path, form, auth))
        request.setHeader(b"content-type", b"application/json")
        if self.broken:
            request.setResponseCode(503)
            return b'{"id": "service_unavailable", "message": "try again"}'
        if request.path == b"/v1/oauth/token":
            return self._token(request, form)
        if request.path == b"/v2/account":
            user = self.tokens.get(auth.removeprefix("Bearer "))
            if user is None:
                request.setResponseCode(401)
                return b'{"id": "Unauthorized", "message": "Unable to authenticate you."}'
            if self.account_answer is not None:
                return self.account_answer
            return json.dumps({"account": self.accounts[user]}).encode()
        request.setResponseCode(404)
        return (
            b'{"id": "not_found", "message": "The resource you were accessing could not be found."}'
        )

    def _token(self, request: Request, form: dict[str, list[str]]) -> bytes:
        user = self.codes.pop(form.get("code", [""])[0], None)
        if (
            form.get("client_id") != [CLIENT_ID]
            or form.get("client_secret") != [CLIENT_SECRET]
            or form.get("redirect_uri") != [REDIRECT]
            or user is None
        ):
            request.setResponseCode(401)
            return (
                b'{"error": "invalid_grant", "error_description": "The provided grant is invalid"}'
            )
        token = f"do-at-{user}-{len(self.tokens)}"
        self.tokens[token] = user
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


def build(
    api: FakeDigitalOcean, clock: Clock, **options: Any
) -> tuple[DigitalOceanProvider, MemoryHTTPClient]:
    hosts = ByHost({"cloud.digitalocean.com": api, "api.digitalocean.com": api})
    http = memory_http_client(hosts, clock=clock)
    config = provider_config(
        provider="digitalocean", client_id=CLIENT_ID, client_secret=CLIENT_SECRET, **options
    )
    provider = factory.build(config, http, clock)
    assert isinstance(provider, DigitalOceanProvider)
    return provider, http


class DigitalOceanTests(GateTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.api = FakeDigitalOcean()
        self.provider, self.http = build(self.api, self.clock)

    def login(
        self, code: str = "good-code", provider: DigitalOceanProvider | None = None
    ) -> Session:
        provider = provider or self.provider

        async def flow() -> Session:
            session = await provider.redeem(code, None, REDIRECT, "n")
            return await provider.enrich(session)

        return self.get_success(flow())

    def test_factory_and_provider_provide_their_interfaces(self) -> None:
        self.assert_provides(IProviderFactory, factory)
        self.assert_provides(IProvider, self.provider)
        self.assertEqual(
            (self.provider.id, self.provider.display_name), ("digitalocean", "DigitalOcean")
        )
        self.assertIs(Plugins.from_entry_points().provider_factory("digitalocean"), factory)

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
        path, _, auth = self.api.requests[1]
        self.assertEqual((path, auth), (b"/v2/account", "Bearer do-at-sammy-0"))

    def test_a_configured_profile_url_is_used(self) -> None:
        provider, _ = build(
            self.api, self.clock, profile_url="https://api.digitalocean.com/v2/account?x=1"
        )
        self.assertEqual(self.login(provider=provider).email, "sammy@example.com")

    def test_an_unverified_email_is_refused(self) -> None:
        self.api.codes["new"] = "newbie"
        session = self.get_success(self.provider.redeem("new", None, REDIRECT, "n"))
        e = self.get_failure(self.provider.enrich(session), TokenError)
        self.assertIn("not verified", str(e))

    def test_an_unverified_email_passes_with_the_insecure_option(self) -> None:
        provider, _ = build(self.api, self.clock, insecure_oidc_allow_unverified_email=True)
        self.api.codes["new"] = "newbie"
        self.assertEqual(self.login("new", provider).email, "newbie@example.com")

    def test_a_refused_code_is_a_provider_error(self) -> None:
        e = self.get_failure(self.provider.redeem("bad", None, REDIRECT, "n"), ProviderError)
        self.assertIn("invalid_grant", str(e))

    def test_a_revoked_token_is_a_provider_error(self) -> None:
        e = self.get_failure(self.provider.enrich(Session(access_token="old")), ProviderError)
        self.assertIn("HTTP 401", str(e))

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
        api = FakeDigitalOcean()
        provider, http = build(api, clock)

        def break_api() -> None:
            api.broken = True

        return ProviderSubject(
            provider=provider,
            http=http,
            code="good-code",
            redirect_uri=REDIRECT,
            email="sammy@example.com",
            break_api=break_api,
            refreshes=False,
        )
