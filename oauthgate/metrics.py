"""Prometheus metrics: one :class:`Metrics` per process, with a registry of its own.

The web layer calls the small hook methods below; nothing here imports ``oauthgate.web``.
Label children are cached in plain dicts, so a counted request costs a dict lookup and an
``inc``/``observe`` per metric. oauth2-proxy's own names (``oauth2_proxy_*``) are exposed
beside oauthgate's for dashboards built for it; see docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface import implementer

from oauthgate._version import __version__
from oauthgate.interfaces import ISessionStore
from oauthgate.session import Session

__all__ = [
    "NO_METRICS",
    "MeteredStore",
    "Metrics",
    "MetricsHook",
    "MetricsResource",
    "NoMetrics",
]

# Methods counted by name; anything else is "other" (a client chooses the method).
_METHODS = frozenset(
    b"GET HEAD POST PUT DELETE PATCH OPTIONS CONNECT TRACE PROPFIND MKCOL COPY MOVE".split()
)
# Distinct Host values kept as labels; further hosts are counted as "other".
MAX_HOSTS = 100


class MetricsHook(Protocol):
    """What the gate and the site report. :data:`NO_METRICS` ignores everything."""

    def request_started(self) -> None: ...

    def request_ended(self) -> None: ...

    def request_finished(
        self, method: bytes, host: bytes | None, code: int, duration: float
    ) -> None: ...

    def auth(self, method: str, result: str) -> None: ...

    def login(self, provider: str, result: str) -> None: ...

    def sign_out(self) -> None: ...

    def refresh(self, result: str) -> None: ...

    def upstream(self, upstream: str, error: int | None) -> None: ...


class NoMetrics:
    """The hook when metrics are off: every report is dropped."""

    def request_started(self) -> None:
        pass

    def request_ended(self) -> None:
        pass

    def request_finished(
        self, method: bytes, host: bytes | None, code: int, duration: float
    ) -> None:
        pass

    def auth(self, method: str, result: str) -> None:
        pass

    def login(self, provider: str, result: str) -> None:
        pass

    def sign_out(self) -> None:
        pass

    def refresh(self, result: str) -> None:
        pass

    def upstream(self, upstream: str, error: int | None) -> None:
        pass


NO_METRICS = NoMetrics()
"""Stateless, hence shareable: the default of every component that reports metrics."""


class Metrics:
    """oauthgate's collectors, registered in ``registry`` (a fresh one by default; never
    prometheus_client's global ``REGISTRY``)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, version: str = __version__
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "oauthgate_requests",
            "HTTP requests answered, by status code, method and Host",
            ["code", "method", "host"],
            registry=r,
        )
        self.duration = Histogram(
            "oauthgate_response_duration_seconds",
            "Time from the request's arrival to the end of its response",
            ["method"],
            registry=r,
        )
        self.in_flight = Gauge(
            "oauthgate_requests_in_flight", "Requests being answered now", registry=r
        )
        self.auth_total = Counter(
            "oauthgate_auth",
            "Authentication decisions, by how the request was identified and the result",
            ["method", "result"],
            registry=r,
        )
        self.logins = Counter(
            "oauthgate_logins",
            "Completed logins (callback or htpasswd form), by provider and result",
            ["provider", "result"],
            registry=r,
        )
        self.sign_outs = Counter("oauthgate_sign_outs", "Sessions signed out", registry=r)
        self.refreshes = Counter(
            "oauthgate_refreshes",
            "Session refreshes at the provider, by result (ok, failed, ended)",
            ["result"],
            registry=r,
        )
        self.upstream_requests = Counter(
            "oauthgate_upstream_requests",
            "Requests sent to an upstream, by upstream id",
            ["upstream"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "oauthgate_upstream_errors",
            "Upstream requests that failed (502 unreachable, 504 timeout), by upstream id",
            ["upstream", "code"],
            registry=r,
        )
        self.store_ops = Counter(
            "oauthgate_session_store_operations",
            "Session store operations, by operation (load, save, clear, lock, check)",
            ["operation"],
            registry=r,
        )
        self.store_errors = Counter(
            "oauthgate_session_store_errors",
            "Session store operations that failed, by operation",
            ["operation"],
            registry=r,
        )
        build = Gauge(
            "oauthgate_build_info", "Always 1; the running version", ["version"], registry=r
        )
        build.labels(version).set(1)
        # oauth2-proxy's names (pkg/middleware/metrics.go), for dashboards built for it.
        self.o2p_requests = Counter(
            "oauth2_proxy_requests", "Requests by HTTP status code", ["code"], registry=r
        )
        self.o2p_in_flight = Gauge(
            "oauth2_proxy_requests_in_flight", "Requests being answered now", registry=r
        )
        self.o2p_duration = Histogram(
            "oauth2_proxy_response_duration_seconds",
            "Response latency by method",
            ["method"],
            registry=r,
        )
        # Label children, cached: labels() validates and locks on every call.
        self._requests: dict[tuple[int, bytes, bytes], Any] = {}
        self._durations: dict[bytes, tuple[Any, Any]] = {}
        self._o2p_codes: dict[int, Any] = {}
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._hosts: set[bytes] = set()

    # --- requests (GateSite / GateResource) ----------------------------------------------

    def request_started(self) -> None:
        self.in_flight.inc()
        self.o2p_in_flight.inc()

    def request_ended(self) -> None:
        """The request finished or its client went away."""
        self.in_flight.dec()
        self.o2p_in_flight.dec()

    def request_finished(
        self, method: bytes, host: bytes | None, code: int, duration: float
    ) -> None:
        if method not in _METHODS:
            method = b"other"
        host = self._host(host)
        key = (code, method, host)
        child = self._requests.get(key)
        if child is None:
            child = self.requests.labels(str(code), method.decode(), host.decode("latin-1"))
            self._requests[key] = child
        child.inc()
        o2p = self._o2p_codes.get(code)
        if o2p is None:
            o2p = self._o2p_codes[code] = self.o2p_requests.labels(str(code))
        o2p.inc()
        histograms = self._durations.get(method)
        if histograms is None:
            label = method.decode()
            histograms = (self.duration.labels(label), self.o2p_duration.labels(label))
            self._durations[method] = histograms
        histograms[0].observe(duration)
        histograms[1].observe(duration)

    def _host(self, host: bytes | None) -> bytes:
        if not host:
            return b""
        if host in self._hosts:
            return host
        lowered = host.lower()
        if lowered in self._hosts:
            return lowered
        if len(self._hosts) >= MAX_HOSTS:
            return b"other"
        self._hosts.add(lowered)
        return lowered

    # --- the gate ------------------------------------------------------------------------

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels) if labels else metric
        return child

    def auth(self, method: str, result: str) -> None:
        self._child(self.auth_total, method, result).inc()

    def login(self, provider: str, result: str) -> None:
        self._child(self.logins, provider, result).inc()

    def sign_out(self) -> None:
        self.sign_outs.inc()

    def refresh(self, result: str) -> None:
        self._child(self.refreshes, result).inc()

    def upstream(self, upstream: str, error: int | None) -> None:
        if error is None:
            self._child(self.upstream_requests, upstream).inc()
        else:
            self._child(self.upstream_errors, upstream, str(error)).inc()

    def store(self, operation: str, failed: bool) -> None:
        self._child(self.store_ops, operation).inc()
        if failed:
            self._child(self.store_errors, operation).inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


