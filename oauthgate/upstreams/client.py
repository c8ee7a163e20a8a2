"""A lean keep-alive HTTP/1.1 client for one upstream origin.

:class:`UpstreamClient` provides ``IAgent`` for a single origin, so
:class:`~oauthgate.upstreams.http.HTTPUpstream` uses it exactly like Twisted's ``Agent``,
but it does only what a reverse proxy needs on its hot path:

- the endpoint (TCP, TLS or UNIX socket) is built once, not per request, so no URI is
  parsed and no host name IDNA-encoded per request;
- the request head is written with one ``writeSequence``; the response head is parsed
  from one buffer with ``bytes.split`` instead of a line-by-line state machine;
- idle connections are kept in a LIFO list (at most ``max_idle``, each closed after
  ``idle_timeout`` seconds), and a request whose reused connection turns out to be
  closed by the server before anything came back is retried once on a new one when it
  is safe to (idempotent method, no body).

Measured in ``bench/`` (docs/performance.md) against ``Agent`` with a persistent
``HTTPConnectionPool``: it roughly halves the CPU oauthgate spends per proxied request.

What it checks, as a proxy must: the method is a token and the target has no control
characters or spaces (no request splitting); a response head is at most
``MAX_HEAD_BYTES``, has a valid status line, no obsolete line folding and no header
without a colon; ``Content-Length`` must be digits and agree when repeated; a
``Transfer-Encoding`` ending in ``chunked`` wins over ``Content-Length``; any other
``Transfer-Encoding`` (or no length) means the body ends when the connection closes.
A broken response fails the request (or breaks off the body) and the connection is
never reused.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer, IResponse
from zope.interface import implementer

__all__ = ["MAX_HEAD_BYTES", "BadResponse", "UpstreamClient"]

MAX_HEAD_BYTES = 64 * 1024
"""The most a response's status line and headers may take."""

_MAX_CHUNK_LINE = 4096
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")
_HEADER_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_STATUS = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: (.*))?")
_EXPECTS_BODY = frozenset({b"POST", b"PUT", b"PATCH"})
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

# body framing
_NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)
# chunked sub-states
_SIZE, _DATA, _DATA_END, _TRAILER = range(4)


def _head_end(buffer: bytes) -> tuple[int, int]:
    """Where the head in ``buffer`` ends and the length of its blank line: lines end in
    CRLF, or (as many clients accept, and Twisted's did) a bare LF. -1 if not there yet."""
    found = (-1, 0)
    for blank in (b"\r\n\r\n", b"\n\n", b"\n\r\n"):
        at = buffer.find(blank)
        if at >= 0 and (found[0] < 0 or at < found[0]):
            found = (at, len(blank))
    at, length = found
    if length == 2 and buffer[at - 1 : at] == b"\r":  # "\r\n\n": CRLF then a bare LF
        return at - 1, 3
    return found if at >= 0 else (-1, 0)


class BadResponse(Exception):
    """The upstream's response breaks HTTP/1.1 framing (never reused, never passed on)."""


