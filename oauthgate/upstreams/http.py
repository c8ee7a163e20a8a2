"""The HTTP(S) and UNIX-socket upstream: forward one request and stream its answer back.

The request goes out with the client's method, path, raw query and body (or the target
the routing table rewrote), minus the hop-by-hop headers, plus the X-Forwarded-* headers
and the gate's identity headers. The answer streams back as it arrives: every piece the
upstream sends is written to the client at once (so Server-Sent Events and long polls
arrive as the upstream flushes them; ``flush_interval`` is accepted for oauth2-proxy
compatibility and never delays data), pausing the upstream connection while the client
is slow to read. Request bodies are streamed to the upstream from the file Twisted has
received them into (bodies of 100 kB or more are kept in a temporary file, not in
memory), also with backpressure.

Requests go out through an ``IAgent``: in production one
:class:`~oauthgate.upstreams.client.UpstreamClient` per upstream, a lean keep-alive
HTTP/1.1 client that reuses connections (at most
``MAX_PERSISTENT_PER_HOST`` idle ones, closed after ``IDLE_CONNECTION_TIMEOUT``), or
closed after each request with ``disable_keep_alives``. ``Upgrade: websocket`` requests
are tunnelled (:mod:`oauthgate.upstreams.websocket`) over connections of their own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import IO, TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI, FileBodyProducer, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from oauthgate.errors import ConfigError, UpstreamError
from oauthgate.interfaces import IUpstream
from oauthgate.tls import client_tls_policy
from oauthgate.upstreams.client import UpstreamClient
from oauthgate.upstreams.headers import (
    HOP_BY_HOP,
    add_forwarded_headers,
    connection_tokens,
    replace_headers,
    strip_hop_by_hop,
)
from oauthgate.upstreams.routing import compile_path, is_regex, path_matches
from oauthgate.upstreams.spec import UpstreamSpec
from oauthgate.upstreams.websocket import is_websocket_upgrade, tunnel

if TYPE_CHECKING:
    from collections.abc import Callable

    from twisted.web.server import Request

    from oauthgate.config.options import Config

__all__ = ["HTTPUpstream", "UpstreamEndpoints"]

MAX_PERSISTENT_PER_HOST = 10
"""Idle keep-alive connections kept per upstream host."""

IDLE_CONNECTION_TIMEOUT = 90
"""Seconds an idle keep-alive connection is kept (Go's ``http.Transport`` default)."""

# Request headers the proxy never copies on top of the hop-by-hop ones: Host is set on
# purpose below, Content-Length is written by the Agent from the body it sends, and
# Expect is answered by our own server (the body is already here).
_NOT_COPIED = (b"host", b"content-length", b"expect")

_NO_BODY = frozenset({204, 304})


@implementer(IUpstream)
class HTTPUpstream:
    """A reverse proxy to one ``http(s)://host[:port][/path]`` or ``unix:///socket`` server.

    ``path`` is the route (by default the URL's path, "/" if none; "/" for a UNIX
    socket). As in oauth2-proxy, the request's own path and raw query are sent unchanged
    (``/base/x`` on an upstream ``http://h:8080/base/`` goes to ``http://h:8080/base/x``)
    unless the routing table passes a rewritten ``target``. Requests never reveal
    anything of the upstream URL's userinfo, and failures are logged without headers
    or cookies. ``endpoints`` opens the raw connections WebSocket tunnels need; without
    it (or with ``proxy_websockets=False``) an upgrade request is forwarded as a plain
    request, without its ``Upgrade`` header.
    """

    log = Logger()

    def __init__(
        self,
        url: str,
        agent: IAgent,
        clock: IReactorTime,
        *,
        id: str | None = None,
        path: str | None = None,
        regex: bool = False,
        pass_host_header: bool = True,
        timeout: float = 30.0,
        pool: UpstreamClient | None = None,
        endpoints: IAgentEndpointFactory | None = None,
        proxy_websockets: bool = True,
        flush_interval: float = 1.0,
    ) -> None:
        netloc, origin, route = _origin(url)
        self.url = url
        self.path = route if path is None else path
        self.id = self.path if id is None else id
        self.pool = pool
        self.flush_interval = flush_interval
        self._pattern = compile_path(self.path) if regex else None
        self._agent = agent
        self._clock = clock
        self._pass_host_header = pass_host_header
        self._timeout = timeout
        self._endpoints = endpoints
        self._websockets = proxy_websockets and endpoints is not None
        self._host = netloc
        self._host_header = netloc.encode("ascii")
        self._origin = origin.encode("ascii")
        self._cooperator = Cooperator(scheduler=self._schedule)

    @classmethod
    def from_spec(
        cls,
        spec: UpstreamSpec,
        reactor: Any,
        *,
        ca_files: Sequence[str] = (),
        max_per_host: int = MAX_PERSISTENT_PER_HOST,
    ) -> HTTPUpstream:
        """An upstream with its own connection pool, TLS checks (the system trust store,
        or only ``ca_files``; none with ``spec.insecure_skip_tls_verify``) and timeouts.

        ``reactor`` must provide ``IReactorTCP`` (and ``IReactorUNIX`` for ``unix://``).
        The service builds one per upstream and calls :meth:`close` on stop. Raises
        ConfigError when a CA file cannot be loaded.
        """
        try:
            policy = client_tls_policy(
                insecure_skip_verify=spec.insecure_skip_tls_verify, ca_files=ca_files
            )
        except (OSError, ValueError) as e:
            raise ConfigError([f"upstream_ca_files: cannot load: {e}"]) from None
        parts = urlsplit(spec.uri)
        socket = unquote(parts.path) if parts.scheme == "unix" else None
        endpoints = UpstreamEndpoints(reactor, policy, timeout=spec.timeout, unix_socket=socket)
        netloc, origin, _ = _origin(spec.uri)
        client = UpstreamClient(
            endpoints.endpointForURI(URI.fromBytes(origin.encode("ascii") + b"/")),
            reactor,
            origin=origin.encode("ascii"),
            host=netloc.encode("ascii"),
            persistent=not spec.disable_keep_alives,
            max_idle=max_per_host,
            idle_timeout=IDLE_CONNECTION_TIMEOUT,
        )
        return cls(
            spec.uri,
            client,
            reactor,
            id=spec.id,
            path=spec.path,
            regex=is_regex(spec),
            pass_host_header=spec.pass_host_header,
            timeout=spec.timeout,
            pool=client,
            endpoints=endpoints,
            proxy_websockets=spec.proxy_websockets,
            flush_interval=spec.flush_interval,
        )

    @classmethod
    def from_config(cls, url: str, config: Config, reactor: Any) -> HTTPUpstream:
        """The upstream ``--upstream=url`` describes, with the configured TLS checks,
        timeouts and keep-alive setting (see :meth:`from_spec`)."""
        from oauthgate.upstreams.legacy import spec_from_flag

        return cls.from_spec(
            spec_from_flag(url, config), reactor, ca_files=config.upstream_ca_files
        )

    def matches(self, path: str) -> bool:
        """oauth2-proxy's rule: a path ending in "/" is a prefix ("/" serves everything),
        any other path serves only itself; a regular expression route searches."""
        return path_matches(path, self.path, self._pattern)

    def close(self) -> Awaitable[None]:
        """Close the idle keep-alive connections (on service stop)."""
        if self.pool is None:
            return succeed(None)
        return self.pool.closeCachedConnections()

    async def forward(
        self,
        request: Request,
        inject: Sequence[tuple[bytes, bytes]],
        *,
        target: bytes | None = None,
    ) -> None:
        """Send ``request`` upstream and stream the answer into it; see :class:`IUpstream`.

        ``target`` is the request URI to send (origin form); by default the client's.
        Raises UpstreamError(502) when the upstream cannot be reached and (504) when it
        sends no response headers within ``timeout``. A failure after the answer started
        aborts the client connection instead. If the client goes away, the upstream
        request or response is dropped and this returns quietly.
        """
        path = target if target is not None else _origin_form(request.uri)
        headers = self._request_headers(request, inject)
        if self._websockets and is_websocket_upgrade(request):
            await self._tunnel(request, path, headers)
            return
        target = self._origin + path
        body = self._body(request)
        exchange = _Exchange()
        request.notifyFinish().addErrback(exchange.client_gone)
        if exchange.gone:
            return
        pending = self._agent.request(request.method, target, headers, body)
        exchange.pending = pending
        # Cancelling a request the Agent has sent fails it with ResponseNeverReceived, not
        # CancelledError, so the timeout is remembered here rather than recognised later.
        timed_out: list[bool] = []

        def give_up() -> None:
            timed_out.append(True)
            pending.cancel()

        timer = self._clock.callLater(self._timeout, give_up)
        try:
            response = await pending
        except Exception as e:
            if exchange.gone:
                return
            if timed_out:
                self._warn(f"no response headers within {self._timeout}s")
                raise UpstreamError(504, "The upstream server did not answer in time.") from None
            if isinstance(e, CancelledError):
                raise
            self._warn(_describe(e))
            raise UpstreamError(502, "The upstream server could not be reached.") from None
        finally:
            exchange.pending = None
            if timer.active():
                timer.cancel()

        relay = _BodyRelay(request, self._warn)
        exchange.relay = relay
        if exchange.gone:
            relay.client_gone()
        else:
            _copy_response_head(response, request)
        response.deliverBody(relay)
        await relay.done

    def _request_headers(self, request: Request, inject: Sequence[tuple[bytes, bytes]]) -> Headers:
        incoming = request.requestHeaders
        headers = strip_hop_by_hop(incoming, also=_NOT_COPIED)
        hosts = incoming.getRawHeaders(b"Host")
        client_host = hosts[0] if hosts else None
        if not self._pass_host_header:
            headers.setRawHeaders(b"Host", [self._host_header])
        elif client_host is not None:
            headers.setRawHeaders(b"Host", [client_host])
        address = request.getClientAddress()
        add_forwarded_headers(
            headers,
            client_ip=getattr(address, "host", None),
            secure=request.isSecure(),
            host=client_host,
            uri=request.uri,
        )
        if inject:
            replace_headers(headers, inject)
        return headers

    async def _tunnel(self, request: Request, path: bytes, headers: Headers) -> None:
        assert self._endpoints is not None
        upgrade = request.requestHeaders.getRawHeaders(b"Upgrade") or [b"websocket"]
        lines = [request.method + b" " + path + b" HTTP/1.1"]
        for name, values in headers.getAllRawHeaders():
            lines.extend(name + b": " + value for value in values)
        lines.append(b"Upgrade: " + b", ".join(upgrade))
        lines.append(b"Connection: Upgrade")
        head = b"\r\n".join(lines) + b"\r\n\r\n"
        try:
            endpoint = self._endpoints.endpointForURI(URI.fromBytes(self._origin + path))
        except ValueError as e:
            self._warn(_describe(e))
            raise UpstreamError(502, "The upstream server could not be reached.") from None
        await tunnel(
            request, endpoint, head, clock=self._clock, timeout=self._timeout, warn=self._warn
        )

    def _body(self, request: Request) -> FileBodyProducer | None:
        content: IO[bytes] | None = request.content
        if content is None:
            return None
        size = content.seek(0, 2)
        content.seek(0)
        if size == 0:
            return None
        return FileBodyProducer(content, cooperator=self._cooperator)

    def _schedule(self, work: Callable[[], None]) -> IDelayedCall:
        return self._clock.callLater(0, work)

    def _warn(self, reason: str) -> None:
        self.log.warn(
            "Upstream {upstream} ({host}) failed: {reason}",
            upstream=self.id,
            host=self._host,
            reason=reason,
        )


@implementer(IAgentEndpointFactory)
class UpstreamEndpoints:
    """Where an upstream's connections go: ``host:port`` (TLS for https, checked by
    ``policy``), or always the UNIX socket ``unix_socket`` when one is given."""

    def __init__(
        self,
        reactor: Any,
        policy: IPolicyForHTTPS,
        *,
        timeout: float = 30.0,
        unix_socket: str | None = None,
    ) -> None:
        self._reactor = reactor
        self._policy = policy
        self._timeout = timeout
        self._unix_socket = unix_socket

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        if self._unix_socket is not None:
            return UNIXClientEndpoint(self._reactor, self._unix_socket, timeout=self._timeout)
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"the host name {uri.host!r} is not ASCII") from None
        endpoint = HostnameEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        if uri.scheme == b"https":
            return wrapClientTLS(self._policy.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint


class _Exchange:
    """What one forward() is waiting on, so a client that leaves can stop it."""

    def __init__(self) -> None:
        self.gone = False
        self.pending: Deferred[IResponse] | None = None
        self.relay: _BodyRelay | None = None

    def client_gone(self, reason: Failure) -> None:
        self.gone = True
        if self.relay is not None:
            self.relay.client_gone()
        elif self.pending is not None:
            self.pending.cancel()


class _BodyRelay(Protocol):
    """Writes the upstream body into the client request, with backpressure both ways.

    The upstream connection is registered as the request's streaming producer, so a
    client that reads slowly pauses the upstream socket instead of filling memory.
    ``done`` fires when the relay is over, whatever the outcome.
    """

    def __init__(self, request: Request, warn: Callable[[str], None]) -> None:
        self._request = request
        self._warn = warn
        self._client_gone = False
        self._producing = False
        self._producer: IPushProducer | None = None
        self.done: Deferred[None] = Deferred(lambda _: self.client_gone())

    def connectionMade(self) -> None:
        # Response.deliverBody hands over an IPushProducer, not a full transport.
        self._producer = cast(IPushProducer, self.transport)
        if self._client_gone:
            self._producer.stopProducing()
            return
        if getattr(self._producer, "finished", False):
            return  # the whole body is already here: nothing to pause
        self._request.registerProducer(self._producer, True)
        self._producing = True

    def dataReceived(self, data: bytes) -> None:
        if not self._client_gone:
            self._request.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self._client_gone:
            if self._producing:
                self._producing = False
                self._request.unregisterProducer()
            if reason.check(ResponseDone, PotentialDataLoss):
                self._request.finish()
            else:
                self._client_gone = True
                self._warn("the response broke off: " + _describe(reason.value or Exception()))
                _abort(self._request)
        if not self.done.called:
            self.done.callback(None)

    def client_gone(self) -> None:
        """The client left: drop the upstream connection (it is not reused)."""
        if self._client_gone:
            return
        self._client_gone = True
        if self._producer is not None:
            self._producer.stopProducing()


def _origin(url: str) -> tuple[str, str, str]:
    """``url``'s host[:port] (no userinfo), its origin and its path ("/" if none; "/" for
    a UNIX socket, whose host is "localhost"). Raises ConfigError for other URLs."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        if not parts.path.startswith("/"):
            raise ConfigError([f"upstreams: {url!r} must be unix:///path/to/socket"])
        return "localhost", "http://localhost", "/"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError([f"upstreams: {url!r} must be an http(s)://host[:port][/path] URL"])
    netloc = parts.netloc.rpartition("@")[2]
    if not netloc.isascii():
        raise ConfigError([f"upstreams: {url!r}: write the host name in ASCII (punycode)"])
    return netloc, f"{parts.scheme}://{netloc}", parts.path or "/"


def _origin_form(uri: bytes) -> bytes:
    """The request target as sent by the client, raw (no re-encoding) and starting with "/"."""
    if uri.startswith(b"/"):
        return uri
    # absolute-form (a client using us as a forward proxy): keep only path and query
    parts = urlsplit(uri)
    if not parts.scheme:
        return b"/"
    path = parts.path if parts.path.startswith(b"/") else b"/" + parts.path
    return path + b"?" + parts.query if parts.query else path


def _copy_response_head(response: IResponse, request: Request) -> None:
    """Status line and end-to-end headers of ``response``; Twisted adds its own framing."""
    request.setResponseCode(response.code, response.phrase)
    headers = request.responseHeaders
    source = response.headers
    tokens = connection_tokens(source)
    drop = HOP_BY_HOP | tokens if tokens else HOP_BY_HOP
    for name, values in source.getAllRawHeaders():
        if name.lower() in drop:
            continue
        if name == b"Set-Cookie":
            # Twisted writes request.cookies over any Set-Cookie header: keep both.
            if request.cookies:
                request.cookies.extend(values)
            else:
                for value in values:
                    headers.addRawHeader(name, value)
        else:
            headers.setRawHeaders(name, values)
    # Twisted's client keeps Content-Length out of response.headers (except for HEAD).
    length = response.length
    if isinstance(length, int) and request.method != b"HEAD" and response.code not in _NO_BODY:
        headers.setRawHeaders(b"Content-Length", [b"%d" % length])
    # never invent a Content-Type the upstream did not send
    request.defaultContentType = None


def _abort(request: Request) -> None:
    """Cut the client connection, so a truncated body is never taken for a whole one."""
    transport = getattr(request.channel, "transport", None)
    if transport is None:
        return
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        transport.loseConnection()


def _describe(error: BaseException) -> str:
    """A short reason for logs: type and message, unwrapping the Agent's wrapper errors."""
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(_describe(failure.value) for failure in reasons)
    message = str(error)
    name = type(error).__name__
    return f"{name}: {message}" if message else name
