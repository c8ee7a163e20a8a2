"""How a session becomes the plaintext a store seals, and back, and the log lines of a
cookie value that does not open or decode (shared by every store)."""

from __future__ import annotations

import hashlib
import json
import zlib
from typing import Any

from twisted.logger import Logger

from oauthgate.session import Session
from oauthgate.sessions.crypto import Sealer

__all__ = [
    "decode_logged",
    "decode_session",
    "encode_session",
    "fingerprint",
    "log_unopened",
    "open_logged",
]

# Plaintext layout: one marker byte, then the JSON of Session.to_dict(), raw or deflated.
#
# Compression pays off despite tokens being base64: measured on a typical OIDC session
# (RS256 access and id tokens from the same IdP plus a refresh token, 2212 bytes of JSON)
# zlib gives 1259 bytes (-43%: the two JWTs repeat header and claims, and base64 text
# carries only 6 bits per byte); a session with one JWT and opaque tokens still shrinks by
# about 24%. That keeps sessions under the 4 KB split point and every request smaller.
# It costs ~15 µs per save (logins and refreshes only) and ~5 µs per load. Length leaks
# through compression (CRIME) need attacker-chosen text next to a secret in many
# observed values; a session holds one user's IdP-issued claims and tokens only.
_RAW = b"{"  # the JSON itself starts with "{"
_DEFLATED = b"z"
_COMPRESS_ABOVE = 256  # bytes of JSON; smaller sessions do not get smaller
_MAX_INFLATED = 1024 * 1024


def encode_session(session: Session) -> bytes:
    """Compact JSON of the session, deflated (a "z" prefix) when that makes it smaller."""
    data = json.dumps(session.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()
    if len(data) > _COMPRESS_ABOVE:
        deflated = zlib.compress(data, 6)
        if len(deflated) + 1 < len(data):
            return _DEFLATED + deflated
    return data


def decode_session(plain: bytes) -> Session:
    """Raises ValueError for anything that is not an encoded session."""
    if plain[:1] == _DEFLATED:
        inflater = zlib.decompressobj()
        try:
            plain = inflater.decompress(plain[1:], _MAX_INFLATED)
        except zlib.error as e:
            raise ValueError(f"bad deflate data: {e}") from None
        if inflater.unconsumed_tail or not inflater.eof:
            raise ValueError("deflate data too large or truncated")
    elif plain[:1] != _RAW:
        raise ValueError("unknown session encoding")
    data: Any = json.loads(plain)
    return Session.from_dict(data)


def fingerprint(value: str) -> str:
    """A short, non-reversible tag to correlate log lines about one cookie value."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def open_logged(
    sealer: Sealer, value: str, purpose: str, max_age: float, now: float, log: Logger
) -> tuple[int, bytes] | None:
    """:meth:`Sealer.open_dated` of a session cookie ``value``; a value that does not open
    is logged (a warning naming its :func:`fingerprint`, never the value)."""
    opened = sealer.open_dated(value, purpose, max_age, now)
    if opened is None:
        log_unopened(value, log)
    return opened


def log_unopened(value: str, log: Logger) -> None:
    """The warning of :func:`open_logged` for ``value``."""
    log.warn(
        "Session cookie {fingerprint} does not open (expired, tampered or sealed "
        "under another secret)",
        fingerprint=fingerprint(value),
    )


def decode_logged(plain: bytes, log: Logger, message: str, tag: str) -> Session | None:
    """:func:`decode_session`, or None after a warning ``message`` (with ``tag`` as
    ``{fingerprint}`` and the error's type as ``{reason}``)."""
    try:
        return decode_session(plain)
    except (ValueError, TypeError, RecursionError) as e:
        log.warn(message, fingerprint=tag, reason=type(e).__name__)
        return None
