"""A bounded memo (oldest out first), for the work repeated on every request of a session.

A browser sends the same cookie value on every request: the session stores remember what
opening it gave (after the AES-GCM open and the decoding succeeded) so the next request
skips both. Only what opened is remembered, so a forged or altered value is never found
there; each store re-checks what depends on the clock (the cookie's age limit) on every
hit. The gate and the email authorizer remember what they derive from a session the same
way. Every memo is bounded, so no client can make one grow without limit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from oauthgate.session import Session

__all__ = ["MAX_ENTRIES", "MAX_WEIGHT", "Memo", "session_weight"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: Entries a memo keeps by default: far more sessions than one process serves at once,
#: so a busy instance keeps them all.
MAX_ENTRIES = 10_000
#: Approximate bytes a memo may hold by default (keys and values together).
MAX_WEIGHT = 32 * 1024 * 1024


class Memo(Generic[K, V]):
    """At most ``max_entries`` entries and ``max_weight`` units of weight (the caller's
    estimate of an entry's bytes); the oldest entries go first.

    Oldest, not least recently used: a hit costs one dictionary lookup and nothing
    else, and an entry that still matters when it is dropped is simply made again
    (one open) and kept for another round.

    Not thread-safe (the reactor thread only), and values are shared between the callers
    that find them: store immutable values only.
    """

    __slots__ = ("_entries", "_max_entries", "_max_weight", "_weights", "get", "weight")

    def __init__(self, max_entries: int = MAX_ENTRIES, max_weight: int = MAX_WEIGHT) -> None:
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._weights: dict[K, int] = {}
        self._max_entries = max_entries
        self._max_weight = max_weight
        #: The summed weight of the entries held now.
        self.weight = 0
        #: The value remembered for a key, or None.
        self.get: Callable[[K], V | None] = self._entries.get

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: K, value: V, weight: int = 0) -> None:
        """Remember ``value`` for ``key`` (as the newest entry), forgetting the oldest
        entries beyond the bounds. An entry heavier than the whole budget is not kept."""
        self.pop(key)
        if weight > self._max_weight or self._max_entries <= 0:
            return
        entries = self._entries
        entries[key] = value
        self._weights[key] = weight
        self.weight += weight
        while len(entries) > self._max_entries or self.weight > self._max_weight:
            oldest, _ = entries.popitem(last=False)
            self.weight -= self._weights.pop(oldest)

    def pop(self, key: K) -> V | None:
        """Forget ``key``; its value, or None."""
        if key not in self._entries:
            return None
        self.weight -= self._weights.pop(key)
        return self._entries.pop(key)

    def clear(self) -> None:
        self._entries.clear()
        self._weights.clear()
        self.weight = 0


def session_weight(session: Session) -> int:
    """About the bytes a remembered session keeps alive (its tokens, mostly)."""
    return (
        len(session.access_token)
        + len(session.id_token)
        + len(session.refresh_token)
        + len(session.email)
        + len(session.user)
        + 32 * len(session.groups)
        + 512
    )
