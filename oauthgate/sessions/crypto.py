"""Sealing: authenticated encryption of cookie payloads under the cookie secret."""

from __future__ import annotations

import base64
import binascii

__all__ = ["decode_secret"]

VALID_SECRET_LENGTHS = (16, 24, 32)


def decode_secret(text: str) -> bytes:
    """The secret bytes of ``--cookie-secret``, as oauth2-proxy reads them.

    A value that decodes as base64 (URL or standard alphabet, padding optional) to 16, 24
    or 32 bytes is used decoded; anything else is used as its raw UTF-8 bytes. The caller
    checks the length is one of :data:`VALID_SECRET_LENGTHS`.
    """
    stripped = text.rstrip("=")
    padded = stripped + "=" * (-len(stripped) % 4)
    for alphabet in (b"-_", b"+/"):
        try:
            decoded = base64.b64decode(padded.encode("ascii"), altchars=alphabet, validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            continue
        if len(decoded) in VALID_SECRET_LENGTHS:
            return decoded
    return text.encode("utf-8")
