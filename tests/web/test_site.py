"""The site: requests counted in flight from dispatch until they end, however they end."""

from __future__ import annotations

import gc

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.test.requesthelper import DummyRequest

from oauthgate.shutdown import RequestsInFlight
from oauthgate.web.site import GateRequest, GateSite

PEER = IPv4Address("TCP", "192.0.2.7", 50000)


class Answering(Resource):
    """``/now`` is answered at once; any other path is held until the test answers it."""

    isLeaf = True

    def __init__(self, in_flight: RequestsInFlight) -> None:
        Resource.__init__(self)
        self.in_flight = in_flight
        self.held: list[Request] = []
        self.counted_while_rendering: list[int] = []

    def render_GET(self, request: Request) -> bytes | int:
        self.counted_while_rendering.append(self.in_flight.count)
        if request.path == b"/now":
            return b"ok"
        self.held.append(request)
        return NOT_DONE_YET


class InFlightTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.in_flight = RequestsInFlight()
        self.resource = Answering(self.in_flight)
        self.site = GateSite(self.resource, Clock(), enabled=False, in_flight=self.in_flight)

    def connect(self) -> tuple[object, StringTransport]:
        protocol = self.site.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        protocol.makeConnection(transport)
        return protocol, transport

    def get(self, protocol: object, path: bytes) -> None:
        protocol.dataReceived(  # type: ignore[attr-defined]
            b"GET " + path + b" HTTP/1.1\r\nHost: app.test\r\n\r\n"
        )

    def test_the_site_makes_gate_requests(self) -> None:
        protocol, _ = self.connect()
        self.get(protocol, b"/held")
        self.assertIsInstance(self.resource.held[0], GateRequest)

    def test_a_request_answered_at_once_counts_while_it_is_handled(self) -> None:
        protocol, transport = self.connect()
        for _ in range(3):
            self.get(protocol, b"/now")
        self.assertEqual(self.resource.counted_while_rendering, [1, 1, 1])
        self.assertEqual(self.in_flight.count, 0)
        self.assertIn(b"200 OK", transport.value())

    def test_a_held_request_counts_until_it_finishes(self) -> None:
        protocol, _ = self.connect()
        other, _ = self.connect()
        self.get(protocol, b"/held")
        self.get(other, b"/held")
        self.assertEqual(self.in_flight.count, 2)
        drained = self.in_flight.drained(Clock(), 30.0)
        first, second = self.resource.held
        first.finish()
        self.assertEqual(self.in_flight.count, 1)
        self.assertNoResult(drained)
        second.write(b"done")
        second.finish()
        self.assertEqual(self.in_flight.count, 0)
        self.assertTrue(self.successResultOf(drained))

    def test_a_request_whose_client_goes_away_stops_counting_once(self) -> None:
        staying, _ = self.connect()
        self.get(staying, b"/held")
        leaving, transport = self.connect()
        self.get(leaving, b"/held")
        self.assertEqual(self.in_flight.count, 2)
        transport.loseConnection()
        leaving.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
        self.assertEqual(self.in_flight.count, 1)
        left = self.resource.held[1]
        self.assertRaises(RuntimeError, left.finish)  # too late: nobody to answer
        self.assertEqual(self.in_flight.count, 1)
        self.resource.held[0].finish()
        self.assertEqual(self.in_flight.count, 0)

    def test_requests_of_another_kind_are_counted_too(self) -> None:
        request = DummyRequest([b"held"])
        self.site.getResourceFor(request)
        self.assertEqual(self.in_flight.count, 1)
        request.finish()
        self.assertEqual(self.in_flight.count, 0)


class FreezeHeapTests(SynchronousTestCase):
    def test_what_exists_when_listening_starts_is_frozen_only_when_asked(self) -> None:
        if gc.get_freeze_count():
            self.skipTest("the heap is frozen already")
        self.addCleanup(gc.unfreeze)
        resource = Resource()
        GateSite(resource, Clock()).doStart()
        self.assertEqual(gc.get_freeze_count(), 0)
        GateSite(resource, Clock(), freeze_heap=True).doStart()
        self.assertGreater(gc.get_freeze_count(), 0)


class LocalAddressTests(SynchronousTestCase):
    def test_the_local_address_is_asked_once_per_connection(self) -> None:
        seen: list[object] = []

        class Recording(Resource):
            isLeaf = True

            def render_GET(self, request: Request) -> bytes:
                seen.append(request.getHost())
                return b"ok"

        site = GateSite(Recording(), Clock(), enabled=False)
        asked: list[int] = []

        class Counting(StringTransport):
            def getHost(self) -> IPv4Address:
                asked.append(1)
                return IPv4Address("TCP", "127.0.0.1", 4180 + len(asked))

        protocol = site.buildProtocol(PEER)
        protocol.makeConnection(Counting(peerAddress=PEER))
        for _ in range(3):
            protocol.dataReceived(b"GET /x HTTP/1.1\r\nHost: app.test\r\n\r\n")
        self.assertEqual(len(seen), 3)
        self.assertEqual(len(asked), 1)
        self.assertEqual(seen, [IPv4Address("TCP", "127.0.0.1", 4181)] * 3)
