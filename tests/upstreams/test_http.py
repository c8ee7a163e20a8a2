"""Tests for oauthgate.upstreams.http: a real client Site in front, an in-memory upstream behind."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
from OpenSSL import SSL
from treq.testing import RequestTraversalAgent
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.internet.error import ConnectError, ConnectionDone, ConnectionLost, DNSLookupError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IProtocol, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import (
    URI,
    BrowserLikePolicyForHTTPS,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer, IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer
from zope.interface.verify import verifyClass, verifyObject

from oauthgate.config.options import Config
from oauthgate.errors import ConfigError, UpstreamError
from oauthgate.interfaces import IUpstream
from oauthgate.tls import client_tls_policy
from oauthgate.upstreams.client import UpstreamClient
from oauthgate.upstreams.http import HTTPUpstream, UpstreamEndpoints
from oauthgate.upstreams.spec import UpstreamSpec

CLIENT_IP = "203.0.113.7"
GET = b"GET /x HTTP/1.1\r\nHost: app.example\r\n\r\n"


# --- the upstream side --------------------------------------------------------------


@attrs.frozen
class Seen:
    method: bytes
    uri: bytes
    headers: Headers
    body: bytes


class Recorder(Resource):
    """An upstream that records each request and answers with a fixed response."""

    isLeaf = True

    def __init__(
        self,
        code: int = 200,
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes = b"upstream body",
    ) -> None:
        Resource.__init__(self)
        self.code = code
        self.headers = headers
        self.body = body
        self.seen: list[Seen] = []

    def render(self, request: Request) -> bytes:
        assert request.content is not None
        self.seen.append(
            Seen(request.method, request.uri, request.requestHeaders.copy(), request.content.read())
        )
        request.setResponseCode(self.code)
        for name, value in self.headers:
            request.responseHeaders.addRawHeader(name, value)
        return self.body


class Streamer(Resource):
    """An upstream that answers with a body written piece by piece, by the test."""

    isLeaf = True

    def __init__(self) -> None:
        Resource.__init__(self)
        self.requests: list[Request] = []

    def render(self, request: Request) -> int:
        self.requests.append(request)
        return NOT_DONE_YET


@implementer(IResponse)
class FakeResponse:
    """An upstream response whose body the test delivers by hand."""

    version = (b"HTTP", 1, 1)
    request = None
    previousResponse = None

    def __init__(self, code: int = 200, headers: Headers | None = None) -> None:
        self.code = code
        self.phrase = b"OK"
        self.headers = Headers() if headers is None else headers
        self.length: int | str = UNKNOWN_LENGTH
        self.transport = StringTransport()
        self.protocol: IProtocol | None = None

    def deliverBody(self, protocol: IProtocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response


verifyClass(IResponse, FakeResponse)


@implementer(IAgent)
class FakeAgent:
    """An agent that answers every request with what ``answer`` returns."""

    def __init__(self, answer: Callable[[], Deferred[IResponse]]) -> None:
        self._answer = answer
        self.requests: list[tuple[bytes, bytes, Headers | None, IBodyProducer | None]] = []

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        self.requests.append((method, uri, headers, bodyProducer))
        return self._answer()


verifyClass(IAgent, FakeAgent)


# --- the client side ----------------------------------------------------------------


class Proxy(Resource):
    """The resource the client talks to: forwards everything, like the gate will."""

    isLeaf = True

    def __init__(
        self,
        upstream: HTTPUpstream,
        inject: Sequence[tuple[bytes, bytes]],
        before: Callable[[Request], None] | None,
        target: bytes | None = None,
    ) -> None:
        Resource.__init__(self)
        self.upstream = upstream
        self.inject = inject
        self.before = before
        self.target = target
        self.results: list[Deferred[None]] = []

    def render(self, request: Request) -> int:
        if self.before is not None:
            self.before(request)
        forwarding = self.upstream.forward(request, self.inject, target=self.target)
        self.results.append(Deferred.fromCoroutine(forwarding))
        return NOT_DONE_YET


@attrs.frozen
class Answer:
    code: int
    headers: Headers
    body: bytes
    complete: bool


def parse(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = Headers()
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.addRawHeader(name.strip(), value.strip())
    complete = True
    if headers.getRawHeaders(b"Transfer-Encoding") == [b"chunked"]:
        body, complete = dechunk(body)
    return Answer(int(lines[0].split(b" ")[1]), headers, body, complete)


def dechunk(data: bytes) -> tuple[bytes, bool]:
    """The chunked body's content, and whether the final chunk was seen."""
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out, True
        out, data = out + data[:size], data[size + 2 :]
    return out, False


