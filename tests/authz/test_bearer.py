"""Tests for oauthgate.authz.bearer: JWT bearer tokens as sessions."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import attrs
import jwt
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import ECAlgorithm
from twisted.internet.task import Clock
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from oauthgate.authz.bearer import (
    BearerTokenError,
    BearerVerifier,
    TrustedIssuer,
    extract_token,
    parse_extra_jwt_issuers,
    provider_issuer,
)
from oauthgate.config.options import Config
from oauthgate.errors import ConfigError, ProviderError
from oauthgate.session import Session
from oauthgate.testing import ByHost, FakeIdP, GateTestCase, memory_http_client
from tests.providers.idp import b64url, hs256_token, unsigned_token

T0 = 1_700_000_000.0
IDP = "https://idp.test"
OTHER = "https://other.test"
BARE = "https://bare.test"
CLIENT_ID = "gate"
API_AUDIENCE = "api://orders"


class Recorder(Resource):
    """Serves ``inner`` and records the paths asked for."""

    isLeaf = True

    def __init__(self, inner: IResource) -> None:
        Resource.__init__(self)
        self.inner = inner
        self.paths: list[str] = []

    def render(self, request: Request) -> Any:
        self.paths.append((request.path or b"").decode())
        return self.inner.render(request)


class Documents(Resource):
    """Serves JSON documents by path (an issuer without full OIDC, or a lying one)."""

    isLeaf = True

    def __init__(self, documents: dict[bytes, Callable[[], Any]]) -> None:
        Resource.__init__(self)
        self.documents = documents

    def render(self, request: Request) -> bytes:
        document = self.documents.get(request.path or b"")
        if document is None:
            request.setResponseCode(404)
            return b"not found"
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(document()).encode()


def tamper(token: str, **changes: Any) -> str:
    """``token`` with claims changed in its payload and its signature kept."""
    head, body, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims.update(changes)
    return f"{head}.{b64url(json.dumps(claims).encode())}.{signature}"


def public_pem(idp: FakeIdP) -> bytes:
    jwk = idp.jwks()["keys"][-1]
    key = ECAlgorithm.from_jwk(json.dumps(jwk))
    return bytes(
        key.public_bytes(  # type: ignore[union-attr]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


class BearerTestCase(GateTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.idp = FakeIdP(IDP, self.clock)
        self.other = FakeIdP(OTHER, self.clock)
        self.bare = FakeIdP(BARE, self.clock)
        self.idp_log = Recorder(self.idp.resource())
        self.other_log = Recorder(self.other.resource())
        self.bare_documents: dict[bytes, Callable[[], Any]] = {
            b"/.well-known/jwks.json": self.bare.jwks
        }
        self.bare_log = Recorder(Documents(self.bare_documents))
        self.http = memory_http_client(
            ByHost(
                {"idp.test": self.idp_log, "other.test": self.other_log, "bare.test": self.bare_log}
            ),
            clock=self.clock,
        )

    def verifier(self, *issuers: TrustedIssuer, **kwargs: Any) -> BearerVerifier:
        if not issuers:
            issuers = (
                TrustedIssuer(IDP, (CLIENT_ID, "extra-aud")),
                TrustedIssuer(OTHER, (API_AUDIENCE,)),
            )
        return BearerVerifier(issuers, self.http, self.clock, **kwargs)

    def token(self, user: str = "alice", audience: str = CLIENT_ID, **claims: Any) -> str:
        return self.idp.issue_id_token(user, audience=audience, **claims)

    def refused(self, verifier: BearerVerifier, token: str) -> BearerTokenError:
        error = self.get_failure(verifier.verify(token), BearerTokenError)
        self.assertNotIn(token, str(error))
        return error

    def code(self, verifier: BearerVerifier, token: str) -> str:
        return self.refused(verifier, token).code


class ExtractTokenTests(GateTestCase):
    def test_extract_token(self) -> None:
        jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"

        def basic(credentials: str) -> str:
            return "Basic " + base64.b64encode(credentials.encode()).decode()

        table: list[tuple[str | bytes | None, str | None]] = [
            (f"Bearer {jwt}", jwt),
            (f"bearer {jwt}", jwt),
            (f"Bearer   {jwt}  ", jwt),
            (f"Bearer {jwt}".encode(), jwt),
            (basic(f"{jwt}:"), jwt),
            (basic(f"{jwt}:x-oauth-basic"), jwt),
            (basic(f"anyone:{jwt}"), jwt),
            (basic(f":{jwt}"), jwt),
            (basic(f"{jwt}:other-password"), None),
            (basic("alice:password"), None),
            (None, None),
            ("", None),
            ("Bearer", None),
            ("Bearer opaque-access-token", None),
            (f"Bearer {jwt}.extra", None),
            (f"Bearer {jwt} trailing", None),
            ("Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", None),  # no signature
            (f"Bearer {jwt}\n", jwt),
            (f"Token {jwt}", None),
            (jwt, None),
        ]
        for header, expected in table:
            self.assertEqual(extract_token(header), expected, header)


class AcceptanceTests(BearerTestCase):
    def test_token_from_the_provider_becomes_a_session(self) -> None:
        token = self.token()
        session = self.get_success(self.verifier().verify(token))
        self.assertEqual(
            session,
            Session(
                user="1001",
                email="alice@example.com",
                groups=("admins", "staff"),
                preferred_username="alice",
                access_token=token,
                id_token=token,
                created_at=T0,
                expires_on=T0 + 3600,
                provider="bearer",
            ),
        )

    def test_token_from_an_extra_issuer_for_its_audience(self) -> None:
        token = self.other.issue_id_token("bob", audience=API_AUDIENCE)
        session = self.get_success(self.verifier().verify(token))
        self.assertEqual((session.user, session.email), ("1002", "bob@example.org"))

    def test_extra_audience_of_the_provider(self) -> None:
        self.get_success(self.verifier().verify(self.token(audience="extra-aud")))
        self.get_success(self.verifier().verify(self.token(aud=["other", "extra-aud"])))

    def test_entries_for_one_issuer_merge_their_audiences(self) -> None:
        verifier = self.verifier(
            TrustedIssuer(IDP, (CLIENT_ID,)), TrustedIssuer(IDP + "/", ("second",))
        )
        self.assertEqual(verifier.issuers, {IDP: frozenset({CLIENT_ID, "second"})})
        self.get_success(verifier.verify(self.token(audience="second")))
        self.get_success(verifier.verify(self.token(iss=IDP + "/")))

    def test_email_falls_back_to_the_subject(self) -> None:
        session = self.get_success(self.verifier().verify(self.token(email=None)))
        self.assertEqual((session.user, session.email), ("1001", "1001"))

    def test_claim_names_are_configurable(self) -> None:
        verifier = self.verifier(email_claim="upn", groups_claim="realm_access.roles")
        token = self.token(upn="alice@corp.example", realm_access={"roles": ["r1", "r2"]})
        session = self.get_success(verifier.verify(token))
        self.assertEqual((session.email, session.groups), ("alice@corp.example", ("r1", "r2")))

    def test_keys_are_fetched_once(self) -> None:
        verifier = self.verifier()
        for _ in range(3):
            self.get_success(verifier.verify(self.token()))
        self.assertEqual(self.idp_log.paths, ["/.well-known/openid-configuration", "/jwks"])


class RejectionTests(BearerTestCase):
    def test_each_failed_check_has_its_code(self) -> None:
        verifier = self.verifier()
        table: list[tuple[str, str]] = [
            ("not a jwt", "malformed"),
            ("eyJ.eyJ.x", "malformed"),
            ("ey.ey.c2ln", "malformed"),
            ("eyJhbGciOiJFUzI1NiJ9.eyJbMV0.c2ln", "malformed"),  # the payload is not JSON
            ("eyJhbGciOiJFUzI1NiJ9." + b64url(b'["not", "an", "object"]') + ".c2ln", "malformed"),
            (self.token(iss="https://evil.test"), "unknown_issuer"),
            (self.token(iss=None), "unknown_issuer"),
            (unsigned_token({"alg": "ES256"}, {"iss": [IDP]}, b"sig"), "unknown_issuer"),
            (self.token(aud="someone-else"), "wrong_audience"),
            (self.token(aud=[]), "wrong_audience"),
            (self.token(aud=None), "no_audience"),
            (self.token(exp=None), "no_expiry"),
            (self.token(exp="1700000000"), "no_expiry"),
            (self.token(exp=True), "no_expiry"),
            (self.token(exp=int(T0) - 61), "expired"),
            (self.token(nbf=int(T0) + 61), "not_yet_valid"),
            (self.token(nbf="soon"), "malformed"),
            (self.token(iat=int(T0) + 61), "issued_in_future"),
            (self.token(sub=None), "no_subject"),
            (self.token(sub=""), "no_subject"),
            (self.token(sub=42), "no_subject"),
            (self.token("mallory", audience=CLIENT_ID), "email_unverified"),
            (self.token(email_verified="FALSE"), "email_unverified"),
            (tamper(self.token(), sub="1002", email="bob@example.org"), "bad_signature"),
        ]
        for token, code in table:
            self.assertEqual(self.code(verifier, token), code, token)

    def test_extra_issuer_audiences_are_its_own(self) -> None:
        """A token the extra issuer made for the provider's client id is not accepted."""
        token = self.other.issue_id_token("bob", audience=CLIENT_ID)
        self.assertEqual(self.code(self.verifier(), token), "wrong_audience")

    def test_first_present_audience_claim_decides(self) -> None:
        verifier = self.verifier(audience_claims=("client_id", "aud"))
        self.assertEqual(
            self.code(verifier, self.token(client_id="someone-else")), "wrong_audience"
        )
        self.get_success(verifier.verify(self.token(client_id=CLIENT_ID, aud="anything")))
        self.get_success(verifier.verify(self.token()))

    def test_unverified_email_may_be_allowed(self) -> None:
        verifier = self.verifier(allow_unverified_email=True)
        session = self.get_success(verifier.verify(self.token("mallory")))
        self.assertEqual(session.email, "mallory@example.net")

    def test_expiry_boundary_with_leeway(self) -> None:
        verifier = self.verifier(leeway=60)
        token = self.token(exp=int(T0) + 10)
        self.clock.advance(70)
        self.get_success(verifier.verify(token))
        self.clock.advance(0.5)
        self.assertEqual(self.code(verifier, token), "expired")

    def test_not_before_and_issued_at_boundaries_with_leeway(self) -> None:
        verifier = self.verifier(leeway=60)
        self.get_success(verifier.verify(self.token(nbf=int(T0) + 60, iat=int(T0) + 60)))
        self.assertEqual(self.code(verifier, self.token(nbf=int(T0) + 61)), "not_yet_valid")

    def test_issuer_not_configured_is_refused_without_asking_it(self) -> None:
        token = self.other.issue_id_token("bob", audience=API_AUDIENCE)
        verifier = self.verifier(TrustedIssuer(IDP, (CLIENT_ID,)))
        error = self.refused(verifier, token)
        self.assertEqual(error.code, "unknown_issuer")
        self.assertEqual(str(error), "the issuer 'https://other.test' is not trusted")
        self.assertEqual(self.other_log.paths, [])

    def test_token_claiming_another_trusted_issuer_is_checked_with_that_issuers_keys(
        self,
    ) -> None:
        """Signed by the extra issuer's key, claiming the provider: the provider's keys decide."""
        forged = self.other.issue_id_token("bob", audience=CLIENT_ID, iss=IDP)
        self.assertEqual(self.code(self.verifier(), forged), "unknown_kid")
        self.assertNotIn("/jwks", self.other_log.paths)

    def test_alg_none_is_refused(self) -> None:
        claims = {"iss": IDP, "aud": CLIENT_ID, "sub": "1001", "exp": int(T0) + 60}
        for alg in ("none", "None", "NONE"):
            header = {"alg": alg, "kid": self.idp.signing_kid}
            self.assertEqual(
                self.code(self.verifier(), unsigned_token(header, claims, b"sig")), "alg_mismatch"
            )
            # Without a signature it is not even a bearer JWT.
            self.assertEqual(
                self.code(self.verifier(), unsigned_token(header, claims)), "malformed"
            )

    def test_hs256_signed_with_the_public_key_is_refused(self) -> None:
        claims = {"iss": IDP, "aud": CLIENT_ID, "sub": "1001", "exp": int(T0) + 60}
        token = hs256_token(
            public_pem(self.idp),
            {"alg": "HS256", "typ": "JWT", "kid": self.idp.signing_kid},
            claims,
        )
        self.assertEqual(self.code(self.verifier(), token), "alg_mismatch")

    def test_keys_the_token_brings_along_are_never_used(self) -> None:
        """A ``jwk`` or ``jku`` header names the attacker's key: only the issuer's JWKS counts."""
        from cryptography.hazmat.primitives.asymmetric import ec

        rogue = ec.generate_private_key(ec.SECP256R1())
        claims = {"iss": IDP, "aud": CLIENT_ID, "sub": "1001", "exp": int(T0) + 60}
        embedded = json.loads(ECAlgorithm.to_jwk(rogue.public_key()))
        table = [
            ({"kid": self.idp.signing_kid, "jwk": embedded}, "bad_signature"),
            ({"jwk": embedded}, "bad_signature"),  # no kid: the issuer's one key is tried
            ({"kid": "evil", "jku": "https://other.test/jwks"}, "unknown_kid"),
        ]
        for headers, code in table:
            token = jwt.encode(claims, rogue, algorithm="ES256", headers=headers)
            self.assertEqual(self.code(self.verifier(), token), code, headers)
        self.assertEqual(self.other_log.paths, [])

    def test_other_algorithm_than_the_keys_is_refused(self) -> None:
        claims = {"iss": IDP, "aud": CLIENT_ID, "sub": "1001", "exp": int(T0) + 60}
        token = unsigned_token({"alg": "RS256", "kid": self.idp.signing_kid}, claims, b"sig")
        self.assertEqual(self.code(self.verifier(), token), "alg_mismatch")

    def test_signature_by_an_unpublished_key_is_refused(self) -> None:
        self.idp.bad_signature = True
        self.assertEqual(self.code(self.verifier(), self.token()), "bad_signature")

    def test_kid_that_is_not_a_string_is_malformed(self) -> None:
        claims = {"iss": IDP, "aud": CLIENT_ID, "sub": "1001", "exp": int(T0) + 60}
        token = unsigned_token({"alg": "ES256", "kid": 7}, claims, b"sig")
        self.assertEqual(self.code(self.verifier(), token), "malformed")

    def test_unknown_kid_then_rotated_key(self) -> None:
        verifier = self.verifier()
        self.get_success(verifier.verify(self.token()))
        claims = {"iss": IDP, "aud": CLIENT_ID, "sub": "1001", "exp": int(T0) + 600}
        made_up = unsigned_token({"alg": "ES256", "kid": "made-up"}, claims, b"sig")
        self.assertEqual(self.code(verifier, made_up), "unknown_kid")
        # The provider rotates within the minute: no re-fetch yet, so unknown.
        self.idp.rotate_key(keep_old=False)
        rotated = self.token()
        self.assertEqual(self.code(verifier, rotated), "unknown_kid")
        self.assertEqual(self.idp_log.paths.count("/jwks"), 1)
        # A minute on, an unknown kid makes the keys be fetched again.
        self.clock.advance(60)
        session = self.get_success(verifier.verify(rotated))
        self.assertEqual(session.user, "1001")
        self.assertEqual(self.idp_log.paths.count("/jwks"), 2)

    def test_messages_name_the_check_and_never_the_token(self) -> None:
        verifier = self.verifier()
        expired = self.token(exp=int(T0) - 3600)
        error = self.refused(verifier, expired)
        self.assertEqual(str(error), "the token expired")
        self.assertEqual(
            str(self.refused(verifier, self.token(aud="x"))),
            "the token's audience (aud) is not one accepted here",
        )

    def test_unreachable_keys_are_a_provider_error_not_a_refusal(self) -> None:
        verifier = self.verifier(
            TrustedIssuer(IDP, (CLIENT_ID,), jwks_url="https://down.test/jwks")
        )
        error = self.get_failure(verifier.verify(self.token()), ProviderError)
        self.assertNotIsInstance(error, BearerTokenError)


