"""Tests for oauthgate.providers.nextcloud, against a fake Nextcloud (OAuth2 app and OCS API)."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request

from oauthgate.errors import ConfigError
from oauthgate.providers.nextcloud import NextcloudProvider, factory
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

BASE = "https://cloud.test"
CLIENT_ID = "nc-client"
CLIENT_SECRET = "nc-secret"
URLS = {
    "login_url": BASE + "/index.php/apps/oauth2/authorize",
    "redeem_url": BASE + "/index.php/apps/oauth2/api/v1/token",
    "profile_url": BASE + "/ocs/v2.php/cloud/user?format=json",
}


def ocs(data: Any, status: str = "ok", code: int = 200, message: str = "OK") -> bytes:
    meta = {"status": status, "statuscode": code, "message": message}
    return json.dumps({"ocs": {"meta": meta, "data": data}}).encode()


class FakeNextcloud(FakeOAuth2API):
    """A Nextcloud server's OAuth2 token endpoint and ``/ocs/v2.php/cloud/user``."""

    content_type = b"application/json; charset=utf-8"
    outage_body = b'{"message": "Nextcloud is in maintenance mode"}'

    def __init__(self) -> None:
        super().__init__()
        self.users: dict[str, dict[str, Any]] = {
            "alice": {
                "enabled": True,
                "id": "alice",
                "email": "alice@example.com",
                "backup_email": "alice@home.example",
                "displayname": "Alice Example",
                "groups": ["admin", "staff"],
                "team": ["blue"],
                "quota": {"used": 1024},
            }
        }
        self.ocs_failure = False

    def answer(self, request: Request, call: Call) -> bytes:
        if call.path == b"/index.php/apps/oauth2/api/v1/token":
            return self._token(request, call)
        if call.path == b"/ocs/v2.php/cloud/user":
            return self._user(request, call)
        return super().answer(request, call)

    def _client(self, call: Call) -> tuple[str, str]:
        auth = call.header(b"authorization")
        if auth.startswith("Basic "):
            client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            return client_id, secret
        return call.form.get("client_id", [""])[0], call.form.get("client_secret", [""])[0]

    def _token(self, request: Request, call: Call) -> bytes:
        user = self.take_code(call)
        if self._client(call) != (CLIENT_ID, CLIENT_SECRET) or user is None:
            return self.fail(request, 400, b'{"error": "invalid_request"}')
        token = self.issue(f"nc-{user}-{len(self.tokens)}", user)
        return json.dumps(
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": 3600,
                "refresh_token": f"nc-rt-{user}",
                "user_id": user,
            }
        ).encode()

    def _user(self, request: Request, call: Call) -> bytes:
        if call.header(b"ocs-apirequest") != "true":
            return self.fail(request, 412, b'{"message": "CSRF check failed"}')
        user = self.bearer_user(call)
        if user is None:
            return self.fail(request, 401, ocs([], "failure", 997, "Current user is not logged in"))
        if self.ocs_failure:
            return ocs([], "failure", 996, "Server error")
        return ocs(self.users[user])


PLAIN = PlainProvider(
    kind=NextcloudProvider,
    factory=factory,
    name="nextcloud",
    display_name="Nextcloud",
    fake=FakeNextcloud,
    hosts=("cloud.test",),
    config={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **URLS},
)


class NextcloudTests(PlainProviderTests[NextcloudProvider, FakeNextcloud], GateTestCase):
    plain = PLAIN

    def test_every_url_must_be_configured(self) -> None:
        config = provider_config(provider="nextcloud", client_id=CLIENT_ID)
        e = self.assertRaises(ConfigError, factory.build, config, None, self.clock)
        keys = sorted(problem.split(":")[0] for problem in e.problems)
        self.assertEqual(keys, ["login_url", "profile_url", "redeem_url"])

    def test_login_url_is_the_configured_one(self) -> None:
        url = self.get_success(self.provider.authorize_url("st", "n", None, None, REDIRECT, []))
        parts = urlsplit(url)
        self.assertEqual(f"https://{parts.netloc}{parts.path}", URLS["login_url"])
        self.assertEqual(parse_qs(parts.query)["state"], ["st"])

    def test_login_gives_user_email_and_groups_from_ocs(self) -> None:
        session = self.login()
        self.assertEqual(session.user, "alice")
        self.assertEqual(session.email, "alice@example.com")
        self.assertEqual(session.groups, ("admin", "staff"))
        self.assertEqual(session.expires_on, T0 + 3600)

    def test_the_ocs_api_is_asked_with_the_access_token_and_the_ocs_header(self) -> None:
        self.login()
        call = self.api.requests[1]
        self.assertEqual((call.path, call.params["format"]), (b"/ocs/v2.php/cloud/user", ["json"]))
        self.assertEqual(call.headers[b"Authorization"], [b"Bearer nc-alice-0"])
        self.assertEqual(call.headers[b"Ocs-Apirequest"], [b"true"])

    def test_email_and_groups_claims_can_name_other_ocs_fields(self) -> None:
        provider = self.build(
            oidc_email_claim="ocs.data.backup_email", oidc_groups_claim="ocs.data.team"
        )
        session = self.login(provider=provider)
        self.assertEqual((session.email, session.groups), ("alice@home.example", ("blue",)))

    def test_an_ocs_failure_status_is_a_provider_error(self) -> None:
        self.api.ocs_failure = True
        e = enrich_error(self, self.provider)
        self.assertIn("failure", str(e))

    def test_a_user_without_an_email_cannot_log_in(self) -> None:
        self.api.users["alice"]["email"] = None
        e = enrich_error(self, self.provider)
        self.assertIn("ocs.data.email", str(e))

    def test_an_invalid_token_is_a_provider_error(self) -> None:
        self.assertIn("HTTP 401", str(token_error(self, self.provider, "x")))

    def test_a_refused_code_is_a_provider_error(self) -> None:
        code_error(self, self.provider, "bad")

    def test_sessions_are_not_refreshed(self) -> None:
        self.assertIsNone(self.get_success(self.provider.refresh(self.login())))


class NextcloudConformanceTests(ProviderConformance, SynchronousTestCase):
    def make_subject(self, clock: Clock) -> ProviderSubject:
        return PLAIN.subject(clock)
