"""A provider's JSON Web Key Set, fetched lazily and re-fetched on key rotation.

Also holds the two small HTTP helpers providers share: :func:`fetch` (one request with a
timeout on the injected clock, every failure turned into a ProviderError) and
:class:`SingleFlight` (concurrent callers share one in-flight fetch).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar

import attrs
import jwt
import treq
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from oauthgate.errors import ProviderError, TokenError

__all__ = [
    "MAX_RESPONSE_BYTES",
    "REQUEST_TIMEOUT",
    "HTTPClientLike",
    "HTTPResult",
    "JWKSCache",
    "SingleFlight",
    "bearer_headers",
    "fetch",
]

T = TypeVar("T")

REQUEST_TIMEOUT = 10.0  # seconds; a hung identity provider never hangs a login forever
MAX_RESPONSE_BYTES = 1024 * 1024  # a provider's answer larger than this is refused unread

# For a JWK without ``alg``, the token header's alg is accepted only from the family of
# the key's type (and curve). HMAC and ``none`` are never accepted.
_RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "secp256k1": "ES256K"}
_OKP_CURVES = frozenset({"Ed25519", "Ed448"})

# PyJWT checks the signature only; the time claims are checked against the injected clock.
_SIGNATURE_ONLY: Any = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
}


class HTTPClientLike(Protocol):
    """The part of ``treq.HTTPClient`` providers use."""

    def get(self, url: str, **kwargs: Any) -> Deferred[Any]: ...

    def post(self, url: str, data: Any = None, **kwargs: Any) -> Deferred[Any]: ...


@attrs.frozen
class HTTPResult:
    """A whole HTTP response: status, lower-cased media type (no parameters) and body."""

    code: int
    media_type: str
    body: bytes = attrs.field(repr=False)

    def json(self, what: str, url: str) -> Any:
        """The body parsed as JSON. Raises ProviderError naming ``what`` and ``url``."""
        try:
            return json.loads(self.body)
        except ValueError:
            raise ProviderError(
                f"{what} ({url}) answered HTTP {self.code} with a body that is not JSON"
            ) from None


def bearer_headers(access_token: str) -> dict[bytes, list[bytes]]:
    """The headers of an API request with ``access_token``, answered in JSON."""
    return {
        b"Authorization": [b"Bearer " + access_token.encode("utf-8")],
        b"Accept": [b"application/json"],
    }


async def fetch(
    http_client: HTTPClientLike,
    clock: IReactorTime,
    method: str,
    url: str,
    *,
    what: str,
    timeout: float = REQUEST_TIMEOUT,
    limit: int = MAX_RESPONSE_BYTES,
    **kwargs: Any,
) -> HTTPResult:
    """Send one request and read the whole response, within ``timeout`` seconds of ``clock``.

    The body is read up to ``limit`` bytes: a larger answer (by its Content-Length, or
    as it arrives) is refused and its connection closed, so a provider cannot make us
    buffer without bound.

    Raises:
        ProviderError: the request failed, did not complete in time, or its response
            was too large. The message names ``what`` and ``url``, never the request's
            data or headers.
    """

    async def go() -> HTTPResult:
        if method == "POST":
            response = await http_client.post(url, **kwargs)
        else:
            response = await http_client.get(url, **kwargs)
        body = await _read_body(response, limit, f"{what} ({url})")
        content_type = response.headers.getRawHeaders(b"content-type", [b""])[0]
        media_type = content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
        return HTTPResult(response.code, media_type, body)

    def timed_out(result: object, seconds: float | None) -> Failure:
        # Cancelling a request surfaces as whatever the agent raises; name the real cause.
        return Failure(ProviderError(f"{what} ({url}) did not answer within {timeout:g} s"))

    d = Deferred.fromCoroutine(go())
    d.addTimeout(timeout, clock, onTimeoutCancel=timed_out)
    try:
        return await d
    except (ProviderError, CancelledError):
        raise
    except Exception as e:
        raise ProviderError(
            f"{what} ({url}) could not be reached: {e.__class__.__name__}: {e}"
        ) from None


class _TooLarge(Exception):
    pass


async def _read_body(response: Any, limit: int, source: str) -> bytes:
    """The response's body, or ProviderError once it is known to exceed ``limit`` bytes."""
    declared = response.length
    too_large = ProviderError(f"{source}: response too large (over {limit} bytes)")
    chunks: list[bytes] = []
    size = 0

    def collector(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > limit:
            raise _TooLarge()  # treq.collect closes the connection
        chunks.append(data)

    if isinstance(declared, int) and declared > limit:
        treq.collect(response, _refuse).addErrback(lambda _: None)
        raise too_large
    try:
        await treq.collect(response, collector)
    except _TooLarge:
        raise too_large from None
    return b"".join(chunks)


def _refuse(data: bytes) -> None:
    """A body collector that stops the transfer at the first byte."""
    raise _TooLarge()


@attrs.define
class SingleFlight(Generic[T]):
    """Runs one fetch at a time; callers arriving while it runs share its outcome.

    Cancelling one caller does not cancel the fetch the others wait for.
    """

    _waiters: list[Deferred[T]] | None = None

    async def run(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        mine: Deferred[T] = Deferred()
        if self._waiters is not None:
            self._waiters.append(mine)
        else:
            self._waiters = [mine]
            Deferred.fromCoroutine(fn()).addBoth(self._done)
        return await mine

    def _done(self, result: T | Failure) -> None:
        waiters, self._waiters = self._waiters or [], None
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)


@attrs.frozen
class _Key:
    kid: str | None
    key: Any = attrs.field(repr=False)
    algorithms: tuple[str, ...]  # what a token checked with this key may use


def _short(value: object) -> str:
    """A token-supplied value, made safe to put in a message."""
    return repr(value)[:80]


@attrs.define
class JWKSCache:
    """The signing keys at ``url``, fetched on first use and cached.

    A key id not in the cache triggers a re-fetch (the provider may have rotated its
    keys), at most once per ``min_refetch_interval`` seconds of ``clock``, so tokens with
    made-up key ids cannot make us hammer the provider. Symmetric (``oct``) keys and
    encryption keys are ignored: a token can only be checked against a public key.
    """

    log = Logger()

    _http_client: HTTPClientLike
    _clock: IReactorTime
    _url: str
    _min_refetch_interval: float = attrs.field(default=60.0, kw_only=True)
    _keys: tuple[_Key, ...] | None = attrs.field(default=None, init=False)
    _fetched_at: float | None = attrs.field(default=None, init=False)
    _flight: SingleFlight[tuple[_Key, ...]] = attrs.field(factory=SingleFlight, init=False)

    @property
    def url(self) -> str:
        return self._url

    async def get_key(self, kid: str | None) -> tuple[Any, tuple[str, ...]]:
        """The verification key for ``kid`` and the algorithms it may be used with.

        A key with ``alg`` allows exactly that algorithm; one without allows its key
        type's family: RSA the RS* and PS* algorithms, EC the ES* of its curve, OKP EdDSA.

        A ``kid`` of None matches only when the set holds exactly one key.

        Raises:
            TokenError: no such key (after a re-fetch, when one is allowed).
            ProviderError: the set could not be fetched or holds no usable key.
        """
        keys = self._keys
        if keys is None:
            keys = await self._flight.run(self._fetch)
        found = self._find(keys, kid)
        if found is None and self._may_refetch():
            keys = await self._flight.run(self._fetch)
            found = self._find(keys, kid)
        if found is not None:
            return found.key, found.algorithms
        if kid is None:
            raise TokenError(
                f"the token has no key id (kid) and the JWKS at {self._url} has {len(keys)} keys"
            )
        raise TokenError(f"no key with id {_short(kid)} in the JWKS at {self._url}")

    async def verify(self, token: str) -> dict[str, Any]:
        """The claims of ``token`` once its signature checks out; no claim is checked.

        The algorithms come from the key, never from the token: a token whose header
        ``alg`` is not one its key allows (``none``, HS256 keyed with the public key, ES384
        with a P-256 key) is refused.

        Raises:
            TokenError: a malformed token, an unknown key, a wrong algorithm or signature.
            ProviderError: the key set could not be fetched.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("the token is not a well-formed JWT") from None
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenError("the token's key id (kid) is not a string")
        key, algorithms = await self.get_key(kid)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in algorithms:
            raise TokenError(
                f"the token's algorithm {_short(alg)} is not one its key allows "
                f"({', '.join(algorithms)})"
            )
        try:
            claims = jwt.decode(token, key, algorithms=[alg], options=_SIGNATURE_ONLY)
        except jwt.InvalidSignatureError:
            raise TokenError("the token's signature is invalid") from None
        except jwt.PyJWTError as e:
            raise TokenError(f"the token is invalid: {e}") from None
        if not isinstance(claims, dict):
            raise TokenError("the token's payload is not a JSON object")
        return claims

    def _may_refetch(self) -> bool:
        return (
            self._fetched_at is None
            or self._clock.seconds() - self._fetched_at >= self._min_refetch_interval
        )

    @staticmethod
    def _find(keys: tuple[_Key, ...], kid: str | None) -> _Key | None:
        if kid is None:
            return keys[0] if len(keys) == 1 else None
        for key in keys:
            if key.kid == kid:
                return key
        return None

    async def _fetch(self) -> tuple[_Key, ...]:
        self._fetched_at = self._clock.seconds()
        try:
            keys = await self._fetch_keys()
        except ProviderError as e:
            self.log.error("Fetching the JWKS failed: {reason}", url=self._url, reason=str(e))
            raise
        self._keys = keys
        self.log.info("Loaded {count} signing keys from {url}", count=len(keys), url=self._url)
        return keys

    async def _fetch_keys(self) -> tuple[_Key, ...]:
        result = await fetch(
            self._http_client,
            self._clock,
            "GET",
            self._url,
            what="the JWKS endpoint",
            headers={b"Accept": [b"application/json"]},
        )
        if result.code != 200:
            raise ProviderError(f"the JWKS endpoint ({self._url}) answered HTTP {result.code}")
        document = result.json("the JWKS endpoint", self._url)
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise ProviderError(f"the JWKS at {self._url} has no 'keys' list")
        keys = tuple(key for key in map(self._build_key, entries) if key is not None)
        if not keys:
            raise ProviderError(f"the JWKS at {self._url} has no usable signing key")
        return keys

    def _build_key(self, entry: Any) -> _Key | None:
        if not isinstance(entry, dict):
            return None
        kid = entry.get("kid")
        kid = kid if isinstance(kid, str) else None
        alg = entry.get("alg")
        if (
            entry.get("use", "sig") != "sig"
            or entry.get("kty") == "oct"
            or (alg is not None and not isinstance(alg, str))
            or (isinstance(alg, str) and (alg.startswith("HS") or alg.lower() == "none"))
        ):
            self.log.debug("Ignoring non-signing JWK {kid} at {url}", kid=kid, url=self._url)
            return None
        algorithms = (alg,) if isinstance(alg, str) else _family(entry)
        if not algorithms:
            self.log.warn(
                "Ignoring JWK {kid} at {url}: no alg, and no algorithm family for its type",
                kid=kid,
                url=self._url,
            )
            return None
        try:
            jwk = jwt.PyJWK(entry, algorithm=algorithms[0])
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as e:
            self.log.warn(
                "Ignoring unusable JWK {kid} at {url}: {reason}", kid=kid, url=self._url, reason=e
            )
            return None
        return _Key(kid, jwk.key, algorithms)


def _family(entry: dict[str, Any]) -> tuple[str, ...]:
    """The algorithms a JWK without ``alg`` may verify, from its key type and curve."""
    kty = entry.get("kty")
    crv = entry.get("crv")
    if kty == "RSA":
        return _RSA_ALGORITHMS
    if kty == "EC" and isinstance(crv, str) and crv in _EC_ALGORITHMS:
        return (_EC_ALGORITHMS[crv],)
    if kty == "OKP" and crv in _OKP_CURVES:
        return ("EdDSA",)
    return ()
