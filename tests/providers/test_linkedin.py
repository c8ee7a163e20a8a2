"""Tests for oauthgate.providers.linkedin, against a fake of LinkedIn's OAuth and v2 API."""

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
from oauthgate.providers.linkedin import LinkedInProvider, factory
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

CLIENT_ID = "li-client"
CLIENT_SECRET = "li-secret"
REDIRECT = "https://app.test/oauth2/callback"
T0 = 1_700_000_000.0


class FakeLinkedIn(Resource):
    """www.linkedin.com's token endpoint and api.linkedin.com's ``/v2/emailAddress``."""

    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)
        self.codes: dict[str, str] = {"good-code": "alice"}
        self.tokens: dict[str, str] = {}
        self.emails: dict[str, str | None] = {"alice": "alice@example.com", "hidden": None}
        self.broken = False
        self.requests: list[tuple[bytes, dict[str, list[str]], dict[bytes, Sequence[bytes]]]] = []

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        form = parse_qs(request.content.read().decode())
        query = {k.decode(): [v.decode() for v in vs] for k, vs in (request.args or {}).items()}
        self.requests.append(
            (request.path, {**query, **form}, dict(request.requestHeaders.getAllRawHeaders()))
        )
        request.setHeader(b"content-type", b"application/json")
        if self.broken:
            request.setResponseCode(503)
            return b'{"status": 503, "message": "Service Unavailable"}'
        if request.path == b"/uas/oauth2/accessToken":
            user = self.codes.pop(form.get("code", [""])[0], None)
            if form.get("client_secret") != [CLIENT_SECRET] or user is None:
                request.setResponseCode(400)
                return json.dumps(
                    {
                        "error": "invalid_request",
                        "error_description": "Unable to retrieve access token: authorization "
                        "code not found",
                    }
                ).encode()
            token = f"AQX-{user}"
            self.tokens[token] = user
            return json.dumps({"access_token": token, "expires_in": 5184000}).encode()
        if request.path == b"/v2/emailAddress":
            user = self.tokens.get((request.getHeader(b"authorization") or b"").decode()[7:])
            if user is None:
                request.setResponseCode(401)
                return (
                    b'{"serviceErrorCode": 65600, "message": "Invalid access token", "status": 401}'
                )
            if query.get("q") != ["members"] or query.get("projection") != ["(elements*(handle~))"]:
                request.setResponseCode(400)
                return b'{"message": "Invalid query", "status": 400}'
            email = self.emails[user]
            elements = (
                []
                if email is None
                else [
                    {"handle": "urn:li:emailAddress:3775708763", "handle~": {"emailAddress": email}}
                ]
            )
            return json.dumps({"elements": elements}).encode()
        request.setResponseCode(404)
        return b"{}"


def build(
    api: FakeLinkedIn, clock: Clock, **options: Any
) -> tuple[LinkedInProvider, MemoryHTTPClient]:
    hosts = ByHost({"www.linkedin.com": api, "api.linkedin.com": api})
    http = memory_http_client(hosts, clock=clock)
    config = provider_config(
        provider="linkedin", client_id=CLIENT_ID, client_secret=CLIENT_SECRET, **options
    )
    provider = factory.build(config, http, clock)
    assert isinstance(provider, LinkedInProvider)
    return provider, http


class LinkedInTests(GateTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.api = FakeLinkedIn()
        self.provider, self.http = build(self.api, self.clock)

    def login(self, code: str = "good-code") -> Session:
        async def flow() -> Session:
            session = await self.provider.redeem(code, None, REDIRECT, "n")
            return await self.provider.enrich(session)

        return self.get_success(flow())

    def test_factory_and_provider_provide_their_interfaces(self) -> None:
        self.assert_provides(IProviderFactory, factory)
        self.assert_provides(IProvider, self.provider)
        self.assertEqual((self.provider.id, self.provider.display_name), ("linkedin", "LinkedIn"))
        self.assertIs(Plugins.from_entry_points().provider_factory("linkedin"), factory)

    def test_login_url_is_linkedins_with_its_default_scope(self) -> None:
        url = self.get_success(self.provider.authorize_url("st", "n", None, None, REDIRECT, []))
        parts = urlsplit(url)
        self.assertEqual(parts.netloc + parts.path, "www.linkedin.com/oauth/v2/authorization")
        self.assertEqual(parse_qs(parts.query)["scope"], ["r_emailaddress r_liteprofile"])

    def test_login_gives_the_primary_email(self) -> None:
        session = self.login()
        self.assertEqual((session.email, session.user), ("alice@example.com",) * 2)
        self.assertEqual(session.expires_on, T0 + 5184000)

    def test_the_email_api_is_asked_as_linkedin_documents(self) -> None:
        self.login()
        path, query, headers = self.api.requests[1]
        self.assertEqual(path, b"/v2/emailAddress")
        self.assertEqual(query["projection"], ["(elements*(handle~))"])
        self.assertEqual(headers[b"X-Li-Format"], [b"json"])
        self.assertEqual(headers[b"Authorization"], [b"Bearer AQX-alice"])

    def test_a_member_without_an_email_cannot_log_in(self) -> None:
        self.api.codes["c2"] = "hidden"
        session = self.get_success(self.provider.redeem("c2", None, REDIRECT, "n"))
        e = self.get_failure(self.provider.enrich(session), ProviderError)
        self.assertIn("no email", str(e))

    def test_a_refused_code_is_a_provider_error(self) -> None:
        self.get_failure(self.provider.redeem("bad", None, REDIRECT, "n"), ProviderError)

    def test_an_invalid_token_is_a_provider_error(self) -> None:
        e = self.get_failure(self.provider.enrich(Session(access_token="bad")), ProviderError)
        self.assertIn("HTTP 401", str(e))

    def test_sessions_are_not_refreshed(self) -> None:
        self.assertIsNone(self.get_success(self.provider.refresh(Session(refresh_token="r"))))


class LinkedInConformanceTests(ProviderConformance, SynchronousTestCase):
    def make_subject(self, clock: Clock) -> ProviderSubject:
        api = FakeLinkedIn()
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
