"""Tests for oauthgate.providers.bitbucket, against an in-memory Bitbucket Cloud.

The fake answers as Bitbucket's 2.0 API documents it: the token endpoint wants HTTP
Basic client credentials, listings are pages ``{"values": [...], "next": url}``, and
``/2.0/workspaces?role=member`` replaced the removed ``/2.0/teams``.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import attrs
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface.verify import verifyObject

from oauthgate.errors import ConfigError, ProviderError
from oauthgate.interfaces import IProvider, IProviderFactory
from oauthgate.plugins import Plugins
from oauthgate.providers.bitbucket import BitbucketProvider, factory
from oauthgate.providers.github import ACCESS_RECHECK
from oauthgate.session import Session
from oauthgate.testing import ByHost, GateTestCase, MemoryHTTPClient, memory_http_client
from oauthgate.testing.conformance import ProviderConformance, ProviderSubject, provider_config

CLIENT_ID = "bb-key"
CLIENT_SECRET = "bb-secret"
REDIRECT = "https://app.test/oauth2/callback"
API = "https://api.bitbucket.org"
T0 = 1_700_000_000.0


@attrs.define(eq=False)
class FakeBitbucket(Resource):
    """bitbucket.org's OAuth endpoints and api.bitbucket.org, for the user alice."""

    isLeaf = True

    page_size: int = 2
    emails: list[dict[str, Any]] = attrs.Factory(
        lambda: [
            {"type": "email", "email": "a@old.example", "is_primary": False, "is_confirmed": True},
            {
                "type": "email",
                "email": "alice@example.com",
                "is_primary": True,
                "is_confirmed": True,
            },
        ]
    )
    account: dict[str, Any] = attrs.Factory(
        lambda: {
            "type": "user",
            "username": "alice",
            "nickname": "alice",
            "display_name": "Alice Example",
            "account_id": "557058:1234",
            "uuid": "{a1}",
        }
    )
    workspaces: list[str] = attrs.Factory(lambda: ["acme", "widgets", "oss"])
    repositories: dict[str, list[str]] = attrs.Factory(lambda: {"acme": ["acme/app"]})
    codes: set[str] = attrs.Factory(set)
    tokens: set[str] = attrs.Factory(set)
    broken: int | None = None
    foreign_next: bool = False
    failing: dict[str, int] = attrs.Factory(dict)  # API path -> status it answers
    requests: list[tuple[str, str, dict[str, str]]] = attrs.Factory(list)

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)

    def issue_code(self) -> str:
        code = f"bbc-{len(self.codes) + 1}"
        self.codes.add(code)
        return code

    def break_api(self) -> None:
        self.broken = 503

    def paths(self) -> list[str]:
        return [urlsplit(uri).path for _, uri, _ in self.requests]

    def render(self, request: Request) -> bytes:
        headers = {
            k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()
        }
        self.requests.append((request.method.decode(), request.uri.decode(), headers))
        if self.broken is not None:
            return self._json(request, {"type": "error", "error": {"message": "down"}}, self.broken)
        path = request.path.decode()
        if path == "/site/oauth2/access_token":
            return self._token(request, headers)
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme != "Bearer" or token not in self.tokens:
            return self._json(request, {"type": "error", "error": {"message": "Unauthorized"}}, 401)
        if path in self.failing:
            return self._json(request, {"type": "error"}, self.failing[path])
        query = {k: v[0] for k, v in parse_qs(urlsplit(request.uri.decode()).query).items()}
        if path == "/2.0/user/emails":
            return self._page(request, path, query, self.emails)
        if path == "/2.0/user":
            return self._json(request, self.account)
        if path == "/2.0/workspaces" and query.get("role") == "member":
            values = [{"type": "workspace", "slug": s, "name": s.title()} for s in self.workspaces]
            return self._page(request, path, query, values)
        if path.startswith("/2.0/repositories/") and query.get("role") == "contributor":
            owner = path[len("/2.0/repositories/") :]
            names = self.repositories.get(owner, [])
            wanted = query.get("q", "")
            values = [
                {"type": "repository", "full_name": n}
                for n in names
                if not wanted or wanted == f'full_name="{n}"'
            ]
            return self._page(request, path, query, values)
        return self._json(request, {"type": "error", "error": {"message": "Not found"}}, 404)

    def _token(self, request: Request, headers: dict[str, str]) -> bytes:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme != "Basic" or base64.b64decode(value).decode() != f"{CLIENT_ID}:{CLIENT_SECRET}":
            return self._json(request, {"error": "invalid_client"}, 401)
        form = dict(parse_qsl(request.content.read().decode() if request.content else ""))
        if form.get("code") not in self.codes or form.get("redirect_uri") != REDIRECT:
            return self._json(
                request,
                {"error": "invalid_grant", "error_description": "The code is invalid."},
                400,
            )
        self.codes.discard(form["code"])
        token = f"bbat-{len(self.tokens) + 1}"
        self.tokens.add(token)
        return self._json(
            request,
            {
                "access_token": token,
                "scopes": "email account repository",
                "expires_in": 7200,
                "refresh_token": f"bbrt-{len(self.tokens)}",
                "token_type": "bearer",
            },
        )

    def _page(
        self, request: Request, path: str, query: dict[str, str], values: list[dict[str, Any]]
    ) -> bytes:
        page = int(query.get("page", "1"))
        chunk = values[(page - 1) * self.page_size : page * self.page_size]
        body: dict[str, Any] = {
            "pagelen": self.page_size,
            "size": len(values),
            "page": page,
            "values": chunk,
        }
        if page * self.page_size < len(values):
            host = "https://evil.test" if self.foreign_next else API
            body["next"] = f"{host}{path}?{urlencode({**query, 'page': page + 1})}"
        return self._json(request, body)

    @staticmethod
    def _json(request: Request, body: Any, status: int = 200) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        return json.dumps(body).encode()