@implementer(ISSLTransport)
class TLSStringTransport(StringTransport):
    """A client connection over TLS, as far as twisted.web can tell."""

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def getTcpNoDelay(self) -> bool:
        return True

    def setTcpKeepAlive(self, enabled: bool) -> None:
        pass

    def getTcpKeepAlive(self) -> bool:
        return False

    def loseWriteConnection(self) -> None:
        pass

    def getPeerCertificate(self) -> None:
        return None


class Harness:
    """A client connection to a real Site whose resource forwards to ``agent``."""

    def __init__(
        self,
        agent: IAgent,
        url: str = "http://backend:8080",
        inject: Sequence[tuple[bytes, bytes]] = (),
        secure: bool = False,
        before: Callable[[Request], None] | None = None,
        target: bytes | None = None,
        **kwargs: Any,
    ) -> None:
        self.clock = Clock()
        self.agent = agent
        self.upstream = HTTPUpstream(url, agent, self.clock, **kwargs)
        self.proxy = Proxy(self.upstream, inject, before, target)
        site = Site(self.proxy, reactor=MemoryReactorClock())
        transport = TLSStringTransport if secure else StringTransport
        self.transport = transport(peerAddress=IPv4Address("TCP", CLIENT_IP, 50000))
        self.channel = site.buildProtocol(self.transport.getPeer())
        self.channel.makeConnection(self.transport)

    def send(self, raw: bytes) -> None:
        self.channel.dataReceived(raw)
        self.settle()

    def settle(self) -> None:
        """Let the body producer and the in-memory connections run until idle."""
        for _ in range(20):
            self.clock.advance(0)
            if isinstance(self.agent, RequestTraversalAgent):
                self.agent.flush()

    @property
    def result(self) -> Deferred[None]:
        return self.proxy.results[-1]

    def answer(self) -> Answer:
        return parse(self.transport.value())

    def disconnect(self) -> None:
        self.channel.connectionLost(Failure(ConnectionDone()))


def through(upstream: Resource, raw: bytes = GET, **kwargs: Any) -> tuple[Harness, Answer]:
    harness = Harness(RequestTraversalAgent(upstream), **kwargs)
    harness.send(raw)
    return harness, harness.answer()


# --- tests --------------------------------------------------------------------------


