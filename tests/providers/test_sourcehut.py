"""Tests for oauthgate.providers.sourcehut, against a fake of meta.sr.ht (OAuth 2.0 and GraphQL)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request

from oauthgate.errors import ProviderError
from oauthgate.providers.sourcehut import QUERY, SourceHutProvider, factory
from oauthgate.session import Session
from oauthgate.testing import GateTestCase, ProviderConformance, ProviderSubject
from tests.providers.fakes import (
    REDIRECT,
    Call,
    FakeOAuth2API,
    PlainProvider,
    PlainProviderTests,
    enrich_error,
    token_error,
)

CLIENT_ID = "srht-client"
CLIENT_SECRET = "srht-secret"


class FakeMetaSrHt(FakeOAuth2API):
    """meta.sr.ht: ``/oauth2/access-token`` and the GraphQL endpoint ``/query``."""

    outage_status = 502
    outage_body = b"<html>502 Bad Gateway</html>"

    def __init__(self) -> None:
        super().__init__()
        self.users: dict[str, dict[str, Any]] = {
            "alice": {"username": "alice", "email": "alice@example.com"}
        }
        self.graphql_errors: list[dict[str, Any]] | None = None

    def answer(self, request: Request, call: Call) -> bytes:
        if call.path == b"/oauth2/access-token":
            user = self.take_code(call)
            if call.form.get("client_secret") != [CLIENT_SECRET] or user is None:
                return self.fail(
                    request,
                    400,
                    b'{"error": "invalid_grant", "error_description": "Invalid grant"}',
                )
            token = self.issue(f"srht-{user}", user)
            return json.dumps(
                {"access_token": token, "token_type": "bearer", "expires_in": 7776000}
            ).encode()
        if call.path == b"/query" and request.method == b"POST":
            user = self.bearer_user(call)
            if user is None:
                return self.fail(
                    request,
                    401,
                    b'{"errors": [{"message": "Invalid or expired OAuth 2.0 bearer token"}]}',
                )
            query = json.loads(call.body).get("query", "")
            if "me" not in query or call.header(b"content-type") != "application/json":
                return self.fail(request, 422, b'{"errors": [{"message": "bad query"}]}')
            if self.graphql_errors is not None:
                return json.dumps({"data": None, "errors": self.graphql_errors}).encode()
            return json.dumps({"data": {"me": self.users[user]}}).encode()
        return super().answer(request, call)


PLAIN = PlainProvider(
    kind=SourceHutProvider,
    factory=factory,
    name="sourcehut",
    display_name="SourceHut",
    fake=FakeMetaSrHt,
    hosts=("meta.sr.ht",),
    config={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
)


class SourceHutTests(PlainProviderTests[SourceHutProvider, FakeMetaSrHt], GateTestCase):
    plain = PLAIN

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
        call = self.api.requests[1]
        self.assertEqual(call.path, b"/query")
        self.assertEqual(json.loads(call.body), {"query": QUERY})
        self.assertEqual(call.headers[b"Authorization"], [b"Bearer srht-alice"])

    def test_a_graphql_error_is_a_provider_error_naming_its_message(self) -> None:
        self.api.graphql_errors = [{"message": "Access denied\x1b[31m", "path": ["me"]}]
        e = enrich_error(self, self.provider)
        self.assertIn("Access denied", str(e))
        self.assertNotIn("\x1b", str(e))

    def test_an_invalid_token_is_a_provider_error(self) -> None:
        self.assertIn("HTTP 401", str(token_error(self, self.provider, "no")))

    def test_an_answer_without_an_email_is_a_provider_error(self) -> None:
        self.api.users["alice"] = {"username": "alice", "email": None}
        enrich_error(self, self.provider)

    def test_an_outage_answering_html_is_a_provider_error(self) -> None:
        session = self.get_success(self.provider.redeem("good-code", None, REDIRECT, "n"))
        self.api.broken = True
        e = self.get_failure(self.provider.enrich(session), ProviderError)
        self.assertIn("HTTP 502", str(e))

    def test_sessions_are_not_refreshed(self) -> None:
        self.assertIsNone(self.get_success(self.provider.refresh(Session(refresh_token="r"))))


class SourceHutConformanceTests(ProviderConformance, SynchronousTestCase):
    def make_subject(self, clock: Clock) -> ProviderSubject:
        return PLAIN.subject(clock)
