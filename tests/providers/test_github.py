"""Tests for oauthgate.providers.github, against an in-memory GitHub.

The fake serves github.com's OAuth endpoints and the REST API at api.github.com as
GitHub documents them: the token endpoint answers JSON (errors too, with HTTP 200),
the API wants ``Authorization: token <at>``, listings page with ``Link`` headers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, parse_qsl, unquote, urlsplit

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface.verify import verifyObject

from oauthgate.errors import ConfigError, ProviderError
from oauthgate.interfaces import IProvider, IProviderFactory
from oauthgate.plugins import Plugins
from oauthgate.providers.github import (
    ACCESS_RECHECK,
    GitHubProvider,
    api_base,
    factory,
    next_link,
)
from oauthgate.session import Session
from oauthgate.testing import ByHost, GateTestCase, MemoryHTTPClient, memory_http_client
from oauthgate.testing.conformance import (
    ProviderConformance,
    ProviderSubject,
    provider_config,
)

CLIENT_ID = "gh-client"
CLIENT_SECRET = "gh-secret"
REDIRECT = "https://app.test/oauth2/callback"
OWNER_TOKEN = "owner-token-123"
T0 = 1_700_000_000.0


@attrs.define
class GitHubUser:
    login: str
    emails: list[dict[str, Any]]
    orgs: list[dict[str, Any]] = attrs.Factory(list)
    teams: list[dict[str, Any]] = attrs.Factory(list)


def alice() -> GitHubUser:
    return GitHubUser(
        login="alice",
        emails=[
            {"email": "alice@users.noreply.github.com", "primary": False, "verified": True},
            {"email": "alice@example.com", "primary": True, "verified": True},
        ],
        orgs=[{"login": "acme", "id": 1}, {"login": "widgets", "id": 2}, {"login": "oss", "id": 3}],
        teams=[
            {"slug": "core", "name": "Core", "organization": {"login": "acme"}},
            {"slug": "docs", "name": "Docs", "organization": {"login": "oss"}},
        ],
    )


@attrs.define(eq=False)
class FakeGitHub(Resource):
    """github.com (``/login/oauth/...``) and its API, on whatever hosts it is mounted.

    ``api_prefix`` is where the API lives on its host ("" for api.github.com,
    "/api/v3" for GitHub Enterprise).
    """

    isLeaf = True

    api_host: str = "https://api.github.com"
    api_prefix: str = ""
    page_size: int = 2
    users: dict[str, GitHubUser] = attrs.Factory(lambda: {"alice": alice()})
    codes: dict[str, str] = attrs.Factory(dict)  # code -> login
    tokens: dict[str, str] = attrs.Factory(dict)  # access token -> login
    repos: dict[str, dict[str, Any]] = attrs.Factory(dict)  # owner/repo -> {login: repo json}
    collaborators: dict[str, set[str]] = attrs.Factory(dict)
    broken: int | None = None
    failing: dict[str, int] = attrs.Factory(dict)  # API path -> status it answers
    next_link_override: str | None = None
    requests: list[tuple[str, str, dict[str, str]]] = attrs.Factory(list)

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)

    def issue_code(self, login: str = "alice") -> str:
        code = f"code-{len(self.codes) + 1}"
        self.codes[code] = login
        return code

    def break_api(self) -> None:
        self.broken = 503

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.requests]

    def render(self, request: Request) -> bytes:
        path = request.path.decode()
        headers = {
            k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()
        }
        self.requests.append((request.method.decode(), request.uri.decode(), headers))
        if self.broken is not None:
            return self._json(request, {"message": "Service unavailable"}, self.broken)
        if path == "/login/oauth/access_token":
            return self._token(request)
        if not path.startswith(self.api_prefix + "/"):
            return self._json(request, {"message": "Not Found"}, 404)
        return self._api(request, path[len(self.api_prefix) :], headers)

    def _token(self, request: Request) -> bytes:
        form = dict(parse_qsl(request.content.read().decode() if request.content else ""))
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return self._json(request, {"error": "incorrect_client_credentials"})
        login = self.codes.pop(form.get("code", ""), None)
        if login is None or form.get("redirect_uri") != REDIRECT:
            return self._json(
                request,
                {
                    "error": "bad_verification_code",
                    "error_description": "The code passed is incorrect or expired.",
                },
            )
        token = f"gho_{login}_{len(self.tokens) + 1}"
        self.tokens[token] = login
        return self._json(
            request, {"access_token": token, "token_type": "bearer", "scope": "user:email,read:org"}
        )

    def _api(self, request: Request, path: str, headers: dict[str, str]) -> bytes:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme != "token":
            return self._json(request, {"message": "Requires authentication"}, 401)
        if token == OWNER_TOKEN and path.startswith("/repos/") and "/collaborators/" in path:
            repo, _, login = path[len("/repos/") :].partition("/collaborators/")
            request.setResponseCode(
                204 if unquote(login) in self.collaborators.get(repo, set()) else 404
            )
            return b""
        owner = self.tokens.get(token)
        if owner is None:
            return self._json(request, {"message": "Bad credentials"}, 401)
        user = self.users[owner]
        if path in self.failing:
            return self._json(request, {"message": "Forbidden"}, self.failing[path])
        if path == "/user":
            return self._json(request, {"login": user.login, "id": 42, "type": "User"})
        if path == "/user/emails":
            return self._json(request, user.emails)
        if path == "/user/orgs":
            return self._page(request, path, user.orgs)
        if path == "/user/teams":
            return self._page(request, path, user.teams)
        if path.startswith("/repos/"):
            found = self.repos.get(path[len("/repos/") :], {}).get(owner)
            if found is None:
                return self._json(request, {"message": "Not Found"}, 404)
            return self._json(request, found)
        return self._json(request, {"message": "Not Found"}, 404)

    def _page(self, request: Request, path: str, entries: Sequence[Any]) -> bytes:
        query = parse_qs(urlsplit(request.uri.decode()).query)
        page = int(query.get("page", ["1"])[0])
        size = min(self.page_size, int(query.get("per_page", ["30"])[0]))
        chunk = entries[(page - 1) * size : page * size]
        links = []
        base = f"{self.api_host}{self.api_prefix}{path}?per_page={query.get('per_page', ['30'])[0]}"
        if page * size < len(entries):
            links.append(f'<{self.next_link_override or base + f"&page={page + 1}"}>; rel="next"')
            last = (len(entries) + size - 1) // size
            links.append(f'<{base}&page={last}>; rel="last"')
        if page > 1:
            links.append(f'<{base}&page=1>; rel="first"')
        if links:
            request.setHeader(b"Link", ", ".join(links).encode())
        return self._json(request, list(chunk))

    @staticmethod
    def _json(request: Request, body: Any, status: int = 200) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        return json.dumps(body).encode()


def github_world(
    clock: Clock, fake: FakeGitHub | None = None
) -> tuple[FakeGitHub, MemoryHTTPClient]:
    fake = fake or FakeGitHub()
    http = memory_http_client(
        ByHost({"github.com": fake, "api.github.com": fake, "ghe.test": fake, "evil.test": fake}),
        clock=clock,
    )
    return fake, http


class GitHubTestCase(GateTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.fake, self.http = github_world(self.clock)

    def provider(self, **options: Any) -> GitHubProvider:
        config = provider_config(
            provider="github", client_id=CLIENT_ID, client_secret=CLIENT_SECRET, **options
        )
        built = factory.build(config, self.http, self.clock)
        assert isinstance(built, GitHubProvider)
        return built

    async def login(self, provider: GitHubProvider, login: str = "alice") -> Session:
        session = await provider.redeem(self.fake.issue_code(login), None, REDIRECT, "nonce")
        return await provider.enrich(session)

    def allowed(self, provider: GitHubProvider, session: Session) -> bool:
        return self.get_success(provider.authorize(session))


class FactoryTests(GitHubTestCase):
    def test_factory_and_provider_provide_their_interfaces(self) -> None:
        self.assertTrue(verifyObject(IProviderFactory, factory))
        self.assertTrue(verifyObject(IProvider, self.provider()))
        self.assertEqual((factory.name, self.provider().id), ("github", "github"))
        self.assertEqual(self.provider().display_name, "GitHub")

    def test_the_installed_entry_point_finds_the_factory(self) -> None:
        self.assertIs(Plugins.from_entry_points().provider_factory("github"), factory)

    def test_a_team_without_org_must_be_given_as_org_colon_team(self) -> None:
        with self.assertRaises(ConfigError) as e:
            self.provider(github_team="core")
        self.assertIn("github_team", e.exception.problems[0])
        self.provider(github_team="acme:core")

    def test_a_repo_must_be_owner_slash_name(self) -> None:
        with self.assertRaises(ConfigError) as e:
            self.provider(github_repo="just-a-name")
        self.assertIn("github_repo", e.exception.problems[0])

    def test_a_collaborator_token_needs_a_repo(self) -> None:
        with self.assertRaises(ConfigError) as e:
            self.provider(github_token=OWNER_TOKEN)
        self.assertIn("github_token", e.exception.problems[0])

    def test_the_collaborator_token_never_shows_in_the_config_repr(self) -> None:
        config = provider_config(github_repo="acme/app", github_token=OWNER_TOKEN)
        self.assertNotIn(OWNER_TOKEN, repr(config))


class LoginURLTests(GitHubTestCase):
    def authorize_url(self, provider: GitHubProvider) -> tuple[str, dict[str, list[str]]]:
        url = self.get_success(provider.authorize_url("st", "n", "ch", "S256", REDIRECT, []))
        return url, parse_qs(urlsplit(url).query)

    def test_the_login_goes_to_github_with_the_default_scope(self) -> None:
        url, params = self.authorize_url(self.provider())
        self.assertTrue(url.startswith("https://github.com/login/oauth/authorize?"), url)
        self.assertEqual(params["client_id"], [CLIENT_ID])
        self.assertEqual(params["redirect_uri"], [REDIRECT])
        self.assertEqual(params["state"], ["st"])
        self.assertEqual(params["scope"], ["user:email read:org"])
        self.assertEqual(params["code_challenge"], ["ch"])

    def test_a_configured_scope_and_login_url_are_used(self) -> None:
        url, params = self.authorize_url(
            self.provider(scope="user:email", login_url="https://ghe.test/login/oauth/authorize")
        )
        self.assertTrue(url.startswith("https://ghe.test/login/oauth/authorize?"), url)
        self.assertEqual(params["scope"], ["user:email"])


class IdentityTests(GitHubTestCase):
    def test_login_gives_the_login_the_primary_verified_email_and_orgs_and_teams(self) -> None:
        session = self.get_success(self.login(self.provider()))
        self.assertEqual(session.user, "alice")
        self.assertEqual(session.email, "alice@example.com")
        self.assertEqual(session.groups, ("acme", "widgets", "oss", "acme:core", "oss:docs"))
        self.assertEqual(session.provider, "github")
        self.assertEqual(session.created_at, T0)
        self.assertTrue(session.access_token.startswith("gho_alice_"))

    def test_every_page_of_orgs_is_read_through_the_link_header(self) -> None:
        self.fake.users["alice"].orgs = [{"login": f"org{i}"} for i in range(7)]
        session = self.get_success(self.login(self.provider()))
        self.assertEqual(session.groups[:7], tuple(f"org{i}" for i in range(7)))
        orgs = [p for p in self.fake.paths() if p.startswith("/user/orgs")]
        self.assertEqual(
            orgs,
            ["/user/orgs?per_page=100"] + [f"/user/orgs?per_page=100&page={n}" for n in (2, 3, 4)],
        )

    def test_a_pagination_link_to_another_host_is_not_followed(self) -> None:
        """The access token goes to the API's host only."""
        self.fake.next_link_override = "https://evil.test/user/orgs?page=2"
        with capturedLogs() as events:
            session = self.get_success(self.login(self.provider()))
        self.assertEqual(session.groups[:2], ("acme", "widgets"))
        self.assertNotIn("oss", session.groups)
        self.assertFalse([u for _, u, _ in self.fake.requests if "evil" in u])
        self.assertTrue([e for e in events if "another host" in e.get("log_format", "")])

    def test_api_requests_carry_the_token_and_the_v3_media_type(self) -> None:
        session = self.get_success(self.login(self.provider()))
        for _method, uri, headers in self.fake.requests:
            if uri.startswith("/user"):
                self.assertEqual(headers["authorization"], f"token {session.access_token}")
                self.assertEqual(headers["accept"], "application/vnd.github.v3+json")

    def test_the_code_is_redeemed_with_the_client_credentials_and_redirect_uri(self) -> None:
        self.get_success(self.login(self.provider()))
        method, uri, headers = self.fake.requests[0]
        self.assertEqual((method, uri), ("POST", "/login/oauth/access_token"))
        self.assertIn("application/json", headers["accept"])

    def test_without_a_primary_verified_email_the_login_fails(self) -> None:
        self.fake.users["alice"].emails = [
            {"email": "alice@example.com", "primary": True, "verified": False},
            {"email": "other@example.com", "primary": False, "verified": True},
        ]
        error = self.get_failure(self.login(self.provider()), ProviderError)
        self.assertIn("no email", str(error))

    def test_a_bad_code_is_a_provider_error(self) -> None:
        provider = self.provider()
        error = self.get_failure(provider.redeem("wrong", None, REDIRECT, "n"), ProviderError)
        self.assertIn("bad_verification_code", str(error))
        self.assertNotIn("wrong", str(error))

    def test_a_failing_api_is_a_provider_error(self) -> None:
        provider = self.provider()
        session = self.get_success(provider.redeem(self.fake.issue_code(), None, REDIRECT, "n"))
        self.fake.break_api()
        error = self.get_failure(provider.enrich(session), ProviderError)
        self.assertIn("503", str(error))
        self.assertNotIn(session.access_token, str(error))

    def test_a_revoked_token_is_a_provider_error(self) -> None:
        provider = self.provider()
        session = self.get_success(provider.redeem(self.fake.issue_code(), None, REDIRECT, "n"))
        self.fake.tokens.clear()
        self.assertIn("401", str(self.get_failure(provider.enrich(session), ProviderError)))

    def test_an_api_that_does_not_answer_times_out_as_a_provider_error(self) -> None:
        provider = self.provider()
        session = self.get_success(provider.redeem(self.fake.issue_code(), None, REDIRECT, "n"))
        stuck = factory.build(provider._config, memory_http_client(_Hang()), self.clock)
        d = Deferred.fromCoroutine(stuck.enrich(session))
        self.assertNoResult(d)
        self.clock.advance(10)
        self.assertIn("did not answer", str(self.failureResultOf(d, ProviderError).value))

    def test_orgs_that_cannot_be_listed_do_not_stop_a_login_without_org_rules(self) -> None:
        provider = self.provider()
        self.fake.failing["/user/teams"] = 403
        session = self.get_success(self.login(provider))
        self.assertEqual((session.email, session.groups), ("alice@example.com", ()))

    def test_orgs_that_cannot_be_listed_stop_a_login_with_an_org_rule(self) -> None:
        self.fake.failing["/user/orgs"] = 403
        self.get_failure(self.login(self.provider(github_org="acme")), ProviderError)

    def test_github_does_not_refresh(self) -> None:
        provider = self.provider()
        session = attrs.evolve(self.get_success(self.login(provider)), refresh_token="r")
        self.assertIsNone(self.get_success(provider.refresh(session)))