class RequestTests(SynchronousTestCase):
    """What the upstream receives."""

    def test_method_path_and_raw_query_arrive_unchanged(self) -> None:
        upstream = Recorder()
        through(upstream, b"DELETE /a/b%2Fc?q=a%2Fb+c&empty&x=%7e HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual(upstream.seen[0].method, b"DELETE")
        self.assertEqual(upstream.seen[0].uri, b"/a/b%2Fc?q=a%2Fb+c&empty&x=%7e")

    def test_path_of_the_upstream_url_routes_but_is_not_added_again(self) -> None:
        """As in oauth2-proxy: http://backend:8080/base/ serves /base/x as /base/x."""
        upstream = Recorder()
        through(
            upstream, b"GET /base/x?y HTTP/1.1\r\nHost: h\r\n\r\n", url="http://backend:8080/base/"
        )
        self.assertEqual(upstream.seen[0].uri, b"/base/x?y")

    def test_a_target_from_the_routing_table_replaces_path_and_query(self) -> None:
        upstream = Recorder()
        through(upstream, b"GET /api/x?y=1 HTTP/1.1\r\nHost: h\r\n\r\n", target=b"/v1/x?y=1")
        self.assertEqual(upstream.seen[0].uri, b"/v1/x?y=1")
        self.assertEqual(
            upstream.seen[0].headers.getRawHeaders(b"X-Forwarded-Uri"), [b"/api/x?y=1"]
        )

    def test_double_slashes_in_the_path_are_kept(self) -> None:
        upstream = Recorder()
        through(upstream, b"GET //x//y HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual(upstream.seen[0].uri, b"//x//y")

    def test_absolute_form_request_target_is_sent_in_origin_form(self) -> None:
        upstream = Recorder()
        through(upstream, b"GET http://app.example/p?q HTTP/1.1\r\nHost: app.example\r\n\r\n")
        self.assertEqual(upstream.seen[0].uri, b"/p?q")

    def test_body_is_forwarded_with_its_length(self) -> None:
        upstream = Recorder()
        through(
            upstream,
            b"POST /form HTTP/1.1\r\nHost: h\r\nContent-Length: 7\r\n"
            b"Content-Type: text/plain\r\n\r\na=1&b=2",
        )
        seen = upstream.seen[0]
        self.assertEqual((seen.method, seen.body), (b"POST", b"a=1&b=2"))
        self.assertEqual(seen.headers.getRawHeaders(b"Content-Length"), [b"7"])
        self.assertEqual(seen.headers.getRawHeaders(b"Content-Type"), [b"text/plain"])

    def test_large_body_is_forwarded_whole(self) -> None:
        body = bytes(range(256)) * 1000  # kept in a temporary file by twisted.web
        upstream = Recorder()
        through(
            upstream,
            b"PUT /blob HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
        )
        self.assertEqual(upstream.seen[0].body, body)

    def test_chunked_body_is_forwarded(self) -> None:
        upstream = Recorder()
        through(
            upstream,
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        self.assertEqual(upstream.seen[0].body, b"abcde")
        self.assertEqual(upstream.seen[0].headers.getRawHeaders(b"Content-Length"), [b"5"])

    def test_get_without_body_sends_no_body(self) -> None:
        agent = FakeAgent(lambda: Deferred())
        Harness(agent).send(GET)
        method, _, headers, producer = agent.requests[0]
        self.assertEqual(method, b"GET")
        self.assertIsNone(producer)
        assert headers is not None
        self.assertFalse(headers.hasHeader(b"Content-Length"))

    def test_hop_by_hop_headers_are_not_forwarded(self) -> None:
        upstream = Recorder()
        through(
            upstream,
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Private\r\n"
            b"X-Private: 1\r\nKeep-Alive: 300\r\nProxy-Connection: keep-alive\r\n"
            b"Proxy-Authorization: Basic c2VjcmV0\r\nTE: trailers\r\n"
            b"Trailer: X-T\r\nUpgrade: h2c\r\nAccept: text/html\r\n\r\n",
        )
        headers = upstream.seen[0].headers
        for name in (
            b"X-Private",
            b"Keep-Alive",
            b"Proxy-Connection",
            b"Proxy-Authorization",
            b"TE",
            b"Trailer",
            b"Upgrade",
        ):
            self.assertFalse(headers.hasHeader(name), name)
        self.assertNotIn(b"keep-alive", b",".join(headers.getRawHeaders(b"Connection", [])))
        self.assertEqual(headers.getRawHeaders(b"Accept"), [b"text/html"])

    def test_x_forwarded_for_gets_the_client_address_appended(self) -> None:
        upstream = Recorder()
        through(upstream, b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 198.51.100.1\r\n\r\n")
        self.assertEqual(
            upstream.seen[0].headers.getRawHeaders(b"X-Forwarded-For"),
            [b"198.51.100.1, " + CLIENT_IP.encode()],
        )

    def test_x_forwarded_proto_and_host_come_from_the_client_connection(self) -> None:
        for secure, proto in ((False, b"http"), (True, b"https")):
            upstream = Recorder()
            through(upstream, b"GET / HTTP/1.1\r\nHost: app.example:8443\r\n\r\n", secure=secure)
            headers = upstream.seen[0].headers
            self.assertEqual(headers.getRawHeaders(b"X-Forwarded-Proto"), [proto])
            self.assertEqual(headers.getRawHeaders(b"X-Forwarded-Host"), [b"app.example:8443"])
            self.assertEqual(headers.getRawHeaders(b"X-Forwarded-For"), [CLIENT_IP.encode()])

    def test_x_forwarded_proto_and_host_already_present_are_kept(self) -> None:
        upstream = Recorder()
        through(
            upstream,
            b"GET / HTTP/1.1\r\nHost: inner\r\nX-Forwarded-Proto: https\r\n"
            b"X-Forwarded-Host: outer.example\r\n\r\n",
        )
        headers = upstream.seen[0].headers
        self.assertEqual(headers.getRawHeaders(b"X-Forwarded-Proto"), [b"https"])
        self.assertEqual(headers.getRawHeaders(b"X-Forwarded-Host"), [b"outer.example"])

    def test_client_host_is_passed_by_default(self) -> None:
        upstream = Recorder()
        through(upstream, b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n")
        self.assertEqual(upstream.seen[0].headers.getRawHeaders(b"Host"), [b"app.example"])

    def test_upstream_host_is_sent_without_pass_host_header(self) -> None:
        upstream = Recorder()
        through(
            upstream,
            b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n",
            url="http://user:pw@backend:8080/",
            pass_host_header=False,
        )
        headers = upstream.seen[0].headers
        self.assertEqual(headers.getRawHeaders(b"Host"), [b"backend:8080"])
        self.assertEqual(headers.getRawHeaders(b"X-Forwarded-Host"), [b"app.example"])

    def test_injected_headers_replace_client_copies(self) -> None:
        upstream = Recorder()
        through(
            upstream,
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-User: mallory\r\n"
            b"x-forwarded-user: eve\r\nAuthorization: Basic bWFsbG9yeQ==\r\n\r\n",
            inject=[(b"X-Forwarded-User", b"alice"), (b"Authorization", b"Bearer id")],
        )
        headers = upstream.seen[0].headers
        self.assertEqual(headers.getRawHeaders(b"X-Forwarded-User"), [b"alice"])
        self.assertEqual(headers.getRawHeaders(b"Authorization"), [b"Bearer id"])


class ResponseTests(SynchronousTestCase):
    """What the client receives."""

    def test_status_headers_and_body_are_copied_back(self) -> None:
        upstream = Recorder(
            201,
            [
                (b"X-Upstream", b"yes"),
                (b"Content-Type", b"application/json"),
                (b"Set-Cookie", b"a=1"),
                (b"Set-Cookie", b"b=2"),
            ],
            b'{"ok":1}',
        )
        harness, answer = through(upstream)
        self.assertEqual(answer.code, 201)
        self.assertEqual(answer.headers.getRawHeaders(b"X-Upstream"), [b"yes"])
        self.assertEqual(answer.headers.getRawHeaders(b"Content-Type"), [b"application/json"])
        self.assertEqual(answer.headers.getRawHeaders(b"Set-Cookie"), [b"a=1", b"b=2"])
        self.assertEqual(answer.body, b'{"ok":1}')
        self.assertIsNone(self.successResultOf(harness.result))

    def test_content_length_is_kept(self) -> None:
        _, answer = through(Recorder(body=b"12345"))
        self.assertEqual(answer.headers.getRawHeaders(b"Content-Length"), [b"5"])
        self.assertFalse(answer.headers.hasHeader(b"Transfer-Encoding"))
        self.assertEqual(answer.body, b"12345")

    def test_hop_by_hop_headers_are_not_copied_back(self) -> None:
        upstream = Recorder(
            headers=[
                (b"Keep-Alive", b"timeout=5"),
                (b"Trailer", b"X-T"),
                (b"Proxy-Authenticate", b"Basic"),
                (b"X-Kept", b"1"),
            ]
        )
        _, answer = through(upstream)
        for name in (b"Keep-Alive", b"Trailer", b"Proxy-Authenticate"):
            self.assertFalse(answer.headers.hasHeader(name), name)
        self.assertEqual(answer.headers.getRawHeaders(b"X-Kept"), [b"1"])

    def test_head_answer_keeps_content_length_and_has_no_body(self) -> None:
        _, answer = through(Recorder(body=b"12345"), b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual(answer.headers.getRawHeaders(b"Content-Length"), [b"5"])
        self.assertEqual(answer.body, b"")

    def test_no_content_and_not_modified_have_no_body(self) -> None:
        for code in (204, 304):
            harness, answer = through(Recorder(code, body=b""))
            self.assertEqual((answer.code, answer.body), (code, b""))
            self.assertIsNone(self.successResultOf(harness.result))

    def test_gate_cookies_and_upstream_cookies_are_both_sent(self) -> None:
        _, answer = through(
            Recorder(headers=[(b"Set-Cookie", b"app=1")]),
            before=lambda request: request.addCookie(b"_oauth2_proxy", b"v"),
        )
        self.assertEqual(
            answer.headers.getRawHeaders(b"Set-Cookie"), [b"_oauth2_proxy=v", b"app=1"]
        )

    def test_body_streams_to_the_client_as_it_arrives(self) -> None:
        upstream = Streamer()
        harness = Harness(RequestTraversalAgent(upstream))
        harness.send(GET)
        upstream.requests[0].write(b"first ")
        harness.settle()
        answer = harness.answer()
        self.assertEqual((answer.code, answer.body, answer.complete), (200, b"first ", False))
        self.assertNoResult(harness.result)
        upstream.requests[0].write(b"second")
        upstream.requests[0].finish()
        harness.settle()
        answer = harness.answer()
        self.assertEqual((answer.body, answer.complete), (b"first second", True))
        self.assertIsNone(self.successResultOf(harness.result))

    def test_no_content_type_is_invented(self) -> None:
        response = FakeResponse()
        harness = Harness(FakeAgent(lambda: succeed(response)))
        harness.send(GET)
        assert response.protocol is not None
        response.protocol.dataReceived(b"raw")
        response.protocol.connectionLost(Failure(ResponseDone()))
        self.assertFalse(harness.answer().headers.hasHeader(b"Content-Type"))

    def test_body_ended_by_closing_the_connection_is_complete(self) -> None:
        response = FakeResponse()
        harness = Harness(FakeAgent(lambda: succeed(response)))
        harness.send(GET)
        assert response.protocol is not None
        response.protocol.dataReceived(b"all of it")
        response.protocol.connectionLost(Failure(PotentialDataLoss()))
        answer = harness.answer()
        self.assertEqual((answer.body, answer.complete), (b"all of it", True))
        self.assertIsNone(self.successResultOf(harness.result))


class StreamingTests(SynchronousTestCase):
    """Backpressure, disconnects and failures while the body flows."""

    def setUp(self) -> None:
        self.response = FakeResponse()
        self.harness = Harness(FakeAgent(lambda: succeed(self.response)))
        self.harness.send(GET)
        assert self.response.protocol is not None
        self.body = self.response.protocol
        self.body.dataReceived(b"part")

    def test_a_slow_client_pauses_the_upstream(self) -> None:
        client = self.harness.transport.producer
        assert client is not None
        client.pauseProducing()  # what a full socket buffer does
        self.assertEqual(self.response.transport.producerState, "paused")
        client.resumeProducing()
        self.assertEqual(self.response.transport.producerState, "producing")

    def test_after_the_body_ends_a_slow_client_no_longer_touches_the_upstream(self) -> None:
        self.body.connectionLost(Failure(ResponseDone()))
        self.assertTrue(self.harness.answer().complete)
        client = self.harness.transport.producer
        assert client is not None
        client.pauseProducing()
        self.assertEqual(self.response.transport.producerState, "producing")
        self.assertIsNone(self.successResultOf(self.harness.result))

    def test_client_leaving_mid_body_stops_the_upstream(self) -> None:
        self.harness.disconnect()
        self.assertEqual(self.response.transport.producerState, "stopped")
        self.body.dataReceived(b"late")
        self.body.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost())])))
        self.assertIsNone(self.successResultOf(self.harness.result))
        self.assertNotIn(b"late", self.harness.transport.value())

    def test_upstream_dying_mid_body_aborts_the_client(self) -> None:
        with capturedLogs() as events:
            self.body.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost())])))
        self.assertTrue(self.harness.transport.disconnected)
        self.assertFalse(self.harness.answer().complete)
        self.assertIsNone(self.successResultOf(self.harness.result))
        self.assertEqual([e["log_level"] for e in events], [LogLevel.warn])
        self.assertIn("ConnectionLost", events[0]["reason"])

    def test_cancelling_forward_stops_the_upstream(self) -> None:
        self.harness.result.cancel()
        self.assertEqual(self.response.transport.producerState, "stopped")
        self.failureResultOf(self.harness.result, CancelledError)


