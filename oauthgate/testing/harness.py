"""Test harness: a TestCase with awaitable helpers, in-memory HTTP, and a small browser.

Everything here runs without a network or a real reactor, so tests stay fast and
deterministic::

    class LoginTests(GateTestCase):
        def test_login_round_trip(self) -> None:
            clock = Clock()
            idp = FakeIdP("https://idp.test", clock, auto_login="alice")
            site = ByHost({"idp.test": idp.resource(), "app.test": my_gate_resource})
            browser = Browser(memory_http_client(site), clock)
            page = self.get_success(browser.get("https://app.test/"))
            self.assertEqual(page.status, 200)

:class:`Browser` also works over real sockets: give it a client built with
:meth:`Browser.over_agent` and await its methods on the running reactor.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Iterator, Mapping
from email.message import Message
from email.utils import parsedate_to_datetime
from http.cookiejar import Cookie as _StdCookie
from ipaddress import ip_address
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import attrs
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.server import Request
from zope.interface import implementer
from zope.interface.exceptions import Invalid
from zope.interface.interface import InterfaceClass
from zope.interface.verify import verifyClass, verifyObject

__all__ = [
    "Browser",
    "BrowserResponse",
    "ByHost",
    "GateTestCase",
    "MemoryHTTPClient",
    "StoredCookie",
    "TooManyRedirects",
    "memory_http_client",
]

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)


# -- GateTestCase -------------------------------------------------------------------------


def _as_deferred(awaitable: Awaitable[T]) -> Deferred[T]:
    if isinstance(awaitable, Deferred):
        return awaitable
    if inspect.iscoroutine(awaitable):
        return Deferred.fromCoroutine(awaitable)

    async def wait() -> T:
        return await awaitable

    return Deferred.fromCoroutine(wait())


class GateTestCase(SynchronousTestCase):
    """A SynchronousTestCase for code whose I/O completes in memory.

    ``get_success`` and ``get_failure`` run a coroutine, a Deferred or any other
    awaitable that completes synchronously (memory stores, a Clock, the memory
    HTTP client) and fail the test with a clear message if it is still waiting.
    """

    def _settle(self, awaitable: Awaitable[Any]) -> Deferred[Any]:
        d = _as_deferred(awaitable)
        if not d.called:
            d.cancel()
            d.addErrback(lambda _: None)
            self.fail(
                f"{awaitable!r} has not completed: it is waiting on something "
                "(advance the Clock, or flush() the memory HTTP client, then try again)"
            )
        return d

    def get_success(self, awaitable: Awaitable[T]) -> T:
        """The result of ``awaitable``, which must have completed successfully."""
        d: Deferred[T] = self._settle(awaitable)
        return self.successResultOf(d)

    def get_failure(self, awaitable: Awaitable[Any], exc_type: type[E]) -> E:
        """The exception ``awaitable`` failed with; the test fails unless it is ``exc_type``."""
        outcome: list[object] = []
        self._settle(awaitable).addBoth(outcome.append)
        result = outcome[0]
        if not isinstance(result, Failure):
            self.fail(f"{awaitable!r} succeeded with {result!r}; expected {exc_type.__name__}")
        if not isinstance(result.value, exc_type):
            self.fail(
                f"{awaitable!r} failed with {result.value!r}; expected {exc_type.__name__}\n"
                + result.getTraceback()
            )
        return result.value

    def assert_provides(self, iface: InterfaceClass, obj: object) -> None:
        """Fail unless ``obj`` provides zope interface ``iface`` with the right methods."""
        try:
            verifyObject(iface, obj)
        except Invalid as e:
            self.fail(f"{obj!r} does not provide {iface.__name__}: {e}")


# -- memory HTTP client -------------------------------------------------------------------


@implementer(IBodyProducer)
class _BytesProducer:
    """Writes a whole body at once, so a memory request is sent synchronously."""

    def __init__(self, body: Any) -> None:
        if isinstance(body, str):
            body = body.encode("utf-8")
        elif not isinstance(body, bytes):
            body = body.read()  # a file-like object
        self._body: bytes = body
        self.length = len(self._body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


verifyClass(IBodyProducer, _BytesProducer)


class _NoCookieJar(IndexableCookieJar):
    """A cookie jar that never keeps anything (cookies are the test's business)."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass

    def set_cookie(self, cookie: _StdCookie) -> None:
        pass


class MemoryHTTPClient(HTTPClient):
    """A ``treq.HTTPClient`` whose requests go to a resource in memory.

    Requests go through a real ``Agent`` and a real ``Site`` (treq's
    ``RequestTraversalAgent``), so what the resource sees is what it would see
    on a socket. A request's Deferred fires before ``request`` returns whenever
    the resource answers without waiting on anything; a resource that waits on
    a clock needs ``flush()`` after the clock is advanced.

    Unlike treq's default client it keeps no cookies; send them yourself or use
    :class:`Browser`. Timeouts run on ``clock`` (a private one if not given).
    """

    def __init__(self, resource: IResource, *, clock: IReactorTime | None = None) -> None:
        self._memory_agent = RequestTraversalAgent(resource)
        HTTPClient.__init__(
            self,
            self._memory_agent,
            cookiejar=_NoCookieJar(),
            data_to_body_producer=_BytesProducer,
        )
        self._timer: Any = clock if clock is not None else MemoryReactorClock()

    def request(self, method: str, url: Any, **kwargs: Any) -> Deferred[Any]:
        if "files" in kwargs:
            raise TypeError("MemoryHTTPClient does not support files=")
        kwargs.setdefault("reactor", self._timer)
        kwargs.setdefault("_stacklevel", 3)
        d = HTTPClient.request(self, method, url, **kwargs)
        self.flush()
        return d

    def flush(self) -> None:
        """Move pending bytes between clients and servers until nothing moves any more
        (after a clock advance, say). Exchanges that wait on other in-memory exchanges
        (the gate waiting on the identity provider) complete whatever order they run in."""
        for _ in range(1000):
            pumps = list(self._memory_agent._pumps)
            moved = False
            for pump in pumps:
                moved = pump.flush() or moved
            self._memory_agent.flush()  # also forgets finished connections
            if not moved and len(self._memory_agent._pumps) == len(pumps):
                return
        raise AssertionError("in-memory HTTP did not settle after 1000 rounds")


def memory_http_client(
    resource: IResource, *, clock: IReactorTime | None = None
) -> MemoryHTTPClient:
    """A ``treq.HTTPClient`` serving every request from ``resource``, in memory.

    Use :class:`ByHost` as ``resource`` to serve several host names from one client.
    """
    return MemoryHTTPClient(resource, clock=clock)


# -- ByHost -------------------------------------------------------------------------------


class ByHost(Resource):
    """Dispatches each request on its Host header to one resource per host name.

    Keys are host names (``"idp.test"``) or host:port; unknown hosts get a 404.
    """

    isLeaf = True

    def __init__(self, hosts: Mapping[str, IResource]) -> None:
        Resource.__init__(self)
        self._hosts = {name.lower(): resource for name, resource in hosts.items()}

    def add_host(self, name: str, resource: IResource) -> None:
        """Serve ``resource`` for host ``name`` too (for resources that need the client first)."""
        self._hosts[name.lower()] = resource

    def render(self, request: Request) -> bytes | int:
        host_header = (request.getHeader(b"host") or b"").decode("latin-1").lower()
        hostname = request.getRequestHostname().decode("latin-1").lower()
        child = self._hosts.get(host_header) or self._hosts.get(hostname)
        if child is None:
            page: IResource = notFound("No such host", "This host is not served here.")
            return page.render(request)  # type: ignore[no-any-return]
        target: IResource = getChildForRequest(child, request)
        return target.render(request)  # type: ignore[no-any-return]


# -- Browser ------------------------------------------------------------------------------


class TooManyRedirects(Exception):
    """The browser followed more redirects than it allows (a redirect loop, usually)."""


@attrs.frozen
class StoredCookie:
    """A cookie in the browser's jar."""

    name: str
    value: str = attrs.field(repr=False)
    domain: str
    path: str
    host_only: bool = True
    expires: float | None = None
    secure: bool = False
    http_only: bool = False


@attrs.frozen
class BrowserResponse:
    """One response the browser received; ``history`` holds the redirects that led here."""

    status: int
    headers: Headers = attrs.field(repr=False)
    body: bytes = attrs.field(repr=False)
    url: str
    method: str
    history: tuple[BrowserResponse, ...] = ()

    @property
    def text(self) -> str:
        """The body decoded with the Content-Type charset (UTF-8 when none)."""
        message = Message()
        message["content-type"] = self.header("content-type") or "text/plain"
        charset = message.get_content_charset() or "utf-8"
        try:
            return self.body.decode(charset, "replace")
        except LookupError:
            return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        """The first value of header ``name``, or None."""
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    @property
    def urls(self) -> tuple[str, ...]:
        """Every URL of the redirect chain, this one last."""
        return (*(r.url for r in self.history), self.url)


_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _is_ip(host: str) -> bool:
    try:
        ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _potentially_trustworthy(scheme: str, host: str) -> bool:
    """Where Secure cookies may be set and sent: https, and localhost like real browsers."""
    return scheme == "https" or host in ("localhost", "127.0.0.1", "[::1]", "::1")


def _domain_match(host: str, domain: str) -> bool:
    return host == domain or (host.endswith("." + domain) and not _is_ip(host))


def _path_match(request_path: str, cookie_path: str) -> bool:
    if request_path == cookie_path:
        return True
    if request_path.startswith(cookie_path):
        return cookie_path.endswith("/") or request_path[len(cookie_path)] == "/"
    return False


def _default_path(request_path: str) -> str:
    if not request_path.startswith("/") or request_path.count("/") == 1:
        return "/"
    return request_path[: request_path.rindex("/")]


class Browser:
    """A cookie-keeping HTTP client that follows redirects like a browser.

    ``client`` is a ``treq.HTTPClient`` that keeps no cookies of its own:
    :func:`memory_http_client` for tests in memory, or :meth:`over_agent` for real
    sockets. ``clock`` decides cookie expiry; give it the clock the server uses.

    The jar follows RFC 6265 for Domain, Path, Expires, Max-Age (``Max-Age=0``
    deletes) and Secure (only over https, or to localhost). SameSite is ignored.
    Cookies it refuses are listed in ``rejected_cookies`` (name and reason only).
    """

    max_redirects = 10

    def __init__(self, client: HTTPClient, clock: IReactorTime) -> None:
        self._client = client
        self._clock = clock
        self._jar: dict[tuple[str, str, str], StoredCookie] = {}
        self.visited: list[str] = []
        """Every URL requested, in order."""
        self.rejected_cookies: list[str] = []
        self.default_headers: dict[str, str] = {
            "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            "User-Agent": "oauthgate-testing-browser/1.0",
        }

    @classmethod
    def over_agent(cls, agent: IAgent, clock: IReactorTime) -> Browser:
        """A browser over a real ``Agent``, e.g. ``Browser.over_agent(Agent(reactor), reactor)``."""
        return cls(HTTPClient(agent, cookiejar=_NoCookieJar()), clock)

    # -- requests -------------------------------------------------------------------------

    async def get(self, url: str, *, headers: Mapping[str, str] | None = None) -> BrowserResponse:
        """GET ``url`` and follow redirects."""
        return await self.request("GET", url, headers=headers)

    async def post(
        self,
        url: str,
        data: Mapping[str, str] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> BrowserResponse:
        """POST ``data`` as a form to ``url`` and follow redirects."""
        return await self.request("POST", url, data=data, headers=headers)

    async def request(
        self,
        method: str,
        url: str,
        *,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        follow_redirects: bool = True,
    ) -> BrowserResponse:
        """Send one request and, unless told not to, follow up to ``max_redirects`` redirects.

        Raises TooManyRedirects when the chain is longer.
        """
        history: list[BrowserResponse] = []
        while True:
            response = await self._send(method, url, data, headers)
            location = response.header("location")
            if not follow_redirects or response.status not in _REDIRECTS or location is None:
                return attrs.evolve(response, history=tuple(history))
            history.append(response)
            if len(history) > self.max_redirects:
                raise TooManyRedirects(" -> ".join(r.url for r in history))
            url = urljoin(url, location)
            if response.status in (301, 302, 303) and method != "HEAD":
                method, data = "GET", None

    async def _send(
        self,
        method: str,
        url: str,
        data: Mapping[str, str] | None,
        extra_headers: Mapping[str, str] | None,
    ) -> BrowserResponse:
        headers = Headers()
        for name, value in {**self.default_headers, **(extra_headers or {})}.items():
            headers.setRawHeaders(name, [value])
        cookie = self.cookie_header(url)
        if cookie:
            headers.setRawHeaders("Cookie", [cookie])
        self.visited.append(url)
        response = await self._client.request(
            method,
            url,
            headers=headers,
            data=dict(data) if data is not None else None,
            allow_redirects=False,
        )
        body = await response.content()
        for value in response.headers.getRawHeaders("set-cookie", []):
            self.set_cookie(url, value)
        return BrowserResponse(
            status=response.code,
            headers=response.headers,
            body=body,
            url=url,
            method=method,
        )

    # -- cookies --------------------------------------------------------------------------

    def _live(self) -> Iterator[StoredCookie]:
        now = self._clock.seconds()
        for key, cookie in list(self._jar.items()):
            if cookie.expires is not None and cookie.expires <= now:
                del self._jar[key]
            else:
                yield cookie

    def cookies(self) -> list[StoredCookie]:
        """Every unexpired cookie in the jar."""
        return list(self._live())

    def cookie(self, name: str, *, domain: str | None = None) -> str | None:
        """The value of the unexpired cookie ``name`` (on ``domain`` if given), or None."""
        for c in self._live():
            if c.name == name and (domain is None or c.domain == domain.lower()):
                return c.value
        return None

    def clear_cookies(self) -> None:
        """Forget every cookie, as a new private window would."""
        self._jar.clear()

    def cookies_for(self, url: str) -> list[StoredCookie]:
        """The cookies sent with a request to ``url``, most specific path first."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        path = parts.path or "/"
        secure_ok = _potentially_trustworthy(parts.scheme, host)
        matching = [
            c
            for c in self._live()
            if (host == c.domain if c.host_only else _domain_match(host, c.domain))
            and _path_match(path, c.path)
            and (secure_ok or not c.secure)
        ]
        return sorted(matching, key=lambda c: -len(c.path))

    def cookie_header(self, url: str) -> str:
        """The ``Cookie`` header value for a request to ``url`` ("" when none)."""
        return "; ".join(f"{c.name}={c.value}" for c in self.cookies_for(url))

    def set_cookie(self, url: str, set_cookie: str) -> None:
        """Process one ``Set-Cookie`` header value as if ``url`` had answered with it."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        pair, *attributes = set_cookie.split(";")
        name, sep, value = pair.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            self.rejected_cookies.append(f"{set_cookie[:40]!r}: no name=value")
            return
        domain, host_only, path = host, True, _default_path(parts.path or "/")
        expires: float | None = None
        max_age: float | None = None
        secure = http_only = False
        for attribute in attributes:
            key, _, arg = attribute.strip().partition("=")
            key, arg = key.strip().lower(), arg.strip()
            if key == "domain" and arg:
                candidate = arg.lstrip(".").lower()
                if not _domain_match(host, candidate):
                    self.rejected_cookies.append(f"{name}: Domain={arg} does not match {host}")
                    return
                domain, host_only = candidate, False
            elif key == "path" and arg.startswith("/"):
                path = arg
            elif key == "max-age":
                try:
                    max_age = float(int(arg))
                except ValueError:
                    continue
            elif key == "expires":
                try:
                    expires = parsedate_to_datetime(arg).timestamp()
                except (TypeError, ValueError):
                    continue
            elif key == "secure":
                secure = True
            elif key == "httponly":
                http_only = True
        if secure and not _potentially_trustworthy(parts.scheme, host):
            self.rejected_cookies.append(f"{name}: Secure cookie from insecure {url}")
            return
        now = self._clock.seconds()
        if max_age is not None:
            expires = now + max_age
        slot = (domain, path, name)
        if expires is not None and expires <= now:
            self._jar.pop(slot, None)  # deletion
            return
        self._jar[slot] = StoredCookie(
            name=name,
            value=value,
            domain=domain,
            path=path,
            host_only=host_only,
            expires=expires,
            secure=secure,
            http_only=http_only,
        )