class KeyLocationTests(BearerTestCase):
    def test_fixed_jwks_url_skips_discovery(self) -> None:
        verifier = self.verifier(TrustedIssuer(IDP, (CLIENT_ID,), jwks_url=IDP + "/jwks"))
        self.get_success(verifier.verify(self.token()))
        self.assertEqual(self.idp_log.paths, ["/jwks"])

    def test_without_discovery_the_well_known_jwks_json_is_used(self) -> None:
        verifier = self.verifier(TrustedIssuer(BARE, ("svc",)))
        for _ in range(2):
            self.get_success(verifier.verify(self.bare.issue_id_token("bob", audience="svc")))
        self.assertEqual(
            self.bare_log.paths, ["/.well-known/openid-configuration", "/.well-known/jwks.json"]
        )
        # Discovery is tried again, at most once a minute.
        self.clock.advance(60)
        self.get_success(verifier.verify(self.bare.issue_id_token("bob", audience="svc")))
        self.assertEqual(self.bare_log.paths.count("/.well-known/openid-configuration"), 2)
        self.assertEqual(self.bare_log.paths.count("/.well-known/jwks.json"), 1)

    def test_discovery_naming_another_issuer_is_not_believed(self) -> None:
        self.bare_documents[b"/.well-known/openid-configuration"] = lambda: {
            "issuer": "https://evil.test",
            "jwks_uri": BARE + "/evil-jwks",
        }
        verifier = self.verifier(TrustedIssuer(BARE, ("svc",)))
        self.get_success(verifier.verify(self.bare.issue_id_token("bob", audience="svc")))
        self.assertEqual(
            self.bare_log.paths, ["/.well-known/openid-configuration", "/.well-known/jwks.json"]
        )

    def test_discovery_is_used_once_it_works(self) -> None:
        verifier = self.verifier(TrustedIssuer(BARE, ("svc",)))
        self.get_success(verifier.verify(self.bare.issue_id_token("bob", audience="svc")))
        self.bare_documents[b"/.well-known/openid-configuration"] = lambda: {
            "issuer": BARE,
            "jwks_uri": BARE + "/keys",
        }
        self.bare_documents[b"/keys"] = self.bare.jwks
        self.clock.advance(60)
        self.get_success(verifier.verify(self.bare.issue_id_token("bob", audience="svc")))
        self.clock.advance(3600)
        self.get_success(verifier.verify(self.bare.issue_id_token("bob", audience="svc")))
        self.assertEqual(
            self.bare_log.paths,
            [
                "/.well-known/openid-configuration",
                "/.well-known/jwks.json",
                "/.well-known/openid-configuration",
                "/keys",
            ],
        )