class FailureTests(SynchronousTestCase):
    """No answer from the upstream becomes a 502 or 504 for the gate to render."""

    def test_refused_connection_is_a_bad_gateway_logged_without_secrets(self) -> None:
        harness = Harness(FakeAgent(lambda: fail(ConnectError("refused"))), id="app")
        with capturedLogs() as events:
            harness.send(
                b"GET /x HTTP/1.1\r\nHost: h\r\nCookie: _oauth2_proxy=SECRET\r\n"
                b"Authorization: Bearer SECRET\r\n\r\n"
            )
        error = self.failureResultOf(harness.result, UpstreamError).value
        self.assertEqual(error.status, 502)
        self.assertEqual(harness.transport.value(), b"")  # the gate renders the error page
        [event] = events
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual((event["upstream"], event["host"]), ("app", "backend:8080"))
        self.assertNotIn("SECRET", repr(event))

    def test_unknown_host_is_a_bad_gateway(self) -> None:
        harness = Harness(FakeAgent(lambda: fail(DNSLookupError("backend"))))
        with capturedLogs():
            harness.send(GET)
        self.assertEqual(self.failureResultOf(harness.result, UpstreamError).value.status, 502)

    def test_no_response_headers_in_time_is_a_gateway_timeout(self) -> None:
        cancelled: list[bool] = []
        harness = Harness(
            FakeAgent(lambda: Deferred(lambda _: cancelled.append(True))), timeout=10.0
        )
        harness.send(GET)
        harness.clock.advance(9.9)
        self.assertNoResult(harness.result)
        with capturedLogs() as events:
            harness.clock.advance(0.1)
        self.assertEqual(self.failureResultOf(harness.result, UpstreamError).value.status, 504)
        self.assertEqual(cancelled, [True])
        self.assertEqual([e["log_level"] for e in events], [LogLevel.warn])

    def test_a_timeout_is_a_gateway_timeout_whatever_error_the_cancelled_agent_gives(
        self,
    ) -> None:
        """Twisted's Agent fails a cancelled request with ResponseNeverReceived."""

        def answer() -> Deferred[IResponse]:
            pending: Deferred[IResponse] = Deferred(
                lambda d: d.errback(ResponseNeverReceived([Failure(CancelledError())]))
            )
            return pending

        harness = Harness(FakeAgent(answer), timeout=5.0)
        harness.send(GET)
        with capturedLogs():
            harness.clock.advance(5)
        self.assertEqual(self.failureResultOf(harness.result, UpstreamError).value.status, 504)

    def test_an_upgrade_without_websocket_support_is_forwarded_as_a_plain_request(self) -> None:
        upstream = Recorder()
        through(
            upstream,
            b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: a2V5a2V5a2V5a2V5a2V5MQ==\r\n\r\n",
        )
        seen = upstream.seen[0].headers
        self.assertFalse(seen.hasHeader(b"Upgrade"))
        self.assertNotIn(b"upgrade", b",".join(seen.getRawHeaders(b"Connection", [])).lower())
        self.assertTrue(seen.hasHeader(b"Sec-WebSocket-Key"))

    def test_client_leaving_before_the_answer_cancels_the_upstream_request(self) -> None:
        cancelled: list[bool] = []
        harness = Harness(FakeAgent(lambda: Deferred(lambda _: cancelled.append(True))))
        harness.send(GET)
        harness.disconnect()
        self.assertEqual(cancelled, [True])
        self.assertIsNone(self.successResultOf(harness.result))
        harness.clock.advance(60)  # the timeout is gone too


