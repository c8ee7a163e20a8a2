"""Tests for the forgejo provider, against a fake Forgejo instance served in memory.

They run against the *installed* package (``pip install ./plugins/oauthgate-forgejo``):
the source tree is a ``src/`` layout, so nothing here imports it from the checkout.
Only oauthgate's public surface is used, as a third-party plugin's tests would.
"""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
from oauthgate.errors import ConfigError, ProviderError, RefreshError
from oauthgate.interfaces import IProvider, IProviderFactory
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
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from oauthgate_forgejo import ForgejoProvider, factory, instance_base

BASE = "https://git.example.com"
LOGIN_URL = BASE + "/login/oauth/authorize"
CLIENT_ID = "4a0b1c2d-forgejo-client"
CLIENT_SECRET = "gto_s3cret"
REDIRECT = "https://app.test/oauth2/callback"
T0 = 1_700_000_000.0


@attrs.define
class ForgejoUser:
    login: str
    email: str
    orgs: list[str]


@attrs.define(eq=False)
class FakeForgejo(Resource):
    """Answers like a Forgejo instance's OAuth2 and API endpoints (as documented).

    ``page_cap`` is the instance's largest page (its ``MAX_RESPONSE_ITEMS``), ``broken``
    makes every endpoint answer 503, ``requests`` records (method, path, query).
    """

    isLeaf = True

    clock: Clock
    prefix: str = ""  # the path of the instance under its host ("" or "/git")
    users: dict[str, ForgejoUser] = attrs.Factory(
        lambda: {
            "alice": ForgejoUser("alice", "alice@example.com", ["infra", "web"]),
            "bob": ForgejoUser("bob", "", []),
        }
    )
    page_cap: int = 50
    broken: bool = False
    codes: dict[str, tuple[str, str]] = attrs.Factory(dict)  # code -> (user, redirect_uri)
    access_tokens: dict[str, tuple[str, float]] = attrs.Factory(dict)  # -> (user, expires)
    refresh_tokens: dict[str, str] = attrs.Factory(dict)  # -> user
    token_forms: list[dict[str, str]] = attrs.Factory(list)
    requests: list[tuple[str, str, dict[str, list[str]]]] = attrs.Factory(list)
    _serial: int = 0

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)

    def issue_code(self, user: str, redirect_uri: str = REDIRECT) -> str:
        """A code, as /login/oauth/authorize sends back once ``user`` consents."""
        code = self._new("code")
        self.codes[code] = (user, redirect_uri)
        return code

    def break_api(self) -> None:
        self.broken = True

    def _new(self, kind: str) -> str:
        self._serial += 1
        return f"{kind}-{self._serial:04d}-opaque"

    def render(self, request: Request) -> bytes:
        path = (request.path or b"").decode()
        query = parse_qs(urlsplit((request.uri or b"").decode()).query)
        self.requests.append((request.method.decode(), path, query))
        if self.broken:
            return _json(request, {"message": "Service Unavailable"}, 503)
        if not path.startswith(self.prefix + "/"):
            return _json(request, {"message": "not found"}, 404)
        path = path[len(self.prefix) :]
        if path == "/login/oauth/access_token" and request.method == b"POST":
            return self._token(request)
        user = self._bearer(request)
        if path.startswith("/api/v1/") and user is None:
            return _json(
                request, {"message": "token is required", "url": BASE + "/api/swagger"}, 401
            )
        if path == "/api/v1/user" and user is not None:
            found = self.users[user]
            return _json(
                request,
                {"id": 1, "login": found.login, "email": found.email, "full_name": found.login},
            )
        if path == "/api/v1/user/orgs" and user is not None:
            page = max(1, int(query.get("page", ["1"])[0]))
            limit = min(self.page_cap, int(query.get("limit", [str(self.page_cap)])[0]))
            orgs = self.users[user].orgs[(page - 1) * limit : page * limit]
            request.setHeader(b"X-Total-Count", str(len(self.users[user].orgs)).encode())
            return _json(request, [{"id": i, "name": o, "username": o} for i, o in enumerate(orgs)])
        return _json(request, {"message": "not found"}, 404)

    def _bearer(self, request: Request) -> str | None:
        scheme, _, token = (request.getHeader(b"authorization") or b"").decode().partition(" ")
        if scheme.lower() not in ("bearer", "token"):
            return None
        grant = self.access_tokens.get(token)
        if grant is None or grant[1] <= self.clock.seconds():
            return None
        return grant[0]

    def _token(self, request: Request) -> bytes:
        form = {k.decode(): v[0].decode() for k, v in (request.args or {}).items()}
        self.token_forms.append({k: v for k, v in form.items() if k != "client_secret"})
        if (form.get("client_id"), form.get("client_secret")) != (CLIENT_ID, CLIENT_SECRET):
            return _json(request, {"error": "invalid_client"}, 401)
        if form.get("grant_type") == "authorization_code":
            entry = self.codes.pop(form.get("code", ""), None)
            if entry is None or entry[1] != form.get("redirect_uri"):
                return _json(request, {"error": "invalid_grant"}, 400)
            user = entry[0]
        elif form.get("grant_type") == "refresh_token":
            maybe = self.refresh_tokens.pop(form.get("refresh_token", ""), None)
            if maybe is None:
                return _json(request, {"error": "invalid_grant"}, 400)
            user = maybe
        else:
            return _json(request, {"error": "unsupported_grant_type"}, 400)
        access, refresh = self._new("access"), self._new("refresh")
        self.access_tokens[access] = (user, self.clock.seconds() + 3600)
        self.refresh_tokens[refresh] = user
        return _json(
            request,
            {
                "access_token": access,
                "token_type": "bearer",
                "expires_in": 3600,
                "refresh_token": refresh,
            },
        )


