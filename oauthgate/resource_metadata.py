"""OAuth 2.0 Protected Resource Metadata (RFC 9728) and the ``WWW-Authenticate`` that points to it.

An API client (an MCP client, say) that is refused with 401 reads
``WWW-Authenticate: Bearer resource_metadata="<url>"``, fetches that document and
learns which authorization server issues tokens for this resource.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "WELL_KNOWN_PATH",
    "metadata_url",
    "protected_resource_metadata",
    "quoted_string",
    "www_authenticate",
]

WELL_KNOWN_PATH = "/.well-known/oauth-protected-resource"

# RFC 6750 §3: error and error_description values are limited to these characters.
_NOT_RFC6750 = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
_JWT_LIKE = re.compile(r"ey[A-Za-z0-9_-]*\.ey[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
_MAX_DESCRIPTION = 200


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def protected_resource_metadata(
    resource: str, authorization_servers: list[str], scopes: list[str]
) -> dict[str, Any]:
    """The metadata document for ``resource`` (its identifier: an https URL, no fragment).

    Empty lists are left out; bearer tokens are accepted in the ``Authorization``
    header only.
    """
    document: dict[str, Any] = {"resource": resource}
    servers = _unique(authorization_servers)
    if servers:
        document["authorization_servers"] = servers
    scopes_supported = _unique(scopes)
    if scopes_supported:
        document["scopes_supported"] = scopes_supported
    document["bearer_methods_supported"] = ["header"]
    return document


def metadata_url(resource: str) -> str:
    """Where the metadata of ``resource`` is published (RFC 9728 §3.1).

    The well-known path goes between the host and the resource's path:
    ``https://api.example.com/v1`` has its metadata at
    ``https://api.example.com/.well-known/oauth-protected-resource/v1``.
    """
    parts = urlsplit(resource)
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, WELL_KNOWN_PATH + path, parts.query, ""))


def quoted_string(value: str) -> str:
    """``value`` as an HTTP quoted-string (RFC 9110 §5.6.4).

    ``"`` and ``\\`` are escaped; control characters (CR and LF included, so no header
    can be injected) and non-ASCII characters, which a header cannot carry as text,
    become ``?``.
    """
    out = []
    for c in value:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\t" or " " <= c <= "~":
            out.append(c)
        else:
            out.append("?")
    return '"' + "".join(out) + '"'


def _rfc6750_text(value: str, limit: int) -> str:
    text = _JWT_LIKE.sub("[token]", value)  # never echo a token, whoever wrote the text
    return _NOT_RFC6750.sub("?", text.replace('"', "'").replace("\\", "/"))[:limit]


def www_authenticate(
    resource_metadata_url: str, *, error: str | None, description: str | None
) -> bytes:
    """A ``WWW-Authenticate`` value for a refused (or missing) bearer token.

    ``error`` None (the request had no credentials, RFC 6750 §3.1) gives just the
    challenge with ``resource_metadata``; otherwise ``error`` (``invalid_token``,
    ``insufficient_scope``...) and, when given, ``error_description``. Values are
    reduced to the characters RFC 6750 allows there, the description is cut at 200
    characters, and anything shaped like a JWT in it is replaced by ``[token]``.
    """
    params = [f"resource_metadata={quoted_string(resource_metadata_url)}"]
    if error:
        params.append(f'error="{_rfc6750_text(error, 64)}"')
        if description:
            params.append(f'error_description="{_rfc6750_text(description, _MAX_DESCRIPTION)}"')
    return ("Bearer " + ", ".join(params)).encode("ascii")
