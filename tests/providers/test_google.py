"""Tests for oauthgate.providers.google: sign-in with a verified id_token, and groups from
fakes of the Admin SDK Directory API, Google's service account token endpoint and IAM
credentials ``signJwt``, all on the memory client."""

from __future__ import annotations

import json
from typing import Any, TypeVar
from urllib.parse import parse_qs, parse_qsl, unquote, urlsplit

import attrs
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface.verify import verifyObject

from oauthgate.config.options import Config
from oauthgate.errors import ConfigError, ProviderError, RefreshError, TokenError
from oauthgate.interfaces import IProvider, IProviderFactory
from oauthgate.plugins import Plugins
from oauthgate.providers.google import (
    DIRECTORY_SCOPE,
    GoogleProvider,
    GoogleProviderFactory,
    ServiceAccount,
    factory,
)
from oauthgate.testing import (
    ByHost,
    MemoryHTTPClient,
    ProviderConformance,
    ProviderSubject,
    memory_http_client,
    provider_config,
)
from oauthgate.testing.conformance import NONCE as CONFORMANCE_NONCE
from tests.providers.fakes import (
    OIDC_NONCE,
    REDIRECT,
    T0,
    FakeTokenServer,
    FlushingTestCase,
    started_clock,
    subject,
)
from tests.providers.idp import RSA_KEY

T = TypeVar("T")

CLIENT_ID = "1234-abc.apps.googleusercontent.com"
CLIENT_SECRET = "google-secret"
SA_EMAIL = "groups-reader@proj.iam.gserviceaccount.com"
TARGET = "directory@proj.iam.gserviceaccount.com"
ADMIN = "admin@example.com"
SA_TOKEN_URL = "https://oauth2.googleapis.com/token"
TARGET_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


SA_JSON = json.dumps(
    {
        "type": "service_account",
        "project_id": "proj",
        "private_key_id": "sa-key-1",
        "private_key": pem(RSA_KEY),
        "client_email": SA_EMAIL,
        "token_uri": SA_TOKEN_URL,
    }
).encode()


def google_server(clock: Clock) -> FakeTokenServer:
    """www.googleapis.com's token endpoint and keys, issuing Google id_tokens."""
    server = FakeTokenServer(
        clock,
        issuer="https://accounts.google.com",
        client_id=CLIENT_ID,
        routes={"/oauth2/v3/token": "token", "/oauth2/v3/certs": "jwks"},
    )
    server.claims = {
        "sub": "110169484474386276334",
        "email": "alice@example.com",
        "email_verified": True,
        "hd": "example.com",
        "azp": CLIENT_ID,
    }
    return server


