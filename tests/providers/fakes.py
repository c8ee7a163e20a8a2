"""Scaffolding shared by the provider tests: a fake OAuth 2.0 API base, a provider builder,
the "redeem then enrich" login, the "this login fails with a ProviderError" checks, and the
set-up of a plain OAuth 2.0 provider's tests (:class:`PlainProvider`, :class:`PlainProviderTests`).

Each provider's test file keeps what is specific to it: the endpoints its fake answers, the
shape of those answers, and the behaviour it asserts.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, overload
from urllib.parse import parse_qs, parse_qsl

import attrs
import jwt
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from oauthgate.errors import ProviderError
from oauthgate.interfaces import IProvider, IProviderFactory
from oauthgate.plugins import Plugins
from oauthgate.providers.oauth2 import OAuth2Provider
from oauthgate.session import Session
from oauthgate.testing import (
    ByHost,
    GateTestCase,
    MemoryHTTPClient,
    ProviderSubject,
    memory_http_client,
    provider_config,
)
from tests.providers.idp import RS256, SigningKey

REDIRECT = "https://app.test/oauth2/callback"
NONCE = "n"
T0 = 1_700_000_000.0
OIDC_NONCE = "nonce-oidc"
"""The nonce FakeTokenServer binds its codes to unless told otherwise."""

T = TypeVar("T")
P = TypeVar("P")
E = TypeVar("E", bound=Exception)
OP = TypeVar("OP", bound=OAuth2Provider)
A = TypeVar("A", bound="FakeOAuth2API")


@attrs.frozen
class Call:
    """One request a fake API received."""

    path: bytes
    params: dict[str, list[str]]
    """Query string and form body merged, the form winning."""
    form: dict[str, list[str]]
    body: bytes
    headers: dict[bytes, Sequence[bytes]]

    def header(self, name: bytes) -> str:
        """The first value of header ``name`` (any case), or an empty string."""
        for key, values in self.headers.items():
            if key.lower() == name.lower():
                return values[0].decode()
        return ""


class FakeOAuth2API(Resource):
    """A provider's token endpoint and API, as one in-memory resource.

    ``codes`` maps authorization codes (single use) to user keys, ``tokens`` maps issued access
    tokens to user keys, ``requests`` records every call and ``broken`` makes every call answer
    ``outage_status`` with ``outage_body``. Subclasses answer calls in ``answer``.
    """

    isLeaf = True
    content_type = b"application/json"
    outage_status = 503
    outage_body = b'{"error": "temporarily_unavailable"}'

    def __init__(self) -> None:
        Resource.__init__(self)
        self.codes: dict[str, str] = {"good-code": "alice"}
        self.tokens: dict[str, str] = {}
        self.broken = False
        self.requests: list[Call] = []

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        body = request.content.read()
        form = parse_qs(body.decode(errors="replace"))
        query = {k.decode(): [v.decode() for v in vs] for k, vs in (request.args or {}).items()}
        headers = dict(request.requestHeaders.getAllRawHeaders())
        call = Call(request.path, {**query, **form}, form, body, headers)
        self.requests.append(call)
        request.setHeader(b"content-type", self.content_type)
        if self.broken:
            request.setResponseCode(self.outage_status)
            return self.outage_body
        return self.answer(request, call)

    def answer(self, request: Request, call: Call) -> bytes:
        """The answer to ``call``; by default a 404."""
        request.setResponseCode(404)
        return b"{}"

    def take_code(self, call: Call) -> str | None:
        """The user the form's ``code`` was issued for, using the code up; None if unknown."""
        return self.codes.pop(call.form.get("code", [""])[0], None)

    def issue(self, token: str, user: str) -> str:
        """Record ``token`` as an access token of ``user`` and return it."""
        self.tokens[token] = user
        return token

    def bearer_user(self, call: Call) -> str | None:
        """The user whose access token the call's ``Authorization: Bearer`` carries."""
        return self.tokens.get(call.header(b"authorization").removeprefix("Bearer "))

    def fail(self, request: Request, status: int, body: bytes) -> bytes:
        """Answer ``status`` with ``body``."""
        request.setResponseCode(status)
        return body


def make_provider(
    kind: type[P],
    factory: IProviderFactory,
    hosts: Mapping[str, Resource],
    clock: Clock,
    **config: Any,
) -> tuple[P, MemoryHTTPClient]:
    """The provider ``factory`` builds from ``config`` (cfg keys), talking to ``hosts``.

    Fails unless it is a ``kind``.
    """
    http = memory_http_client(ByHost(dict(hosts)), clock=clock)
    provider = factory.build(provider_config(**config), http, clock)
    assert isinstance(provider, kind), provider
    return provider, http


def started_clock() -> Clock:
    """A clock at ``T0``."""
    clock = Clock()
    clock.advance(T0)
    return clock


async def redeem_and_enrich(
    provider: IProvider, code: str = "good-code", redirect_uri: str = REDIRECT, nonce: str = NONCE
) -> Session:
    """A full login: redeem ``code``, then enrich the session."""
    session = await provider.redeem(code, None, redirect_uri, nonce)
    return await provider.enrich(session)