class UpstreamTests(SynchronousTestCase):
    def make(self, url: str = "http://backend:8080") -> HTTPUpstream:
        return HTTPUpstream(url, FakeAgent(lambda: Deferred()), Clock())

    def test_provides_iupstream(self) -> None:
        self.assertTrue(verifyObject(IUpstream, self.make()))

    def test_root_upstream_serves_every_path(self) -> None:
        upstream = self.make("https://backend")
        self.assertEqual((upstream.path, upstream.id), ("/", "/"))
        self.assertTrue(upstream.matches("/"))
        self.assertTrue(upstream.matches("/any/thing"))

    def test_path_with_trailing_slash_is_a_prefix(self) -> None:
        upstream = self.make("http://backend/api/")
        self.assertTrue(upstream.matches("/api/"))
        self.assertTrue(upstream.matches("/api/v1"))
        self.assertFalse(upstream.matches("/api"))
        self.assertFalse(upstream.matches("/apiary"))

    def test_path_without_trailing_slash_serves_only_itself(self) -> None:
        upstream = self.make("http://backend/health")
        self.assertTrue(upstream.matches("/health"))
        self.assertFalse(upstream.matches("/health/x"))

    def test_non_http_urls_are_refused(self) -> None:
        for url in ("ftp://backend/", "backend:8080", "http:///path", "unix://relative"):
            self.assertRaises(ConfigError, self.make, url)

    def test_a_unix_socket_upstream_serves_everything_as_localhost(self) -> None:
        upstream = self.make("unix:///run/app.sock")
        self.assertEqual((upstream.path, upstream._host_header), ("/", b"localhost"))
        self.assertTrue(upstream.matches("/any"))

    def test_a_pattern_route_searches_the_path(self) -> None:
        upstream = HTTPUpstream(
            "http://b", FakeAgent(lambda: Deferred()), Clock(), path="^/api/v[0-9]+/", regex=True
        )
        self.assertTrue(upstream.matches("/api/v2/x"))
        self.assertFalse(upstream.matches("/api/vx/"))