@attrs.define(eq=False)
class FakeGoogleAuth(Resource):
    """oauth2.googleapis.com (the JWT-bearer grant) and iamcredentials.googleapis.com
    (signJwt). Assertions are checked against the service accounts' public keys."""

    isLeaf = True

    clock: Clock
    broken: bool = False
    assertions: list[dict[str, Any]] = attrs.Factory(list)
    issued: dict[str, str] = attrs.Factory(dict)  # access token -> scope
    sign_requests: list[dict[str, Any]] = attrs.Factory(list)

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)

    def render(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        if self.broken:
            request.setResponseCode(503)
            return b"{}"
        body = request.content.read() if request.content is not None else b""
        if request.path == b"/token":
            return self._token(request, dict(parse_qsl(body.decode())))
        if request.path.endswith(b":signJwt"):
            return self._sign_jwt(request, json.loads(body))
        request.setResponseCode(404)
        return b"{}"

    def _token(self, request: Request, form: dict[str, str]) -> bytes:
        keys = {SA_EMAIL: RSA_KEY.public_key(), TARGET: TARGET_KEY.public_key()}
        try:
            assertion = form["assertion"]
            iss = jwt.decode(assertion, options={"verify_signature": False})["iss"]
            claims = jwt.decode(
                assertion,
                keys[iss],
                algorithms=["RS256"],
                audience=SA_TOKEN_URL,
                options={"verify_exp": False, "verify_iat": False},
            )
            if not claims["iat"] <= self.clock.seconds() < claims["exp"]:
                raise jwt.ExpiredSignatureError()
        except (KeyError, jwt.PyJWTError):
            request.setResponseCode(400)
            return b'{"error": "invalid_grant"}'
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            request.setResponseCode(400)
            return b'{"error": "unsupported_grant_type"}'
        self.assertions.append(claims)
        token = f"ya29.{len(self.issued)}"
        self.issued[token] = claims["scope"]
        return json.dumps(
            {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}
        ).encode()

    def _sign_jwt(self, request: Request, body: dict[str, Any]) -> bytes:
        auth = (request.getHeader(b"authorization") or b"").decode()
        token = auth.removeprefix("Bearer ")
        if self.issued.get(token) != "https://www.googleapis.com/auth/cloud-platform":
            request.setResponseCode(403)
            return b'{"error": {"code": 403}}'
        target = unquote(
            request.path.decode().split("/serviceAccounts/")[1].removesuffix(":signJwt")
        )
        self.sign_requests.append({"target": target, **body})
        payload = json.loads(body["payload"])
        signed = jwt.encode(payload, TARGET_KEY, algorithm="RS256", headers={"kid": "t-1"})
        return json.dumps({"keyId": "t-1", "signedJwt": signed}).encode()


@attrs.define(eq=False)
class FakeDirectory(Resource):
    """admin.googleapis.com: members.hasMember, members.get and groups.list, answering
    only access tokens FakeGoogleAuth issued for the directory scope."""

    isLeaf = True

    auth: FakeGoogleAuth
    members: dict[str, set[str]] = attrs.Factory(dict)  # group -> member emails
    external: dict[str, dict[str, str]] = attrs.Factory(dict)  # group -> email -> status
    page_size: int = 2
    broken: bool = False
    requests: list[str] = attrs.Factory(list)

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)

    def render(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        self.requests.append(request.uri.decode())
        if self.broken:
            request.setResponseCode(503)
            return b'{"error": {"code": 503}}'
        token = (request.getHeader(b"authorization") or b"").decode().removeprefix("Bearer ")
        if self.auth.issued.get(token) != DIRECTORY_SCOPE:
            request.setResponseCode(401)
            return b'{"error": {"code": 401}}'
        parts = [unquote(p) for p in request.path.decode().split("/")]
        # /admin/directory/v1/groups[/<group>/hasMember/<email> | /<group>/members/<email>]
        if parts[4:] == ["groups"]:
            return self._list(parse_qs(urlsplit(request.uri.decode()).query))
        if len(parts) == 8 and parts[4] == "groups":
            group, kind, email = parts[5], parts[6], parts[7]
            if group not in self.members and group not in self.external:
                request.setResponseCode(404)
                return b'{"error": {"code": 404, "message": "Resource Not Found: groupKey"}}'
            if kind == "hasMember":
                if email in self.external.get(group, {}):
                    request.setResponseCode(400)
                    return b'{"error": {"code": 400, "message": "Invalid Input: memberKey"}}'
                return json.dumps({"isMember": email in self.members.get(group, set())}).encode()
            if kind == "members" and email in self.external.get(group, {}):
                status = self.external[group][email]
                return json.dumps({"email": email, "status": status, "type": "USER"}).encode()
            request.setResponseCode(404)
            return b'{"error": {"code": 404}}'
        request.setResponseCode(404)
        return b"{}"

    def _list(self, query: dict[str, list[str]]) -> bytes:
        email = query["userKey"][0]
        groups = sorted(g for g, emails in self.members.items() if email in emails)
        start = int(query.get("pageToken", ["0"])[0])
        page: dict[str, Any] = {
            "kind": "admin#directory#groups",
            "groups": [
                {"email": g, "name": g.split("@")[0]}
                for g in groups[start : start + self.page_size]
            ],
        }
        if start + self.page_size < len(groups):
            page["nextPageToken"] = str(start + self.page_size)
        return json.dumps(page).encode()


def google_config(**changes: Any) -> Config:
    options: dict[str, Any] = {
        "provider": "google",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    return provider_config(**{**options, **changes})


DIRECTORY_OPTIONS: dict[str, Any] = {
    "google_admin_email": ADMIN,
    "google_service_account_json": "/etc/oauthgate/sa.json",
}


@attrs.define
class World:
    server: FakeTokenServer
    auth: FakeGoogleAuth
    directory: FakeDirectory
    http: MemoryHTTPClient


def google_world(clock: Clock) -> World:
    server = google_server(clock)
    auth = FakeGoogleAuth(clock)
    directory = FakeDirectory(auth)
    directory.members = {
        "admins@example.com": {"alice@example.com"},
        "staff@example.com": {"alice@example.com", "bob@example.com"},
        "ops@example.com": {"alice@example.com"},
        "others@example.com": {"bob@example.com"},
    }
    http = memory_http_client(
        ByHost(
            {
                "www.googleapis.com": server,
                "oauth2.googleapis.com": auth,
                "iamcredentials.googleapis.com": auth,
                "admin.googleapis.com": directory,
            }
        ),
        clock=clock,
    )
    return World(server, auth, directory, http)


class GoogleTestCase(FlushingTestCase):
    def setUp(self) -> None:
        self.clock = started_clock()
        world = google_world(self.clock)
        self.server, self.auth, self.directory, self.http = (
            world.server,
            world.auth,
            world.directory,
            world.http,
        )
        self.files = {"/etc/oauthgate/sa.json": SA_JSON}

    def read_file(self, path: str) -> bytes:
        if path not in self.files:
            raise FileNotFoundError(2, "No such file or directory", path)
        return self.files[path]

    def provider(self, **changes: Any) -> GoogleProvider:
        built = GoogleProviderFactory(read_file=self.read_file).build(
            google_config(**changes), self.http, self.clock
        )
        self.assertTrue(verifyObject(IProvider, built))
        return built

    def build_error(self, **changes: Any) -> str:
        build = GoogleProviderFactory(read_file=self.read_file).build
        error = self.assertRaises(
            ConfigError, build, google_config(**changes), self.http, self.clock
        )
        return str(error)


class LoginTests(GoogleTestCase):
    def test_the_entry_point_finds_the_factory(self) -> None:
        self.assertIs(Plugins.from_entry_points().provider_factory("google"), factory)
        self.assertTrue(verifyObject(IProviderFactory, factory))
        self.assertEqual(self.provider().display_name, "Google")

    def test_login_url_is_googles_with_offline_access_scope_and_nonce(self) -> None:
        url = self.get(self.provider().authorize_url("st", OIDC_NONCE, None, None, REDIRECT, []))
        parts = urlsplit(url)
        self.assertEqual(
            f"{parts.scheme}://{parts.netloc}{parts.path}",
            "https://accounts.google.com/o/oauth2/auth",
        )
        params = parse_qs(parts.query)
        self.assertEqual(params["access_type"], ["offline"])
        self.assertEqual(params["scope"], ["profile email"])
        self.assertEqual(params["nonce"], [OIDC_NONCE])
        self.assertEqual(params["approval_prompt"], ["force"])

    def test_login_gives_the_verified_id_tokens_subject_and_email(self) -> None:
        session = self.get(self.login(self.provider()))
        self.assertEqual(session.user, "110169484474386276334")
        self.assertEqual(session.email, "alice@example.com")
        self.assertEqual(session.groups, ())
        self.assertEqual(session.provider, "google")
        self.assertEqual(session.expires_on, T0 + 3599)
        form = self.server.token_forms[0]
        self.assertEqual(form["client_secret"], CLIENT_SECRET)
        self.assertEqual(form["redirect_uri"], REDIRECT)
        self.assertEqual(self.directory.requests, [])

    def test_an_unverified_email_is_refused(self) -> None:
        self.server.claims["email_verified"] = False
        error = self.fail_with(self.login(self.provider()), TokenError)
        self.assertIn("email not verified", str(error))

    def test_an_id_token_not_signed_by_google_is_refused(self) -> None:
        self.server.published_key = self.server.key
        self.server.key = attrs.evolve(self.server.key, private=TARGET_KEY)  # same kid
        error = self.fail_with(self.login(self.provider()), TokenError)
        self.assertIn("signature", str(error))

    def test_an_id_token_for_another_client_is_refused(self) -> None:
        self.server.claims["aud"] = "another.apps.googleusercontent.com"
        self.fail_with(self.login(self.provider()), TokenError)

    def test_an_id_token_from_another_issuer_is_refused(self) -> None:
        self.server.claims["iss"] = "https://evil.test"
        self.fail_with(self.login(self.provider()), TokenError)

    def test_an_expired_id_token_is_refused(self) -> None:
        self.server.claims["exp"] = int(T0) - 3600
        self.fail_with(self.login(self.provider()), TokenError)

    def test_a_nonce_from_another_login_is_refused(self) -> None:
        provider = self.provider()
        code = self.server.issue_code("another-nonce")
        self.fail_with(provider.redeem(code, None, REDIRECT, OIDC_NONCE), TokenError)

    def test_the_token_endpoint_down_is_a_provider_error(self) -> None:
        self.server.broken = True
        self.fail_with(self.login(self.provider()), ProviderError)


class ConfigTests(GoogleTestCase):
    def test_application_default_credentials_are_refused_as_not_supported(self) -> None:
        error = self.build_error(google_use_application_default_credentials=True)
        self.assertIn("google_use_application_default_credentials: not supported yet", error)

    def test_organization_id_is_refused_as_not_supported(self) -> None:
        self.assertIn(
            "google_use_organization_id", self.build_error(google_use_organization_id=True)
        )

    def test_groups_need_a_service_account(self) -> None:
        error = self.build_error(google_groups=("admins@example.com",))
        self.assertIn("google_groups: needs google_service_account_json", error)

    def test_a_service_account_needs_an_admin_email(self) -> None:
        error = self.build_error(google_service_account_json="/etc/oauthgate/sa.json")
        self.assertIn("google_admin_email: required", error)

    def test_an_unreadable_key_file_is_named(self) -> None:
        error = self.build_error(**{**DIRECTORY_OPTIONS, "google_service_account_json": "/nope"})
        self.assertIn("google_service_account_json: cannot read /nope", error)

    def test_a_key_file_that_is_not_a_service_account_is_refused(self) -> None:
        self.files["/etc/oauthgate/sa.json"] = b'{"type": "authorized_user"}'
        self.assertIn("is not a service account key", self.build_error(**DIRECTORY_OPTIONS))

    def test_the_private_key_never_shows_in_a_repr(self) -> None:
        account = ServiceAccount.from_json(SA_JSON)
        self.assertNotIn("PRIVATE", repr(account))


class GroupTests(GoogleTestCase):
    def test_listed_groups_are_checked_with_has_member(self) -> None:
        groups = ("admins@example.com", "others@example.com", "staff@example.com")
        provider = self.provider(google_groups=groups, **DIRECTORY_OPTIONS)
        session = self.get(self.login(provider))
        self.assertEqual(session.groups, ("admins@example.com", "staff@example.com"))
        self.assertTrue(self.get(provider.authorize(session)))
        self.assertEqual(
            self.directory.requests[0],
            "/admin/directory/v1/groups/admins@example.com/hasMember/alice@example.com",
        )

    def test_the_service_account_acts_as_the_admin_with_the_directory_scope(self) -> None:
        provider = self.provider(google_groups=("admins@example.com",), **DIRECTORY_OPTIONS)
        self.get(self.login(provider))
        [claims] = self.auth.assertions
        self.assertEqual(claims["iss"], SA_EMAIL)
        self.assertEqual(claims["sub"], ADMIN)
        self.assertEqual(claims["scope"], DIRECTORY_SCOPE)
        self.assertEqual(claims["exp"] - claims["iat"], 3600)

    def test_the_directory_token_is_reused_until_it_expires(self) -> None:
        provider = self.provider(google_groups=("admins@example.com",), **DIRECTORY_OPTIONS)
        self.get(self.login(provider))
        self.clock.advance(3000)
        self.get(self.login(provider))
        self.assertEqual(len(self.auth.assertions), 1)
        self.clock.advance(600)  # past expires_in minus the margin
        self.get(self.login(provider))
        self.assertEqual(len(self.auth.assertions), 2)

    def test_a_user_in_none_of_the_groups_is_refused(self) -> None:
        provider = self.provider(google_groups=("others@example.com",), **DIRECTORY_OPTIONS)
        session = self.get(self.login(provider))
        self.assertEqual(session.groups, ())
        self.assertFalse(self.get(provider.authorize(session)))

    def test_an_unknown_group_counts_as_not_a_member(self) -> None:
        provider = self.provider(
            google_groups=("gone@example.com", "ops@example.com"), **DIRECTORY_OPTIONS
        )
        with capturedLogs() as events:
            session = self.get(self.login(provider))
        self.assertEqual(session.groups, ("ops@example.com",))
        self.assertTrue(any("does not exist" in str(e.get("log_format")) for e in events))

    def test_an_active_member_from_another_domain_is_found_with_members_get(self) -> None:
        self.directory.external = {"partners@example.com": {"alice@example.com": "ACTIVE"}}
        provider = self.provider(google_groups=("partners@example.com",), **DIRECTORY_OPTIONS)
        self.assertEqual(self.get(self.login(provider)).groups, ("partners@example.com",))
        self.assertIn("/members/alice@example.com", self.directory.requests[-1])

    def test_a_suspended_member_from_another_domain_is_not_a_member(self) -> None:
        self.directory.external = {"partners@example.com": {"alice@example.com": "SUSPENDED"}}
        provider = self.provider(google_groups=("partners@example.com",), **DIRECTORY_OPTIONS)
        self.assertEqual(self.get(self.login(provider)).groups, ())

    def test_without_listed_groups_all_the_users_groups_are_read_page_by_page(self) -> None:
        session = self.get(self.login(self.provider(**DIRECTORY_OPTIONS)))
        self.assertEqual(
            session.groups, ("admins@example.com", "ops@example.com", "staff@example.com")
        )
        self.assertEqual(len(self.directory.requests), 2)
        query = parse_qs(urlsplit(self.directory.requests[1]).query)
        self.assertEqual(
            query, {"userKey": ["alice@example.com"], "maxResults": ["200"], "pageToken": ["2"]}
        )

    def test_the_directory_down_fails_the_login(self) -> None:
        self.directory.broken = True
        provider = self.provider(google_groups=("admins@example.com",), **DIRECTORY_OPTIONS)
        self.fail_with(self.login(provider), ProviderError)

    def test_the_token_exchange_refused_fails_the_login(self) -> None:
        self.auth.broken = True
        provider = self.provider(google_groups=("admins@example.com",), **DIRECTORY_OPTIONS)
        self.fail_with(self.login(provider), ProviderError)

    def test_a_rejected_directory_token_is_replaced_once(self) -> None:
        provider = self.provider(google_groups=("admins@example.com",), **DIRECTORY_OPTIONS)
        self.get(self.login(provider))
        self.auth.issued.clear()  # Google forgot the token
        self.assertEqual(self.get(self.login(provider)).groups, ("admins@example.com",))
        self.assertEqual(len(self.auth.assertions), 2)


class ImpersonationTests(GoogleTestCase):
    def test_the_target_principal_signs_the_assertion_through_iam(self) -> None:
        provider = self.provider(
            google_groups=("admins@example.com",),
            google_target_principal=TARGET,
            **DIRECTORY_OPTIONS,
        )
        session = self.get(self.login(provider))
        self.assertEqual(session.groups, ("admins@example.com",))
        source, target = self.auth.assertions
        self.assertEqual(source["iss"], SA_EMAIL)
        self.assertNotIn("sub", source)
        self.assertEqual(target["iss"], TARGET)
        self.assertEqual(target["sub"], ADMIN)
        self.assertEqual(target["scope"], DIRECTORY_SCOPE)
        [request] = self.auth.sign_requests
        self.assertEqual(request["target"], TARGET)


class RefreshTests(GoogleTestCase):
    def test_refresh_reads_the_groups_again(self) -> None:
        provider = self.provider(
            google_groups=("admins@example.com", "staff@example.com"), **DIRECTORY_OPTIONS
        )
        session = self.get(self.login(provider))
        self.directory.members["admins@example.com"].discard("alice@example.com")
        self.clock.advance(120)
        refreshed = self.get(provider.refresh(session))
        assert refreshed is not None
        self.assertEqual(refreshed.groups, ("staff@example.com",))
        self.assertEqual(refreshed.created_at, T0 + 120)
        self.assertEqual(refreshed.refresh_token, session.refresh_token)  # Google keeps it

    def test_refresh_without_a_new_id_token_keeps_the_identity(self) -> None:
        self.server.refresh_id_token = False
        provider = self.provider()
        session = self.get(self.login(provider))
        refreshed = self.get(provider.refresh(session))
        assert refreshed is not None
        self.assertEqual((refreshed.user, refreshed.email), (session.user, session.email))

    def test_a_refreshed_id_token_for_another_user_ends_the_session(self) -> None:
        provider = self.provider()
        session = self.get(self.login(provider))
        self.server.claims["sub"] = "someone-else"
        error = self.fail_with(provider.refresh(session), RefreshError)
        assert isinstance(error, RefreshError)
        self.assertTrue(error.fatal)

    def test_a_revoked_grant_ends_the_session(self) -> None:
        provider = self.provider()
        session = self.get(self.login(provider))
        self.server.refresh_error = "invalid_grant"
        error = self.fail_with(provider.refresh(session), RefreshError)
        assert isinstance(error, RefreshError)
        self.assertTrue(error.fatal)

    def test_the_directory_down_on_refresh_is_not_fatal(self) -> None:
        provider = self.provider(google_groups=("admins@example.com",), **DIRECTORY_OPTIONS)
        session = self.get(self.login(provider))
        self.directory.broken = True
        error = self.fail_with(provider.refresh(session), RefreshError)
        assert isinstance(error, RefreshError)
        self.assertFalse(error.fatal)

    def test_refresh_without_a_refresh_token_is_none(self) -> None:
        provider = self.provider()
        session = attrs.evolve(self.get(self.login(provider)), refresh_token="")
        self.assertIsNone(self.get(provider.refresh(session)))


class GoogleConformanceTests(ProviderConformance, SynchronousTestCase):
    def make_subject(self, clock: Clock) -> ProviderSubject:
        world = google_world(clock)
        files = {"/etc/oauthgate/sa.json": SA_JSON}
        config = google_config(google_groups=("staff@example.com",), **DIRECTORY_OPTIONS)

        return subject(
            GoogleProviderFactory(read_file=files.__getitem__).build(config, world.http, clock),
            world.http,
            [world.server, world.directory],
            "alice@example.com",
            code=world.server.issue_code(CONFORMANCE_NONCE),
            refreshes=True,
        )
