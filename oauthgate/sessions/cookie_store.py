"""The cookie session store: the whole session, sealed, is the cookie value."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from types import TracebackType

from twisted.internet.defer import DeferredLock
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from oauthgate.interfaces import ISessionStore
from oauthgate.memo import MAX_ENTRIES, Memo, session_weight
from oauthgate.session import Session
from oauthgate.sessions.crypto import Sealer, is_fresh
from oauthgate.sessions.encoding import decode_logged, encode_session, fingerprint, open_logged

__all__ = ["CookieSessionStore"]


class _RefreshLock(AbstractAsyncContextManager[None]):
    """Holds the in-process lock of one cookie value; forgets it once nobody holds it."""

    def __init__(self, locks: dict[str, DeferredLock], value: str) -> None:
        self._locks = locks
        self._value = value
        self._lock: DeferredLock | None = None

    async def __aenter__(self) -> None:
        lock = self._locks.get(self._value)
        if lock is None:
            lock = self._locks[self._value] = DeferredLock()
        await lock.acquire()
        self._lock = lock

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lock, self._lock = self._lock, None
        if lock is None:
            return
        lock.release()  # hands the lock to the next waiter, if any
        if not lock.locked and self._locks.get(self._value) is lock:
            del self._locks[self._value]


@implementer(ISessionStore)
class CookieSessionStore:
    """Keeps the whole session in the cookie, sealed with the cookie secret.

    Security: values are sealed (:class:`~oauthgate.sessions.crypto.Sealer`) for
    ``purpose`` (the cookie name), so they are confidential and unforgeable, and one
    sealed for another purpose or older than ``lifetime`` seconds (0: no limit) loads as
    None. Sessions cannot be revoked server-side: clearing expires only the cookie.
    ``minimal`` keeps the tokens out of the cookie (``--session-cookie-minimal``).

    Speed: the sessions of values that opened are remembered (a bounded
    :class:`~oauthgate.memo.Memo` of ``memo_entries``), so a browser's next
    request skips the AES-GCM open and the decoding. A value is found there only if it
    is the exact text that opened before; its age is checked against ``lifetime`` on
    every request, as :meth:`Sealer.open` checks it.
    """

    log = Logger()

    def __init__(
        self,
        sealer: Sealer,
        clock: IReactorTime,
        *,
        purpose: str,
        lifetime: float,
        minimal: bool = False,
        memo_entries: int = MAX_ENTRIES,
    ) -> None:
        self._sealer = sealer
        self._clock = clock
        self._purpose = purpose
        self._lifetime = lifetime
        self._minimal = minimal
        self._locks: dict[str, DeferredLock] = {}
        # value -> (issue time, session) of values that opened and decoded.
        self._memo: Memo[str, tuple[int, Session]] = Memo(memo_entries)

    async def save(self, session: Session, previous: str | None = None) -> str:
        """The sealed cookie value of ``session`` (``previous`` is not needed)."""
        if self._minimal:
            session = session.without_tokens()
        return self._sealer.seal(encode_session(session), self._purpose, self._clock.seconds())

    async def load(self, value: str) -> Session | None:
        """The session sealed in ``value``; None if it does not open, expired or is malformed."""
        now = self._clock.seconds()
        known = self._memo.get(value)
        if known is not None and is_fresh(known[0], self._lifetime, now):
            return known[1]
        # Not seen, or too old now: the full check (which refuses and logs an old value).
        opened = open_logged(self._sealer, value, self._purpose, self._lifetime, now, self.log)
        if opened is None:
            return None
        issued_at, plain = opened
        session = decode_logged(
            plain,
            self.log,
            "Session cookie {fingerprint} opened but is malformed: {reason}",
            fingerprint(value),
        )
        if session is None:
            return None
        # Session is frozen: sharing it between requests is safe.
        self._memo.put(value, (issued_at, session), len(value) + session_weight(session))
        return session

    async def clear(self, value: str) -> None:
        """Nothing to forget: the gate expires the cookie."""

    def lock(self, value: str) -> AbstractAsyncContextManager[None]:
        """Single-flight refresh within this process for the session behind ``value``."""
        return _RefreshLock(self._locks, value)

    async def check(self) -> None:
        """Always ready: the store needs nothing but the secret."""