class _Hang(Resource):
    isLeaf = True

    def render(self, request: Request) -> int:
        return NOT_DONE_YET


class EnterpriseAndGiteaTests(GitHubTestCase):
    def test_github_enterprise_uses_the_api_base_of_validate_url(self) -> None:
        fake, self.http = github_world(
            self.clock, FakeGitHub(api_host="https://ghe.test", api_prefix="/api/v3")
        )
        self.fake = fake
        provider = self.provider(
            login_url="https://ghe.test/login/oauth/authorize",
            redeem_url="https://ghe.test/login/oauth/access_token",
            validate_url="https://ghe.test/api/v3/",
        )
        session = self.get_success(self.login(provider))
        self.assertEqual((session.user, session.email), ("alice", "alice@example.com"))
        self.assertIn("/api/v3/user/emails", fake.paths())
        self.assertIn("acme:core", session.groups)

    def test_gitea_validate_url_and_org_names_work(self) -> None:
        """Gitea's documented validate URL ends in /user/emails; its orgs have ``name``."""
        fake, self.http = github_world(
            self.clock, FakeGitHub(api_host="https://ghe.test", api_prefix="/api/v1")
        )
        self.fake = fake
        fake.users["alice"].orgs = [{"id": 1, "name": "acme", "username": "acme"}]
        fake.users["alice"].teams = [{"id": 5, "name": "Owners", "organization": {"name": "acme"}}]
        provider = self.provider(
            login_url="https://ghe.test/login/oauth/authorize",
            redeem_url="https://ghe.test/login/oauth/access_token",
            validate_url="https://ghe.test/api/v1/user/emails",
        )
        session = self.get_success(self.login(provider))
        self.assertEqual(session.groups, ("acme", "acme:Owners"))
        self.assertIn("/api/v1/user", fake.paths())

    def test_api_base_accepts_every_documented_form(self) -> None:
        self.assertEqual(api_base(""), "https://api.github.com")
        self.assertEqual(api_base("https://api.github.com/"), "https://api.github.com")
        self.assertEqual(api_base("https://ghe.test/api/v3"), "https://ghe.test/api/v3")
        self.assertEqual(api_base("https://git.test/api/v1/user/emails"), "https://git.test/api/v1")

    def test_next_link_finds_rel_next_among_others(self) -> None:
        header = '<https://a/x?page=3>; rel="last", <https://a/x?page=2>; rel="next"'
        self.assertEqual(next_link(header), "https://a/x?page=2")
        self.assertIsNone(next_link('<https://a/x?page=1>; rel="first"'))
        self.assertIsNone(next_link(None))


