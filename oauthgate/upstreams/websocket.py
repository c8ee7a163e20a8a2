"""WebSocket tunnels: an authenticated ``Upgrade: websocket`` request, byte for byte.

The upgrade request goes to the upstream over a connection of its own (never pooled:
after an upgrade, or a refused one, the connection is never reused for another
request). If the upstream answers ``101 Switching Protocols``, that answer goes to the
client and from then on oauthgate copies bytes both ways without looking at them, with
backpressure both ways (a slow reader pauses the other side's socket), until either side
closes; then the other side is closed too. Any other answer is relayed as a normal HTTP
response and the upstream connection is closed.

Taking over the client's connection uses the same hook as Twisted's own WebSocket server
(``twisted.web.websocket``): the HTTP channel's ``dataReceived`` and ``connectionLost``
are pointed at the tunnel, so the channel parses nothing more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import (
    IConsumer,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.http import _ChunkedTransferDecoder
from twisted.web.http_headers import Headers

from oauthgate.errors import UpstreamError
from oauthgate.upstreams.headers import HOP_BY_HOP, connection_tokens, strip_hop_by_hop

if TYPE_CHECKING:
    from twisted.web.server import Request

__all__ = ["is_websocket_upgrade", "tunnel"]

MAX_HEAD_BYTES = 64 * 1024
"""The most an upstream's answer head (status line and headers) may take."""

_NO_BODY = frozenset({204, 304})
# Twisted's own defaults on every response; a 101 from the upstream carries its own.
_NOT_FROM_GATE = frozenset({b"server", b"date", b"content-type", b"content-length"})


def is_websocket_upgrade(request: Request) -> bool:
    """A ``GET`` with ``Upgrade: websocket`` and ``Connection: upgrade`` (as tokens, so
    Firefox's ``Connection: keep-alive, Upgrade`` counts)."""
    if request.method != b"GET":
        return False
    headers = request.requestHeaders
    if b"upgrade" not in connection_tokens(headers):
        return False
    upgrade = headers.getRawHeaders(b"Upgrade") or []
    return any(
        token.strip().lower() == b"websocket" for value in upgrade for token in value.split(b",")
    )


async def tunnel(
    request: Request,
    endpoint: IStreamClientEndpoint,
    head: bytes,
    *,
    clock: IReactorTime,
    timeout: float,
    warn: Callable[[str], None],
) -> None:
    """Send the upgrade request ``head`` over a new connection from ``endpoint`` and answer
    ``request`` with what comes back; returns when the tunnel (or the relayed answer) ends.

    Raises UpstreamError(502) when the upstream cannot be reached or answers nonsense,
    and (504) when its answer head does not arrive within ``timeout`` seconds.
    """
    upstream = _UpstreamSide(head, warn)

    async def handshake() -> _Head:
        await connectProtocol(endpoint, upstream)
        return await upstream.head

    pending = Deferred.fromCoroutine(handshake())
    pending.addTimeout(timeout, clock)
    try:
        answer = await pending
    except CancelledError:
        upstream.abort()
        raise
    except TimeoutError:
        upstream.abort()
        warn(f"no WebSocket handshake answer within {timeout}s")
        raise UpstreamError(504, "The upstream server did not answer in time.") from None
    except Exception as e:
        upstream.abort()
        warn(f"WebSocket handshake failed: {type(e).__name__}: {e}")
        raise UpstreamError(502, "The upstream server could not be reached.") from None

    if answer.code == 101:
        await _splice(request, upstream, answer)
    else:
        await _relay(request, upstream, answer, warn)


class _Head:
    """An answer's status line and headers, and the bytes that came after them."""

    def __init__(self, code: int, phrase: bytes, headers: list[tuple[bytes, bytes]], rest: bytes):
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.rest = rest


