"""Tests for oauthgate.upstreams.websocket: the upgrade handshake and the byte tunnel, in memory.

A real ``Site`` channel on a ``StringTransport`` is the client connection; a fake
endpoint hands out ``StringTransport`` connections as the upstream. (Real sockets:
tests/integration/test_proxy.py.)
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.test.requesthelper import DummyRequest

from oauthgate.errors import UpstreamError
from oauthgate.upstreams.websocket import is_websocket_upgrade, tunnel

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
HEAD = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
SWITCHING = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)


class FakeEndpoint:
    """Connects to an in-memory upstream, or fails with ``error``."""

    def __init__(self, error: Exception | None = None, pending: bool = False) -> None:
        self.error = error
        self.pending = pending
        self.transport = StringTransport()
        self.protocol: IProtocol | None = None

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        if self.error is not None:
            return fail(self.error)
        if self.pending:
            return Deferred()
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 80))
        assert protocol is not None
        protocol.makeConnection(self.transport)
        self.protocol = protocol
        return succeed(protocol)

    def answer(self, data: bytes) -> None:
        assert self.protocol is not None
        self.protocol.dataReceived(data)

    def close(self) -> None:
        assert self.protocol is not None
        self.protocol.connectionLost(Failure(ConnectionDone()))


class Tunnelling(Resource):
    isLeaf = True

    def __init__(self, endpoint: FakeEndpoint, clock: Clock) -> None:
        Resource.__init__(self)
        self.endpoint = endpoint
        self.clock = clock
        self.results: list[Deferred[None]] = []
        self.warnings: list[str] = []

    def render(self, request: Request) -> int:
        request.setHeader(b"GAP-Auth", b"alice@example.com")
        running = tunnel(
            request,
            self.endpoint,  # type: ignore[arg-type]
            HEAD,
            clock=self.clock,
            timeout=10.0,
            warn=self.warnings.append,
        )
        self.results.append(Deferred.fromCoroutine(running))
        return NOT_DONE_YET


class Harness:
    def __init__(self, endpoint: FakeEndpoint | None = None) -> None:
        self.clock = Clock()
        self.endpoint = endpoint or FakeEndpoint()
        self.resource = Tunnelling(self.endpoint, self.clock)
        self.client = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", 5000))
        # a reactor of its own: the channel's idle timeout must not land in the real one
        site = Site(self.resource, reactor=MemoryReactorClock())
        self.channel: Any = site.buildProtocol(None)
        self.channel.makeConnection(self.client)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    @property
    def result(self) -> Deferred[None]:
        return self.resource.results[-1]


class TunnelTests(SynchronousTestCase):
    def test_bytes_flow_both_ways_after_the_101(self) -> None:
        harness = Harness()
        harness.send(UPGRADE + b"\x81\x85early")  # a frame right behind the request head
        self.assertEqual(harness.endpoint.transport.value(), HEAD)
        harness.endpoint.answer(SWITCHING + b"\x81\x02hi")
        sent = harness.client.value()
        self.assertTrue(sent.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), sent)
        self.assertIn(b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n", sent)
        self.assertIn(b"GAP-Auth: alice@example.com\r\n", sent.replace(b"Gap-Auth", b"GAP-Auth"))
        self.assertNotIn(b"Server:", sent)
        self.assertTrue(sent.endswith(b"\r\n\r\n\x81\x02hi"))
        self.assertEqual(harness.endpoint.transport.value(), HEAD + b"\x81\x85early")
        harness.send(b"GET / HTTP/1.1\r\n\r\n")  # not parsed as HTTP any more
        self.assertTrue(harness.endpoint.transport.value().endswith(b"GET / HTTP/1.1\r\n\r\n"))
        self.assertNoResult(harness.result)
        harness.endpoint.close()
        self.assertTrue(harness.client.disconnecting)
        self.assertIsNone(self.successResultOf(harness.result))

    def test_the_client_closing_closes_the_upstream(self) -> None:
        harness = Harness()
        harness.send(UPGRADE)
        harness.endpoint.answer(SWITCHING)
        harness.channel.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(harness.endpoint.transport.disconnecting)
        harness.endpoint.close()
        self.assertIsNone(self.successResultOf(harness.result))

    def test_a_slow_reader_pauses_the_other_side(self) -> None:
        harness = Harness()
        harness.send(UPGRADE)
        harness.endpoint.answer(SWITCHING)
        http_channel = harness.client.producer  # what the client's socket pauses
        assert http_channel is not None
        http_channel.pauseProducing()  # the client's socket buffer is full
        self.assertEqual(harness.endpoint.transport.producerState, "paused")
        http_channel.resumeProducing()
        self.assertEqual(harness.endpoint.transport.producerState, "producing")
        upstream_buffer_full = harness.endpoint.transport.producer
        assert upstream_buffer_full is not None
        upstream_buffer_full.pauseProducing()
        self.assertEqual(harness.client.producerState, "paused")

    def test_a_refused_upgrade_is_relayed_as_an_answer(self) -> None:
        harness = Harness()
        harness.send(UPGRADE)
        harness.endpoint.answer(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nno")
        self.assertNoResult(harness.result)
        harness.endpoint.answer(b"pe")
        self.assertIsNone(self.successResultOf(harness.result))
        sent = harness.client.value()
        self.assertTrue(sent.startswith(b"HTTP/1.1 403 Forbidden\r\n"), sent)
        self.assertTrue(sent.endswith(b"\r\n\r\nnope"), sent)
        self.assertTrue(harness.endpoint.transport.disconnecting)  # never reused

    def test_a_refused_upgrade_with_a_chunked_body(self) -> None:
        harness = Harness()
        harness.send(UPGRADE)
        harness.endpoint.answer(
            b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nbad\r\n0\r\n\r\n"
        )
        self.assertIsNone(self.successResultOf(harness.result))
        self.assertIn(b"bad", harness.client.value())

    def test_a_refused_upgrade_cut_short_aborts_the_client(self) -> None:
        harness = Harness()
        harness.send(UPGRADE)
        harness.endpoint.answer(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 10\r\n\r\nno")
        harness.endpoint.close()
        self.assertIsNone(self.successResultOf(harness.result))
        self.assertTrue(harness.client.disconnecting)


class HandshakeFailureTests(SynchronousTestCase):
    def status(self, harness: Harness) -> int:
        error: UpstreamError = self.failureResultOf(harness.result, UpstreamError).value
        return error.status

    def test_a_refused_connection_is_502(self) -> None:
        harness = Harness(FakeEndpoint(error=ConnectionRefusedError()))
        with capturedLogs():
            harness.send(UPGRADE)
        self.assertEqual(self.status(harness), 502)

    def test_nonsense_from_the_upstream_is_502(self) -> None:
        harness = Harness()
        harness.send(UPGRADE)
        harness.endpoint.answer(b"SSH-2.0-OpenSSH\r\n\r\n")
        self.assertEqual(self.status(harness), 502)
        self.assertTrue(harness.endpoint.transport.disconnecting)

    def test_no_answer_in_time_is_504(self) -> None:
        harness = Harness()
        harness.send(UPGRADE)
        harness.clock.advance(10)
        self.assertEqual(self.status(harness), 504)

    def test_no_connection_in_time_is_504(self) -> None:
        harness = Harness(FakeEndpoint(pending=True))
        harness.send(UPGRADE)
        harness.clock.advance(10)
        self.assertEqual(self.status(harness), 504)

    def test_an_interim_answer_is_skipped(self) -> None:
        harness = Harness()
        harness.send(UPGRADE)
        harness.endpoint.answer(b"HTTP/1.1 100 Continue\r\n\r\n" + SWITCHING)
        self.assertTrue(harness.client.value().startswith(b"HTTP/1.1 101"))


class IsUpgradeTests(SynchronousTestCase):
    def request(self, method: bytes = b"GET", **headers: str) -> DummyRequest:
        request = DummyRequest([b""])
        request.method = method
        for name, value in headers.items():
            request.requestHeaders.addRawHeader(name.replace("_", "-"), value)
        return request

    def test_websocket_upgrades_are_recognised(self) -> None:
        for connection in ("Upgrade", "keep-alive, Upgrade", "upgrade"):
            request = self.request(Upgrade="WebSocket", Connection=connection)
            self.assertTrue(is_websocket_upgrade(request), connection)  # type: ignore[arg-type]

    def test_other_requests_are_not(self) -> None:
        for request in (
            self.request(Upgrade="websocket"),
            self.request(Connection="Upgrade"),
            self.request(Upgrade="h2c", Connection="Upgrade"),
            self.request(b"POST", Upgrade="websocket", Connection="Upgrade"),
        ):
            self.assertFalse(is_websocket_upgrade(request))  # type: ignore[arg-type]