@overload
def enrich_error(case: GateTestCase, provider: IProvider, code: str = ...) -> ProviderError: ...


@overload
def enrich_error(case: GateTestCase, provider: IProvider, code: str, error: type[E]) -> E: ...


def enrich_error(
    case: GateTestCase,
    provider: IProvider,
    code: str = "good-code",
    error: type[Exception] = ProviderError,
) -> Exception:
    """Redeem ``code`` (which must work), then the ``error`` enriching the session raises."""
    session = case.get_success(provider.redeem(code, None, REDIRECT, NONCE))
    return case.get_failure(provider.enrich(session), error)


def token_error(case: GateTestCase, provider: IProvider, token: str = "bad") -> ProviderError:
    """The ProviderError enriching a session with the unknown access token ``token`` raises."""
    return case.get_failure(provider.enrich(Session(access_token=token)), ProviderError)


def code_error(case: GateTestCase, provider: IProvider, code: str = "bad") -> ProviderError:
    """The ProviderError redeeming the refused ``code`` raises."""
    return case.get_failure(provider.redeem(code, None, REDIRECT, NONCE), ProviderError)


class Breakable(Protocol):
    broken: bool


def break_all(fakes: Iterable[Breakable]) -> Callable[[], None]:
    """A ``break_api`` for ProviderSubject that breaks every one of ``fakes``."""
    fakes = tuple(fakes)

    def break_api() -> None:
        for fake in fakes:
            fake.broken = True

    return break_api


def subject(
    provider: IProvider,
    http: MemoryHTTPClient,
    fakes: Iterable[Breakable],
    email: str,
    code: str = "good-code",
    **more: Any,
) -> ProviderSubject:
    """The conformance suite's subject; ``break_api`` breaks every one of ``fakes``."""
    return ProviderSubject(
        provider=provider,
        http=http,
        code=code,
        redirect_uri=REDIRECT,
        email=email,
        break_api=break_all(fakes),
        **more,
    )


@attrs.frozen
class PlainProvider(Generic[OP, A]):
    """How the tests of a plain OAuth 2.0 provider build it: as ``name`` from ``factory``
    (a ``kind``), over a ``fake()`` of its API answering at every one of ``hosts``, with
    ``config`` (cfg keys) besides ``provider``."""

    kind: type[OP]
    factory: IProviderFactory
    name: str
    display_name: str
    fake: Callable[[], A]
    hosts: tuple[str, ...]
    config: Mapping[str, Any]
    email: str = "alice@example.com"
    """Whom the fake's ``good-code`` logs in (for the conformance suite)."""

    def build(self, api: A, clock: Clock, **options: Any) -> tuple[OP, MemoryHTTPClient]:
        """The provider over ``api``, with ``options`` on top of ``config``."""
        return make_provider(
            self.kind,
            self.factory,
            dict.fromkeys(self.hosts, api),
            clock,
            provider=self.name,
            **{**self.config, **options},
        )

    def subject(self, clock: Clock) -> ProviderSubject:
        """The conformance suite's subject, over a fresh fake."""
        api = self.fake()
        provider, http = self.build(api, clock)
        return subject(provider, http, [api], self.email)


if TYPE_CHECKING:
    _Base = GateTestCase
else:

    class _Base:
        """At run time the mixin is no TestCase (so importing it collects no tests)."""


class PlainProviderTests(_Base, Generic[OP, A]):
    """Mixin for ``GateTestCase``: ``self.provider`` over ``self.api`` on ``self.clock``
    (at :data:`T0`), built as ``plain`` says, and the test that it is the entry point's."""

    plain: PlainProvider[OP, A]
    clock: Clock
    api: A
    provider: OP
    http: MemoryHTTPClient

    def setUp(self) -> None:
        self.clock = started_clock()
        self.api = self.plain.fake()
        self.provider, self.http = self.plain.build(self.api, self.clock)

    def build(self, **options: Any) -> OP:
        """Another provider over ``self.api``, with ``options`` on top."""
        return self.plain.build(self.api, self.clock, **options)[0]

    def login(self, code: str = "good-code", provider: OP | None = None) -> Session:
        """Log in with ``code`` at ``provider`` (``self.provider``)."""
        return self.get_success(redeem_and_enrich(provider or self.provider, code))

    def test_factory_and_provider_provide_their_interfaces(self) -> None:
        plain = self.plain
        self.assert_provides(IProviderFactory, plain.factory)
        self.assert_provides(IProvider, self.provider)
        self.assertIsInstance(self.provider, plain.kind)
        self.assertEqual(
            (self.provider.id, self.provider.display_name), (plain.name, plain.display_name)
        )
        self.assertIs(Plugins.from_entry_points().provider_factory(plain.name), plain.factory)


# The OpenID Connect family (Entra ID, Azure, ADFS, Google): a token server issuing signed
# id_tokens, and a test case whose I/O needs the memory HTTP client flushed.


