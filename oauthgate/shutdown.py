"""Graceful shutdown: count the requests being answered, and wait for them at the end.

The site counts each request from the moment it is dispatched until it finishes or its
client goes away; at shutdown the service stops listening first, then waits
(:meth:`RequestsInFlight.drained`) until the count is 0 or the shutdown timeout passes.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

__all__ = ["RequestsInFlight"]


@attrs.define
class RequestsInFlight:
    """How many requests are being answered now, and who waits for that to be none."""

    count: int = 0
    _waiting: list[Deferred[bool]] = attrs.field(factory=list)

    def started(self) -> None:
        self.count += 1

    def ended(self) -> None:
        """A request finished, or its client went away."""
        self.count = max(0, self.count - 1)
        if self.count == 0:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                if not d.called:
                    d.callback(True)

    def drained(self, clock: IReactorTime, timeout: float) -> Deferred[bool]:
        """Fires with True once no request is in flight, or with False after ``timeout``
        seconds if some still are (they are then cut off by the shutdown)."""
        d: Deferred[bool] = Deferred()
        if self.count == 0:
            d.callback(True)
            return d
        self._waiting.append(d)
        call = clock.callLater(max(timeout, 0.0), _give_up, d)

        def cancel_timer(result: bool) -> bool:
            if call.active():
                call.cancel()
            return result

        d.addBoth(cancel_timer)
        return d


def _give_up(d: Deferred[bool]) -> None:
    if not d.called:
        d.callback(False)