class OrgAndTeamRuleTests(GitHubTestCase):
    def test_members_of_the_org_pass_and_others_do_not(self) -> None:
        provider = self.provider(github_org="acme")
        session = self.get_success(self.login(provider))
        self.assertTrue(self.allowed(provider, session))
        self.assertFalse(self.allowed(provider, attrs.evolve(session, groups=("widgets",))))

    def test_org_names_match_whatever_their_case(self) -> None:
        provider = self.provider(github_org="ACME")
        self.assertTrue(self.allowed(provider, self.get_success(self.login(provider))))

    def test_a_team_of_the_org_admits_and_a_team_of_another_org_does_not(self) -> None:
        provider = self.provider(github_org="acme", github_team="core, ops")
        session = self.get_success(self.login(provider))
        self.assertTrue(self.allowed(provider, session))
        self.assertFalse(self.allowed(provider, attrs.evolve(session, groups=("acme", "oss:core"))))

    def test_org_membership_alone_does_not_satisfy_a_team_rule(self) -> None:
        provider = self.provider(github_org="acme", github_team="ops")
        self.assertFalse(self.allowed(provider, self.get_success(self.login(provider))))

    def test_teams_given_as_org_colon_team_work_without_an_org(self) -> None:
        provider = self.provider(github_team="oss:docs,acme:ops")
        self.assertTrue(self.allowed(provider, self.get_success(self.login(provider))))
        provider = self.provider(github_team="acme:ops")
        self.assertFalse(self.allowed(provider, self.get_success(self.login(provider))))

    def test_listed_users_pass_whatever_the_other_rules(self) -> None:
        provider = self.provider(github_org="nope", github_users=("someone", "Alice"))
        self.assertTrue(self.allowed(provider, self.get_success(self.login(provider))))

    def test_with_only_a_users_list_everyone_else_is_refused(self) -> None:
        provider = self.provider(github_users=("bob",))
        with capturedLogs() as events:
            self.assertFalse(self.allowed(provider, self.get_success(self.login(provider))))
        self.assertTrue([e for e in events if "refused" in e.get("log_format", "")])

    def test_without_rules_everyone_passes(self) -> None:
        provider = self.provider()
        self.assertTrue(self.allowed(provider, self.get_success(self.login(provider))))


