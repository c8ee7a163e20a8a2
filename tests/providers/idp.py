"""A tiny in-memory OpenID provider for the provider tests: discovery, JWKS, token, userinfo.

Deliberately small and local to these tests (the full fake IdP lives in oauthgate.testing).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import attrs
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from oauthgate.config.options import Config

T = TypeVar("T")

ISSUER = "https://idp.example"
CLIENT_ID = "gate"
CLIENT_SECRET = "s3cr/t:&"
NONCE = "nonce-123"
T0 = 1_700_000_000.0

EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_KEY_2 = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@attrs.frozen
class SigningKey:
    kid: str | None
    private: Any
    alg: str

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        data: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        data["use"] = "sig"
        if self.kid is not None:
            data["kid"] = self.kid
        return data

    def public_pem(self) -> bytes:
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


ES256 = SigningKey("ec-1", EC_KEY, "ES256")
ES256_ROTATED = SigningKey("ec-2", EC_KEY_2, "ES256")
RS256 = SigningKey("rsa-1", RSA_KEY, "RS256")


def config(**changes: Any) -> Config:
    base = Config(
        provider="oidc",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        oidc_issuer_url=ISSUER,
    )
    return attrs.evolve(base, **changes)


def unsigned_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(claims).encode())
    return f"{head}.{body}.{b64url(signature)}"


def hs256_token(secret: bytes, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A token HMAC-signed by hand (PyJWT refuses PEM keys as HMAC secrets)."""
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(mac)}"


@attrs.define
class Answer:
    status: int
    body: bytes
    content_type: bytes = b"application/json"

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Answer:
        return cls(status, json.dumps(data).encode())


@attrs.define(eq=False)
class TinyIdP(Resource):
    """Serves one issuer. Tests change ``keys``, ``discovery`` and the answers as needed."""

    isLeaf = True

    clock: Clock
    keys: list[SigningKey] = attrs.Factory(lambda: [ES256, RS256])
    signing_key: SigningKey = ES256
    discovery: dict[str, Any] = attrs.Factory(
        lambda: {
            "issuer": ISSUER,
            "authorization_endpoint": ISSUER + "/authorize",
            "token_endpoint": ISSUER + "/token",
            "userinfo_endpoint": ISSUER + "/userinfo",
            "jwks_uri": ISSUER + "/jwks",
            "end_session_endpoint": ISSUER + "/logout",
            "code_challenge_methods_supported": ["S256", "plain"],
        }
    )
    discovery_answers: list[Answer] = attrs.Factory(list)  # served first, then discovery
    claims: dict[str, Any] = attrs.Factory(dict)  # merged into the default id_token claims
    jwks_answer: Answer | None = None  # served instead of ``keys`` when set
    token_answer: Callable[[], Answer] | None = None
    userinfo: dict[str, Any] = attrs.Factory(lambda: {"sub": "user-1"})
    userinfo_answer: Answer | None = None  # served instead of ``userinfo`` when set
    hang_token: bool = False
    requests: list[tuple[bytes, dict[bytes, Sequence[bytes]], dict[str, str]]] = attrs.Factory(list)

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)

    def count(self, path: bytes) -> int:
        return sum(1 for p, _, _ in self.requests if p == path)

    def last(self, path: bytes) -> tuple[dict[bytes, Sequence[bytes]], dict[str, str]]:
        for p, headers, form in reversed(self.requests):
            if p == path:
                return headers, form
        raise AssertionError(f"no request to {path!r}")

    def id_claims(self, **changes: Any) -> dict[str, Any]:
        now = int(self.clock.seconds())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": CLIENT_ID,
            "sub": "user-1",
            "email": "alice@example.com",
            "email_verified": True,
            "groups": ["admins", "staff"],
            "preferred_username": "alice",
            "iat": now,
            "exp": now + 3600,
            "nonce": NONCE,
        }
        claims.update(self.claims)
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def id_token(self, key: SigningKey | None = None, **changes: Any) -> str:
        key = key or self.signing_key
        headers = {"kid": key.kid} if key.kid is not None else None
        return jwt.encode(
            self.id_claims(**changes), key.private, algorithm=key.alg, headers=headers
        )

    def tokens(self, **extra: Any) -> dict[str, Any]:
        answer = {
            "access_token": "at-1",
            "token_type": "Bearer",
            "expires_in": 300,
            "refresh_token": "rt-1",
            "id_token": self.id_token(),
        }
        answer.update(extra)
        return {k: v for k, v in answer.items() if v is not None}

    def render(self, request: Request) -> bytes | int:
        path = request.path
        headers = {k.lower(): v for k, v in request.requestHeaders.getAllRawHeaders()}
        body = request.content.read().decode() if request.content is not None else ""
        self.requests.append((path, headers, dict(parse_qsl(body))))
        if path == b"/.well-known/openid-configuration":
            answer = (
                self.discovery_answers.pop(0)
                if self.discovery_answers
                else Answer.json(self.discovery)
            )
        elif path == b"/jwks":
            answer = self.jwks_answer or Answer.json({"keys": [k.jwk() for k in self.keys]})
        elif path == b"/token":
            if self.hang_token:
                return NOT_DONE_YET
            answer = self.token_answer() if self.token_answer else Answer.json(self.tokens())
        elif path == b"/userinfo":
            answer = self.userinfo_answer or Answer.json(self.userinfo)
        else:
            answer = Answer(404, b"not found", b"text/plain")
        request.setResponseCode(answer.status)
        request.setHeader(b"content-type", answer.content_type)
        return answer.body


def resolve(stub: StubTreq, coro: Coroutine[Any, Any, T]) -> Deferred[T]:
    """Run ``coro`` against the in-memory IdP until it completes (or stops making progress)."""
    d = Deferred.fromCoroutine(coro)
    for _ in range(20):
        if d.called:
            break
        stub.flush()
    return d