class FromConfigTests(SynchronousTestCase):
    def test_requests_go_through_a_keep_alive_client_to_the_upstream_host(self) -> None:
        config = Config(upstream_timeout=5.0, pass_host_header=False)
        reactor = MemoryReactorClock()
        upstream = HTTPUpstream.from_config("http://backend:8080", config, reactor)
        assert isinstance(upstream.pool, UpstreamClient)
        self.assertTrue(upstream.pool.persistent)
        self.assertEqual(upstream.pool.max_idle, 10)
        self.assertIs(upstream._agent, upstream.pool)
        upstream._agent.request(b"GET", b"http://backend:8080/x")
        self.assertEqual(reactor.tcpClients[0][1], 8080)  # resolved by the memory reactor
        self.assertEqual(upstream._timeout, 5.0)
        self.assertFalse(upstream._pass_host_header)
        self.successResultOf(Deferred.fromCoroutine(_await(upstream.close())))

    def test_without_keep_alives_every_request_gets_a_new_connection(self) -> None:
        config = Config(disable_keep_alives=True)
        upstream = HTTPUpstream.from_config("http://backend:8080", config, MemoryReactorClock())
        assert upstream.pool is not None
        self.assertFalse(upstream.pool.persistent)

    def test_a_spec_sets_route_id_timeout_and_websockets(self) -> None:
        spec = UpstreamSpec(
            id="api", path="/api/", uri="https://b:8443/", timeout=3.0, proxy_websockets=False
        )
        upstream = HTTPUpstream.from_spec(spec, MemoryReactorClock())
        self.assertEqual((upstream.id, upstream.path, upstream._timeout), ("api", "/api/", 3.0))
        self.assertFalse(upstream._websockets)

    def test_an_unreadable_ca_file_is_a_config_error(self) -> None:
        spec = UpstreamSpec(id="/", path="/", uri="https://b/")
        with self.assertRaises(ConfigError) as raised:
            HTTPUpstream.from_spec(spec, MemoryReactorClock(), ca_files=("/no/such/ca.pem",))
        self.assertIn("upstream_ca_files", str(raised.exception))

    def test_a_ca_file_that_is_not_pem_is_one_config_line(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not a certificate\n")
        spec = UpstreamSpec(id="/", path="/", uri="https://b/")
        with self.assertRaises(ConfigError) as raised:
            HTTPUpstream.from_spec(spec, MemoryReactorClock(), ca_files=(path,))
        self.assertEqual(
            raised.exception.problems,
            (f"upstream_ca_files: cannot load: {path!r} is not a PEM CA certificate",),
        )

    def test_unix_sockets_and_tls_get_their_endpoints(self) -> None:
        reactor = MemoryReactorClock()
        policy = client_tls_policy()
        unix = UpstreamEndpoints(reactor, policy, unix_socket="/run/app.sock")
        endpoint = unix.endpointForURI(URI.fromBytes(b"http://localhost/x"))
        self.assertIsInstance(endpoint, UNIXClientEndpoint)
        endpoint.connect(Factory.forProtocol(Protocol))
        self.assertEqual(reactor.unixClients[0][0], "/run/app.sock")
        tcp = UpstreamEndpoints(reactor, policy)
        self.assertIsInstance(tcp.endpointForURI(URI.fromBytes(b"http://b:81/")), HostnameEndpoint)
        self.assertNotIsInstance(tcp.endpointForURI(URI.fromBytes(b"https://b/")), HostnameEndpoint)

    def test_tls_is_verified_unless_asked_not_to(self) -> None:
        self.assertIsInstance(
            client_tls_policy(insecure_skip_verify=False), BrowserLikePolicyForHTTPS
        )

    def hello(self, creator: IOpenSSLClientConnectionCreator) -> tuple[Any, bytes]:
        """The TLS connection ``creator`` makes, and the ClientHello it sends."""
        factory = TLSMemoryBIOFactory(creator, True, Factory.forProtocol(Protocol))
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return creator.clientConnectionForTLS(protocol), transport.value()

    def test_insecure_tls_skips_verification_but_sends_the_server_name(self) -> None:
        policy = client_tls_policy(insecure_skip_verify=True)
        connection, hello = self.hello(policy.creatorForNetloc(b"backend.example", 443))
        self.assertEqual(connection.get_context().get_verify_mode(), SSL.VERIFY_NONE)
        self.assertIn(b"backend.example", hello)

    def test_insecure_tls_sends_no_server_name_for_an_ip_address(self) -> None:
        policy = client_tls_policy(insecure_skip_verify=True)
        _, hello = self.hello(policy.creatorForNetloc(b"10.0.0.1", 443))
        self.assertNotIn(b"10.0.0.1", hello)


async def _await(awaitable: Any) -> Any:
    return await awaitable