@implementer(ISessionStore)
class MeteredStore:
    """``store``, counting every operation and failure in ``metrics``."""

    def __init__(self, store: ISessionStore, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        # Optional extras of the concrete store (start, stop, ...) pass through.
        return getattr(self._store, name)

    async def _count(self, operation: str, awaitable: Awaitable[Any]) -> Any:
        try:
            result = await awaitable
        except BaseException:
            self._metrics.store(operation, True)
            raise
        self._metrics.store(operation, False)
        return result

    async def save(self, session: Session, previous: str | None = None) -> str:
        value: str = await self._count("save", self._store.save(session, previous))
        return value

    async def load(self, value: str) -> Session | None:
        session: Session | None = await self._count("load", self._store.load(value))
        return session

    async def clear(self, value: str) -> None:
        await self._count("clear", self._store.clear(value))

    def lock(self, value: str) -> AbstractAsyncContextManager[None]:
        return self._lock(value)

    @asynccontextmanager
    async def _lock(self, value: str) -> AsyncIterator[None]:
        held = self._store.lock(value)
        try:
            await held.__aenter__()
        except BaseException:
            self._metrics.store("lock", True)
            raise
        self._metrics.store("lock", False)
        try:
            yield
        except BaseException as e:
            if not await held.__aexit__(type(e), e, e.__traceback__):
                raise
        else:
            await held.__aexit__(None, None, None)

    async def check(self) -> None:
        await self._count("check", self._store.check())


class MetricsResource(Resource):
    """Every path answers the exposition text, as oauth2-proxy's metrics listener does."""

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        Resource.__init__(self)
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return self._metrics.exposition()

    render_HEAD = render_GET
