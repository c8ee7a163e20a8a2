"""The keep-alive HTTP/1.1 upstream client, byte for byte over memory transports."""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, Cooperator
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import (
    FileBodyProducer,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IResponse
from zope.interface.verify import verifyObject

from oauthgate.upstreams.client import MAX_HEAD_BYTES, BadResponse, UpstreamClient

ORIGIN = b"http://app:8080"


class Endpoint:
    """Connects each protocol to a fresh StringTransport, at once or when told to."""

    def __init__(self, *, manual: bool = False) -> None:
        self.manual = manual
        self.connections: list[tuple[Protocol, StringTransport]] = []
        self.pending: list[tuple[Deferred[Any], Factory]] = []
        self.cancelled = 0

    def connect(self, factory: Factory) -> Deferred[Any]:
        if self.manual:
            d: Deferred[Any] = Deferred(lambda _: self._cancelled())
            self.pending.append((d, factory))
            return d
        return succeed(self._connect(factory))

    def _cancelled(self) -> None:
        self.cancelled += 1

    def _connect(self, factory: Factory) -> Protocol:
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return protocol

    def complete(self) -> None:
        d, factory = self.pending.pop(0)
        d.callback(self._connect(factory))

    def server(self, n: int = -1) -> tuple[Protocol, StringTransport]:
        return self.connections[n]


class Body(Protocol):
    """Collects a response body and how it ended."""

    def __init__(self) -> None:
        self.data = b""
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.reason = reason


class ClientTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = Endpoint()
        self.client = self.make()

    def make(self, **kwargs: Any) -> UpstreamClient:
        return UpstreamClient(self.endpoint, self.clock, origin=ORIGIN, host=b"app:8080", **kwargs)

    def get(
        self, path: bytes = b"/x", method: bytes = b"GET", **kwargs: Any
    ) -> Deferred[IResponse]:
        return self.client.request(method, ORIGIN + path, **kwargs)

    def answer(self, data: bytes, n: int = -1) -> None:
        protocol, _ = self.endpoint.server(n)
        protocol.dataReceived(data)

    def sent(self, n: int = -1) -> bytes:
        _, transport = self.endpoint.server(n)
        value = transport.value()
        transport.clear()
        return value

    def body(self, response: IResponse) -> Body:
        body = Body()
        response.deliverBody(body)
        return body


class RequestTests(ClientTestCase):
    def test_provides_iagent(self) -> None:
        self.assertTrue(verifyObject(IAgent, self.client))

    def test_the_request_head_carries_target_headers_and_host(self) -> None:
        headers = Headers({b"X-A": [b"1", b"2"], b"Host": [b"public.example"]})
        self.get(b"/p/a%2Fb?q=1", headers=headers)
        self.assertEqual(
            self.sent(),
            b"GET /p/a%2Fb?q=1 HTTP/1.1\r\nX-A: 1\r\nX-A: 2\r\nHost: public.example\r\n\r\n",
        )

    def test_the_upstream_host_is_sent_when_the_request_has_none(self) -> None:
        self.get()
        self.assertEqual(self.sent(), b"GET /x HTTP/1.1\r\nHost: app:8080\r\n\r\n")

    def test_a_post_without_body_says_its_length_is_zero(self) -> None:
        self.get(method=b"POST")
        self.assertIn(b"\r\nContent-Length: 0\r\n", self.sent())

    def test_without_keep_alive_the_request_asks_to_close(self) -> None:
        self.client = self.make(persistent=False)
        self.get()
        self.assertIn(b"\r\nConnection: close\r\n", self.sent())

    def test_a_body_is_sent_with_its_length(self) -> None:
        coop = Cooperator(scheduler=lambda f: self.clock.callLater(0, f), started=True)
        body = FileBodyProducer(io.BytesIO(b"hello world"), cooperator=coop, readSize=4)
        self.get(method=b"PUT", bodyProducer=body)
        self.clock.advance(0)
        self.clock.advance(0)
        self.clock.advance(0)
        self.clock.advance(0)
        sent = self.sent()
        self.assertIn(b"\r\nContent-Length: 11\r\n", sent)
        self.assertTrue(sent.endswith(b"\r\n\r\nhello world"), sent)

    def test_request_splitting_is_refused(self) -> None:
        for target in (b"/a b", b"/a\rX: y", b"/a\nb", b"x"):
            with self.subTest(target=target):
                self.assertRaises(ValueError, self.client.request, b"GET", target)
        self.assertRaises(ValueError, self.client.request, b"GET /x", b"/")
        self.assertEqual(self.endpoint.connections, [])


class ResponseTests(ClientTestCase):
    def test_status_headers_length_and_body(self) -> None:
        d = self.get()
        self.answer(b"HTTP/1.1 201 Made It\r\nX-B: 1\r\nContent-Length: 5\r\n\r\nhel")
        response = self.successResultOf(d)
        self.assertEqual((response.code, response.phrase, response.length), (201, b"Made It", 5))
        self.assertEqual(response.version, (b"HTTP", 1, 1))
        self.assertEqual(response.headers.getRawHeaders(b"x-b"), [b"1"])
        self.assertIsNone(response.headers.getRawHeaders(b"content-length"))
        body = self.body(response)
        self.answer(b"lo")
        self.assertEqual(body.data, b"hello")
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseDone))

    def test_a_finished_connection_is_reused(self) -> None:
        for n in range(3):
            d = self.get()
            self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + b"%d" % n)
            self.assertEqual(self.body(self.successResultOf(d)).data, b"%d" % n)
        self.assertEqual(len(self.endpoint.connections), 1)

    def test_the_body_may_be_asked_for_after_it_arrived(self) -> None:
        d = self.get()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
        response = self.successResultOf(d)
        body = self.body(response)
        self.assertEqual(body.data, b"abc")
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseDone))

    def test_a_chunked_body_is_decoded_whatever_the_pieces(self) -> None:
        wire = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n1A\r\n" + b"z" * 26 + b"\r\n0\r\nTrailer: x\r\n\r\n"
        )
        d = self.get()
        body = None
        for i in range(len(wire)):
            self.answer(wire[i : i + 1])
            if body is None and d.called:
                response = self.successResultOf(d)
                self.assertIs(response.length, UNKNOWN_LENGTH)
                body = self.body(response)
        assert body is not None and body.reason is not None
        self.assertEqual(body.data, b"hello" + b"z" * 26)
        self.assertTrue(body.reason.check(ResponseDone))
        self.get()
        self.assertEqual(len(self.endpoint.connections), 1)

    def test_chunked_wins_over_a_length_but_that_connection_is_not_trusted_again(self) -> None:
        for head in (
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
        ):
            with self.subTest(head=head):
                d = self.get()
                self.answer(head + b"2\r\nok\r\n0\r\n\r\n")
                self.assertEqual(self.body(self.successResultOf(d)).data, b"ok")
                self.assertTrue(self.endpoint.server()[1].disconnecting)

    def test_a_chunk_size_is_hex_digits_only(self) -> None:
        for size in (b"1_0", b"\x0b5\x0c", b" 5", b"0x5", b"+5", b"12345678901234567"):
            with self.subTest(size=size):
                d = self.get()
                self.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size)
                self.answer(b"\r\n" + b"z" * 16 + b"\r\n0\r\n\r\n")
                body = self.body(self.successResultOf(d))
                assert body.reason is not None
                self.assertTrue(body.reason.check(ResponseFailed))
                self.assertTrue(self.endpoint.server()[1].disconnecting)

    def test_many_tiny_chunks_in_one_read(self) -> None:
        d = self.get()
        self.answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"1\r\nx\r\n" * 20_000
            + b"0\r\n\r\n"
        )
        self.assertEqual(self.body(self.successResultOf(d)).data, b"x" * 20_000)

    def test_without_length_the_body_ends_with_the_connection(self) -> None:
        d = self.get()
        self.answer(b"HTTP/1.1 200 OK\r\n\r\nsome")
        body = self.body(self.successResultOf(d))
        protocol, _ = self.endpoint.server()
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(body.data, b"some")
        assert body.reason is not None
        self.assertTrue(body.reason.check(PotentialDataLoss))
        self.get()
        self.assertEqual(len(self.endpoint.connections), 2)

    def test_a_body_without_length_cut_off_by_a_reset_is_not_whole(self) -> None:
        d = self.get()
        self.answer(b'HTTP/1.1 200 OK\r\n\r\n{"balance": 10')
        body = self.body(self.successResultOf(d))
        self.endpoint.server()[0].connectionLost(Failure(ConnectionLost()))
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseFailed))

    def test_connection_close_and_http_1_0_are_not_reused(self) -> None:
        for head in (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        ):
            with self.subTest(head=head):
                d = self.get()
                self.answer(head)
                self.successResultOf(d)
                self.assertTrue(self.endpoint.server()[1].disconnecting)
        d = self.get()
        self.answer(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
        self.successResultOf(d)
        self.assertFalse(self.endpoint.server()[1].disconnecting)
        d = self.get()  # "close" stays said, whatever follows
        self.answer(
            b"HTTP/1.0 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        self.successResultOf(d)
        self.assertTrue(self.endpoint.server()[1].disconnecting)

    def test_head_204_and_304_have_no_body(self) -> None:
        for method, head in (
            (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"),
            (b"GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
            (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n"),
        ):
            with self.subTest(method=method, head=head):
                d = self.get(method=method)
                self.answer(head)
                response = self.successResultOf(d)
                self.assertEqual(response.length, 0)
                body = self.body(response)
                assert body.reason is not None
                self.assertTrue(body.reason.check(ResponseDone))
        self.assertEqual(len(self.endpoint.connections), 1)
        # HEAD keeps the length of the body it did not get
        d = self.get(method=b"HEAD")
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        response = self.successResultOf(d)
        self.assertEqual(response.headers.getRawHeaders(b"content-length"), [b"1234"])

    def test_lines_may_end_in_a_bare_lf(self) -> None:
        d = self.get()
        self.answer(b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\nX-A: 1\n\n2\nok\n0\n\n")
        response = self.successResultOf(d)
        self.assertEqual(response.headers.getRawHeaders(b"x-a"), [b"1"])
        self.assertEqual(self.body(response).data, b"ok")
        d = self.get()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\n!")
        self.assertEqual(self.body(self.successResultOf(d)).data, b"!")
        d = self.get()
        self.answer(b"HTTP/1.1 200 OK\nContent-Length: 2\n\r\nhi")
        self.assertEqual(self.body(self.successResultOf(d)).data, b"hi")
        self.assertEqual(len(self.endpoint.connections), 1)

    def test_interim_responses_are_skipped(self) -> None:
        d = self.get()
        self.answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n")
        self.assertNoResult(d)
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.successResultOf(d).code, 200)

    def test_more_bytes_than_announced_are_dropped_with_the_connection(self) -> None:
        d = self.get()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabHTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(self.body(self.successResultOf(d)).data, b"ab")
        self.assertTrue(self.endpoint.server()[1].disconnecting)


class BrokenResponseTests(ClientTestCase):
    def never_received(self, wire: bytes) -> BadResponse:
        d = self.get()
        self.answer(wire)
        failure = self.failureResultOf(d, ResponseNeverReceived)
        self.assertTrue(self.endpoint.server()[1].disconnecting)
        reason = failure.value.reasons[0].value
        self.assertIsInstance(reason, BadResponse)
        return reason

    def test_bad_heads_fail_the_request_and_drop_the_connection(self) -> None:
        for wire in (
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"ICY 200 OK\r\n\r\n",
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: 1\rSet-Cookie: a=b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
        ):
            with self.subTest(wire=wire):
                self.never_received(wire)

    def test_a_head_that_never_ends_is_cut_off(self) -> None:
        reason = self.never_received(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * (MAX_HEAD_BYTES // 6))
        self.assertIn("too large", str(reason))

    def test_repeated_equal_lengths_are_one_length(self) -> None:
        d = self.get()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(self.body(self.successResultOf(d)).data, b"ok")

    def test_a_bad_chunk_breaks_off_the_body(self) -> None:
        for chunks in (b"zz\r\n", b"3\r\nabcd\r\n", b"-1\r\n", b"1" * 5000):
            with self.subTest(chunks=chunks):
                d = self.get()
                self.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
                body = self.body(self.successResultOf(d))
                assert body.reason is not None
                self.assertTrue(body.reason.check(ResponseFailed))
                self.assertTrue(self.endpoint.server()[1].disconnecting)

    def test_a_connection_lost_mid_body_breaks_it_off(self) -> None:
        d = self.get()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        body = self.body(self.successResultOf(d))
        self.endpoint.server()[0].connectionLost(Failure(ConnectionLost()))
        assert body.reason is not None
        self.assertTrue(body.reason.check(ResponseFailed))
        self.assertEqual(body.data, b"abc")

    def test_bytes_nobody_asked_for_drop_an_idle_connection(self) -> None:
        d = self.get()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.successResultOf(d)
        self.answer(b"HTTP/1.1 200 OK\r\n")
        self.assertTrue(self.endpoint.server()[1].disconnecting)


class ConnectionTests(ClientTestCase):
    def finish(self, d: Deferred[IResponse], n: int = -1) -> None:
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", n)
        self.successResultOf(d)

    def test_a_reused_connection_closed_by_the_server_is_retried_once(self) -> None:
        self.finish(self.get())
        d = self.get()
        self.endpoint.server(0)[0].connectionLost(Failure(ConnectionDone()))
        self.assertNoResult(d)
        self.assertEqual(len(self.endpoint.connections), 2)
        self.assertTrue(self.sent(1).startswith(b"GET /x HTTP/1.1\r\n"))
        self.finish(d, 1)

    def test_a_new_connection_closed_without_answer_fails(self) -> None:
        d = self.get()
        self.endpoint.server()[0].connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, ResponseNeverReceived)
        self.assertEqual(len(self.endpoint.connections), 1)

    def test_a_request_with_a_body_is_never_retried(self) -> None:
        self.finish(self.get())
        body = FileBodyProducer(io.BytesIO(b"x"), cooperator=Cooperator(started=False))
        d = self.get(method=b"POST", bodyProducer=body)
        self.endpoint.server(0)[0].connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, ResponseNeverReceived)
        self.assertEqual(len(self.endpoint.connections), 1)

    def test_a_refused_connection_fails_the_request(self) -> None:
        self.endpoint.manual = True
        d = self.get()
        self.endpoint.pending.pop()[0].errback(ConnectionRefusedError())
        self.failureResultOf(d, ConnectionRefusedError)

    def test_idle_connections_close_after_the_idle_timeout(self) -> None:
        self.client = self.make(idle_timeout=90.0)
        self.finish(self.get())
        self.clock.advance(89)
        self.assertFalse(self.endpoint.server()[1].disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.endpoint.server()[1].disconnecting)

    def test_a_connection_closing_after_its_idle_time_is_never_handed_out(self) -> None:
        self.finish(self.get())
        self.sent(0)
        self.clock.advance(90)  # closing: loseConnection, but not lost yet (TLS: a round trip)
        self.assertTrue(self.endpoint.server(0)[1].disconnecting)
        body = FileBodyProducer(io.BytesIO(b"pay"), cooperator=Cooperator(started=False))
        self.get(b"/pay", method=b"POST", bodyProducer=body)
        self.assertEqual(len(self.endpoint.connections), 2)
        self.assertEqual(self.endpoint.server(0)[1].value(), b"")
        self.assertTrue(self.sent(1).startswith(b"POST /pay HTTP/1.1\r\n"))

    def test_at_most_max_idle_connections_are_kept(self) -> None:
        self.client = self.make(max_idle=1)
        first, second = self.get(), self.get()
        self.assertEqual(len(self.endpoint.connections), 2)
        self.finish(first, 0)
        self.finish(second, 1)
        self.assertFalse(self.endpoint.server(0)[1].disconnecting)
        self.assertTrue(self.endpoint.server(1)[1].disconnecting)

    def test_close_cached_connections_closes_the_idle_ones(self) -> None:
        self.finish(self.get())
        busy = self.get()
        self.assertEqual(len(self.endpoint.connections), 1)
        self.successResultOf(self.client.closeCachedConnections())  # none is idle
        self.assertFalse(self.endpoint.server()[1].disconnecting)
        self.finish(busy)
        closing = self.client.closeCachedConnections()
        protocol, transport = self.endpoint.server()
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(closing)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(closing)

    def test_a_slow_reader_pauses_the_connection_until_the_body_ends(self) -> None:
        d = self.get()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        response = self.successResultOf(d)
        body = Body()
        response.deliverBody(body)
        producer = body.transport
        transport = self.endpoint.server()[1]
        producer.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        producer.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        producer.pauseProducing()
        self.answer(b"cd")
        # the body is over: the connection is resumed for its next exchange, and the
        # old response's producer no longer touches it
        self.assertEqual(transport.producerState, "producing")
        producer.pauseProducing()
        producer.stopProducing()
        self.assertEqual(transport.producerState, "producing")
        self.assertFalse(transport.disconnecting)

    def test_a_response_that_came_whole_never_touches_the_reused_connection(self) -> None:
        first = self.get()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        response = self.successResultOf(first)
        second = self.get()  # the connection is back in the pool already
        self.assertEqual(len(self.endpoint.connections), 1)
        body = self.body(response)
        self.assertEqual(body.data, b"ok")
        self.assertTrue(body.transport.finished)
        body.transport.pauseProducing()
        body.transport.stopProducing()
        transport = self.endpoint.server()[1]
        self.assertEqual(transport.producerState, "producing")
        self.assertFalse(transport.disconnecting)
        self.finish(second)

    def test_stopping_the_body_drops_the_connection(self) -> None:
        d = self.get()
        self.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        body = self.body(self.successResultOf(d))
        body.transport.stopProducing()
        self.endpoint.server()[0].connectionLost(Failure(ConnectionDone()))
        self.get()
        self.assertEqual(len(self.endpoint.connections), 2)

    def test_cancelling_before_the_answer_drops_the_connection(self) -> None:
        d = self.get()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.endpoint.server()[0].connectionLost(Failure(ConnectionDone()))
        self.get()
        self.assertEqual(len(self.endpoint.connections), 2)

    def test_cancelling_while_connecting_cancels_the_connection_attempt(self) -> None:
        self.endpoint.manual = True
        d = self.get()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.endpoint.cancelled, 1)

    def test_an_early_answer_stops_the_request_body(self) -> None:
        steps: list[Any] = []
        coop = Cooperator(  # one step each time the test runs one
            terminationPredicateFactory=lambda: lambda: True,
            scheduler=lambda f: steps.append(f),  # type: ignore[func-returns-value]
        )
        body = FileBodyProducer(io.BytesIO(b"x" * 100_000), cooperator=coop, readSize=10)
        d = self.get(method=b"POST", bodyProducer=body)
        steps.pop(0)()
        self.answer(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.successResultOf(d).code, 413)
        transport = self.endpoint.server()[1]
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(transport.producer)
        written = len(transport.value())
        while steps:
            steps.pop(0)()
        self.assertEqual(len(transport.value()), written)
        self.assertLess(written, 1000)
