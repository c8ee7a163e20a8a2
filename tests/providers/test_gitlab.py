"""Tests for oauthgate.providers.gitlab, against an in-memory GitLab.

The fake answers as GitLab documents its OpenID Connect provider (discovery, keys at
``/oauth/discovery/keys``, ``/oauth/token``, ``/oauth/userinfo`` with ``nickname`` and
``groups``) and its projects API (``/api/v4/projects/<url-encoded path>`` with
``permissions.project_access`` / ``group_access``). GHSA-652x-m2gr-hppm (GitLab group
authorization silently off) is checked at the provider and through the whole gate.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qs, parse_qsl, quote, urlsplit

import attrs
import jwt
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface.verify import verifyObject

from oauthgate.errors import ConfigError, ProviderError, RefreshError, TokenError
from oauthgate.interfaces import IProvider, IProviderFactory
from oauthgate.plugins import Plugins
from oauthgate.providers.gitlab import GitLabProject, GitLabProvider, factory, parse_project
from oauthgate.session import Session
from oauthgate.testing import ByHost, GateTestCase, MemoryHTTPClient, memory_http_client
from oauthgate.testing.conformance import (
    NONCE,
    ProviderConformance,
    ProviderSubject,
    provider_config,
)
from tests.providers.idp import RS256
from tests.web.test_gate import make_world

BASE = "https://gitlab.test"
CLIENT_ID = "gl-app"
CLIENT_SECRET = "gl-secret"
REDIRECT = "https://app.test/oauth2/callback"
T0 = 1_700_000_000.0


def alice_info() -> dict[str, Any]:
    return {
        "sub": "1001",
        "sub_legacy": "4f0d1b...",
        "name": "Alice Example",
        "nickname": "alice",
        "preferred_username": "alice",
        "email": "alice@example.com",
        "email_verified": True,
        "website": "",
        "profile": "https://gitlab.test/alice",
        "picture": "https://gitlab.test/uploads/alice.png",
        "groups": ["acme", "acme/platform"],
        "groups_direct": ["acme/platform"],
    }


@attrs.define(eq=False)
class FakeGitLab(Resource):
    """A GitLab instance at BASE: its OIDC endpoints and the projects API."""

    isLeaf = True

    clock: Clock
    users: dict[str, dict[str, Any]] = attrs.Factory(lambda: {"alice": alice_info()})
    projects: dict[str, dict[str, Any]] = attrs.Factory(dict)  # path -> project json for alice
    codes: dict[str, tuple[str, str | None]] = attrs.Factory(dict)  # code -> (user, nonce)
    access: dict[str, str] = attrs.Factory(dict)  # token -> user
    refresh_tokens: dict[str, str] = attrs.Factory(dict)
    broken: int | None = None
    fail_paths: dict[str, int] = attrs.Factory(dict)
    refresh_error: str | None = None
    userinfo_override: dict[str, Any] | None = None
    requests: list[tuple[str, str, dict[str, str]]] = attrs.Factory(list)

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)

    def issue_code(self, user: str = "alice", nonce: str | None = NONCE) -> str:
        code = f"glc-{len(self.codes) + 1}"
        self.codes[code] = (user, nonce)
        return code

    def break_api(self) -> None:
        self.broken = 503

    def paths(self) -> list[str]:
        return [uri for _, uri, _ in self.requests]

    def render(self, request: Request) -> bytes:
        path = request.path.decode()
        headers = {
            k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()
        }
        self.requests.append((request.method.decode(), request.uri.decode(), headers))
        if self.broken is not None:
            return self._json(request, {"message": "503 Service Unavailable"}, self.broken)
        if path in self.fail_paths:
            return self._json(request, {"message": "failing"}, self.fail_paths[path])
        if path == "/.well-known/openid-configuration":
            return self._json(
                request,
                {
                    "issuer": BASE,
                    "authorization_endpoint": BASE + "/oauth/authorize",
                    "token_endpoint": BASE + "/oauth/token",
                    "revocation_endpoint": BASE + "/oauth/revoke",
                    "introspection_endpoint": BASE + "/oauth/introspect",
                    "userinfo_endpoint": BASE + "/oauth/userinfo",
                    "jwks_uri": BASE + "/oauth/discovery/keys",
                    "scopes_supported": [
                        "api",
                        "read_api",
                        "read_user",
                        "openid",
                        "profile",
                        "email",
                    ],
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "code_challenge_methods_supported": ["plain", "S256"],
                },
            )
        if path == "/oauth/discovery/keys":
            return self._json(request, {"keys": [RS256.jwk()]})
        if path == "/oauth/token":
            return self._token(request, headers)
        if path == "/oauth/userinfo":
            return self._userinfo(request, headers)
        if path.startswith("/api/v4/projects/"):
            return self._project(request, headers)
        return self._json(request, {"error": "404 Not Found"}, 404)

    def _token(self, request: Request, headers: dict[str, str]) -> bytes:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        pair = base64.b64decode(value).decode() if scheme == "Basic" else ""
        if pair != f"{CLIENT_ID}:{CLIENT_SECRET}":
            return self._json(request, {"error": "invalid_client"}, 401)
        form = dict(parse_qsl(request.content.read().decode() if request.content else ""))
        if form.get("grant_type") == "authorization_code":
            found = self.codes.pop(form.get("code", ""), None)
            if found is None or form.get("redirect_uri") != REDIRECT:
                return self._json(request, {"error": "invalid_grant"}, 400)
            return self._json(request, self._tokens(*found))
        if form.get("grant_type") == "refresh_token":
            if self.refresh_error is not None:
                return self._json(request, {"error": self.refresh_error}, 400)
            user = self.refresh_tokens.pop(form.get("refresh_token", ""), None)
            if user is None:
                return self._json(request, {"error": "invalid_grant"}, 400)
            return self._json(request, self._tokens(user, None))
        return self._json(request, {"error": "unsupported_grant_type"}, 400)

    def _tokens(self, user: str, nonce: str | None) -> dict[str, Any]:
        n = len(self.access) + 1
        access, refresh = f"glat-{user}-{n}", f"glrt-{user}-{n}"
        self.access[access] = user
        self.refresh_tokens[refresh] = user
        now = int(self.clock.seconds())
        claims = {
            "iss": BASE,
            "sub": self.users[user]["sub"],
            "aud": CLIENT_ID,
            "exp": now + 120,
            "iat": now,
            "auth_time": now,
            "sub_legacy": "4f0d1b...",
            "groups_direct": self.users[user]["groups_direct"],
        }
        if nonce is not None:
            claims["nonce"] = nonce
        id_token = jwt.encode(claims, RS256.private, algorithm="RS256", headers={"kid": RS256.kid})
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": 7200,
            "refresh_token": refresh,
            "scope": "openid email",
            "created_at": now,
            "id_token": id_token,
        }

    def _user(self, headers: dict[str, str]) -> str | None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return self.access.get(token) if scheme == "Bearer" else None

    def _userinfo(self, request: Request, headers: dict[str, str]) -> bytes:
        user = self._user(headers)
        if user is None:
            return self._json(request, {"error": "invalid_token"}, 401)
        return self._json(request, self.userinfo_override or self.users[user])

    def _project(self, request: Request, headers: dict[str, str]) -> bytes:
        if self._user(headers) is None:
            return self._json(request, {"message": "401 Unauthorized"}, 401)
        encoded = request.uri.decode().split("/api/v4/projects/", 1)[1]
        for path, project in self.projects.items():
            if quote(path, safe="") == encoded:
                return self._json(request, project)
        return self._json(request, {"message": "404 Project Not Found"}, 404)

    @staticmethod
    def _json(request: Request, body: Any, status: int = 200) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        return json.dumps(body).encode()


def project(
    path: str,
    *,
    project_level: int | None = 30,
    group_level: int | None = None,
    archived: bool = False,
) -> dict[str, Any]:
    return {
        "id": 7,
        "path_with_namespace": path,
        "archived": archived,
        "permissions": {
            "project_access": {"access_level": project_level, "notification_level": 3}
            if project_level is not None
            else None,
            "group_access": {"access_level": group_level, "notification_level": 3}
            if group_level is not None
            else None,
        },
    }


def gitlab_world(clock: Clock) -> tuple[FakeGitLab, MemoryHTTPClient]:
    fake = FakeGitLab(clock)
    return fake, memory_http_client(ByHost({"gitlab.test": fake}), clock=clock)


class GitLabTestCase(GateTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.fake, self.http = gitlab_world(self.clock)

    def provider(self, **options: Any) -> GitLabProvider:
        options.setdefault("oidc_issuer_url", BASE)
        config = provider_config(
            provider="gitlab", client_id=CLIENT_ID, client_secret=CLIENT_SECRET, **options
        )
        built = factory.build(config, self.http, self.clock)
        assert isinstance(built, GitLabProvider)
        return built

    async def login(self, provider: GitLabProvider) -> Session:
        session = await provider.redeem(self.fake.issue_code(), None, REDIRECT, NONCE)
        return await provider.enrich(session)


class FactoryTests(GitLabTestCase):
    def test_factory_and_provider_provide_their_interfaces(self) -> None:
        self.assertTrue(verifyObject(IProviderFactory, factory))
        self.assertTrue(verifyObject(IProvider, self.provider()))
        self.assertEqual((factory.name, self.provider().id), ("gitlab", "gitlab"))
        self.assertEqual(self.provider().display_name, "GitLab")

    def test_the_installed_entry_point_finds_the_factory(self) -> None:
        self.assertIs(Plugins.from_entry_points().provider_factory("gitlab"), factory)

    def test_the_issuer_is_gitlab_com_unless_set(self) -> None:
        self.assertEqual(self.provider(oidc_issuer_url="").base_url, "https://gitlab.com")
        self.assertEqual(self.provider().base_url, BASE)

    def test_malformed_project_rules_are_configuration_errors(self) -> None:
        with self.assertRaises(ConfigError) as e:
            self.provider(gitlab_projects=("noslash", "acme/app=25", "acme/app=x"))
        self.assertEqual(len(e.exception.problems), 3)
        self.assertTrue(all(p.startswith("gitlab_projects:") for p in e.exception.problems))

    def test_project_rules_parse_with_a_default_level_of_reporter(self) -> None:
        self.assertEqual(parse_project("acme/app"), GitLabProject("acme/app", 20))
        self.assertEqual(parse_project(" acme/sub/app=40 "), GitLabProject("acme/sub/app", 40))
        self.assertEqual(parse_project("acme/app").group, "project:acme/app")


class LoginURLTests(GitLabTestCase):
    def scope(self, **options: Any) -> str:
        url = self.get_success(
            self.provider(**options).authorize_url("st", "nonce-1", None, None, REDIRECT, [])
        )
        self.assertTrue(url.startswith(BASE + "/oauth/authorize?"), url)
        params = parse_qs(urlsplit(url).query)
        self.assertEqual(params["nonce"], ["nonce-1"])
        return params["scope"][0]

    def test_the_scope_is_openid_email(self) -> None:
        self.assertEqual(self.scope(), "openid email")
        self.assertEqual(self.scope(allowed_groups=("acme",)), "openid email")

    def test_project_rules_add_read_api_once(self) -> None:
        self.assertEqual(self.scope(gitlab_projects=("acme/app",)), "openid email read_api")
        self.assertEqual(
            self.scope(gitlab_projects=("acme/app",), scope="openid email read_api"),
            "openid email read_api",
        )


class IdentityTests(GitLabTestCase):
    def test_login_takes_the_identity_from_userinfo(self) -> None:
        session = self.get_success(self.login(self.provider()))
        self.assertEqual(session.user, "alice")
        self.assertEqual(session.email, "alice@example.com")
        self.assertEqual(session.groups, ("acme", "acme/platform"))
        self.assertEqual(session.preferred_username, "alice")
        self.assertEqual(session.provider, "gitlab")
        self.assertEqual(session.expires_on, T0 + 7200)
        self.assertTrue(session.refresh_token)

    def test_an_unverified_email_is_refused(self) -> None:
        self.fake.users["alice"]["email_verified"] = False
        error = self.get_failure(self.login(self.provider()), TokenError)
        self.assertIn("not verified", str(error))

    def test_an_unverified_email_passes_with_the_insecure_option(self) -> None:
        self.fake.users["alice"]["email_verified"] = False
        provider = self.provider(insecure_oidc_allow_unverified_email=True)
        self.assertEqual(self.get_success(self.login(provider)).email, "alice@example.com")

    def test_userinfo_about_another_user_is_refused(self) -> None:
        self.fake.userinfo_override = {**alice_info(), "sub": "666", "nickname": "mallory"}
        error = self.get_failure(self.login(self.provider()), ProviderError)
        self.assertIn("another user", str(error))

    def test_a_failing_userinfo_endpoint_is_a_provider_error(self) -> None:
        self.fake.fail_paths["/oauth/userinfo"] = 502
        self.assertIn("502", str(self.get_failure(self.login(self.provider()), ProviderError)))

    def test_a_bad_code_is_a_provider_error(self) -> None:
        error = self.get_failure(
            self.provider().redeem("nope", None, REDIRECT, NONCE), ProviderError
        )
        self.assertIn("invalid_grant", str(error))


class ProjectTests(GitLabTestCase):
    def groups(self, *rules: str) -> tuple[str, ...]:
        return self.get_success(self.login(self.provider(gitlab_projects=rules))).groups

    def test_enough_access_gives_the_project_group(self) -> None:
        self.fake.projects["acme/app"] = project("acme/app", project_level=30)
        self.assertEqual(self.groups("acme/app"), ("acme", "acme/platform", "project:acme/app"))

    def test_the_project_is_asked_under_its_url_encoded_path_with_the_token(self) -> None:
        self.fake.projects["acme/sub/app"] = project("acme/sub/app")
        self.groups("acme/sub/app")
        method, uri, headers = self.fake.requests[-1]
        self.assertEqual((method, uri), ("GET", "/api/v4/projects/acme%2Fsub%2Fapp"))
        self.assertTrue(headers["authorization"].startswith("Bearer glat-alice-"))

    def test_too_little_access_gives_no_group(self) -> None:
        self.fake.projects["acme/app"] = project("acme/app", project_level=10)
        self.assertEqual(self.groups("acme/app"), ("acme", "acme/platform"))

    def test_a_configured_level_is_required(self) -> None:
        self.fake.projects["acme/app"] = project("acme/app", project_level=30)
        self.assertNotIn("project:acme/app", self.groups("acme/app=40"))

    def test_group_access_counts_when_it_is_higher(self) -> None:
        self.fake.projects["acme/app"] = project("acme/app", project_level=None, group_level=40)
        self.assertIn("project:acme/app", self.groups("acme/app=40"))

    def test_an_archived_project_gives_no_group(self) -> None:
        self.fake.projects["acme/app"] = project("acme/app", archived=True)
        self.assertNotIn("project:acme/app", self.groups("acme/app"))

    def test_an_unknown_project_gives_no_group(self) -> None:
        self.assertNotIn("project:acme/app", self.groups("acme/app"))

    def test_a_failing_projects_api_gives_no_group_and_is_logged(self) -> None:
        self.fake.fail_paths["/api/v4/projects/acme%2Fapp"] = 503
        with capturedLogs() as events:
            self.assertNotIn("project:acme/app", self.groups("acme/app"))
        self.assertTrue([e for e in events if "acme/app" in str(e.get("project"))])


class AuthorizationTests(GitLabTestCase):
    """GHSA-652x-m2gr-hppm: configured group and project rules are enforced."""

    def test_a_member_of_an_allowed_group_passes(self) -> None:
        provider = self.provider(gitlab_groups=("acme/platform",))
        self.assertTrue(
            self.get_success(provider.authorize(self.get_success(self.login(provider))))
        )

    def test_a_user_outside_the_allowed_groups_is_refused(self) -> None:
        provider = self.provider(gitlab_groups=("acme/security", "other"))
        session = self.get_success(self.login(provider))
        with capturedLogs() as events:
            self.assertFalse(self.get_success(provider.authorize(session)))
        self.assertTrue([e for e in events if "refused" in e.get("log_format", "")])

    def test_a_project_rule_admits_its_members_besides_the_groups(self) -> None:
        self.fake.projects["acme/app"] = project("acme/app")
        provider = self.provider(gitlab_groups=("other",), gitlab_projects=("acme/app",))
        self.assertTrue(
            self.get_success(provider.authorize(self.get_success(self.login(provider))))
        )

    def test_a_project_rule_alone_refuses_non_members(self) -> None:
        provider = self.provider(gitlab_projects=("acme/app",))
        self.assertFalse(
            self.get_success(provider.authorize(self.get_success(self.login(provider))))
        )

    def test_a_group_name_is_not_matched_by_prefix(self) -> None:
        provider = self.provider(gitlab_groups=("acme/plat",))
        self.assertFalse(
            self.get_success(provider.authorize(self.get_success(self.login(provider))))
        )

    def test_without_rules_everyone_passes(self) -> None:
        provider = self.provider()
        self.assertTrue(
            self.get_success(provider.authorize(self.get_success(self.login(provider))))
        )


class GateTests(SynchronousTestCase):
    """GHSA-652x-m2gr-hppm through the whole gate: login, callback, 403 or the app."""

    def login_status(self, **changes: Any) -> int:
        world = make_world(provider="gitlab", **changes)
        d = Deferred.fromCoroutine(world.login("/"))
        world.flush()
        return int(self.successResultOf(d).status)

    def test_a_user_outside_gitlab_groups_gets_403(self) -> None:
        self.assertEqual(self.login_status(gitlab_groups=("ops",)), 403)

    def test_a_user_in_gitlab_groups_reaches_the_app(self) -> None:
        self.assertEqual(self.login_status(gitlab_groups=("admins",)), 200)


class RefreshTests(GitLabTestCase):
    def logged_in(self, **options: Any) -> tuple[GitLabProvider, Session]:
        provider = self.provider(**options)
        return provider, self.get_success(self.login(provider))

    def test_refresh_gives_new_tokens_and_reads_the_identity_again(self) -> None:
        self.fake.projects["acme/app"] = project("acme/app")
        provider, session = self.logged_in(gitlab_projects=("acme/app",))
        self.assertIn("project:acme/app", session.groups)
        self.clock.advance(100)
        self.fake.users["alice"]["groups"] = ["acme"]
        self.fake.projects["acme/app"] = project("acme/app", project_level=10)
        refreshed = self.get_success(provider.refresh(session))
        assert refreshed is not None
        self.assertNotEqual(refreshed.access_token, session.access_token)
        self.assertNotEqual(refreshed.refresh_token, session.refresh_token)
        self.assertEqual(refreshed.groups, ("acme",))
        self.assertEqual((refreshed.user, refreshed.email), ("alice", "alice@example.com"))
        self.assertEqual(refreshed.created_at, T0 + 100)

    def test_without_a_refresh_token_there_is_no_refresh(self) -> None:
        provider, session = self.logged_in()
        self.assertIsNone(
            self.get_success(provider.refresh(attrs.evolve(session, refresh_token="")))
        )

    def test_a_revoked_grant_ends_the_session(self) -> None:
        provider, session = self.logged_in()
        self.fake.refresh_error = "invalid_grant"
        self.assertTrue(self.get_failure(provider.refresh(session), RefreshError).fatal)

    def test_an_outage_does_not_end_the_session(self) -> None:
        provider, session = self.logged_in()
        self.fake.break_api()
        self.assertFalse(self.get_failure(provider.refresh(session), RefreshError).fatal)

    def test_new_tokens_are_kept_when_userinfo_fails_after_the_refresh(self) -> None:
        """GitLab rotates refresh tokens: losing the new one would end the session later."""
        provider, session = self.logged_in()
        self.fake.fail_paths["/oauth/userinfo"] = 502
        refreshed = self.get_success(provider.refresh(session))
        assert refreshed is not None
        self.assertNotEqual(refreshed.refresh_token, session.refresh_token)
        self.assertEqual(refreshed.groups, session.groups)

    def test_a_refresh_that_turns_into_another_user_ends_the_session(self) -> None:
        provider, session = self.logged_in()
        self.fake.users["alice"]["nickname"] = "alice-renamed"
        self.assertTrue(self.get_failure(provider.refresh(session), RefreshError).fatal)

    def test_an_email_no_longer_verified_ends_the_session(self) -> None:
        provider, session = self.logged_in()
        self.fake.users["alice"]["email_verified"] = False
        self.assertTrue(self.get_failure(provider.refresh(session), RefreshError).fatal)


class GitLabConformanceTests(ProviderConformance, SynchronousTestCase):
    def make_subject(self, clock: Clock) -> ProviderSubject:
        fake, http = gitlab_world(clock)
        config = provider_config(
            provider="gitlab",
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            oidc_issuer_url=BASE,
        )
        return ProviderSubject(
            provider=factory.build(config, http, clock),
            http=http,
            code=fake.issue_code("alice"),
            redirect_uri=REDIRECT,
            email="alice@example.com",
            break_api=fake.break_api,
            refreshes=True,
        )