@attrs.frozen(kw_only=True)
class BearerConfig(Config):
    """Config with the option the lead adds to the table."""

    extra_jwt_issuers: tuple[str, ...] = ()


class ConfigTests(BearerTestCase):
    def test_parse_extra_jwt_issuers(self) -> None:
        self.assertEqual(
            parse_extra_jwt_issuers(
                ["https://a.test=aud1", " https://b.test/realms/x = api://b=c ", " "]
            ),
            [
                TrustedIssuer("https://a.test", ("aud1",)),
                TrustedIssuer("https://b.test/realms/x", ("api://b=c",)),
            ],
        )

    def test_bad_extra_jwt_issuers_are_named(self) -> None:
        for entry in ("https://a.test", "=aud", "https://a.test=", "not-a-url=aud", "ftp://a=b"):
            with self.assertRaises(ValueError) as caught:
                parse_extra_jwt_issuers(["https://ok.test=a", entry])
            self.assertIn(repr(entry), str(caught.exception))

    def test_provider_issuer(self) -> None:
        base = Config(provider="oidc", client_id=CLIENT_ID, oidc_issuer_url=IDP)
        self.assertEqual(provider_issuer(base), TrustedIssuer(IDP, (CLIENT_ID,)))
        self.assertEqual(
            provider_issuer(attrs.evolve(base, oidc_extra_audiences=("x", "y"))),
            TrustedIssuer(IDP, (CLIENT_ID, "x", "y")),
        )
        self.assertEqual(
            provider_issuer(
                attrs.evolve(base, skip_oidc_discovery=True, oidc_jwks_url=IDP + "/keys")
            ),
            TrustedIssuer(IDP, (CLIENT_ID,), IDP + "/keys"),
        )
        self.assertEqual(
            provider_issuer(attrs.evolve(base, oidc_jwks_url=IDP + "/keys")),
            TrustedIssuer(IDP, (CLIENT_ID,)),
        )
        self.assertIsNone(provider_issuer(attrs.evolve(base, oidc_issuer_url="")))

    def test_from_config_trusts_the_provider_and_the_extra_issuers(self) -> None:
        config = BearerConfig(
            provider="oidc",
            client_id=CLIENT_ID,
            oidc_issuer_url=IDP,
            oidc_groups_claim="preferred_username",
            extra_jwt_issuers=(f"{OTHER}={API_AUDIENCE}",),
        )
        verifier = BearerVerifier.from_config(config, self.http, self.clock)
        self.assertEqual(
            verifier.issuers, {IDP: frozenset({CLIENT_ID}), OTHER: frozenset({API_AUDIENCE})}
        )
        session = self.get_success(verifier.verify(self.token()))
        self.assertEqual(session.groups, ("alice",))

    def test_from_config_problems_are_config_errors(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            BearerVerifier.from_config(
                BearerConfig(extra_jwt_issuers=("nope",)), self.http, self.clock
            )
        self.assertEqual(
            caught.exception.problems, ("extra_jwt_issuers: 'nope': expected issuer=audience",)
        )
        with self.assertRaises(ConfigError):
            BearerVerifier.from_config(BearerConfig(), self.http, self.clock)

    def test_from_config_uses_the_deprecated_user_id_claim_as_email_claim(self) -> None:
        config = BearerConfig(
            client_id=CLIENT_ID, oidc_issuer_url=IDP, user_id_claim="preferred_username"
        )
        session = self.get_success(
            BearerVerifier.from_config(config, self.http, self.clock).verify(self.token())
        )
        self.assertEqual(session.email, "alice")


class VerifiedCacheTests(BearerTestCase):
    """A token verified once is remembered until it expires: API clients send the same
    token on every request, and verifying it each time costs more than the RSA check."""

    def test_a_verified_token_is_not_verified_again(self) -> None:
        verifier = self.verifier()
        token = self.token()
        first = self.get_success(verifier.verify(token))
        asked = list(self.idp_log.paths)
        # Even with the signing key gone from the provider, the remembered token passes,
        # and the provider is not asked again.
        self.idp.rotate_key(keep_old=False)
        self.clock.advance(120)
        self.assertEqual(self.get_success(verifier.verify(token)), first)
        self.assertEqual(self.idp_log.paths, asked)

    def test_a_remembered_token_is_refused_once_it_expires(self) -> None:
        verifier = self.verifier()
        token = self.token()
        self.get_success(verifier.verify(token))
        self.clock.advance(3600 + 61)
        self.assertEqual(self.code(verifier, token), "expired")

    def test_a_tampered_copy_of_a_remembered_token_is_still_checked(self) -> None:
        verifier = self.verifier()
        token = self.token()
        self.get_success(verifier.verify(token))
        header, payload, signature = token.split(".")
        forged = f"{header}.{payload}.{signature[:-4]}AAAA"
        self.assertIn(self.code(verifier, forged), ("bad_signature", "malformed"))
