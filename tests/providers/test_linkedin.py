"""Tests for oauthgate.providers.linkedin, against a fake of LinkedIn's OAuth and v2 API."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request

from oauthgate.providers.linkedin import LinkedInProvider, factory
from oauthgate.session import Session
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

CLIENT_ID = "li-client"
CLIENT_SECRET = "li-secret"


class FakeLinkedIn(FakeOAuth2API):
    """www.linkedin.com's token endpoint and api.linkedin.com's ``/v2/emailAddress``."""

    outage_body = b'{"status": 503, "message": "Service Unavailable"}'

    def __init__(self) -> None:
        super().__init__()
        self.emails: dict[str, str | None] = {"alice": "alice@example.com", "hidden": None}

    def answer(self, request: Request, call: Call) -> bytes:
        if call.path == b"/uas/oauth2/accessToken":
            user = self.take_code(call)
            if call.form.get("client_secret") != [CLIENT_SECRET] or user is None:
                return self.fail(
                    request,
                    400,
                    json.dumps(
                        {
                            "error": "invalid_request",
                            "error_description": "Unable to retrieve access token: "
                            "authorization code not found",
                        }
                    ).encode(),
                )
            token = self.issue(f"AQX-{user}", user)
            return json.dumps({"access_token": token, "expires_in": 5184000}).encode()
        if call.path == b"/v2/emailAddress":
            user = self.bearer_user(call)
            if user is None:
                error = {"serviceErrorCode": 65600, "message": "Invalid access token"}
                return self.fail(request, 401, json.dumps({**error, "status": 401}).encode())
            query = call.params
            if query.get("q") != ["members"] or query.get("projection") != ["(elements*(handle~))"]:
                return self.fail(request, 400, b'{"message": "Invalid query", "status": 400}')
            email = self.emails[user]
            elements = (
                []
                if email is None
                else [
                    {"handle": "urn:li:emailAddress:3775708763", "handle~": {"emailAddress": email}}
                ]
            )
            return json.dumps({"elements": elements}).encode()
        return super().answer(request, call)


PLAIN = PlainProvider(
    kind=LinkedInProvider,
    factory=factory,
    name="linkedin",
    display_name="LinkedIn",
    fake=FakeLinkedIn,
    hosts=("www.linkedin.com", "api.linkedin.com"),
    config={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
)


class LinkedInTests(PlainProviderTests[LinkedInProvider, FakeLinkedIn], GateTestCase):
    plain = PLAIN

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
        call = self.api.requests[1]
        self.assertEqual(call.path, b"/v2/emailAddress")
        self.assertEqual(call.params["projection"], ["(elements*(handle~))"])
        self.assertEqual(call.headers[b"X-Li-Format"], [b"json"])
        self.assertEqual(call.headers[b"Authorization"], [b"Bearer AQX-alice"])

    def test_a_member_without_an_email_cannot_log_in(self) -> None:
        self.api.codes["c2"] = "hidden"
        self.assertIn("no email", str(enrich_error(self, self.provider, "c2")))

    def test_a_refused_code_is_a_provider_error(self) -> None:
        code_error(self, self.provider, "bad")

    def test_an_invalid_token_is_a_provider_error(self) -> None:
        self.assertIn("HTTP 401", str(token_error(self, self.provider, "bad")))

    def test_sessions_are_not_refreshed(self) -> None:
        self.assertIsNone(self.get_success(self.provider.refresh(Session(refresh_token="r"))))


class LinkedInConformanceTests(ProviderConformance, SynchronousTestCase):
    def make_subject(self, clock: Clock) -> ProviderSubject:
        return PLAIN.subject(clock)
