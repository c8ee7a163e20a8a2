"""Tests for oauthgate.providers.jwks."""

from __future__ import annotations

import json
from typing import Any, cast

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from oauthgate.errors import ProviderError, TokenError
from oauthgate.providers.jwks import MAX_RESPONSE_BYTES, JWKSCache, fetch
from tests.providers.idp import (
    ES256,
    ES256_ROTATED,
    ISSUER,
    RS256,
    T0,
    Answer,
    SigningKey,
    TinyIdP,
    hs256_token,
    resolve,
    unsigned_token,
)

JWKS_URL = ISSUER + "/jwks"
CLAIMS = {"sub": "user-1", "exp": int(T0) + 60}


class JWKSCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.idp = TinyIdP(self.clock)
        self.stub = StubTreq(self.idp)
        self.cache = JWKSCache(cast(Any, self.stub), self.clock, JWKS_URL)

    def get(self, coro: Any) -> Any:
        return self.successResultOf(resolve(self.stub, coro))

    def refused(self, coro: Any, *errors: type[BaseException]) -> Any:
        return self.failureResultOf(resolve(self.stub, coro), *errors).value

    def sign(self, key: SigningKey, claims: dict[str, Any] = CLAIMS, **headers: Any) -> str:
        header = {"kid": key.kid, **headers} if key.kid else headers or None
        return jwt.encode(claims, key.private, algorithm=key.alg, headers=header)

    def test_verifies_tokens_of_each_published_key(self) -> None:
        self.assertEqual(self.get(self.cache.verify(self.sign(ES256))), CLAIMS)
        self.assertEqual(self.get(self.cache.verify(self.sign(RS256))), CLAIMS)
        self.assertEqual(self.idp.count(b"/jwks"), 1)

    def test_expiry_is_left_to_the_caller(self) -> None:
        old = {"sub": "user-1", "exp": 1000}
        self.assertEqual(self.get(self.cache.verify(self.sign(ES256, old))), old)

    def test_algorithms_come_from_the_key_type_when_the_key_has_no_alg(self) -> None:
        p384 = ec.generate_private_key(ec.SECP384R1())
        es384 = SigningKey("p384", p384, "ES384")
        eddsa = SigningKey("ed", ed25519.Ed25519PrivateKey.generate(), "EdDSA")
        ed448_key = SigningKey("ed448", ed448.Ed448PrivateKey.generate(), "EdDSA")
        self.idp.keys = [ES256, RS256, es384, eddsa, ed448_key]
        jwks = {"keys": [self.strip_alg(k.jwk()) for k in self.idp.keys]}
        self.serve_jwks(jwks)
        rsa_family = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
        for key, algs in (
            (ES256, ("ES256",)),
            (RS256, rsa_family),
            (es384, ("ES384",)),
            (eddsa, ("EdDSA",)),
            (ed448_key, ("EdDSA",)),
        ):
            self.assertEqual(self.get(self.cache.get_key(key.kid))[1], algs)
        for key in (es384, eddsa, ed448_key):
            self.assertEqual(self.get(self.cache.verify(self.sign(key))), CLAIMS)

    def test_ps256_and_rs384_tokens_verify_against_an_rsa_key_without_alg(self) -> None:
        """IdPs that sign with PS256 or RS384 often publish their keys without ``alg``."""
        self.serve_jwks({"keys": [self.strip_alg(RS256.jwk())]})
        for alg in ("PS256", "RS384", "PS512"):
            token = self.sign(SigningKey("rsa-1", RS256.private, alg))
            self.assertEqual(self.get(self.cache.verify(token)), CLAIMS)

    def test_hs256_and_none_are_refused_for_an_rsa_key_without_alg(self) -> None:
        self.serve_jwks({"keys": [self.strip_alg(RS256.jwk())]})
        forged = hs256_token(RS256.public_pem(), {"alg": "HS256", "kid": "rsa-1"}, CLAIMS)
        unsigned = unsigned_token({"alg": "none", "kid": "rsa-1"}, CLAIMS)
        for token in (forged, unsigned):
            error = self.refused(self.cache.verify(token), TokenError)
            self.assertIn("algorithm", str(error))

    def test_es384_token_is_refused_for_a_p256_key_without_alg(self) -> None:
        self.serve_jwks({"keys": [self.strip_alg(ES256.jwk())]})
        p384 = ec.generate_private_key(ec.SECP384R1())
        token = self.sign(SigningKey("ec-1", p384, "ES384"))
        error = self.refused(self.cache.verify(token), TokenError)
        self.assertIn("algorithm", str(error))

    def test_key_alg_member_is_respected(self) -> None:
        jwk = RS256.jwk()
        jwk["alg"] = "PS256"
        self.serve_jwks({"keys": [jwk]})
        self.assertEqual(self.get(self.cache.get_key("rsa-1"))[1], ("PS256",))
        self.assertEqual(
            self.get(self.cache.verify(self.sign(SigningKey("rsa-1", RS256.private, "PS256")))),
            CLAIMS,
        )
        for alg in ("RS256", "PS384"):
            token = self.sign(SigningKey("rsa-1", RS256.private, alg))
            error = self.refused(self.cache.verify(token), TokenError)
            self.assertIn("algorithm", str(error))

    def test_oversized_jwks_is_refused(self) -> None:
        """A provider cannot make the gate buffer an unbounded answer."""
        document = {"keys": [ES256.jwk()], "padding": "x" * MAX_RESPONSE_BYTES}
        self.serve_jwks(document)
        error = self.refused(self.cache.get_key("ec-1"), ProviderError)
        self.assertIn("response too large", str(error))
        self.assertNotIsInstance(error, TokenError)

    def test_jwks_just_under_the_limit_is_read(self) -> None:
        document = {"keys": [ES256.jwk()], "padding": ""}
        size = len(json.dumps(document).encode())
        document["padding"] = "x" * (MAX_RESPONSE_BYTES - size)
        self.serve_jwks(document)
        self.assertEqual(self.get(self.cache.get_key("ec-1"))[1], ("ES256",))

    def test_token_without_kid_uses_the_only_key(self) -> None:
        self.idp.keys = [SigningKey(None, ES256.private, "ES256")]
        token = jwt.encode(CLAIMS, ES256.private, algorithm="ES256")
        self.assertEqual(self.get(self.cache.verify(token)), CLAIMS)

    def test_token_without_kid_is_refused_when_there_are_several_keys(self) -> None:
        token = jwt.encode(CLAIMS, ES256.private, algorithm="ES256")
        error = self.refused(self.cache.verify(token), TokenError)
        self.assertIn("no key id", str(error))

    def test_header_alg_other_than_the_keys_is_refused(self) -> None:
        token = unsigned_token({"alg": "ES384", "kid": "ec-1"}, CLAIMS, b"x" * 96)
        self.assertIn("algorithm", str(self.refused(self.cache.verify(token), TokenError)))

    def test_alg_none_is_refused(self) -> None:
        token = unsigned_token({"alg": "none", "kid": "ec-1"}, CLAIMS)
        self.assertIn("algorithm", str(self.refused(self.cache.verify(token), TokenError)))

    def test_hs256_keyed_with_the_public_key_is_refused(self) -> None:
        token = hs256_token(RS256.public_pem(), {"alg": "HS256", "kid": "rsa-1"}, CLAIMS)
        self.assertIn("algorithm", str(self.refused(self.cache.verify(token), TokenError)))

    def test_symmetric_and_encryption_keys_are_ignored(self) -> None:
        enc = ES256_ROTATED.jwk()
        enc["use"] = "enc"
        secret = {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}
        self.serve_jwks({"keys": [secret, enc, ES256.jwk()]})
        self.assertEqual(self.get(self.cache.get_key("ec-1"))[1], ("ES256",))
        self.refused(self.cache.get_key("hmac"), TokenError)
        self.refused(self.cache.get_key("ec-2"), TokenError)

    def test_bad_signature_is_refused(self) -> None:
        head, body, _ = self.sign(ES256).split(".")
        signature = self.sign(ES256, {"sub": "other"}).split(".")[2]
        error = self.refused(self.cache.verify(f"{head}.{body}.{signature}"), TokenError)
        self.assertIn("signature", str(error))

    def test_garbage_is_refused_without_a_traceback(self) -> None:
        error = self.refused(self.cache.verify("not-a-jwt"), TokenError)
        self.assertEqual(str(error), "the token is not a well-formed JWT")

    def test_unknown_kid_refetches_at_most_once_per_interval(self) -> None:
        self.get(self.cache.get_key("ec-1"))
        self.idp.keys = [ES256, ES256_ROTATED]
        self.clock.advance(59)
        self.refused(self.cache.get_key("ec-2"), TokenError)
        self.refused(self.cache.get_key("ec-3"), TokenError)
        self.assertEqual(self.idp.count(b"/jwks"), 1)
        self.clock.advance(1)
        self.assertEqual(self.get(self.cache.get_key("ec-2"))[1], ("ES256",))
        self.assertEqual(self.idp.count(b"/jwks"), 2)
        self.refused(self.cache.get_key("ec-3"), TokenError)
        self.assertEqual(self.idp.count(b"/jwks"), 2)

    def test_concurrent_first_uses_share_one_fetch(self) -> None:
        first = resolve(self.stub, self.cache.get_key("ec-1"))
        second = resolve(self.stub, self.cache.get_key("rsa-1"))
        self.assertEqual(self.successResultOf(first)[1], ("ES256",))
        self.assertEqual(self.successResultOf(second)[1][0], "RS256")
        self.assertEqual(self.idp.count(b"/jwks"), 1)

    def test_failed_fetch_is_an_error_and_retried_on_next_use(self) -> None:
        self.serve(Answer(500, b"oops", b"text/plain"))
        error = self.refused(self.cache.get_key("ec-1"), ProviderError)
        self.assertIn("HTTP 500", str(error))
        self.assertNotIsInstance(error, TokenError)
        self.serve(None)
        self.assertEqual(self.get(self.cache.get_key("ec-1"))[1], ("ES256",))

    def test_non_json_jwks_is_an_error(self) -> None:
        self.serve(Answer(200, b"<html>", b"text/html"))
        error = self.refused(self.cache.get_key("ec-1"), ProviderError)
        self.assertIn("not JSON", str(error))

    def test_jwks_without_usable_keys_is_an_error(self) -> None:
        self.serve_jwks({"keys": [{"kty": "RSA", "kid": "broken"}]})
        error = self.refused(self.cache.get_key("broken"), ProviderError)
        self.assertIn("no usable signing key", str(error))

    # --- helpers ------------------------------------------------------------------------

    @staticmethod
    def strip_alg(jwk: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in jwk.items() if k != "alg"}

    def serve_jwks(self, document: dict[str, Any]) -> None:
        self.serve(Answer(200, json.dumps(document).encode()))

    def serve(self, answer: Answer | None) -> None:
        """Answer /jwks with ``answer`` instead of the IdP's keys (None: back to the keys)."""
        self.idp.jwks_answer = answer


