"""The HTTP site: Twisted's ``Site`` with oauthgate's own, cheap request log.

Twisted's stock access log formats a combined-log line per request through several
layers; oauthgate emits one structured ``twisted.logger`` event instead, and skips it
entirely for excluded paths.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from twisted.logger import Logger
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

__all__ = ["GateSite"]


class GateSite(Site):
    """A Site whose access log is one event per request: client, user, method, path,
    status, size and duration. Never logs the query string (it may carry codes) or
    any header."""

    noisy = False
    displayTracebacks = False
    request_log = Logger(namespace="oauthgate.request")

    def __init__(
        self,
        resource: IResource,
        *,
        enabled: bool = True,
        exclude_paths: Iterable[str] = (),
        client_ip: object = None,
    ) -> None:
        Site.__init__(self, resource)
        self._enabled = enabled
        self._exclude = frozenset(p.encode("utf-8") for p in exclude_paths)
        self._client_ip = client_ip

    def log(self, request: Request) -> None:  # type: ignore[override]
        if not self._enabled or request.path in self._exclude:
            return
        started = getattr(request, "oauthgate_started", None)
        duration = time.monotonic() - started if started is not None else 0.0
        peer = request.getClientAddress()
        client = (
            self._client_ip(request) if callable(self._client_ip) else getattr(peer, "host", "-")
        )
        self.request_log.info(
            "{client} - {user} {method} {path} {status} {size} {duration:.3f}s",
            client=client or "-",
            user=getattr(request, "oauthgate_user", "") or "-",
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("utf-8", "replace"),
            status=request.code,
            size=request.sentLength,
            duration=duration,
            log_category="request",
        )
