"""Tests for oauthgate.providers.facebook, against a fake of Facebook's Graph API."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from oauthgate.errors import ProviderError
from oauthgate.interfaces import IProvider, IProviderFactory
from oauthgate.plugins import Plugins
from oauthgate.providers.facebook import FacebookProvider, factory
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

CLIENT_ID = "1234567890"
CLIENT_SECRET = "fb-secret"
REDIRECT = "https://app.test/oauth2/callback"
T0 = 1_700_000_000.0


class FakeGraphAPI(Resource):
    """graph.facebook.com: the token endpoint and ``/me``, answering as Facebook documents."""

    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)
        self.codes: dict[str, str] = {"good-code": "alice"}
        self.tokens: dict[str, str] = {}
        self.users: dict[str, dict[str, Any]] = {
            "alice": {"id": "10001", "name": "Alice Example", "email": "alice@example.com"},
            "bob": {"id": "10002", "name": "Bob, no email"},
        }
        self.broken = False
        self.requests: list[tuple[bytes, dict[str, list[str]], dict[bytes, Sequence[bytes]]]] = []

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        form = parse_qs(request.content.read().decode())
        query = {k.decode(): [v.decode() for v in vs] for k, vs in (request.args or {}).items()}
        headers = dict(request.requestHeaders.getAllRawHeaders())
        self.requests.append((request.path, {**query, **form}, headers))
        request.setHeader(b"content-type", b"application/json; charset=UTF-8")
        if self.broken:
            request.setResponseCode(503)
            return b'{"error": {"message": "Service temporarily unavailable", "code": 2}}'
        if request.path == b"/v2.5/oauth/access_token":
            return self._token(request, form)
        if request.path == b"/v2.5/me":
            return self._me(request, query)
        request.setResponseCode(404)
        return b"{}"

    def _error(self, request: Request, status: int, message: str, code: int) -> bytes:
        request.setResponseCode(status)
        error = {"message": message, "type": "OAuthException", "code": code}
        return json.dumps({"error": error}).encode()

    def _token(self, request: Request, form: dict[str, list[str]]) -> bytes:
        if form.get("client_id") != [CLIENT_ID] or form.get("client_secret") != [CLIENT_SECRET]:
            return self._error(request, 400, "Error validating client secret.", 1)
        if form.get("redirect_uri") != [REDIRECT]:
            return self._error(request, 400, "redirect_uri isn't identical", 100)
        user = self.codes.pop(form.get("code", [""])[0], None)
        if user is None:
            return self._error(request, 400, "This authorization code has been used.", 100)
        token = f"EAAB-{user}-{len(self.tokens)}"
        self.tokens[token] = user
        return json.dumps(
            {"access_token": token, "token_type": "bearer", "expires_in": 5183944}
        ).encode()

    def _me(self, request: Request, query: dict[str, list[str]]) -> bytes:
        auth = (request.getHeader(b"authorization") or b"").decode()
        user = self.tokens.get(auth.removeprefix("Bearer "))
        if user is None:
            return self._error(request, 400, "Invalid OAuth access token.", 190)
        fields = query.get("fields", ["id,name"])[0].split(",")
        profile = self.users[user]
        return json.dumps({k: profile[k] for k in ["id", *fields] if k in profile}).encode()


def build(
    api: FakeGraphAPI, clock: Clock, **options: Any
) -> tuple[FacebookProvider, MemoryHTTPClient]:
    http = memory_http_client(ByHost({"graph.facebook.com": api}), clock=clock)
    config = provider_config(
        provider="facebook", client_id=CLIENT_ID, client_secret=CLIENT_SECRET, **options
    )
    provider = factory.build(config, http, clock)
    assert isinstance(provider, FacebookProvider)
    return provider, http


class FacebookTests(GateTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.api = FakeGraphAPI()
        self.provider, self.http = build(self.api, self.clock)

    def login(self, code: str = "good-code") -> Session:
        async def flow() -> Session:
            session = await self.provider.redeem(code, None, REDIRECT, "n")
            return await self.provider.enrich(session)

        return self.get_success(flow())

    def test_factory_and_provider_provide_their_interfaces(self) -> None:
        self.assert_provides(IProviderFactory, factory)
        self.assert_provides(IProvider, self.provider)
        self.assertIsInstance(self.provider, FacebookProvider)
        self.assertEqual((self.provider.id, self.provider.display_name), ("facebook", "Facebook"))

    def test_the_installed_entry_point_finds_the_factory(self) -> None:
        self.assertIs(Plugins.from_entry_points().provider_factory("facebook"), factory)

    def test_login_url_is_facebooks_dialog_with_its_default_scope(self) -> None:
        url = self.get_success(self.provider.authorize_url("st", "n", None, None, REDIRECT, []))
        parts = urlsplit(url)
        self.assertEqual(
            f"{parts.scheme}://{parts.netloc}{parts.path}",
            "https://www.facebook.com/v2.5/dialog/oauth",
        )
        query = parse_qs(parts.query)
        self.assertEqual(query["scope"], ["public_profile email"])
        self.assertEqual(query["client_id"], [CLIENT_ID])
        self.assertEqual(query["state"], ["st"])

    def test_configured_urls_and_scope_replace_the_defaults(self) -> None:
        provider, _ = build(self.api, self.clock, login_url="https://fb.test/dialog", scope="email")
        url = self.get_success(provider.authorize_url("st", "n", None, None, REDIRECT, []))
        self.assertTrue(url.startswith("https://fb.test/dialog?"))
        self.assertEqual(parse_qs(urlsplit(url).query)["scope"], ["email"])

    def test_login_gives_the_email_from_me(self) -> None:
        session = self.login()
        self.assertEqual(session.email, "alice@example.com")
        self.assertEqual(session.user, "alice@example.com")
        self.assertEqual(session.provider, "facebook")
        self.assertEqual(session.expires_on, T0 + 5183944)
        self.assertEqual(session.groups, ())

    def test_redeem_sends_the_code_client_credentials_and_redirect_uri(self) -> None:
        self.login()
        path, form, _ = self.api.requests[0]
        self.assertEqual(path, b"/v2.5/oauth/access_token")
        self.assertEqual(form["grant_type"], ["authorization_code"])
        self.assertEqual(form["code"], ["good-code"])
        self.assertEqual(form["redirect_uri"], [REDIRECT])

    def test_me_is_asked_for_name_and_email_with_the_access_token(self) -> None:
        self.login()
        path, query, headers = self.api.requests[1]
        self.assertEqual(path, b"/v2.5/me")
        self.assertEqual(query["fields"], ["name,email"])
        self.assertEqual(headers[b"Authorization"], [b"Bearer EAAB-alice-0"])

    def test_a_user_without_an_email_cannot_log_in(self) -> None:
        self.api.codes["bob-code"] = "bob"
        session = self.get_success(self.provider.redeem("bob-code", None, REDIRECT, "n"))
        e = self.get_failure(self.provider.enrich(session), ProviderError)
        self.assertIn("no email", str(e))

    def test_a_used_code_is_a_provider_error(self) -> None:
        self.login()
        e = self.get_failure(self.provider.redeem("good-code", None, REDIRECT, "n"), ProviderError)
        self.assertIn("HTTP 400", str(e))

    def test_an_invalid_access_token_is_a_provider_error(self) -> None:
        session = Session(access_token="forged", provider="facebook")
        e = self.get_failure(self.provider.enrich(session), ProviderError)
        self.assertIn("HTTP 400", str(e))
        self.assertNotIn("forged", str(e))

    def test_an_outage_is_a_provider_error(self) -> None:
        self.api.broken = True
        self.get_failure(self.provider.redeem("good-code", None, REDIRECT, "n"), ProviderError)

    def test_sessions_are_not_refreshed(self) -> None:
        session = self.login()
        refreshed = self.get_success(
            self.provider.refresh(Session(email=session.email, refresh_token="rt"))
        )
        self.assertIsNone(refreshed)

    def test_there_is_no_provider_logout(self) -> None:
        self.assertIsNone(self.get_success(self.provider.logout_url(self.login(), "/")))


class FacebookConformanceTests(ProviderConformance, SynchronousTestCase):
    def make_subject(self, clock: Clock) -> ProviderSubject:
        api = FakeGraphAPI()
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
            refreshes=False,
        )
