"""Tests for oauthgate.providers.facebook, against a fake of Facebook's Graph API."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request

from oauthgate.providers.facebook import FacebookProvider, factory
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

CLIENT_ID = "1234567890"
CLIENT_SECRET = "fb-secret"


class FakeGraphAPI(FakeOAuth2API):
    """graph.facebook.com: the token endpoint and ``/me``, answering as Facebook documents."""

    content_type = b"application/json; charset=UTF-8"
    outage_body = b'{"error": {"message": "Service temporarily unavailable", "code": 2}}'

    def __init__(self) -> None:
        super().__init__()
        self.users: dict[str, dict[str, Any]] = {
            "alice": {"id": "10001", "name": "Alice Example", "email": "alice@example.com"},
            "bob": {"id": "10002", "name": "Bob, no email"},
        }

    def answer(self, request: Request, call: Call) -> bytes:
        if call.path == b"/v2.5/oauth/access_token":
            return self._token(request, call)
        if call.path == b"/v2.5/me":
            return self._me(request, call)
        return super().answer(request, call)

    def _error(self, request: Request, status: int, message: str, code: int) -> bytes:
        error = {"message": message, "type": "OAuthException", "code": code}
        return self.fail(request, status, json.dumps({"error": error}).encode())

    def _token(self, request: Request, call: Call) -> bytes:
        form = call.form
        if form.get("client_id") != [CLIENT_ID] or form.get("client_secret") != [CLIENT_SECRET]:
            return self._error(request, 400, "Error validating client secret.", 1)
        if form.get("redirect_uri") != [REDIRECT]:
            return self._error(request, 400, "redirect_uri isn't identical", 100)
        user = self.take_code(call)
        if user is None:
            return self._error(request, 400, "This authorization code has been used.", 100)
        token = self.issue(f"EAAB-{user}-{len(self.tokens)}", user)
        return json.dumps(
            {"access_token": token, "token_type": "bearer", "expires_in": 5183944}
        ).encode()

    def _me(self, request: Request, call: Call) -> bytes:
        user = self.bearer_user(call)
        if user is None:
            return self._error(request, 400, "Invalid OAuth access token.", 190)
        fields = call.params.get("fields", ["id,name"])[0].split(",")
        profile = self.users[user]
        return json.dumps({k: profile[k] for k in ["id", *fields] if k in profile}).encode()


PLAIN = PlainProvider(
    kind=FacebookProvider,
    factory=factory,
    name="facebook",
    display_name="Facebook",
    fake=FakeGraphAPI,
    hosts=("graph.facebook.com",),
    config={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
)


class FacebookTests(PlainProviderTests[FacebookProvider, FakeGraphAPI], GateTestCase):
    plain = PLAIN

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
        provider = self.build(login_url="https://fb.test/dialog", scope="email")
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
        call = self.api.requests[0]
        self.assertEqual(call.path, b"/v2.5/oauth/access_token")
        self.assertEqual(call.form["grant_type"], ["authorization_code"])
        self.assertEqual(call.form["code"], ["good-code"])
        self.assertEqual(call.form["redirect_uri"], [REDIRECT])

    def test_me_is_asked_for_name_and_email_with_the_access_token(self) -> None:
        self.login()
        call = self.api.requests[1]
        self.assertEqual(call.path, b"/v2.5/me")
        self.assertEqual(call.params["fields"], ["name,email"])
        self.assertEqual(call.headers[b"Authorization"], [b"Bearer EAAB-alice-0"])

    def test_a_user_without_an_email_cannot_log_in(self) -> None:
        self.api.codes["bob-code"] = "bob"
        self.assertIn("no email", str(enrich_error(self, self.provider, "bob-code")))

    def test_a_used_code_is_a_provider_error(self) -> None:
        self.login()
        self.assertIn("HTTP 400", str(code_error(self, self.provider, "good-code")))

    def test_an_invalid_access_token_is_a_provider_error(self) -> None:
        e = token_error(self, self.provider, "forged")
        self.assertIn("HTTP 400", str(e))
        self.assertNotIn("forged", str(e))

    def test_an_outage_is_a_provider_error(self) -> None:
        self.api.broken = True
        code_error(self, self.provider, "good-code")

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
        return PLAIN.subject(clock)
