"""The Session value: the one thing that crosses between providers, stores and the gate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["Session"]


def _groups(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


@attrs.frozen(cache_hash=True)
class Session:
    """Who a request is, as established by a login, a bearer token or basic auth.

    Immutable: derive variants with ``attrs.evolve``. Tokens are secrets; they are
    excluded from ``repr`` so a session never leaks them into a log or traceback.
    Times are POSIX seconds from the injected clock. Hashable (the hash is computed
    once), so what is derived from a session can be remembered by it.
    """

    user: str = ""
    email: str = ""
    groups: tuple[str, ...] = attrs.field(default=(), converter=_groups)
    preferred_username: str = ""
    access_token: str = attrs.field(default="", repr=False)
    id_token: str = attrs.field(default="", repr=False)
    refresh_token: str = attrs.field(default="", repr=False)
    created_at: float = 0.0
    expires_on: float | None = None
    provider: str = ""

    def is_expired(self, now: float) -> bool:
        """True once the access token's expiry (if known) has passed."""
        return self.expires_on is not None and self.expires_on <= now

    def age(self, now: float) -> float:
        """Seconds since the session was created or last refreshed."""
        return now - self.created_at

    def without_tokens(self) -> Session:
        """The same identity with no tokens (``--session-cookie-minimal``)."""
        return attrs.evolve(self, access_token="", id_token="", refresh_token="")

    def to_dict(self) -> dict[str, Any]:
        """A compact JSON-ready form; empty fields are left out to keep cookies small."""
        out: dict[str, Any] = {}
        for key, name in _KEYS.items():
            value = getattr(self, name)
            if value not in ("", (), None):
                out[key] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Session:
        """Inverse of :meth:`to_dict`. Raises ``ValueError`` on a malformed mapping."""
        if not isinstance(data, Mapping):
            raise ValueError("session data is not a mapping")
        kwargs: dict[str, Any] = {}
        for key, name in _KEYS.items():
            if key in data:
                kwargs[name] = data[key]
        try:
            session = cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(f"malformed session data: {e}") from None
        for name in (
            "user",
            "email",
            "preferred_username",
            "access_token",
            "id_token",
            "refresh_token",
            "provider",
        ):
            if not isinstance(getattr(session, name), str):
                raise ValueError(f"malformed session data: {name} is not a string")
        if not isinstance(session.created_at, int | float):
            raise ValueError("malformed session data: created_at is not a number")
        if session.expires_on is not None and not isinstance(session.expires_on, int | float):
            raise ValueError("malformed session data: expires_on is not a number")
        return session


_KEYS = {
    "u": "user",
    "e": "email",
    "g": "groups",
    "pu": "preferred_username",
    "at": "access_token",
    "it": "id_token",
    "rt": "refresh_token",
    "ca": "created_at",
    "eo": "expires_on",
    "p": "provider",
}
