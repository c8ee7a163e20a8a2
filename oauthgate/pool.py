"""Keep-alive connection pools for the identity providers' HTTP client (upstreams have
their own client, :mod:`oauthgate.upstreams.client`)."""

from __future__ import annotations

from typing import Any

from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory

__all__ = ["persistent_pool"]


class _QuietFactory(_HTTP11ClientFactory):
    # Twisted logs "Starting factory ..." for every new pooled connection otherwise.
    noisy = False


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietFactory


def persistent_pool(
    reactor: Any, *, max_per_host: int = 10, idle_timeout: int = 90
) -> HTTPConnectionPool:
    """A pool that keeps up to ``max_per_host`` idle connections per host for
    ``idle_timeout`` seconds, and does not log each new connection."""
    pool: HTTPConnectionPool = _QuietPool(reactor, persistent=True)  # type: ignore[no-untyped-call]
    pool.maxPersistentPerHost = max_per_host
    pool.cachedConnectionTimeout = idle_timeout
    return pool
