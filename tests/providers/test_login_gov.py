"""Tests for oauthgate.providers.login_gov, against a fake login.gov that checks client
assertions (private_key_jwt) and issues RS256 id_tokens as login.gov documents."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from oauthgate.errors import ConfigError, ProviderError, TokenError
from oauthgate.interfaces import IProvider, IProviderFactory
from oauthgate.plugins import Plugins
from oauthgate.providers.client_auth import JWT_BEARER as ASSERTION_TYPE
from oauthgate.providers.login_gov import (
    DEFAULT_ACR_VALUES,
    DEFAULT_PUBJWK_URL,
    LoginGovProvider,
    factory,
)
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
from oauthgate.testing.conformance import NONCE

ISSUER = "https://secure.login.gov/"
TOKEN_URL = "https://secure.login.gov/api/openid_connect/token"
CLIENT_ID = "urn:gov:gsa:openidconnect.profiles:sp:sso:agency:dashboard"
REDIRECT = "https://app.test/oauth2/callback"
T0 = 1_700_000_000.0

CLIENT_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
CLIENT_PEM = CLIENT_KEY.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption(),
).decode()
LOGIN_GOV_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ROGUE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_PEM = (
    ec.generate_private_key(ec.SECP256R1())
    .private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    .decode()
)
KID = "lg-2024"


@attrs.define
class _Code:
    user: str
    nonce: str
    challenge: str | None = None


class FakeLoginGov(Resource):
    """secure.login.gov's token, userinfo and certs endpoints.

    The token endpoint authenticates the client by its assertion (signed with the key
    registered for ``CLIENT_ID``, ``aud`` the token URL, unexpired, a ``jti`` not seen
    before), or by PKCE for a code issued with a challenge.
    """

    isLeaf = True

    def __init__(self, clock: Clock) -> None:
        Resource.__init__(self)
        self.clock = clock
        self.codes: dict[str, _Code] = {}
        self.tokens: dict[str, str] = {}
        self.users: dict[str, dict[str, Any]] = {
            "alice": {"sub": "b2d2d115-1d7e-4579", "email": "alice@example.gov"},
            "carol": {"sub": "c3c3", "email": "carol@example.gov", "email_verified": False},
        }
        self.seen_jtis: set[str] = set()
        self.id_token_changes: dict[str, Any] = {}
        self.signing_key: rsa.RSAPrivateKey = LOGIN_GOV_KEY
        self.userinfo_changes: dict[str, Any] = {}
        self.broken = False
        self.requests: list[tuple[bytes, dict[str, list[str]]]] = []

    def issue_code(self, user: str, nonce: str, challenge: str | None = None) -> str:
        code = f"code-{len(self.codes)}"
        self.codes[code] = _Code(user, nonce, challenge)
        return code

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        form = parse_qs(request.content.read().decode())
        self.requests.append((request.path, form))
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        if self.broken:
            request.setResponseCode(503)
            return b"<html>Service Unavailable</html>"
        if request.path == b"/api/openid_connect/token":
            return self._token(request, form)
        if request.path == b"/api/openid_connect/userinfo":
            return self._userinfo(request)
        if request.path == b"/api/openid_connect/certs":
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(LOGIN_GOV_KEY.public_key()))
            jwk.update(kid=KID, alg="RS256", use="sig")
            return json.dumps({"keys": [jwk]}).encode()
        request.setResponseCode(404)
        return b"{}"

    def _error(self, request: Request, error: str, description: str) -> bytes:
        request.setResponseCode(400)
        return json.dumps({"error": error, "error_description": description}).encode()

    def _client_ok(self, form: dict[str, list[str]], code: _Code) -> bool:
        if "client_assertion" not in form:
            return code.challenge is not None and form.get("code_verifier") == [code.challenge]
        if form.get("client_assertion_type") != [ASSERTION_TYPE]:
            return False
        try:
            claims = jwt.decode(
                form["client_assertion"][0],
                CLIENT_KEY.public_key(),
                algorithms=["RS256"],
                audience=TOKEN_URL,
                options={"verify_exp": False, "require": ["exp", "jti", "iss", "sub", "aud"]},
            )
        except jwt.PyJWTError:
            return False
        fresh = self.clock.seconds() < claims["exp"] <= self.clock.seconds() + 300
        new_jti = claims["jti"] not in self.seen_jtis
        self.seen_jtis.add(claims["jti"])
        return claims["iss"] == claims["sub"] == CLIENT_ID and fresh and new_jti

    def _token(self, request: Request, form: dict[str, list[str]]) -> bytes:
        code = self.codes.pop(form.get("code", [""])[0], None)
        if code is None:
            return self._error(request, "invalid_grant", "Code not found")
        if "client_secret" in form or not self._client_ok(form, code):
            return self._error(request, "invalid_client", "Client assertion is invalid")
        token = f"lg-at-{code.user}-{len(self.tokens)}"
        self.tokens[token] = code.user
        now = int(self.clock.seconds())
        claims = {
            "iss": ISSUER,
            "sub": self.users[code.user]["sub"],
            "aud": CLIENT_ID,
            "acr": DEFAULT_ACR_VALUES,
            "nonce": code.nonce,
            "jti": "id-jti",
            "at_hash": "x",
            "c_hash": "y",
            "exp": now + 900,
            "iat": now,
            "nbf": now,
        }
        claims.update(self.id_token_changes)
        claims = {k: v for k, v in claims.items() if v is not None}
        id_token = jwt.encode(claims, self.signing_key, algorithm="RS256", headers={"kid": KID})
        return json.dumps(
            {"access_token": token, "token_type": "Bearer", "expires_in": 900, "id_token": id_token}
        ).encode()

    def _userinfo(self, request: Request) -> bytes:
        user = self.tokens.get((request.getHeader(b"authorization") or b"").decode()[7:])
        if user is None:
            request.setResponseCode(401)
            return b'{"error": "invalid_token"}'
        profile = {"iss": ISSUER, "email_verified": True, **self.users[user]}
        profile.update(self.userinfo_changes)
        return json.dumps(profile).encode()


def build(
    api: FakeLoginGov, clock: Clock, **options: Any
) -> tuple[LoginGovProvider, MemoryHTTPClient]:
    http = memory_http_client(ByHost({"secure.login.gov": api}), clock=clock)
    config = provider_config(provider="login.gov", client_id=CLIENT_ID, **options)
    provider = factory.build(config, http, clock)
    assert isinstance(provider, LoginGovProvider)
    return provider, http


class LoginGovConfigTests(GateTestCase):
    def problems(self, **options: Any) -> list[str]:
        config = provider_config(provider="login.gov", client_id=CLIENT_ID, **options)
        return LoginGovProvider.check_config(config)

    def test_a_jwt_key_is_enough(self) -> None:
        self.assertEqual(self.problems(jwt_key=CLIENT_PEM), [])

    def test_a_jwt_key_file_is_enough(self) -> None:
        fd, path = tempfile.mkstemp()
        self.addCleanup(os.remove, path)
        with os.fdopen(fd, "w") as f:
            f.write(CLIENT_PEM)
        self.assertEqual(self.problems(jwt_key_file=path), [])

    def test_no_key_is_refused_unless_pkce_is_used(self) -> None:
        (problem,) = self.problems()
        self.assertTrue(problem.startswith("jwt_key: provider login.gov needs jwt_key"), problem)
        self.assertEqual(self.problems(code_challenge_method="S256"), [])

    def test_both_key_options_at_once_are_refused(self) -> None:
        self.assertIn("give only one", self.problems(jwt_key=CLIENT_PEM, jwt_key_file="/x")[0])

    def test_an_unreadable_key_file_is_named(self) -> None:
        (problem,) = self.problems(jwt_key_file="/nonexistent/key.pem")
        self.assertTrue(problem.startswith("jwt_key_file: cannot read /nonexistent/key.pem"))

    def test_a_key_that_is_not_pem_is_refused_without_showing_it(self) -> None:
        (problem,) = self.problems(jwt_key="not-a-key-s3cret")
        self.assertIn("not a PEM private key", problem)
        self.assertNotIn("s3cret", problem)

    def test_a_key_that_is_not_rsa_is_refused(self) -> None:
        (problem,) = self.problems(jwt_key=EC_PEM)
        self.assertIn("RS256 only; give an RSA private key", problem)

    def test_custom_urls_need_a_pubjwk_url(self) -> None:
        login = "https://idp.int.identitysandbox.gov/openid_connect/authorize"
        (problem,) = self.problems(jwt_key=CLIENT_PEM, login_url=login)
        self.assertTrue(problem.startswith("pubjwk_url: required"))

    def test_the_factory_raises_the_problems_as_one_config_error(self) -> None:
        config = provider_config(provider="login.gov", jwt_key="junk")
        e = self.assertRaises(ConfigError, factory.build, config, None, Clock())
        self.assertEqual(len(e.problems), 2)  # client_id and jwt_key


class LoginGovTests(GateTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.api = FakeLoginGov(self.clock)
        self.provider, self.http = build(self.api, self.clock, jwt_key=CLIENT_PEM)

    def login(self, code: str | None = None, nonce: str = NONCE) -> Session:
        return self.get_success(self.flow(code or self.api.issue_code("alice", nonce), nonce))

    async def flow(
        self, code: str, nonce: str = NONCE, provider: LoginGovProvider | None = None
    ) -> Session:
        provider = provider or self.provider
        session = await provider.redeem(code, None, REDIRECT, nonce)
        return await provider.enrich(session)

    def authorize_url(self, extra: list[tuple[str, str]], **options: Any) -> dict[str, list[str]]:
        provider = build(self.api, self.clock, jwt_key=CLIENT_PEM, **options)[0]
        url = self.get_success(provider.authorize_url("st", NONCE, None, None, REDIRECT, extra))
        return parse_qs(urlsplit(url).query)

    def test_factory_and_provider_provide_their_interfaces(self) -> None:
        self.assert_provides(IProviderFactory, factory)
        self.assert_provides(IProvider, self.provider)
        self.assertEqual((self.provider.id, self.provider.display_name), ("login.gov",) * 2)
        self.assertIs(Plugins.from_entry_points().provider_factory("login.gov"), factory)

    def test_login_url_carries_the_nonce_the_default_acr_values_and_scope(self) -> None:
        url = self.get_success(self.provider.authorize_url("st", NONCE, None, None, REDIRECT, []))
        self.assertTrue(url.startswith("https://secure.login.gov/openid_connect/authorize?"))
        query = parse_qs(urlsplit(url).query)
        self.assertEqual(query["nonce"], [NONCE])
        self.assertEqual(query["acr_values"], [DEFAULT_ACR_VALUES])
        self.assertEqual(query["scope"], ["email openid"])
        self.assertEqual(query["state"], ["st"])

    def test_acr_values_can_be_configured_or_asked_for(self) -> None:
        ial2 = "http://idmanagement.gov/ns/assurance/ial/2"
        self.assertEqual(self.authorize_url([], acr_values=ial2)["acr_values"], [ial2])
        self.assertEqual(self.authorize_url([("acr_values", ial2)])["acr_values"], [ial2])

    def test_a_login_parameter_cannot_replace_the_nonce(self) -> None:
        self.assertEqual(self.authorize_url([("nonce", "attacker")])["nonce"], [NONCE])

    def test_login_gives_the_subject_and_the_verified_email(self) -> None:
        session = self.login()
        self.assertEqual(session.user, "b2d2d115-1d7e-4579")
        self.assertEqual(session.email, "alice@example.gov")
        self.assertEqual(session.provider, "login.gov")
        self.assertEqual(session.expires_on, T0 + 900)
        self.assertTrue(session.id_token)

    def test_the_code_is_redeemed_with_a_client_assertion_and_no_secret(self) -> None:
        self.login()
        path, form = self.api.requests[0]
        self.assertEqual(path, b"/api/openid_connect/token")
        self.assertEqual(form["client_assertion_type"], [ASSERTION_TYPE])
        self.assertNotIn("client_secret", form)
        claims = jwt.decode(
            form["client_assertion"][0],
            CLIENT_KEY.public_key(),
            algorithms=["RS256"],
            audience=TOKEN_URL,
            options={"verify_exp": False},
        )
        self.assertEqual((claims["iss"], claims["sub"]), (CLIENT_ID, CLIENT_ID))
        self.assertEqual(claims["exp"], T0 + 300)
        self.assertEqual(jwt.get_unverified_header(form["client_assertion"][0])["alg"], "RS256")

    def test_each_assertion_has_a_fresh_jti(self) -> None:
        self.login()
        self.login()  # the fake refuses a jti it has seen
        self.assertEqual(len(self.api.seen_jtis), 2)

    def test_a_configured_client_secret_is_never_sent(self) -> None:
        provider, _ = build(self.api, self.clock, jwt_key=CLIENT_PEM, client_secret="dummy")
        session = self.get_success(
            self.flow(self.api.issue_code("alice", NONCE), provider=provider)
        )
        self.assertEqual(session.email, "alice@example.gov")

    def test_a_pkce_client_sends_the_verifier_and_no_assertion(self) -> None:
        provider, _ = build(self.api, self.clock, code_challenge_method="S256")
        code = self.api.issue_code("alice", NONCE, challenge="verifier-abc")
        session = self.get_success(provider.redeem(code, "verifier-abc", REDIRECT, NONCE))
        self.assertEqual(session.user, "b2d2d115-1d7e-4579")
        _, form = self.api.requests[0]
        self.assertNotIn("client_assertion", form)
        self.assertEqual(form["client_id"], [CLIENT_ID])

    def test_an_id_token_for_another_login_is_refused(self) -> None:
        code = self.api.issue_code("alice", "another-nonce")
        e = self.get_failure(self.flow(code), TokenError)
        self.assertIn("nonce", str(e))

    def test_an_id_token_that_does_not_check_out_is_refused(self) -> None:
        for changes, reason in (
            ({"exp": int(T0) - 120}, "expired"),
            ({"aud": "another-client"}, "audience"),
            ({"iss": "https://idp.int.identitysandbox.gov/"}, "issuer"),
            ({"nonce": None}, "no nonce"),
            ({"iat": int(T0) + 3600}, "future"),
        ):
            self.api.id_token_changes = changes
            with capturedLogs():
                e = self.get_failure(self.flow(self.api.issue_code("alice", NONCE)), TokenError)
            self.assertIn(reason, str(e))

    def test_an_id_token_signed_by_another_key_is_refused(self) -> None:
        self.api.signing_key = ROGUE_KEY
        with capturedLogs():
            e = self.get_failure(self.flow(self.api.issue_code("alice", NONCE)), TokenError)
        self.assertIn("signature", str(e))

    def test_an_unverified_email_is_refused(self) -> None:
        e = self.get_failure(self.flow(self.api.issue_code("carol", NONCE)), TokenError)
        self.assertIn("not verified", str(e))

    def test_userinfo_about_another_user_is_refused(self) -> None:
        self.api.userinfo_changes = {"sub": "someone-else"}
        e = self.get_failure(self.flow(self.api.issue_code("alice", NONCE)), ProviderError)
        self.assertIn("another user", str(e))

    def test_a_refused_code_is_a_provider_error(self) -> None:
        with capturedLogs():
            e = self.get_failure(self.flow("unknown"), ProviderError)
        self.assertIn("invalid_grant", str(e))

    def test_unreachable_keys_are_a_provider_error(self) -> None:
        provider, _ = build(
            self.api,
            self.clock,
            jwt_key=CLIENT_PEM,
            pubjwk_url="https://secure.login.gov/api/openid_connect/missing",
        )
        with capturedLogs():
            self.get_failure(
                self.flow(self.api.issue_code("alice", NONCE), provider=provider), ProviderError
            )

    def test_sandbox_urls_take_the_issuer_from_the_login_url(self) -> None:
        sandbox = "https://idp.int.identitysandbox.gov"
        provider, _ = build(
            self.api,
            self.clock,
            jwt_key=CLIENT_PEM,
            login_url=sandbox + "/openid_connect/authorize",
            pubjwk_url=sandbox + "/api/openid_connect/certs",
        )
        self.assertEqual(provider.issuer, sandbox + "/")
        self.assertEqual(self.provider.pubjwk_url, DEFAULT_PUBJWK_URL)

    def test_sessions_are_not_refreshed(self) -> None:
        self.assertIsNone(self.get_success(self.provider.refresh(Session(refresh_token="r"))))

    def test_the_key_never_shows_in_the_provider_repr(self) -> None:
        self.assertNotIn("PRIVATE", repr(self.provider))


class LoginGovConformanceTests(ProviderConformance, SynchronousTestCase):
    def make_subject(self, clock: Clock) -> ProviderSubject:
        api = FakeLoginGov(clock)
        provider, http = build(api, clock, jwt_key=CLIENT_PEM)

        def break_api() -> None:
            api.broken = True

        return ProviderSubject(
            provider=provider,
            http=http,
            code=api.issue_code("alice", NONCE),
            redirect_uri=REDIRECT,
            email="alice@example.gov",
            break_api=break_api,
        )
