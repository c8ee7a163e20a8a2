"""The HTTP site: Twisted's ``Site`` with oauthgate's own, cheap request log.

Twisted's stock access log formats a combined-log line per request through several
layers; oauthgate emits one structured ``twisted.logger`` event instead, and skips it
entirely for excluded paths.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from oauthgate.logs import AccessLog
from oauthgate.metrics import NO_METRICS, MetricsHook
from oauthgate.shutdown import RequestsInFlight

__all__ = ["MAX_HEADER_BYTES", "GateRequest", "GateSite"]

# Request line plus headers. Twisted's default (16 KiB) is too small for sessions split
# over several cookies (big Entra ID / Keycloak tokens); oauth2-proxy's Go server allows 1 MiB.
MAX_HEADER_BYTES = 64 * 1024


class GateRequest(Request):
    """Twisted's request, which tells the site's count of requests in flight when it
    ends: once it has finished, or its connection is lost. That is when
    ``notifyFinish()`` fires for a request (the channel handles one request at a time),
    without a Deferred and a callback per request."""

    oauthgate_in_flight: RequestsInFlight | None = None

    def finish(self) -> None:
        try:
            Request.finish(self)
        finally:
            self._ended()

    def connectionLost(self, reason: Failure) -> None:
        try:
            Request.connectionLost(self, reason)
        finally:
            self._ended()

    def _ended(self) -> None:
        in_flight, self.oauthgate_in_flight = self.oauthgate_in_flight, None
        if in_flight is not None:
            in_flight.ended()


class GateSite(Site):
    """A Site whose access log is one event per request: client, user, method, path,
    status, size and duration. Never logs the query string (it may carry codes) or
    any header."""

    noisy = False
    displayTracebacks = False
    requestFactory = GateRequest
    request_log = Logger(namespace="oauthgate.request")
    log_failures = Logger(namespace="oauthgate.web.site")

    def __init__(
        self,
        resource: IResource,
        clock: IReactorTime,
        *,
        enabled: bool = True,
        exclude_paths: Iterable[str] = (),
        client_ip: Callable[[Request], str | None] | None = None,
        metrics: MetricsHook = NO_METRICS,
        in_flight: RequestsInFlight | None = None,
        access_log: AccessLog | None = None,
        freeze_heap: bool = False,
    ) -> None:
        # HTTP timeouts and the cached Date header run on the same clock as the rest.
        Site.__init__(self, resource, reactor=clock)
        self._freeze_heap = freeze_heap
        self._in_flight = in_flight
        self._clock = clock
        self._enabled = enabled
        self._exclude = frozenset(p.encode("utf-8") for p in exclude_paths)
        self._client_ip = client_ip
        self._metrics = metrics
        # When given, request lines go to this writer (oauth2-proxy's template, buffered)
        # instead of a twisted.logger event.
        self._access_log = access_log

    def startFactory(self) -> None:
        """Listening starts: with ``freeze_heap``, what exists now (modules, the
        configuration, the gate) is moved out of the garbage collector's reach
        (``gc.freeze``). It lives as long as the process anyway, and the collector's
        full passes would walk all of it (~130k objects) every few thousand requests:
        about 2.5 µs per request on average, measured on ``/oauth2/auth`` in-process."""
        Site.startFactory(self)
        if self._freeze_heap:
            gc.collect()
            gc.freeze()

    def buildProtocol(self, addr: IAddress | None) -> Any:
        protocol = Site.buildProtocol(self, addr)
        channel = getattr(protocol, "_channel", protocol)
        channel.totalHeadersSize = MAX_HEADER_BYTES
        # Twisted asks the socket for its local address (a getsockname system call) for
        # every request; a connection's local address never changes.
        channel.getHost = _remembered(channel.getHost)
        return protocol

    def getResourceFor(self, request: Request) -> IResource:
        """Dispatch ``request``, counted in flight (when counting) until it ends."""
        in_flight = self._in_flight
        if in_flight is not None:
            in_flight.started()
            if isinstance(request, GateRequest):
                request.oauthgate_in_flight = in_flight  # it tells when it ends
            else:
                request.notifyFinish().addBoth(lambda _: in_flight.ended())
        resource: IResource = Site.getResourceFor(self, request)
        return resource

    def log(self, request: Request) -> None:  # type: ignore[override]
        """Called once per finished request: count it, then log it (unless excluded)."""
        if not self._enabled and self._metrics is NO_METRICS:
            return  # nothing to count, nothing to log
        try:
            started = getattr(request, "oauthgate_started", None)
            duration = self._clock.seconds() - started if started is not None else 0.0
            if self._metrics is not NO_METRICS:
                self._metrics.request_finished(
                    request.method, request.getHeader(b"host"), request.code, duration
                )
            if self._enabled and request.path not in self._exclude:
                if self._access_log is not None:
                    self._access_log.request(request, duration)
                else:
                    self._log(request, duration)
        except Exception:
            # The access log must never break a response.
            self.log_failures.failure("Could not log a request")

    def _log(self, request: Request, duration: float) -> None:
        if self._client_ip is not None:
            client = self._client_ip(request)
        else:
            client = getattr(request.getClientAddress(), "host", None)
        user = getattr(request, "oauthgate_user", "") or "-"
        method = request.method.decode("ascii", "replace")
        path = request.path.decode("utf-8", "replace")
        # The line is built once here: a "{line}" format costs observers almost nothing,
        # where a many-field template is re-parsed by string.Formatter for every request.
        # The fields stay in the event for JSON observers.
        line = (
            f"{client or '-'} - {user} {method} {path} {request.code} "
            f"{request.sentLength} {duration:.3f}s"
        )
        self.request_log.info(
            "{line}",
            line=line,
            client=client or "-",
            user=user,
            method=method,
            path=path,
            status=request.code,
            size=request.sentLength,
            duration=duration,
            log_category="request",
        )


def _remembered(get_host: Callable[[], IAddress]) -> Callable[[], IAddress]:
    """``get_host``, asked once: its first answer is given from then on."""
    known: list[IAddress] = []

    def remembered() -> IAddress:
        if not known:
            known.append(get_host())
        return known[0]

    return remembered