def bitbucket_world(clock: Clock) -> tuple[FakeBitbucket, MemoryHTTPClient]:
    fake = FakeBitbucket()
    hosts = ByHost({"bitbucket.org": fake, "api.bitbucket.org": fake, "evil.test": fake})
    return fake, memory_http_client(hosts, clock=clock)


class BitbucketTestCase(GateTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.fake, self.http = bitbucket_world(self.clock)

    def provider(self, **options: Any) -> BitbucketProvider:
        config = provider_config(
            provider="bitbucket", client_id=CLIENT_ID, client_secret=CLIENT_SECRET, **options
        )
        built = factory.build(config, self.http, self.clock)
        assert isinstance(built, BitbucketProvider)
        return built

    async def login(self, provider: BitbucketProvider) -> Session:
        session = await provider.redeem(self.fake.issue_code(), None, REDIRECT, "n")
        return await provider.enrich(session)

    def allowed(self, provider: BitbucketProvider) -> bool:
        return self.get_success(provider.authorize(self.get_success(self.login(provider))))


class FactoryTests(BitbucketTestCase):
    def test_factory_and_provider_provide_their_interfaces(self) -> None:
        self.assertTrue(verifyObject(IProviderFactory, factory))
        self.assertTrue(verifyObject(IProvider, self.provider()))
        self.assertEqual((factory.name, self.provider().id), ("bitbucket", "bitbucket"))
        self.assertEqual(self.provider().display_name, "Bitbucket")

    def test_the_installed_entry_point_finds_the_factory(self) -> None:
        self.assertIs(Plugins.from_entry_points().provider_factory("bitbucket"), factory)

    def test_the_repository_must_be_workspace_slash_name(self) -> None:
        with self.assertRaises(ConfigError) as e:
            self.provider(bitbucket_repository="app")
        self.assertIn("bitbucket_repository", e.exception.problems[0])


class LoginURLTests(BitbucketTestCase):
    def scope(self, **options: Any) -> str:
        url = self.get_success(
            self.provider(**options).authorize_url("st", "n", None, None, REDIRECT, [])
        )
        self.assertTrue(url.startswith("https://bitbucket.org/site/oauth2/authorize?"), url)
        params = parse_qs(urlsplit(url).query)
        self.assertEqual((params["client_id"], params["state"]), ([CLIENT_ID], ["st"]))
        return params["scope"][0]

    def test_the_scope_grows_with_the_rules(self) -> None:
        self.assertEqual(self.scope(), "email")
        self.assertEqual(self.scope(bitbucket_team="acme"), "email account")
        self.assertEqual(
            self.scope(bitbucket_team="acme", bitbucket_repository="acme/app"),
            "email account repository",
        )
        self.assertEqual(self.scope(scope="email", bitbucket_team="acme"), "email")


class IdentityTests(BitbucketTestCase):
    def test_login_gives_the_primary_confirmed_email_the_username_and_workspaces(self) -> None:
        session = self.get_success(self.login(self.provider()))
        self.assertEqual(session.email, "alice@example.com")
        self.assertEqual(session.user, "alice")
        self.assertEqual(session.groups, ("acme", "widgets", "oss"))
        self.assertEqual(session.provider, "bitbucket")
        self.assertEqual(session.expires_on, T0 + 7200)

    def test_the_client_authenticates_with_http_basic_and_the_token_goes_in_a_header(self) -> None:
        session = self.get_success(self.login(self.provider()))
        for _method, uri, headers in self.fake.requests[1:]:
            self.assertEqual(headers["authorization"], f"Bearer {session.access_token}")
            self.assertNotIn(session.access_token, uri)

    def test_every_page_of_workspaces_is_read(self) -> None:
        self.fake.workspaces = [f"w{i}" for i in range(5)]
        session = self.get_success(self.login(self.provider()))
        self.assertEqual(session.groups, tuple(f"w{i}" for i in range(5)))
        self.assertEqual(self.fake.paths().count("/2.0/workspaces"), 3)

    def test_a_next_link_to_another_host_is_not_followed(self) -> None:
        self.fake.foreign_next = True
        self.fake.workspaces = [f"w{i}" for i in range(5)]
        with capturedLogs() as events:
            session = self.get_success(self.login(self.provider()))
        self.assertEqual(session.groups, ("w0", "w1"))
        self.assertFalse([u for _, u, h in self.fake.requests if h.get("host") == "evil.test"])
        self.assertTrue([e for e in events if "another host" in e.get("log_format", "")])

    def test_an_unconfirmed_primary_email_is_not_used(self) -> None:
        self.fake.emails = [
            {"email": "alice@example.com", "is_primary": True, "is_confirmed": False}
        ]
        self.assertIn("no email", str(self.get_failure(self.login(self.provider()), ProviderError)))

    def test_a_user_without_username_is_named_by_nickname(self) -> None:
        del self.fake.account["username"]
        self.fake.account["nickname"] = "ally"
        self.assertEqual(self.get_success(self.login(self.provider())).user, "ally")

    def test_a_bad_code_is_a_provider_error(self) -> None:
        error = self.get_failure(self.provider().redeem("x", None, REDIRECT, "n"), ProviderError)
        self.assertIn("invalid_grant", str(error))

    def test_a_failing_api_is_a_provider_error(self) -> None:
        provider = self.provider()
        session = self.get_success(provider.redeem(self.fake.issue_code(), None, REDIRECT, "n"))
        self.fake.break_api()
        self.assertIn("503", str(self.get_failure(provider.enrich(session), ProviderError)))

    def test_bitbucket_does_not_refresh(self) -> None:
        provider = self.provider()
        session = self.get_success(self.login(provider))
        self.assertTrue(session.refresh_token)
        self.assertIsNone(self.get_success(provider.refresh(session)))


class RuleTests(BitbucketTestCase):
    def test_a_team_member_passes(self) -> None:
        self.assertTrue(self.allowed(self.provider(bitbucket_team="widgets")))

    def test_a_non_member_of_the_team_is_refused(self) -> None:
        self.assertFalse(self.allowed(self.provider(bitbucket_team="secret-team")))

    def test_a_contributor_to_the_repository_passes(self) -> None:
        self.assertTrue(self.allowed(self.provider(bitbucket_repository="acme/app")))
        query = parse_qs(urlsplit(self.fake.requests[-1][1]).query)
        self.assertEqual(query["role"], ["contributor"])
        self.assertEqual(query["q"], ['full_name="acme/app"'])

    def test_a_non_contributor_is_refused(self) -> None:
        self.assertFalse(self.allowed(self.provider(bitbucket_repository="acme/other")))

    def test_team_and_repository_must_both_hold(self) -> None:
        provider = self.provider(bitbucket_team="nope", bitbucket_repository="acme/app")
        self.assertFalse(self.allowed(provider))

    def test_the_repository_decision_is_reused_until_it_is_rechecked(self) -> None:
        provider = self.provider(bitbucket_repository="acme/app")
        session = self.get_success(self.login(provider))
        self.assertTrue(self.get_success(provider.authorize(session)))
        self.fake.repositories["acme"] = []
        self.clock.advance(ACCESS_RECHECK - 1)
        self.assertTrue(self.get_success(provider.authorize(session)))
        self.clock.advance(1)
        self.assertFalse(self.get_success(provider.authorize(session)))

    def test_a_failing_api_refuses_without_raising(self) -> None:
        provider = self.provider(bitbucket_repository="acme/app")
        session = self.get_success(self.login(provider))
        self.fake.break_api()
        self.assertFalse(self.get_success(provider.authorize(session)))

    def test_workspaces_that_cannot_be_listed_stop_a_login_with_a_team_rule(self) -> None:
        self.fake.failing["/2.0/workspaces"] = 403
        self.get_failure(self.login(self.provider(bitbucket_team="acme")), ProviderError)

    def test_workspaces_that_cannot_be_listed_do_not_stop_a_login_without_one(self) -> None:
        self.fake.failing["/2.0/workspaces"] = 403
        session = self.get_success(self.login(self.provider()))
        self.assertEqual((session.email, session.groups), ("alice@example.com", ()))


class BitbucketConformanceTests(ProviderConformance, SynchronousTestCase):
    def make_subject(self, clock: Clock) -> ProviderSubject:
        fake, http = bitbucket_world(clock)
        config = provider_config(
            provider="bitbucket", client_id=CLIENT_ID, client_secret=CLIENT_SECRET
        )
        return ProviderSubject(
            provider=factory.build(config, http, clock),
            http=http,
            code=fake.issue_code(),
            redirect_uri=REDIRECT,
            email="alice@example.com",
            break_api=fake.break_api,
            refreshes=False,
        )