def _json(request: Request, body: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json;charset=utf-8")
    return json.dumps(body).encode()


def build(clock: Clock, api: Resource, **options: Any) -> tuple[ForgejoProvider, MemoryHTTPClient]:
    http = memory_http_client(ByHost({"git.example.com": api}), clock=clock)
    settings = {
        "provider": "forgejo",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "login_url": LOGIN_URL,
        **options,
    }
    provider = factory.build(provider_config(**settings), http, clock)
    assert isinstance(provider, ForgejoProvider)
    return provider, http


class ForgejoTestCase(GateTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.api = FakeForgejo(self.clock)
        self.provider, self.http = build(self.clock, self.api)

    def login(self, user: str = "alice") -> Session:
        code = self.api.issue_code(user)
        session = self.get_success(self.provider.redeem(code, None, REDIRECT, "unused-nonce"))
        return self.get_success(self.provider.enrich(session))

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.api.requests]


class PluginTests(SynchronousTestCase):
    def test_the_installed_package_registers_the_forgejo_entry_point(self) -> None:
        (found,) = [ep for ep in entry_points(group="oauthgate.providers") if ep.name == "forgejo"]
        self.assertEqual(found.value, "oauthgate_forgejo:factory")
        self.assertIs(found.load(), factory)

    def test_the_factory_and_the_provider_provide_the_interfaces(self) -> None:
        self.assertTrue(IProviderFactory.providedBy(factory))
        self.assertEqual(factory.name, "forgejo")
        provider, _ = build(Clock(), FakeForgejo(Clock()))
        self.assertTrue(IProvider.providedBy(provider))
        self.assertEqual(provider.display_name, "Forgejo")


class ConfigTests(SynchronousTestCase):
    def test_the_instance_url_is_the_login_url_without_the_authorize_path(self) -> None:
        self.assertEqual(instance_base(LOGIN_URL), BASE)
        self.assertEqual(instance_base(LOGIN_URL + "/"), BASE)
        self.assertEqual(
            instance_base("https://example.com/git/login/oauth/authorize"),
            "https://example.com/git",
        )

    def test_a_login_url_that_is_not_an_authorize_endpoint_has_no_instance_url(self) -> None:
        for url in (
            "https://git.example.com/",
            "https://git.example.com/login/oauth/authorize?x=1",
            "ftp://git.example.com/login/oauth/authorize",
            "/login/oauth/authorize",
        ):
            self.assertIsNone(instance_base(url), url)

    def test_login_url_is_required(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            build(Clock(), FakeForgejo(Clock()), login_url="")
        self.assertIn("login_url: is required for provider forgejo", str(caught.exception))

    def test_a_login_url_without_the_authorize_path_is_refused_at_start(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            build(Clock(), FakeForgejo(Clock()), login_url=BASE, client_id="")
        self.assertEqual(len(caught.exception.problems), 2)
        self.assertIn(
            "must be an http(s) URL ending with /login/oauth/authorize", str(caught.exception)
        )


class LoginTests(ForgejoTestCase):
    def authorize_url(self, *pkce: str | None) -> dict[str, list[str]]:
        challenge, method = pkce if pkce else (None, None)
        url = self.get_success(
            self.provider.authorize_url("st", "nonce", challenge, method, REDIRECT, [])
        )
        self.assertTrue(url.startswith(LOGIN_URL + "?"), url)
        return parse_qs(urlsplit(url).query)

    def test_the_login_url_is_the_instances_authorize_endpoint(self) -> None:
        params = self.authorize_url()
        self.assertEqual(
            params,
            {
                "client_id": [CLIENT_ID],
                "redirect_uri": [REDIRECT],
                "response_type": ["code"],
                "state": ["st"],
                "approval_prompt": ["force"],  # oauth2-proxy's default; Forgejo ignores it
            },
        )
        self.assertNotIn("scope", params)  # Forgejo has no OAuth2 scopes yet

    def test_the_login_url_carries_pkce(self) -> None:
        params = self.authorize_url("c" * 43, "S256")
        self.assertEqual(params["code_challenge"], ["c" * 43])
        self.assertEqual(params["code_challenge_method"], ["S256"])

    def test_a_code_is_redeemed_at_the_instances_token_endpoint_with_the_client(self) -> None:
        code = self.api.issue_code("alice")
        session = self.get_success(self.provider.redeem(code, "verifier", REDIRECT, "n"))
        self.assertEqual(self.paths(), ["/login/oauth/access_token"])
        self.assertEqual(
            self.api.token_forms,
            [
                {
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": REDIRECT,
                    "code_verifier": "verifier",
                    "client_id": CLIENT_ID,
                }
            ],
        )
        self.assertTrue(session.access_token)
        self.assertEqual(session.expires_on, T0 + 3600)

    def test_the_user_is_the_login_and_the_organizations_are_the_groups(self) -> None:
        session = self.login()
        self.assertEqual(
            (session.user, session.preferred_username, session.email, session.groups),
            ("alice", "alice", "alice@example.com", ("infra", "web")),
        )
        self.assertEqual(session.provider, "forgejo")

    def test_every_page_of_organizations_is_read(self) -> None:
        self.api.users["alice"].orgs = [f"org-{n:03d}" for n in range(120)]
        session = self.login()
        self.assertEqual(session.groups, tuple(f"org-{n:03d}" for n in range(120)))
        pages = [q["page"] for _, p, q in self.api.requests if p == "/api/v1/user/orgs"]
        self.assertEqual(pages, [["1"], ["2"], ["3"], ["4"]])

    def test_an_instance_with_smaller_pages_still_gives_every_organization(self) -> None:
        self.api.page_cap = 7
        self.api.users["alice"].orgs = [f"org-{n}" for n in range(20)]
        self.assertEqual(len(self.login().groups), 20)

    def test_an_instance_under_a_sub_path(self) -> None:
        api = FakeForgejo(self.clock, prefix="/git")
        provider, _ = build(self.clock, api, login_url=BASE + "/git/login/oauth/authorize")
        session = self.get_success(provider.redeem(api.issue_code("alice"), None, REDIRECT, "n"))
        session = self.get_success(provider.enrich(session))
        self.assertEqual(session.groups, ("infra", "web"))
        self.assertEqual(
            [p for _, p, _ in api.requests],
            ["/git/login/oauth/access_token", "/git/api/v1/user", *["/git/api/v1/user/orgs"] * 2],
        )

    def test_a_user_without_an_email_address_cannot_log_in(self) -> None:
        code = self.api.issue_code("bob")
        session = self.get_success(self.provider.redeem(code, None, REDIRECT, "n"))
        error = self.get_failure(self.provider.enrich(session), ProviderError)
        self.assertIn("no email", str(error))

    def test_membership_is_left_to_the_group_authorizers(self) -> None:
        self.assertTrue(self.get_success(self.provider.authorize(self.login())))
        self.assertIsNone(self.get_success(self.provider.logout_url(self.login(), "/")))


class RefreshTests(ForgejoTestCase):
    def test_refresh_gives_new_tokens_and_reads_the_organizations_again(self) -> None:
        session = self.login()
        self.api.users["alice"].orgs = ["infra"]
        self.clock.advance(600)
        refreshed = self.get_success(self.provider.refresh(session))
        assert refreshed is not None
        self.assertNotEqual(refreshed.access_token, session.access_token)
        self.assertNotEqual(refreshed.refresh_token, session.refresh_token)
        self.assertEqual(refreshed.groups, ("infra",))
        self.assertEqual(refreshed.created_at, T0 + 600)

    def test_a_revoked_grant_ends_the_session(self) -> None:
        session = self.login()
        self.api.refresh_tokens.clear()
        error = self.get_failure(self.provider.refresh(session), RefreshError)
        self.assertTrue(error.fatal)

    def test_an_outage_during_refresh_keeps_the_session(self) -> None:
        session = self.login()
        self.api.break_api()
        error = self.get_failure(self.provider.refresh(session), RefreshError)
        self.assertFalse(error.fatal)


class FailureTests(ForgejoTestCase):
    def test_a_refused_code_is_a_provider_error(self) -> None:
        error = self.get_failure(
            self.provider.redeem("made-up", None, REDIRECT, "n"), ProviderError
        )
        self.assertIn("invalid_grant", str(error))
        self.assertNotIn("made-up", str(error))

    def test_the_user_api_failing_is_a_provider_error(self) -> None:
        session = self.get_success(
            self.provider.redeem(self.api.issue_code("alice"), None, REDIRECT, "n")
        )
        self.api.break_api()
        error = self.get_failure(self.provider.enrich(session), ProviderError)
        self.assertIn("HTTP 503", str(error))

    def test_an_expired_token_at_the_api_is_a_provider_error(self) -> None:
        session = self.get_success(
            self.provider.redeem(self.api.issue_code("alice"), None, REDIRECT, "n")
        )
        self.clock.advance(3600)
        error = self.get_failure(self.provider.enrich(session), ProviderError)
        self.assertIn("HTTP 401", str(error))

    def test_answers_of_the_wrong_shape_are_provider_errors(self) -> None:
        session = Session(access_token="x", provider="forgejo")
        for body in (b"[]", b'{"email": "a@b.c"}', b"not json"):
            api = _Fixed(body)
            provider, _ = build(self.clock, api)
            self.get_failure(provider.enrich(session), ProviderError)


class _Fixed(Resource):
    """An instance whose every answer is ``body``."""

    isLeaf = True

    def __init__(self, body: bytes) -> None:
        Resource.__init__(self)
        self.body = body

    def render(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        return self.body


class ForgejoConformanceTests(ProviderConformance, SynchronousTestCase):
    def make_subject(self, clock: Clock) -> ProviderSubject:
        api = FakeForgejo(clock)
        provider, http = build(clock, api)
        return ProviderSubject(
            provider=provider,
            http=http,
            code=api.issue_code("alice"),
            redirect_uri=REDIRECT,
            email="alice@example.com",
            break_api=api.break_api,
            refreshes=True,
        )