@implementer(IAgent)
class UpstreamClient:
    """HTTP/1.1 requests to the one origin ``origin`` (``b"http://host:port"``), over
    connections from ``endpoint``.

    ``request`` accepts an absolute URI on that origin (or an origin-form target) and
    answers an ``IResponse``. ``persistent=False`` sends ``Connection: close`` and uses a
    new connection for every request (``--disable-keep-alives``).
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        clock: IReactorTime,
        *,
        origin: bytes,
        host: bytes,
        persistent: bool = True,
        max_idle: int = 10,
        idle_timeout: float = 90.0,
    ) -> None:
        self.endpoint = endpoint
        self.persistent = persistent
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._origin = origin
        self._host_line = b"Host: " + host + b"\r\n"
        self._idle: list[_Connection] = []
        self._factory = _ConnectionFactory(self)

    # --- IAgent ------------------------------------------------------------------

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        if uri.startswith(self._origin):
            uri = uri[len(self._origin) :] or b"/"
        if not _METHOD.fullmatch(method):
            raise ValueError(f"invalid HTTP method {method!r}")
        if not uri.startswith(b"/") or _BAD_TARGET.search(uri):
            raise ValueError("invalid request target")
        exchange = _Exchange(method, self._head(method, uri, headers, bodyProducer), bodyProducer)
        exchange.retry = bodyProducer is None and method in _IDEMPOTENT
        self._dispatch(exchange)
        return exchange.deferred

    def _head(
        self, method: bytes, target: bytes, headers: Headers | None, body: IBodyProducer | None
    ) -> list[bytes]:
        lines = [method + b" " + target + b" HTTP/1.1\r\n"]
        if not self.persistent:
            lines.append(b"Connection: close\r\n")
        if body is not None:
            if body.length is UNKNOWN_LENGTH:
                lines.append(b"Transfer-Encoding: chunked\r\n")
            else:
                lines.append(b"Content-Length: %d\r\n" % body.length)
        elif method in _EXPECTS_BODY:
            lines.append(b"Content-Length: 0\r\n")
        has_host = False
        if headers is not None:
            for name, values in headers.getAllRawHeaders():
                if name == b"Host":
                    if has_host:
                        continue
                    has_host = True
                    values = values[:1]
                for value in values:
                    lines.append(name + b": " + value + b"\r\n")
        if not has_host:
            lines.append(self._host_line)
        lines.append(b"\r\n")
        return lines

    # --- connections ---------------------------------------------------------------

    def _dispatch(self, exchange: _Exchange) -> None:
        while self._idle:
            connection = self._idle.pop()
            if connection.take():
                exchange.reused = True
                connection.send(exchange)
                return
        self._connect(exchange)

    def _connect(self, exchange: _Exchange) -> None:
        exchange.reused = False
        connecting = self.endpoint.connect(self._factory)
        exchange.connecting = connecting
        connecting.addCallback(self._connected, exchange)
        connecting.addErrback(self._not_connected, exchange)

    def _connected(self, connection: Any, exchange: _Exchange) -> None:
        exchange.connecting = None
        if exchange.deferred.called:  # cancelled while connecting
            connection.close()
            return
        connection.send(exchange)

    def _not_connected(self, failure: Failure, exchange: _Exchange) -> None:
        exchange.connecting = None
        if not exchange.deferred.called:
            exchange.deferred.errback(failure)

    def retry(self, exchange: _Exchange) -> None:
        """A reused connection was closed under ``exchange``: once more on a new one."""
        exchange.retry = False
        self._connect(exchange)

    def release(self, connection: _Connection) -> None:
        """``connection`` finished an exchange and may carry another."""
        if not self.persistent or len(self._idle) >= self.max_idle:
            connection.close()
            return
        connection.idle_timer = self._clock.callLater(self.idle_timeout, self._expire, connection)
        self._idle.append(connection)

    def _expire(self, connection: _Connection) -> None:
        """``connection`` was idle too long: out of the pool at once, then closed (TLS
        may take a round trip to close; nothing may be sent on it meanwhile)."""
        connection.idle_timer = None
        self.forget(connection)
        connection.close()

    def forget(self, connection: _Connection) -> None:
        """``connection`` is closed: never hand it out again."""
        if connection in self._idle:
            self._idle.remove(connection)

    def closeCachedConnections(self) -> Deferred[None]:
        """Close every idle connection; fires when they are all closed."""
        idle, self._idle = self._idle, []
        closing = [connection.close() for connection in idle]
        if not closing:
            return succeed(None)
        done: Deferred[Any] = DeferredList(closing)
        return done.addCallback(lambda _: None)


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, client: UpstreamClient) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> _Connection:
        return _Connection(self.client)


class _Exchange:
    """One request on its way: its head, body and the Deferred its caller waits on."""

    __slots__ = (
        "body",
        "connecting",
        "connection",
        "deferred",
        "head",
        "method",
        "retry",
        "reused",
    )

    def __init__(self, method: bytes, head: list[bytes], body: IBodyProducer | None) -> None:
        self.method = method
        self.head = head
        self.body = body
        self.retry = False
        self.reused = False
        self.connecting: Deferred[Any] | None = None
        self.connection: _Connection | None = None
        self.deferred: Deferred[IResponse] = Deferred(self._cancel)

    def _cancel(self, _: Deferred[IResponse]) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
        if self.connection is not None:
            self.connection.abort()


@implementer(IResponse)
class _Response:
    """The response to one exchange; its body goes to the protocol ``deliverBody`` gets."""

    request = None
    previousResponse = None

    def __init__(
        self,
        connection: _Connection,
        exchange: _Exchange,
        version: int,
        code: int,
        phrase: bytes,
        headers: Headers,
    ) -> None:
        self.version = (b"HTTP", 1, version)
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.length: int | object = UNKNOWN_LENGTH
        self._connection = connection
        self._exchange = exchange
        self._protocol: Protocol | None = None
        self._early: list[bytes] = []
        self._ended: Failure | None = None

    def deliverBody(self, protocol: Protocol) -> None:
        self._protocol = protocol
        producer = _BodyProducer(self._connection, self._exchange, self._ended is not None)
        protocol.makeConnection(producer)
        early, self._early = self._early, []
        for data in early:
            protocol.dataReceived(data)
        if self._ended is not None:
            protocol.connectionLost(self._ended)

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response

    def data(self, data: bytes) -> None:
        if self._protocol is not None:
            self._protocol.dataReceived(data)
        else:
            self._early.append(data)

    def end(self, reason: Failure) -> None:
        if self._protocol is not None:
            self._protocol.connectionLost(reason)
        else:
            self._ended = reason


@implementer(IPushProducer)
class _BodyProducer:
    """Pauses and resumes the connection while its response body is being delivered;
    stopping drops the connection. Does nothing once that body is over. ``finished``:
    the whole body had arrived before it was asked for (nothing to pause)."""

    def __init__(self, connection: _Connection, exchange: _Exchange, finished: bool) -> None:
        self._connection = connection
        self._exchange = exchange
        self.finished = finished

    def pauseProducing(self) -> None:
        if self._connection.exchange is self._exchange:
            self._connection.pause()

    def resumeProducing(self) -> None:
        if self._connection.exchange is self._exchange:
            self._connection.resume()

    def stopProducing(self) -> None:
        if self._connection.exchange is self._exchange:
            self._connection.abort()


@implementer(IConsumer)
class _BodyWriter:
    """Writes a request body to the connection: as is (known length, enforced) or in
    chunks (unknown length)."""

    def __init__(self, transport: Any, length: int | None) -> None:
        self._transport = transport
        self._left = length

    def write(self, data: bytes) -> None:
        if self._left is None:
            if data:
                self._transport.writeSequence([b"%x\r\n" % len(data), data, b"\r\n"])
            return
        if len(data) > self._left:
            raise ValueError("the request body is longer than its Content-Length")
        self._left -= len(data)
        self._transport.write(data)

    def finish(self) -> None:
        if self._left is None:
            self._transport.write(b"0\r\n\r\n")
        elif self._left:
            raise ValueError("the request body is shorter than its Content-Length")

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._transport.unregisterProducer()


class _Connection(Protocol):
    """One connection to the upstream, carrying one exchange at a time."""

    def __init__(self, client: UpstreamClient) -> None:
        self.client = client
        self.exchange: _Exchange | None = None
        self.idle_timer: IDelayedCall | None = None
        self.lost: Deferred[None] = Deferred()
        self._connected = False
        self._buffer = b""
        self._response: _Response | None = None
        self._framing = _NONE
        self._left = 0
        self._chunk_state = _SIZE
        self._reusable = False
        self._got_bytes = False
        self._body_sent = True
        self._paused = False
        self._closing = False

    # --- pool side ---------------------------------------------------------------

    def take(self) -> bool:
        """Out of the idle list for a new exchange; False if it closed meanwhile."""
        if self.idle_timer is not None:
            if self.idle_timer.active():
                self.idle_timer.cancel()
            self.idle_timer = None
        return self._connected and not self._closing

    def close(self) -> Deferred[None]:
        self._closing = True
        if self._connected and self.transport is not None:
            self.transport.loseConnection()
        return self.lost

    def abort(self) -> None:
        self._reusable = False
        self._closing = True
        if self._connected and self.transport is not None:
            abort = getattr(self.transport, "abortConnection", None)
            if abort is not None:
                abort()
            else:
                self.transport.loseConnection()

    def pause(self) -> None:
        if not self._paused and self._connected:
            self._paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def resume(self) -> None:
        if self._paused and self._connected:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]

    # --- sending -----------------------------------------------------------------

    def connectionMade(self) -> None:
        self._connected = True

    def send(self, exchange: _Exchange) -> None:
        self.exchange = exchange
        exchange.connection = self
        self._buffer = b""
        self._response = None
        self._got_bytes = False
        self._reusable = False
        transport: Any = self.transport
        transport.writeSequence(exchange.head)
        body = exchange.body
        if body is None:
            self._body_sent = True
            return
        self._body_sent = False
        writer = _BodyWriter(transport, None if body.length is UNKNOWN_LENGTH else body.length)
        transport.registerProducer(body, True)
        producing = body.startProducing(writer)
        producing.addCallback(self._body_done, exchange, writer)
        producing.addErrback(self._body_failed, exchange)

    def _body_done(self, _: object, exchange: _Exchange, writer: _BodyWriter) -> None:
        if self.exchange is not exchange:
            return
        self.transport.unregisterProducer()  # type: ignore[union-attr]
        try:
            writer.finish()
        except ValueError as e:
            self._fail(Failure(e))
            return
        self._body_sent = True

    def _body_failed(self, failure: Failure, exchange: _Exchange) -> None:
        if self.exchange is not exchange:
            return
        self._body_sent = True  # nothing left to stop
        if self._connected:
            self.transport.unregisterProducer()  # type: ignore[union-attr]
        self._fail(failure)

    def _stop_body(self, exchange: _Exchange) -> None:
        """Stop sending a request body that is not over (the exchange ended early)."""
        if self._body_sent or exchange.body is None:
            return
        self._body_sent = True
        if self._connected:
            self.transport.unregisterProducer()  # type: ignore[union-attr]
        exchange.body.stopProducing()

    # --- receiving ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.exchange is None:
            # Nothing was asked: a server talking out of turn is not to be trusted.
            self.abort()
            return
        self._got_bytes = True
        if self._response is None:
            self._buffer += data
            self._head()
        else:
            self._body(data)

    def _head(self) -> None:
        while self._response is None:
            end, size = _head_end(self._buffer)
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    self._fail(Failure(BadResponse("response head too large")))
                return
            if end > MAX_HEAD_BYTES:
                self._fail(Failure(BadResponse("response head too large")))
                return
            head, rest = self._buffer[:end], self._buffer[end + size :]
            self._buffer = b""
            try:
                response = self._parse(head)
            except BadResponse as e:
                self._fail(Failure(e))
                return
            if response is None:  # 1xx: another head follows
                self._buffer = rest
                continue
            exchange = self.exchange
            assert exchange is not None
            self._response = response
            exchange.connection = None
            framing = self._framing
            if framing == _NONE or (framing == _LENGTH and len(rest) >= self._left):
                # The whole response is here (the usual small answer): it is complete and
                # the connection back in the pool before the caller even sees it.
                if len(rest) > self._left:
                    self._reusable = False  # more than was announced: do not trust the rest
                if self._left:
                    response.data(rest[: self._left])
                    self._left = 0
                self._body_end()
                exchange.deferred.callback(response)
                return
            exchange.deferred.callback(response)
            if self.exchange is not exchange:
                return  # the caller dropped the connection meanwhile
            if rest:
                self._body(rest)

    def _parse(self, head: bytes) -> _Response | None:
        normal = head.replace(b"\r\n", b"\n")  # bare-LF lines are accepted too
        if b"\r" in normal:
            raise BadResponse("bare CR in the response head")
        lines = normal.split(b"\n")
        status = _STATUS.fullmatch(lines[0])
        if status is None:
            raise BadResponse(f"bad status line {lines[0][:80]!r}")
        code = int(status.group(2))
        if 100 <= code < 200:
            if code == 101:
                raise BadResponse("101 Switching Protocols without an upgrade request")
            return None
        headers = Headers()
        length: int | None = None
        chunked = False
        other_coding = False
        http10 = status.group(1) == b"0"
        close = False  # the server said close (sticky)
        keep_alive = False  # an HTTP/1.0 server offered keep-alive
        coded = False
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not _HEADER_NAME.fullmatch(name):
                raise BadResponse(f"bad header line {line[:80]!r}")
            value = value.strip(b" \t")
            lower = name.lower()
            if lower == b"content-length":
                for part in value.split(b","):
                    part = part.strip(b" \t")
                    if not part.isdigit() or (length is not None and int(part) != length):
                        raise BadResponse("bad Content-Length")
                    length = int(part)
                continue
            if lower == b"transfer-encoding":
                coded = True
                codings = [c.strip(b" \t").lower() for c in value.split(b",")]
                chunked = codings[-1] == b"chunked"
                other_coding = not chunked
            elif lower == b"connection":
                tokens = {t.strip(b" \t").lower() for t in value.split(b",")}
                close = close or b"close" in tokens
                keep_alive = keep_alive or b"keep-alive" in tokens
            headers.addRawHeader(name, value)
        if http10 and not keep_alive:
            close = True
        if coded and (http10 or length is not None):
            # Framing a recipient must treat as faulty (RFC 9112 6.1, 6.3): read this
            # response as the encoding says, but never trust the connection again.
            close = True
        exchange = self.exchange
        assert exchange is not None
        response = _Response(
            self, exchange, int(status.group(1)), code, status.group(3) or b"", headers
        )
        if exchange.method == b"HEAD" or code in (204, 304):
            if length is not None:
                headers.setRawHeaders(b"Content-Length", [b"%d" % length])
            self._framing = _NONE
            response.length = 0
        elif chunked:
            self._framing = _CHUNKED
            self._chunk_state = _SIZE
        elif other_coding or length is None:
            self._framing = _UNTIL_CLOSE
            close = True
        else:
            self._framing = _LENGTH if length else _NONE
            self._left = length
            response.length = length
        self._reusable = not close and self.client.persistent
        return response

    def _body(self, data: bytes) -> None:
        response = self._response
        assert response is not None
        framing = self._framing
        if framing == _LENGTH:
            left = self._left
            if len(data) < left:
                self._left = left - len(data)
                response.data(data)
                return
            if len(data) > left:
                self._reusable = False  # more than was announced: do not trust the rest
                data = data[:left]
            self._left = 0
            response.data(data)
            self._body_end()
        elif framing == _UNTIL_CLOSE:
            response.data(data)
        elif framing == _CHUNKED:
            self._chunks(data)
        else:
            self._reusable = False

    def _chunks(self, data: bytes) -> None:
        response = self._response
        assert response is not None
        buffer = self._buffer + data if self._buffer else data
        self._buffer = b""
        pos, size = 0, len(buffer)
        while pos < size:
            state = self._chunk_state
            if state == _DATA:
                end = min(pos + self._left, size)
                self._left -= end - pos
                response.data(buffer[pos:end])
                pos = end
                if self._left == 0:
                    self._chunk_state = _DATA_END
                continue
            end = buffer.find(b"\n", pos, pos + _MAX_CHUNK_LINE + 1)
            if end < 0:
                if size - pos > _MAX_CHUNK_LINE:
                    self._fail(Failure(BadResponse("chunk line too long")))
                else:
                    self._buffer = buffer[pos:]
                return
            line = buffer[pos:end]
            pos = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if state == _SIZE:
                digits = line.partition(b";")[0].rstrip(b" \t")
                if not _CHUNK_SIZE.fullmatch(digits):
                    self._fail(Failure(BadResponse("bad chunk size")))
                    return
                self._left = int(digits, 16)
                self._chunk_state = _DATA if self._left else _TRAILER
            elif state == _DATA_END:
                if line:
                    self._fail(Failure(BadResponse("chunk data longer than its size")))
                    return
                self._chunk_state = _SIZE
            elif not line:  # _TRAILER: an empty line ends the message
                if pos < size:
                    self._reusable = False
                self._body_end()
                return

    def _body_end(self) -> None:
        response = self._response
        assert response is not None
        exchange = self.exchange
        if not self._body_sent and exchange is not None:
            # The upstream answered before taking the whole body: stop sending it.
            self._reusable = False
            self._stop_body(exchange)
        self._done()
        response.end(Failure(ResponseDone()))

    def _done(self) -> None:
        reusable = self._reusable and self._connected
        self.exchange = None
        self._buffer = b""
        self.resume()
        if reusable:
            self.client.release(self)
        else:
            self.close()

    def _fail(self, failure: Failure) -> None:
        """A broken response or body: fail the exchange and drop the connection."""
        exchange = self.exchange
        self.exchange = None
        if exchange is not None:
            self._stop_body(exchange)
        self.abort()
        if exchange is None:
            return
        if self._response is None:
            if not exchange.deferred.called:
                exchange.deferred.errback(Failure(ResponseNeverReceived([failure])))
        else:
            self._response.end(Failure(ResponseFailed([failure])))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._connected = False
        if self.idle_timer is not None and self.idle_timer.active():
            self.idle_timer.cancel()
        self.client.forget(self)
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            self._stop_body(exchange)
            response = self._response
            if response is None:
                if exchange.deferred.called:
                    pass
                elif exchange.retry and exchange.reused and not self._got_bytes:
                    self.client.retry(exchange)
                elif isinstance(reason.value, CancelledError):
                    exchange.deferred.errback(reason)
                else:
                    exchange.deferred.errback(Failure(ResponseNeverReceived([reason])))
            elif self._framing == _UNTIL_CLOSE and reason.check(ConnectionDone):
                # The body ends with the connection; only a clean close says it is whole
                # (a reset or a TLS connection cut without close_notify does not).
                response.end(Failure(PotentialDataLoss()))
            else:
                response.end(Failure(ResponseFailed([reason])))
        if not self.lost.called:
            self.lost.callback(None)
