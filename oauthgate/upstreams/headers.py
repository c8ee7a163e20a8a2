"""Header rules of a reverse proxy: what never crosses a hop, and the X-Forwarded-* headers.

Pure functions over :class:`twisted.web.http_headers.Headers`, so the gate, the HTTP
upstream and forward-auth answer with the same rules. Names are compared
case-insensitively; functions that return ``Headers`` return a new object and leave
their argument alone, functions that return None change the ``headers`` they are given.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

from twisted.web.http_headers import Headers

__all__ = [
    "HOP_BY_HOP",
    "add_forwarded_headers",
    "connection_tokens",
    "forwarded_for",
    "replace_headers",
    "strip_hop_by_hop",
]

HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
"""Lower-case names of the headers that describe one connection (RFC 9110 §7.6.1) and so
are never copied from one side of the proxy to the other, in either direction."""


def connection_tokens(headers: Headers) -> frozenset[bytes]:
    """The lower-case header names listed in ``Connection`` (also hop-by-hop by definition)."""
    values = headers.getRawHeaders(b"Connection")
    if not values:
        return frozenset()
    return frozenset(
        token.strip().lower() for value in values for token in value.split(b",") if token.strip()
    )


def strip_hop_by_hop(headers: Headers, *, also: Iterable[bytes] = ()) -> Headers:
    """A copy of ``headers`` without hop-by-hop headers, those named by ``Connection``, and
    the lower-case names in ``also``."""
    drop = _always_dropped(also if isinstance(also, tuple | frozenset) else tuple(also))
    tokens = connection_tokens(headers)
    if tokens:
        drop = drop | tokens
    kept = Headers()
    for name, values in headers.getAllRawHeaders():
        if name.lower() not in drop:
            kept.setRawHeaders(name, values)
    return kept


@functools.lru_cache(maxsize=16)
def _always_dropped(also: tuple[bytes, ...] | frozenset[bytes]) -> frozenset[bytes]:
    # The callers pass a few constant tuples: the union is made once per tuple.
    return HOP_BY_HOP | frozenset(also)


def forwarded_for(previous: Sequence[bytes] | None, client_ip: str | None) -> bytes | None:
    """The ``X-Forwarded-For`` value to send: the incoming list with ``client_ip`` appended.

    None when there is nothing to send (no previous value and no known client address).
    """
    parts = [value for value in previous or () if value.strip()]
    if client_ip:
        parts.append(client_ip.encode("ascii", "replace"))
    if not parts:
        return None
    return b", ".join(parts)


def add_forwarded_headers(
    headers: Headers,
    *,
    client_ip: str | None,
    secure: bool,
    host: bytes | None,
    uri: bytes | None = None,
) -> None:
    """Set the X-Forwarded-* headers in ``headers`` (changed in place).

    ``X-Forwarded-For`` gets ``client_ip`` appended; ``X-Forwarded-Proto`` (from ``secure``),
    ``X-Forwarded-Host`` (the client's ``host``) and ``X-Forwarded-Uri`` (the request URI
    as the client sent it, before any rewrite) are added only when not already present, so
    a value set by a proxy in front is kept. The gate decides beforehand whether such
    incoming values may be trusted and removes them if not.
    """
    value = forwarded_for(headers.getRawHeaders(b"X-Forwarded-For"), client_ip)
    if value is not None:
        headers.setRawHeaders(b"X-Forwarded-For", [value])
    if not headers.hasHeader(b"X-Forwarded-Proto"):
        headers.setRawHeaders(b"X-Forwarded-Proto", [b"https" if secure else b"http"])
    if host and not headers.hasHeader(b"X-Forwarded-Host"):
        headers.setRawHeaders(b"X-Forwarded-Host", [host])
    if uri and not headers.hasHeader(b"X-Forwarded-Uri"):
        headers.setRawHeaders(b"X-Forwarded-Uri", [uri])


def replace_headers(headers: Headers, replacements: Sequence[tuple[bytes, bytes]]) -> None:
    """Put ``replacements`` into ``headers`` (changed in place): every name they use loses its
    existing values first, so a client can never add to an injected identity header; a
    name given several times keeps all its values, in order."""
    for name in {name.lower() for name, _ in replacements}:
        headers.removeHeader(name)
    for name, value in replacements:
        headers.addRawHeader(name, value)
