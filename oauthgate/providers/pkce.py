"""PKCE (RFC 7636): the code verifier a login keeps and the challenge it sends."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

__all__ = ["METHODS", "challenge", "make_verifier"]

METHODS = ("S256", "plain")

_VERIFIER_BYTES = 96  # 128 base64url characters, the longest verifier RFC 7636 allows


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_verifier(random: Callable[[int], bytes]) -> str:
    """A fresh code verifier: base64url (no padding) of 96 bytes from ``random`` (128 chars).

    ``random`` must be a cryptographically secure source such as ``os.urandom``; the
    verifier is a secret until the code is redeemed.
    """
    return _b64url(random(_VERIFIER_BYTES))


def challenge(verifier: str, method: str) -> str:
    """The ``code_challenge`` for ``verifier``: base64url(SHA-256) for S256, itself for plain.

    Raises:
        ValueError: for a method other than ``S256`` or ``plain``.
    """
    if method == "S256":
        return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())
    if method == "plain":
        return verifier
    raise ValueError(f"unknown PKCE code challenge method {method!r}: use S256 or plain")
