"""JWT bearer sessions: ``skip_jwt_bearer_tokens`` and ``extra_jwt_issuers`` (oauth2-proxy §6.4).

An API client may send a JWT instead of a session cookie (``Authorization: Bearer``, or
Basic with the JWT as user or password). :class:`BearerVerifier` accepts it when an
issuer it trusts signed it for one of that issuer's audiences and it is within its
validity; the claims then become a :class:`Session` as the OIDC provider's id_token
claims do. Signing keys come from each issuer's JWKS through
:class:`oauthgate.providers.jwks.JWKSCache` (rotated keys fetched on an unknown ``kid``,
rate-limited). Tokens are never logged or put in an error message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast
from urllib.parse import urlsplit

import attrs
import jwt
from treq.client import HTTPClient
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from oauthgate.authz.htpasswd import parse_basic
from oauthgate.errors import ConfigError, ProviderError, TokenError
from oauthgate.memo import Memo
from oauthgate.providers.claims import coerce_groups, get_claim
from oauthgate.providers.jwks import HTTPClientLike, JWKSCache, SingleFlight, fetch
from oauthgate.providers.oidc import LEEWAY
from oauthgate.session import Session

VERIFIED_CACHE_SIZE = 4096
"""How many verified bearer tokens are remembered (each until its ``exp``)."""

__all__ = [
    "JWT_PATTERN",
    "BearerTokenError",
    "BearerVerifier",
    "TrustedIssuer",
    "extract_token",
    "parse_extra_jwt_issuers",
    "provider_issuer",
]

GroupsHook = Callable[[Mapping[str, Any]], Sequence[str]]
"""Extra groups for a verified token, from its claims (keycloak-oidc: its roles)."""

JWT_PATTERN = re.compile(r"ey[a-zA-Z0-9_-]*\.ey[a-zA-Z0-9_-]*\.[a-zA-Z0-9_-]+\Z")
"""What a bearer JWT looks like (oauth2-proxy's pattern): anything else is not one."""

_X_OAUTH_BASIC = "x-oauth-basic"


def _is_jwt(text: str) -> bool:
    return JWT_PATTERN.match(text) is not None


def extract_token(authorization_header: str | bytes | None) -> str | None:
    """The JWT an ``Authorization`` header carries, or None if it carries none.

    ``Bearer <jwt>``; or ``Basic`` whose user is a JWT and whose password is empty or
    ``x-oauth-basic``; or ``Basic`` whose password is a JWT. The token is only picked
    out here, not verified.
    """
    if authorization_header is None:
        return None
    if isinstance(authorization_header, bytes):
        authorization_header = authorization_header.decode("latin-1")
    scheme, _, value = authorization_header.strip().partition(" ")
    if scheme.lower() == "bearer":
        token = value.strip()
        return token if _is_jwt(token) else None
    credentials = parse_basic(authorization_header, allow_empty_user=True)
    if credentials is None:
        return None
    user, password = credentials
    if _is_jwt(user) and password in ("", _X_OAUTH_BASIC):
        return user
    if _is_jwt(password):
        return password
    return None


def _same_issuer(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def _printable(value: Any, limit: int = 100) -> str:
    """A token-supplied value made safe for a message: printable ASCII, truncated."""
    text = value if isinstance(value, str) else repr(value)
    return "".join(c for c in text if " " <= c <= "~")[:limit]


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


@attrs.frozen
class TrustedIssuer:
    """An issuer whose JWTs are accepted, for which audiences, with which keys.

    ``jwks_url`` empty: found by discovery at ``<issuer>/.well-known/openid-configuration``,
    falling back to ``<issuer>/.well-known/jwks.json`` when discovery fails.
    ``extra_groups``, when set, adds groups to its sessions from the verified claims.
    """

    issuer: str
    audiences: tuple[str, ...]
    jwks_url: str = ""
    extra_groups: GroupsHook | None = attrs.field(default=None, eq=False)


def parse_extra_jwt_issuers(entries: Iterable[str]) -> list[TrustedIssuer]:
    """``extra_jwt_issuers`` entries (``issuer=audience``, split at the first ``=``).

    Blank entries are skipped.

    Raises:
        ValueError: naming every bad entry (no ``=``, an empty side, not an http(s) issuer).
    """
    issuers: list[TrustedIssuer] = []
    problems: list[str] = []
    for entry in entries:
        if not entry.strip():
            continue
        issuer, equals, audience = entry.partition("=")
        issuer, audience = issuer.strip(), audience.strip()
        if not equals or not issuer or not audience:
            problems.append(f"{entry!r}: expected issuer=audience")
        elif not _is_http_url(issuer):
            problems.append(f"{entry!r}: the issuer must be an http(s) URL")
        else:
            issuers.append(TrustedIssuer(issuer, (audience,)))
    if problems:
        raise ValueError("; ".join(problems))
    return issuers


def provider_issuer(config: Any) -> TrustedIssuer | None:
    """The OIDC provider's own issuer: ``oidc_issuer_url`` for ``client_id`` and
    ``oidc_extra_audiences``, keys from ``oidc_jwks_url`` when discovery is skipped.
    None without an ``oidc_issuer_url``."""
    if not config.oidc_issuer_url:
        return None
    audiences = tuple(a for a in (config.client_id, *config.oidc_extra_audiences) if a)
    jwks_url = config.oidc_jwks_url if config.skip_oidc_discovery else ""
    return TrustedIssuer(config.oidc_issuer_url, audiences, jwks_url)


def _email_claim(config: Any) -> str:
    # As OIDCProvider._email_claim: the deprecated user_id_claim wins over a default email claim.
    if config.oidc_email_claim == "email" and config.user_id_claim not in ("", "email"):
        return str(config.user_id_claim)
    return str(config.oidc_email_claim)


class BearerTokenError(TokenError):
    """A bearer JWT was refused. ``code`` names the check that failed, for the auth log:

    ``malformed``, ``unknown_issuer``, ``unknown_kid``, ``alg_mismatch``,
    ``bad_signature``, ``wrong_audience``, ``no_audience``, ``no_expiry``, ``expired``,
    ``not_yet_valid``, ``issued_in_future``, ``no_subject``, ``email_unverified``.

    ``str(e)`` is a sentence safe to log and to send as ``error_description``: it never
    contains the token.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _decode_part(part: str) -> Any:
    padded = part + "=" * (-len(part) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and payload of ``token``, unverified. Raises BearerTokenError."""
    malformed = BearerTokenError("malformed", "the token is not a well-formed JWT")
    if not _is_jwt(token):
        raise malformed
    header_part, payload_part, _ = token.split(".")
    try:
        header = _decode_part(header_part)
        payload = _decode_part(payload_part)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise malformed from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise malformed
    return header, payload


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


@attrs.define
class _IssuerKeys:
    """Where one issuer's signing keys are, found once (discovery, or the fixed URL).

    After a failed discovery the fallback ``/.well-known/jwks.json`` is used, and
    discovery is tried again at most once per ``retry_interval`` seconds.
    """

    log = Logger()

    _http_client: HTTPClientLike
    _clock: IReactorTime
    issuer: str
    _jwks_url: str
    _retry_interval: float
    _cache: JWKSCache | None = attrs.field(default=None, init=False)
    _fallback: JWKSCache | None = attrs.field(default=None, init=False)
    _failed_at: float = attrs.field(default=0.0, init=False)
    _flight: SingleFlight[JWKSCache] = attrs.field(factory=SingleFlight, init=False)

    def __attrs_post_init__(self) -> None:
        if self._jwks_url:
            self._cache = self._jwks(self._jwks_url)

    def _jwks(self, url: str) -> JWKSCache:
        return JWKSCache(
            self._http_client, self._clock, url, min_refetch_interval=self._retry_interval
        )

    async def keys(self) -> JWKSCache:
        if self._cache is not None:
            return self._cache
        if (
            self._fallback is not None
            and self._clock.seconds() - self._failed_at < self._retry_interval
        ):
            return self._fallback
        return await self._flight.run(self._discover)

    async def _discover(self) -> JWKSCache:
        base = self.issuer.rstrip("/")
        try:
            jwks_uri = await self._discovered_jwks_uri(base + "/.well-known/openid-configuration")
        except ProviderError as e:
            self._failed_at = self._clock.seconds()
            if self._fallback is None:
                self._fallback = self._jwks(base + "/.well-known/jwks.json")
            self.log.warn(
                "Discovery for the JWT issuer {issuer} failed, using {url}: {reason}",
                issuer=self.issuer,
                url=self._fallback.url,
                reason=str(e),
            )
            return self._fallback
        self._cache = self._jwks(jwks_uri)
        self._fallback = None
        return self._cache

    async def _discovered_jwks_uri(self, url: str) -> str:
        result = await fetch(
            self._http_client,
            self._clock,
            "GET",
            url,
            what="OIDC discovery",
            headers={b"Accept": [b"application/json"]},
        )
        if result.code != 200:
            raise ProviderError(f"OIDC discovery ({url}) answered HTTP {result.code}")
        document = result.json("OIDC discovery", url)
        if not isinstance(document, dict):
            raise ProviderError(f"OIDC discovery ({url}) did not answer a JSON object")
        issuer = document.get("issuer")
        if not isinstance(issuer, str) or not _same_issuer(issuer, self.issuer):
            raise ProviderError(f"OIDC discovery ({url}) names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not _is_http_url(jwks_uri):
            raise ProviderError(f"OIDC discovery ({url}) has no http(s) jwks_uri")
        return jwks_uri


@attrs.frozen
class _Issuer:
    keys: _IssuerKeys
    audiences: frozenset[str]
    extra_groups: GroupsHook | None = None


class BearerVerifier:
    """Turns a bearer JWT from a trusted issuer into a :class:`Session`.

    The issuer is picked by the token's (unverified) ``iss``, only among the configured
    ones; its JWKS decides the key and the algorithms (``none``, HMAC and algorithms the
    key's type does not allow are refused whatever the header says). Then ``iss``, the
    audience (the first of ``audience_claims`` present must hold one of the issuer's
    audiences), ``exp`` (required), ``nbf``, ``iat`` (``leeway`` seconds of skew on
    ``clock``) and ``sub`` (required) are checked, and a token whose ``email_verified``
    is false is refused unless ``allow_unverified_email``.

    Several entries for one issuer are merged: their audiences are all accepted.
    """

    def __init__(
        self,
        issuers: Sequence[TrustedIssuer],
        http_client: HTTPClient | HTTPClientLike,
        clock: IReactorTime,
        *,
        audience_claims: Sequence[str] = ("aud",),
        email_claim: str = "email",
        groups_claim: str = "groups",
        allow_unverified_email: bool = False,
        leeway: float = LEEWAY,
        min_refetch_interval: float = 60.0,
        provider_id: str = "bearer",
    ) -> None:
        self._clock = clock
        self._audience_claims = tuple(audience_claims) or ("aud",)
        self._email_claim = email_claim
        self._groups_claim = groups_claim
        self._allow_unverified_email = allow_unverified_email
        self._leeway = leeway
        self._provider_id = provider_id
        # sha256(token) -> (exp, session): a token already verified is not verified again
        # (PyJWT costs more than the RSA check itself) until it expires.
        self._verified: Memo[bytes, tuple[float, Session]] = Memo(VERIFIED_CACHE_SIZE)
        client = cast(HTTPClientLike, http_client)  # treq's typed HTTPClient is one
        self._issuers: dict[str, _Issuer] = {}
        for trusted in issuers:
            name = trusted.issuer.rstrip("/")
            known = self._issuers.get(name)
            if known is None:
                keys = _IssuerKeys(
                    client, clock, trusted.issuer, trusted.jwks_url, min_refetch_interval
                )
                known = _Issuer(keys, frozenset())
            self._issuers[name] = attrs.evolve(
                known,
                audiences=known.audiences | set(trusted.audiences),
                extra_groups=known.extra_groups or trusted.extra_groups,
            )

    @classmethod
    def from_config(
        cls,
        config: Any,
        http_client: HTTPClient | HTTPClientLike,
        clock: IReactorTime,
        *,
        provider_groups: GroupsHook | None = None,
    ) -> BearerVerifier:
        """The verifier ``skip_jwt_bearer_tokens`` asks for: the OIDC provider's issuer
        (see :func:`provider_issuer`) and every ``extra_jwt_issuers`` entry, with the
        provider's audience, email and groups claim options. ``provider_groups`` adds
        groups to the sessions of the provider's own issuer (keycloak-oidc: roles).

        Raises:
            ConfigError: a bad ``extra_jwt_issuers`` entry, or no issuer at all.
        """
        issuers: list[TrustedIssuer] = []
        own = provider_issuer(config)
        if own is not None:
            issuers.append(attrs.evolve(own, extra_groups=provider_groups))
        try:
            issuers.extend(parse_extra_jwt_issuers(config.extra_jwt_issuers))
        except ValueError as e:
            raise ConfigError([f"extra_jwt_issuers: {e}"]) from None
        if not issuers:
            raise ConfigError(
                [
                    "skip_jwt_bearer_tokens: needs an issuer to trust: oidc_issuer_url "
                    "or extra_jwt_issuers"
                ]
            )
        return cls(
            issuers,
            http_client,
            clock,
            audience_claims=config.oidc_audience_claims,
            email_claim=_email_claim(config),
            groups_claim=config.oidc_groups_claim,
            allow_unverified_email=config.insecure_oidc_allow_unverified_email,
        )

    @property
    def issuers(self) -> Mapping[str, frozenset[str]]:
        """Each trusted issuer (without a trailing slash) and the audiences it may sign for."""
        return {name: issuer.audiences for name, issuer in self._issuers.items()}

    async def verify(self, token: str) -> Session:
        """The session ``token`` stands for, once every check passed.

        Raises:
            BearerTokenError: the token is refused; ``code`` says which check failed.
            ProviderError: the issuer's keys could not be fetched (not the token's fault).
        """
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        hit = self._verified.get(digest)
        if hit is not None:
            if self._clock.seconds() <= hit[0] + self._leeway:
                return hit[1]
            self._verified.pop(digest)  # expired: the full check below says so
        header, unverified = _unverified(token)
        iss = unverified.get("iss")
        issuer = self._issuers.get(iss.rstrip("/")) if isinstance(iss, str) else None
        if issuer is None:
            raise BearerTokenError(
                "unknown_issuer", f"the issuer {_printable(iss)!r} is not trusted"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise BearerTokenError("malformed", "the token's key id (kid) is not a string")
        cache = await issuer.keys.keys()
        try:
            key, algorithms = await cache.get_key(kid)
        except TokenError:
            raise BearerTokenError(
                "unknown_kid",
                f"no signing key of {issuer.keys.issuer} has the token's key id (kid)",
            ) from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in algorithms:
            raise BearerTokenError(
                "alg_mismatch",
                f"the token's algorithm {_printable(alg, 20)!r} is not one its key allows",
            )
        try:
            # The signature only: the claims are checked below, on the injected clock.
            jwt.PyJWS().decode(token, key, algorithms=[alg])
        except jwt.InvalidSignatureError:
            raise BearerTokenError("bad_signature", "the token's signature is invalid") from None
        except jwt.PyJWTError:
            raise BearerTokenError("malformed", "the token is not a well-formed JWT") from None
        # The payload read before is the one the signature covers.
        self._check(unverified, issuer)
        session = self._session(unverified, token)
        if issuer.extra_groups is not None:
            extra = issuer.extra_groups(unverified)
            session = attrs.evolve(session, groups=tuple(dict.fromkeys((*session.groups, *extra))))
        exp = _seconds(unverified.get("exp"))
        if exp is not None:
            self._verified.put(digest, (exp, session))
        return session

    def _check(self, claims: Mapping[str, Any], issuer: _Issuer) -> None:
        # ``iss`` chose the issuer; the verified payload is the one it was read from.
        self._check_audience(claims, issuer.audiences)
        now = self._clock.seconds()
        exp = _seconds(claims.get("exp"))
        if exp is None:
            raise BearerTokenError("no_expiry", "the token has no valid expiry (exp)")
        if now > exp + self._leeway:
            raise BearerTokenError("expired", "the token expired")
        for name, code, message in (
            ("nbf", "not_yet_valid", "the token is not valid yet (nbf)"),
            ("iat", "issued_in_future", "the token was issued in the future (iat)"),
        ):
            if name not in claims:
                continue
            value = _seconds(claims[name])
            if value is None:
                raise BearerTokenError("malformed", f"the token's {name} is not a number")
            if value > now + self._leeway:
                raise BearerTokenError(code, message)
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise BearerTokenError("no_subject", "the token has no subject (sub)")
        verified = claims.get("email_verified")
        if not self._allow_unverified_email and (
            verified is False or (isinstance(verified, str) and verified.lower() == "false")
        ):
            raise BearerTokenError("email_unverified", "the token's email is not verified")

    def _check_audience(self, claims: Mapping[str, Any], accepted: frozenset[str]) -> None:
        for name in self._audience_claims:
            if name not in claims:
                continue
            value = claims[name]
            audiences = [value] if isinstance(value, str) else value
            if isinstance(audiences, list) and any(
                isinstance(a, str) and a in accepted for a in audiences
            ):
                return
            raise BearerTokenError(
                "wrong_audience", f"the token's audience ({name}) is not one accepted here"
            )
        raise BearerTokenError(
            "no_audience", "the token has no audience (" + ", ".join(self._audience_claims) + ")"
        )

    def _session(self, claims: Mapping[str, Any], token: str) -> Session:
        sub: str = claims["sub"]
        email = get_claim(claims, self._email_claim)
        preferred_username = claims.get("preferred_username")
        return Session(
            user=sub,
            email=email if isinstance(email, str) and email else sub,
            groups=coerce_groups(get_claim(claims, self._groups_claim)),
            preferred_username=preferred_username if isinstance(preferred_username, str) else "",
            access_token=token,
            id_token=token,
            created_at=self._clock.seconds(),
            expires_on=_seconds(claims.get("exp")),
            provider=self._provider_id,
        )