def run(http: MemoryHTTPClient, coro: Coroutine[Any, Any, T]) -> Deferred[T]:
    """Run ``coro``, flushing ``http`` until it completes (at most ten rounds)."""
    d = Deferred.fromCoroutine(coro)
    for _ in range(10):
        if d.called:
            break
        http.flush()
    return d


@attrs.frozen
class Answer:
    """A fake's answer: a status and a JSON-able body (or raw bytes)."""

    status: int
    body: Any  # JSON-able, or bytes


@attrs.define(eq=False)
class FakeTokenServer(Resource):
    """An authorization server answering as the real one documents: discovery (optional),
    keys, and a token endpoint for the authorization_code and refresh_token grants.

    ``routes`` maps a request path to ``discovery``, ``jwks`` or ``token``. The id_token's
    claims are ``claims`` (changed per test), signed RS256 by ``key``.
    """

    isLeaf = True

    clock: Clock
    issuer: str
    routes: dict[str, str]
    client_id: str
    discovery: dict[str, Any] = attrs.Factory(dict)
    claims: dict[str, Any] = attrs.Factory(dict)
    key: SigningKey = RS256
    published_key: SigningKey | None = None  # served at the keys URL instead of ``key``
    broken: bool = False
    refresh_error: str | None = None
    refresh_id_token: bool = True
    codes: dict[str, str | None] = attrs.Factory(dict)
    access_tokens: list[str] = attrs.Factory(list)
    token_forms: list[dict[str, str]] = attrs.Factory(list)
    token_headers: list[dict[bytes, Sequence[bytes]]] = attrs.Factory(list)

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)

    def issue_code(self, nonce: str | None = OIDC_NONCE) -> str:
        code = "code-" + secrets.token_urlsafe(8)
        self.codes[code] = nonce
        return code

    def id_claims(self, nonce: str | None = None, **changes: Any) -> dict[str, Any]:
        now = int(self.clock.seconds())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.client_id,
            "iat": now,
            "exp": now + 3600,
            **self.claims,
        }
        if nonce is not None:
            claims["nonce"] = nonce
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def id_token(self, nonce: str | None = None, **changes: Any) -> str:
        return jwt.encode(
            self.id_claims(nonce, **changes),
            self.key.private,
            algorithm=self.key.alg,
            headers={"kid": self.key.kid},
        )

    def render(self, request: Request) -> bytes:
        path = request.path.decode()
        route = self.routes.get(path)
        body = request.content.read().decode() if request.content is not None else ""
        if self.broken:
            answer = Answer(503, {"error": "temporarily_unavailable"})
        elif route == "discovery":
            answer = Answer(200, self.discovery)
        elif route == "jwks":
            answer = Answer(200, {"keys": [(self.published_key or self.key).jwk()]})
        elif route == "token":
            form = dict(parse_qsl(body))
            self.token_forms.append(form)
            self.token_headers.append(
                {k.lower(): v for k, v in request.requestHeaders.getAllRawHeaders()}
            )
            answer = self._token(form)
        else:
            answer = Answer(404, {"error": "not_found"})
        request.setResponseCode(answer.status)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        return answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()

    def _token(self, form: dict[str, str]) -> Answer:
        grant = form.get("grant_type")
        if grant == "authorization_code":
            code = form.get("code", "")
            if code not in self.codes:
                return Answer(400, {"error": "invalid_grant"})
            nonce = self.codes.pop(code)
            return Answer(200, self._tokens(nonce, refresh=True))
        if grant == "refresh_token":
            if self.refresh_error:
                return Answer(400, {"error": self.refresh_error})
            return Answer(200, self._tokens(None, refresh=False))
        return Answer(400, {"error": "unsupported_grant_type"})

    def _tokens(self, nonce: str | None, *, refresh: bool) -> dict[str, Any]:
        access = "at-" + secrets.token_urlsafe(8)
        self.access_tokens.append(access)
        tokens: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": 3599,
        }
        if refresh:  # a refresh grant keeps the refresh token, as Google does
            tokens["refresh_token"] = "rt-" + secrets.token_urlsafe(8)
        if refresh or self.refresh_id_token:
            tokens["id_token"] = self.id_token(nonce)
        return tokens


class FlushingTestCase(SynchronousTestCase):
    """A test case running coroutines against ``self.http``, flushing it as they wait, and
    logging in at ``self.server``."""

    http: MemoryHTTPClient
    server: FakeTokenServer

    async def login(self, provider: IProvider, nonce: str = OIDC_NONCE) -> Session:
        """Redeem a fresh code of ``self.server`` bound to ``nonce``, then enrich."""
        return await redeem_and_enrich(provider, self.server.issue_code(nonce), nonce=nonce)

    def get(self, coro: Coroutine[Any, Any, T]) -> T:
        """The result of ``coro``, which must succeed."""
        return self.successResultOf(run(self.http, coro))

    def fail_with(self, coro: Coroutine[Any, Any, Any], exc: type[Exception]) -> Exception:
        """The ``exc`` that ``coro`` fails with."""
        error: Exception = self.failureResultOf(run(self.http, coro), exc).value
        return error
