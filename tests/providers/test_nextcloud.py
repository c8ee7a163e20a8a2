"""Tests for oauthgate.providers.nextcloud, against a fake Nextcloud (OAuth2 app and OCS API)."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from oauthgate.errors import ConfigError, ProviderError
from oauthgate.interfaces import IProvider, IProviderFactory
from oauthgate.plugins import Plugins
from oauthgate.providers.nextcloud import NextcloudProvider, factory
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

BASE = "https://cloud.test"
CLIENT_ID = "nc-client"
CLIENT_SECRET = "nc-secret"
REDIRECT = "https://app.test/oauth2/callback"
T0 = 1_700_000_000.0
URLS = {
    "login_url": BASE + "/index.php/apps/oauth2/authorize",
    "redeem_url": BASE + "/index.php/apps/oauth2/api/v1/token",
    "profile_url": BASE + "/ocs/v2.php/cloud/user?format=json",
}


def ocs(data: Any, status: str = "ok", code: int = 200, message: str = "OK") -> bytes:
    meta = {"status": status, "statuscode": code, "message": message}
    return json.dumps({"ocs": {"meta": meta, "data": data}}).encode()


class FakeNextcloud(Resource):
    """A Nextcloud server's OAuth2 token endpoint and ``/ocs/v2.php/cloud/user``."""

    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)
        self.codes: dict[str, str] = {"good-code": "alice"}
        self.tokens: dict[str, str] = {}
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
        self.broken = False
        self.ocs_failure = False
        self.requests: list[tuple[bytes, dict[str, list[str]], dict[bytes, Sequence[bytes]]]] = []

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        form = parse_qs(request.content.read().decode())
        query = {k.decode(): [v.decode() for v in vs] for k, vs in (request.args or {}).items()}
        self.requests.append(
            (request.path, {**query, **form}, dict(request.requestHeaders.getAllRawHeaders()))
        )
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        if self.broken:
            request.setResponseCode(503)
            return b'{"message": "Nextcloud is in maintenance mode"}'
        if request.path == b"/index.php/apps/oauth2/api/v1/token":
            return self._token(request, form)
        if request.path == b"/ocs/v2.php/cloud/user":
            return self._user(request)
        request.setResponseCode(404)
        return b"{}"

    def _client(self, request: Request, form: dict[str, list[str]]) -> tuple[str, str]:
        auth = (request.getHeader(b"authorization") or b"").decode()
        if auth.startswith("Basic "):
            client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            return client_id, secret
        return form.get("client_id", [""])[0], form.get("client_secret", [""])[0]

    def _token(self, request: Request, form: dict[str, list[str]]) -> bytes:
        user = self.codes.pop(form.get("code", [""])[0], None)
        if self._client(request, form) != (CLIENT_ID, CLIENT_SECRET) or user is None:
            request.setResponseCode(400)
            return b'{"error": "invalid_request"}'
        token = f"nc-{user}-{len(self.tokens)}"
        self.tokens[token] = user
        return json.dumps(
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": 3600,
                "refresh_token": f"nc-rt-{user}",
                "user_id": user,
            }
        ).encode()

    def _user(self, request: Request) -> bytes:
        if request.getHeader(b"ocs-apirequest") != b"true":
            request.setResponseCode(412)
            return b'{"message": "CSRF check failed"}'
        user = self.tokens.get((request.getHeader(b"authorization") or b"").decode()[7:])
        if user is None:
            request.setResponseCode(401)
            return ocs([], "failure", 997, "Current user is not logged in")
        if self.ocs_failure:
            return ocs([], "failure", 996, "Server error")
        return ocs(self.users[user])


def build(
    api: FakeNextcloud, clock: Clock, **options: Any
) -> tuple[NextcloudProvider, MemoryHTTPClient]:
    http = memory_http_client(ByHost({"cloud.test": api}), clock=clock)
    config = provider_config(
        provider="nextcloud",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        **{**URLS, **options},
    )
    provider = factory.build(config, http, clock)
    assert isinstance(provider, NextcloudProvider)
    return provider, http


class NextcloudTests(GateTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.api = FakeNextcloud()
        self.provider, self.http = build(self.api, self.clock)

    def login(self, provider: NextcloudProvider | None = None) -> Session:
        provider = provider or self.provider

        async def flow() -> Session:
            session = await provider.redeem("good-code", None, REDIRECT, "n")
            return await provider.enrich(session)

        return self.get_success(flow())

    def test_factory_and_provider_provide_their_interfaces(self) -> None:
        self.assert_provides(IProviderFactory, factory)
        self.assert_provides(IProvider, self.provider)
        self.assertEqual((self.provider.id, self.provider.display_name), ("nextcloud", "Nextcloud"))
        self.assertIs(Plugins.from_entry_points().provider_factory("nextcloud"), factory)

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
        path, query, headers = self.api.requests[1]
        self.assertEqual((path, query["format"]), (b"/ocs/v2.php/cloud/user", ["json"]))
        self.assertEqual(headers[b"Authorization"], [b"Bearer nc-alice-0"])
        self.assertEqual(headers[b"Ocs-Apirequest"], [b"true"])

    def test_email_and_groups_claims_can_name_other_ocs_fields(self) -> None:
        provider, _ = build(
            self.api,
            self.clock,
            oidc_email_claim="ocs.data.backup_email",
            oidc_groups_claim="ocs.data.team",
        )
        session = self.login(provider)
        self.assertEqual((session.email, session.groups), ("alice@home.example", ("blue",)))

    def test_an_ocs_failure_status_is_a_provider_error(self) -> None:
        self.api.ocs_failure = True
        session = self.get_success(self.provider.redeem("good-code", None, REDIRECT, "n"))
        e = self.get_failure(self.provider.enrich(session), ProviderError)
        self.assertIn("failure", str(e))

    def test_a_user_without_an_email_cannot_log_in(self) -> None:
        self.api.users["alice"]["email"] = None
        session = self.get_success(self.provider.redeem("good-code", None, REDIRECT, "n"))
        e = self.get_failure(self.provider.enrich(session), ProviderError)
        self.assertIn("ocs.data.email", str(e))

    def test_an_invalid_token_is_a_provider_error(self) -> None:
        e = self.get_failure(self.provider.enrich(Session(access_token="x")), ProviderError)
        self.assertIn("HTTP 401", str(e))

    def test_a_refused_code_is_a_provider_error(self) -> None:
        self.get_failure(self.provider.redeem("bad", None, REDIRECT, "n"), ProviderError)

    def test_sessions_are_not_refreshed(self) -> None:
        self.assertIsNone(self.get_success(self.provider.refresh(self.login())))


class NextcloudConformanceTests(ProviderConformance, SynchronousTestCase):
    def make_subject(self, clock: Clock) -> ProviderSubject:
        api = FakeNextcloud()
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