class RepoRuleTests(GitHubTestCase):
    def repo(self, *, private: bool, push: bool, pull: bool = True) -> None:
        self.fake.repos["acme/app"] = {
            "alice": {
                "full_name": "acme/app",
                "private": private,
                "permissions": {"admin": False, "push": push, "pull": pull},
            }
        }

    def test_push_access_admits(self) -> None:
        self.repo(private=False, push=True)
        provider = self.provider(github_repo="acme/app")
        self.assertTrue(self.allowed(provider, self.get_success(self.login(provider))))

    def test_pull_access_to_a_public_repo_is_not_enough(self) -> None:
        self.repo(private=False, push=False)
        provider = self.provider(github_repo="acme/app")
        self.assertFalse(self.allowed(provider, self.get_success(self.login(provider))))

    def test_pull_access_to_a_private_repo_admits(self) -> None:
        self.repo(private=True, push=False)
        provider = self.provider(github_repo="acme/app")
        self.assertTrue(self.allowed(provider, self.get_success(self.login(provider))))

    def test_a_repo_the_user_cannot_see_refuses(self) -> None:
        provider = self.provider(github_repo="acme/secret")
        self.assertFalse(self.allowed(provider, self.get_success(self.login(provider))))

    def test_the_org_rule_and_the_repo_rule_must_both_hold(self) -> None:
        self.repo(private=False, push=False)
        provider = self.provider(github_org="acme", github_repo="acme/app")
        self.assertFalse(self.allowed(provider, self.get_success(self.login(provider))))

    def test_the_decision_is_reused_until_it_is_rechecked(self) -> None:
        self.repo(private=False, push=True)
        provider = self.provider(github_repo="acme/app")
        session = self.get_success(self.login(provider))
        self.assertTrue(self.allowed(provider, session))
        asked = self.fake.paths().count("/repos/acme/app")
        self.clock.advance(ACCESS_RECHECK - 1)
        self.repo(private=False, push=False)  # push access taken away
        self.assertTrue(self.allowed(provider, session))
        self.assertEqual(self.fake.paths().count("/repos/acme/app"), asked)
        self.clock.advance(1)
        self.assertFalse(self.allowed(provider, session))
        self.assertEqual(self.fake.paths().count("/repos/acme/app"), asked + 1)

    def test_a_failing_api_refuses_without_raising(self) -> None:
        self.repo(private=False, push=True)
        provider = self.provider(github_repo="acme/app")
        session = self.get_success(self.login(provider))
        self.fake.break_api()
        with capturedLogs() as events:
            self.assertFalse(self.allowed(provider, session))
        self.assertTrue([e for e in events if e["log_level"].name == "error"])

    def test_collaborators_pass_when_checked_with_the_owner_token(self) -> None:
        self.fake.collaborators["acme/app"] = {"alice"}
        provider = self.provider(github_repo="acme/app", github_token=OWNER_TOKEN)
        self.assertTrue(self.allowed(provider, self.get_success(self.login(provider))))
        _method, uri, headers = self.fake.requests[-1]
        self.assertEqual(uri, "/repos/acme/app/collaborators/alice")
        self.assertEqual(headers["authorization"], f"token {OWNER_TOKEN}")

    def test_non_collaborators_are_refused(self) -> None:
        self.fake.collaborators["acme/app"] = {"bob"}
        provider = self.provider(github_repo="acme/app", github_token=OWNER_TOKEN)
        self.assertFalse(self.allowed(provider, self.get_success(self.login(provider))))


class GitHubConformanceTests(ProviderConformance, SynchronousTestCase):
    def make_subject(self, clock: Clock) -> ProviderSubject:
        fake, http = github_world(clock)
        config = provider_config(
            provider="github", client_id=CLIENT_ID, client_secret=CLIENT_SECRET
        )
        return ProviderSubject(
            provider=factory.build(config, http, clock),
            http=http,
            code=fake.issue_code("alice"),
            redirect_uri=REDIRECT,
            email="alice@example.com",
            break_api=fake.break_api,
            refreshes=False,
        )