def _parse_head(raw: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    lines = raw.split(b"\r\n")
    version, _, status = lines[0].partition(b" ")
    code_text, _, phrase = status.partition(b" ")
    if not version.startswith(b"HTTP/1.") or len(code_text) != 3 or not code_text.isdigit():
        raise ValueError("not an HTTP/1.x status line")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise ValueError("malformed header line")
        headers.append((name, value.strip()))
    return int(code_text), phrase, headers


class _UpstreamSide(Protocol):
    """The connection to the upstream: sends the head, parses the answer head, then hands
    every byte to ``sink`` (the client, or the body relay)."""

    def __init__(self, head: bytes, warn: Callable[[str], None]) -> None:
        self._request_head = head
        self._warn = warn
        self._buffer = b""
        self._aborted = False
        self.head: Deferred[_Head] = Deferred(lambda _: self.abort())
        self.closed: Deferred[None] = Deferred()
        self.sink: Callable[[bytes], None] | None = None
        self.on_close: Callable[[Failure], None] | None = None
        self.sent = 0
        self.received = 0

    def connectionMade(self) -> None:
        if self._aborted:
            self.abort()
            return
        assert self.transport is not None
        self.transport.write(self._request_head)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.sink is not None:
            self.sink(data)
            return
        if self.head.called:
            self._buffer += data  # between the head and the takeover
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end == -1:
            if len(self._buffer) > MAX_HEAD_BYTES:
                self._fail(ValueError("the answer head is too large"))
            return
        raw, rest = self._buffer[:end], self._buffer[end + 4 :]
        try:
            code, phrase, headers = _parse_head(raw)
        except ValueError as e:
            self._fail(e)
            return
        if 100 <= code < 200 and code != 101:
            self._buffer = b""  # an interim answer (100 Continue): the real one follows
            if rest:
                self.dataReceived(rest)
            return
        self._buffer = b""
        self.head.callback(_Head(code, phrase, headers, rest))

    def take_over(
        self, sink: Callable[[bytes], None], on_close: Callable[[Failure], None], first: bytes
    ) -> None:
        """From now on, bytes go to ``sink``, starting with ``first`` (what came with the
        answer head); ``on_close`` is told when the connection ends."""
        self.sink = sink
        self.on_close = on_close
        data, self._buffer = first + self._buffer, b""
        if data:
            sink(data)
        if self.closed.called and on_close is not None:
            on_close(Failure(connectionDone.value))

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self._aborted:
            self.sent += len(data)
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def abort(self) -> None:
        self._aborted = True
        if self.transport is not None:
            abort = getattr(self.transport, "abortConnection", None)
            if abort is not None:
                abort()
            else:
                self.transport.loseConnection()

    def _fail(self, error: Exception) -> None:
        if not self.head.called:
            self.head.errback(error)
        self.abort()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.head.called:
            self.head.errback(reason)
        if self.on_close is not None:
            self.on_close(reason)
        if not self.closed.called:
            self.closed.callback(None)


async def _splice(request: Request, upstream: _UpstreamSide, answer: _Head) -> None:
    """Answer 101 and copy bytes both ways until one side closes."""
    channel: Any = request.channel
    client: ITransport | None = getattr(channel, "transport", None)
    if client is None:  # the client left during the handshake
        upstream.abort()
        return
    started = upstream.closed

    def from_client(data: bytes) -> None:
        upstream.write(data)

    def client_lost(reason: Failure = connectionDone) -> None:
        upstream.close()

    def upstream_lost(reason: Failure) -> None:
        client.loseConnection()

    # Twisted's own WebSocket server takes over the channel like this
    # (HTTPChannel._protocolUpgradeForWebsockets): the channel parses nothing more.
    setattr(channel, "dataReceived", from_client)  # noqa: B010
    setattr(channel, "connectionLost", client_lost)  # noqa: B010
    buffered = b"".join(getattr(channel, "_dataBuffer", ()))
    if buffered:
        channel._dataBuffer = []
    client.write(_answer_head(request, answer))
    request.setResponseCode(101)
    request.sentLength = 0

    def to_client(data: bytes) -> None:
        request.sentLength += len(data)
        client.write(data)

    # client slow to read -> pause the upstream socket, and the other way round
    channel.registerProducer(upstream.transport, True)
    client_producer = IPushProducer(client, None) or IPushProducer(
        getattr(client, "transport", None), None
    )
    upstream_consumer = IConsumer(upstream.transport, None)
    if client_producer is not None and upstream_consumer is not None:
        upstream_consumer.registerProducer(client_producer, True)
        client_producer.resumeProducing()
    upstream.take_over(to_client, upstream_lost, answer.rest)
    if buffered:
        upstream.write(buffered)
    try:
        await started
    finally:
        channel.unregisterProducer()
        site = getattr(request, "site", None)
        if site is not None:
            site.log(request)  # the access log line, with the bytes sent to the client


async def _relay(
    request: Request, upstream: _UpstreamSide, answer: _Head, warn: Callable[[str], None]
) -> None:
    """The upstream refused the upgrade: relay its answer as a normal response."""
    headers = Headers()
    for name, value in answer.headers:
        headers.addRawHeader(name, value)
    request.setResponseCode(answer.code, answer.phrase)
    kept = strip_hop_by_hop(headers, also=(b"content-length",))
    for name, values in kept.getAllRawHeaders():
        if name.lower() == b"set-cookie" and request.cookies:
            request.cookies.extend(values)
        else:
            request.responseHeaders.setRawHeaders(name, values)
    request.defaultContentType = None
    done: Deferred[None] = Deferred(lambda _: upstream.abort())  # cancelled: client gone

    def finish(_: bytes = b"") -> None:
        upstream.sink = _ignore
        upstream.on_close = None
        upstream.close()
        if not done.called:
            done.callback(None)

    broken: list[bool] = []

    def broke(reason: Failure) -> None:
        # The upstream closed before the announced end: never pass a cut body off as whole.
        if not done.called:
            warn("the answer to a WebSocket upgrade broke off")
            broken.append(True)
            transport = getattr(request.channel, "transport", None)
            if transport is not None:
                transport.abortConnection()
            done.callback(None)

    lengths = headers.getRawHeaders(b"content-length") or []
    chunked = b"chunked" in b",".join(headers.getRawHeaders(b"transfer-encoding") or []).lower()
    on_close: Callable[[Failure], None] = broke
    if answer.code in _NO_BODY:
        finish()
    else:
        if chunked:
            decoder = _ChunkedTransferDecoder(request.write, finish)
            sink: Callable[[bytes], None] = decoder.dataReceived
        elif lengths and lengths[0].strip().isdigit():
            length = int(lengths[0])
            request.setHeader(b"content-length", b"%d" % length)
            sink = _Counted(length, request.write, finish)
            if length == 0:
                finish()
        else:
            sink = request.write  # delimited by the upstream closing the connection
            on_close = lambda _: finish()  # noqa: E731
        if not done.called:
            request.registerProducer(upstream.transport, True)
            upstream.take_over(sink, on_close, answer.rest)
    try:
        await done
    finally:
        if request.producer is not None:
            request.unregisterProducer()
    if not (broken or request.finished or getattr(request, "_disconnected", False)):
        request.finish()


class _Counted:
    """Passes on the first ``length`` bytes, then calls ``finish``."""

    def __init__(
        self, length: int, write: Callable[[bytes], None], finish: Callable[[bytes], None]
    ) -> None:
        self._left = length
        self._write = write
        self._finish = finish

    def __call__(self, data: bytes) -> None:
        if self._left <= 0:
            return
        piece = data[: self._left]
        self._left -= len(piece)
        self._write(piece)
        if self._left == 0:
            self._finish(b"")


def _ignore(data: bytes) -> None:
    pass


def _answer_head(request: Request, answer: _Head) -> bytes:
    """The 101 for the client: the upstream's end-to-end headers as it wrote them
    (Sec-WebSocket-Accept, -Protocol, -Extensions...), ``Upgrade``/``Connection``, and
    what the gate set on the response (identity response headers, a refreshed session
    cookie)."""
    headers = Headers()
    for name, value in answer.headers:
        headers.addRawHeader(name, value)
    drop = HOP_BY_HOP | connection_tokens(headers)
    upgrade = headers.getRawHeaders(b"Upgrade") or [b"websocket"]
    lines = [b"HTTP/1.1 101 " + (answer.phrase or b"Switching Protocols")]
    sent = set()
    for name, value in answer.headers:
        if name.lower() not in drop:
            lines.append(name + b": " + value)
            sent.add(name.lower())
    lines.append(b"Upgrade: " + upgrade[0])
    lines.append(b"Connection: Upgrade")
    for name, values in request.responseHeaders.getAllRawHeaders():
        if name.lower() not in sent and name.lower() not in _NOT_FROM_GATE:
            lines.extend(name + b": " + value for value in values)
    lines.extend(b"Set-Cookie: " + cookie for cookie in request.cookies)
    return b"\r\n".join(lines) + b"\r\n\r\n"
