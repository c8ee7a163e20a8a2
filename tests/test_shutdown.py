"""oauthgate.shutdown: waiting for the requests in flight, with a deadline."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from oauthgate.shutdown import RequestsInFlight


class RequestsInFlightTests(SynchronousTestCase):
    def test_with_nothing_in_flight_it_is_drained_at_once(self) -> None:
        self.assertTrue(self.successResultOf(RequestsInFlight().drained(Clock(), 30.0)))

    def test_drained_fires_when_the_last_request_ends(self) -> None:
        clock, counter = Clock(), RequestsInFlight()
        counter.started()
        counter.started()
        d = counter.drained(clock, 30.0)
        counter.ended()
        self.assertNoResult(d)
        counter.ended()
        self.assertTrue(self.successResultOf(d))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_the_timeout_gives_up_on_requests_still_in_flight(self) -> None:
        clock, counter = Clock(), RequestsInFlight()
        counter.started()
        d = counter.drained(clock, 30.0)
        clock.advance(29.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.assertFalse(self.successResultOf(d))
        counter.ended()  # ending later changes nothing
        self.assertEqual(counter.count, 0)
