"""Tests for oauthgate.providers.sourcehut, against a fake of meta.sr.ht (OAuth 2.0 and GraphQL)."""

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
from oauthgate.providers.sourcehut import QUERY, SourceHutProvider, factory
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

CLIENT_ID = "srht-client"
CLIENT_SECRET = "srht-secret"
REDIRECT = "https://app.test/oauth2/callback"
T0 = 1_700_000_000.0


class FakeMetaSrHt(Resource):
    """meta.sr.ht: ``/oauth2/access-token`` and the GraphQL endpoint ``/query``."""

    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)
        self.codes: dict[str, str] = {"good-code": "alice"}
        self.tokens: dict[str, str] = {}
        self.users: dict[str, dict[str, Any]] = {
            "alice": {"username": "alice", "email": "alice@example.com"}
        }
        self.broken = False
        self.graphql_errors: list[dict[str, Any]] | None = None
        self.requests: list[tuple[bytes, bytes, dict[bytes, Sequence[bytes]]]] = []

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        body = request.content.read()
        self.requests.append((request.path, body, dict(request.requestHeaders.getAllRawHeaders())))
        request.setHeader(b"content-type", b"application/json")
        if self.broken:
            request.setResponseCode(502)
            return b"<html>502 Bad Gateway</html>"
        if request.path == b"/oauth2/access-token":
            form = parse_qs(body.decode())
            user = self.codes.pop(form.get("code", [""])[0], None)
            if form.get("client_secret") != [CLIENT_SECRET] or user is None:
                request.setResponseCode(400)
                return b'{"error": "invalid_grant", "error_description": "Invalid grant"}'
            token = f"srht-{user}"
            self.tokens[token] = user
            return json.dumps(
                {"access_token": token, "token_type": "bearer", "expires_in": 7776000}
            ).encode()
        if request.path == b"/query" and request.method == b"POST":
            user = self.tokens.get((request.getHeader(b"authorization") or b"").decode()[7:])
            if user is None:
                request.setResponseCode(401)
                return b'{"errors": [{"message": "Invalid or expired OAuth 2.0 bearer token"}]}'
            query = json.loads(body).get("query", "")
            if "me" not in query or request.getHeader(b"content-type") != b"application/json":
                request.setResponseCode(422)
                return b'{"errors": [{"message": "bad query"}]}'
            if self.graphql_errors is not None:
                return json.dumps({"data": None, "errors": self.graphql_errors}).encode()
            return json.dumps({"data": {"me": self.users[user]}}).encode()
        request.setResponseCode(404)
        return b"{}"


def build(
    api: FakeMetaSrHt, clock: Clock, **options: Any
) -> tuple[SourceHutProvider, MemoryHTTPClient]:
    http = memory_http_client(ByHost({"meta.sr.ht": api}), clock=clock)
    config = provider_config(
        provider="sourcehut", client_id=CLIENT_ID, client_secret=CLIENT_SECRET, **options
    )
    provider = factory.build(config, http, clock)
    assert isinstance(provider, SourceHutProvider)
    return provider, http


class SourceHutTests(GateTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.api = FakeMetaSrHt()
        self.provider, self.http = build(self.api, self.clock)

    def login(self) -> Session:
        async def flow() -> Session:
            session = await self.provider.redeem("good-code", None, REDIRECT, "n")
            return await self.provider.enrich(session)

        return self.get_success(flow())

    def test_factory_and_provider_provide_their_interfaces(self) -> None:
        self.assert_provides(IProviderFactory, factory)
        self.assert_provides(IProvider, self.provider)
        self.assertEqual((self.provider.id, self.provider.display_name), ("sourcehut", "SourceHut"))
        self.assertIs(Plugins.from_entry_points().provider_factory("sourcehut"), factory)

    def test_login_url_is_meta_sr_ht_with_the_profile_scope(self) -> None:
        url = self.get_success(self.provider.authorize_url("st", "n", None, None, REDIRECT, []))
        parts = urlsplit(url)
        self.assertEqual(parts.netloc + parts.path, "meta.sr.ht/oauth2/authorize")
        self.assertEqual(parse_qs(parts.query)["scope"], ["meta.sr.ht/PROFILE:RO"])

    def test_login_gives_username_and_email_from_graphql(self) -> None:
        session = self.login()
        self.assertEqual(session.email, "alice@example.com")
        self.assertEqual(session.user, "alice")
        self.assertEqual(session.preferred_username, "alice")

    def test_the_graphql_query_is_posted_as_json_with_the_access_token(self) -> None:
        self.login()
        path, body, headers = self.api.requests[1]
        self.assertEqual(path, b"/query")
        self.assertEqual(json.loads(body), {"query": QUERY})
        self.assertEqual(headers[b"Authorization"], [b"Bearer srht-alice"])

    def test_a_graphql_error_is_a_provider_error_naming_its_message(self) -> None:
        self.api.graphql_errors = [{"message": "Access denied\x1b[31m", "path": ["me"]}]
        session = self.get_success(self.provider.redeem("good-code", None, REDIRECT, "n"))
        e = self.get_failure(self.provider.enrich(session), ProviderError)
        self.assertIn("Access denied", str(e))
        self.assertNotIn("\x1b", str(e))

    def test_an_invalid_token_is_a_provider_error(self) -> None:
        e = self.get_failure(self.provider.enrich(Session(access_token="no")), ProviderError)
        self.assertIn("HTTP 401", str(e))

    def test_an_answer_without_an_email_is_a_provider_error(self) -> None:
        self.api.users["alice"] = {"username": "alice", "email": None}
        session = self.get_success(self.provider.redeem("good-code", None, REDIRECT, "n"))
        self.get_failure(self.provider.enrich(session), ProviderError)

    def test_an_outage_answering_html_is_a_provider_error(self) -> None:
        session = self.get_success(self.provider.redeem("good-code", None, REDIRECT, "n"))
        self.api.broken = True
        e = self.get_failure(self.provider.enrich(session), ProviderError)
        self.assertIn("HTTP 502", str(e))

    def test_sessions_are_not_refreshed(self) -> None:
        self.assertIsNone(self.get_success(self.provider.refresh(Session(refresh_token="r"))))


class SourceHutConformanceTests(ProviderConformance, SynchronousTestCase):
    def make_subject(self, clock: Clock) -> ProviderSubject:
        api = FakeMetaSrHt()
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