class _Streaming(Resource):
    """Answers with ``chunks`` written one by one: chunked, with no Content-Length."""

    isLeaf = True

    def __init__(self, chunks: list[bytes]) -> None:
        Resource.__init__(self)
        self.chunks = chunks

    def render_GET(self, request: Request) -> int:
        request.setHeader(b"content-type", b"application/json")
        for chunk in self.chunks:
            request.write(chunk)
        request.finish()
        return NOT_DONE_YET


class FetchTests(SynchronousTestCase):
    def fetch(self, chunks: list[bytes]) -> Any:
        stub = StubTreq(_Streaming(chunks))
        return resolve(stub, fetch(cast(Any, stub), Clock(), "GET", JWKS_URL, what="the JWKS"))

    def test_streamed_answer_over_the_limit_is_refused(self) -> None:
        """Without a Content-Length the body is counted as it arrives, and cut off."""
        chunk = b"x" * (64 * 1024)
        d = self.fetch([chunk] * (MAX_RESPONSE_BYTES // len(chunk) + 1))
        error = self.failureResultOf(d, ProviderError).value
        self.assertIn("response too large", str(error))
        self.assertIn(JWKS_URL, str(error))

    def test_streamed_answer_at_the_limit_is_read_whole(self) -> None:
        chunk = b"x" * (64 * 1024)
        result = self.successResultOf(self.fetch([chunk] * (MAX_RESPONSE_BYTES // len(chunk))))
        self.assertEqual(len(result.body), MAX_RESPONSE_BYTES)
