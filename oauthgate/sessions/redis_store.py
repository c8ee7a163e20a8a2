"""The Redis session store: the cookie carries a ticket, Redis the sealed session.

A ticket is a random 16-byte id and a random 32-byte secret. The cookie value is the
ticket sealed with the cookie secret (purpose ``ticket:<cookie name>``), so a cookie that
was not issued by an instance sharing the cookie secret, or was altered, never reaches
Redis. The session is stored under ``<cookie name>-<id as hex>``, sealed (AES-256-GCM,
:class:`~oauthgate.sessions.crypto.Sealer`) with a key derived from the ticket's secret
and bound to that key name: Redis never holds the secret, so a dump of Redis (or a
replica, or a backup) cannot be turned into sessions, and values cannot be swapped
between keys. Sign-out deletes the key, which ends the session for every copy of the
cookie on every instance at once.

Refreshes take a lock in Redis (``<key>.lock``, ``SET NX PX`` with a random token,
released by compare-and-delete, renewed while held), so N instances refresh one
session once; a lock left by a crashed instance expires after :data:`LOCK_TTL` seconds.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from oauthgate.errors import StoreUnavailable
from oauthgate.interfaces import ISessionStore
from oauthgate.memo import MAX_ENTRIES, Memo, session_weight
from oauthgate.session import Session
from oauthgate.sessions.crypto import Sealer, is_fresh
from oauthgate.sessions.encoding import (
    decode_logged,
    encode_session,
    log_unopened,
    open_logged,
)
from oauthgate.sessions.redis_client import RedisClient, client_from_config

if TYPE_CHECKING:
    from oauthgate.config.options import Config

__all__ = [
    "DEFAULT_TTL",
    "LOCK_RETRY",
    "LOCK_TTL",
    "LOCK_WAIT",
    "RedisSessionStore",
    "Ticket",
]

#: How long Redis keeps a session when neither cookie_expire nor redis_expiration is set.
DEFAULT_TTL = 168 * 3600.0
#: Seconds a refresh lock lives unless renewed (it is renewed every third of it while held).
LOCK_TTL = 10.0
#: Seconds a refresh waits for another instance's lock before giving up (503 for now).
LOCK_WAIT = 5.0
#: Seconds between two attempts to take a held lock.
LOCK_RETRY = 0.05

_ID_SIZE = 16
_SECRET_SIZE = 32

# Compare-and-delete and compare-and-extend: only the holder's token touches the lock.
RELEASE_SCRIPT = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('del', KEYS[1]) else return 0 end"
)
RENEW_SCRIPT = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)


@attrs.frozen
class Ticket:
    """What the cookie carries: the session's id (its Redis key) and the secret its value
    is sealed with. Never logged; :attr:`fingerprint` correlates log lines."""

    id: bytes = attrs.field(repr=False)
    secret: bytes = attrs.field(repr=False)

    @classmethod
    def new(cls, random: Callable[[int], bytes]) -> Ticket:
        ticket = cls(random(_ID_SIZE), random(_SECRET_SIZE))
        if len(ticket.id) != _ID_SIZE or len(ticket.secret) != _SECRET_SIZE:
            raise ValueError("random source returned the wrong number of bytes")
        return ticket

    @classmethod
    def from_bytes(cls, raw: bytes) -> Ticket | None:
        if len(raw) != _ID_SIZE + _SECRET_SIZE:
            return None
        return cls(raw[:_ID_SIZE], raw[_ID_SIZE:])

    def to_bytes(self) -> bytes:
        return self.id + self.secret

    def key(self, cookie_name: str) -> str:
        """The Redis key of the session: ``<cookie name>-<id hex>``."""
        return f"{cookie_name}-{self.id.hex()}"

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.id).hexdigest()[:12]


class _Opened:
    """A cookie value that opened: its ticket, with what every request needs of it.

    Only what the cookie value determines is kept, and the last Redis value seen for the
    ticket with the session it opened to (Redis is still asked on every request)."""

    __slots__ = ("issued_at", "key", "last", "sealer", "ticket")

    def __init__(self, issued_at: int, ticket: Ticket, key: str, sealer: Sealer) -> None:
        self.issued_at = issued_at
        self.ticket = ticket
        self.key = key
        self.sealer = sealer
        #: (stored value as Redis returned it, its issue time, its session)
        self.last: tuple[object, int, Session] | None = None


@implementer(ISessionStore)
class RedisSessionStore:
    """Sessions in Redis (standalone, Sentinel or Cluster), shared by every instance that
    has the same cookie secret and cookie name.

    Security: see the module docstring. Values that do not open, or whose session is gone
    from Redis (expired, signed out), load as None. A Redis failure is StoreUnavailable
    (a 503 page; nobody is logged out). ``minimal`` also keeps tokens out of Redis.

    Entries live ``max(lifetime, expiration)`` seconds from their last save
    (:data:`DEFAULT_TTL` when both are 0); the ticket in the cookie is checked against
    ``lifetime`` (the cookie's own age limit; 0: none) like the cookie store's values.

    Speed: opened tickets are remembered (a bounded
    :class:`~oauthgate.memo.Memo` of ``memo_entries``) with the key derived
    from their secret, and the session the last Redis value of each opened to. Every
    load still asks Redis (a sign-out anywhere ends the session at once) and re-checks
    the ticket's age; only when Redis returns exactly the value that opened before is
    its session reused instead of opening and decoding it again.
    """

    log = Logger()

    def __init__(
        self,
        client: RedisClient,
        sealer: Sealer,
        clock: IReactorTime,
        *,
        cookie_name: str,
        lifetime: float,
        expiration: float = 0.0,
        minimal: bool = False,
        random: Callable[[int], bytes] = os.urandom,
        lock_ttl: float = LOCK_TTL,
        lock_wait: float = LOCK_WAIT,
        lock_retry: float = LOCK_RETRY,
        memo_entries: int = MAX_ENTRIES,
    ) -> None:
        self.client = client
        self._sealer = sealer
        self._clock = clock
        self._cookie_name = cookie_name
        self._purpose = f"ticket:{cookie_name}"
        self._lifetime = lifetime
        self.ttl = max(lifetime, expiration) or DEFAULT_TTL
        self._minimal = minimal
        self._random = random
        self._lock_ttl = lock_ttl
        self._lock_wait = lock_wait
        self._lock_retry = lock_retry
        self._running = False
        self._memo: Memo[str, _Opened] = Memo(memo_entries)

    @classmethod
    def from_config(
        cls,
        config: Config,
        sealer: Sealer,
        reactor: Any,
        *,
        random: Callable[[int], bytes] = os.urandom,
    ) -> RedisSessionStore:
        """The store the ``redis_*`` options describe; it connects when started."""
        return cls(
            client_from_config(config, reactor),
            sealer,
            reactor,
            cookie_name=config.cookie_name,
            lifetime=config.cookie_expire,
            expiration=config.redis_expiration,
            minimal=config.session_cookie_minimal,
            random=random,
        )

    # --- lifecycle (called by the service) ----------------------------------------

    def start(self) -> None:
        """Connect; a Redis that is not reachable yet is logged, and retried."""
        self._running = True
        self.client.start()
        d = Deferred.fromCoroutine(self.check())
        d.addCallbacks(self._reachable, self._unreachable)

    def _reachable(self, _: object) -> None:
        self.log.info("Redis session store is reachable")

    def _unreachable(self, failure: Failure) -> None:
        if self._running:
            self.log.error(
                "Redis session store is not reachable yet ({error}); retrying",
                error=failure.getErrorMessage(),
            )

    def stop(self) -> Deferred[None]:
        self._running = False
        return self.client.stop()

    # --- ISessionStore -----------------------------------------------------------

    async def save(self, session: Session, previous: str | None = None) -> str:
        """Store ``session`` and return its cookie value. With ``previous`` (the request's
        value) the same ticket is reused, but only if its entry still exists: a session
        signed out meanwhile is not brought back."""
        if self._minimal:
            session = session.without_tokens()
        opened = self._opened(previous) if previous else None
        reuse = opened is not None
        if opened is not None:
            ticket, key, sealer = opened.ticket, opened.key, opened.sealer
        else:
            ticket = Ticket.new(self._random)
            key = ticket.key(self._cookie_name)
            sealer = Sealer(ticket.secret, random=self._random)
        now = self._clock.seconds()
        value = sealer.seal(encode_session(session), key, now)
        args: list[str | int] = ["SET", key, value, "PX", int(self.ttl * 1000)]
        if reuse:
            args.append("XX")
        written = await self.client.execute(*args)
        if written is None:
            self.log.info(
                "Session {fingerprint} was signed out while being saved; not restored",
                fingerprint=ticket.fingerprint,
            )
        return self._sealer.seal(ticket.to_bytes(), self._purpose, now)

    async def load(self, value: str) -> Session | None:
        """The session behind ``value``; None if the ticket does not open, or its session
        is gone from Redis or does not open. Raises StoreUnavailable if Redis fails."""
        opened = self._opened(value)
        if opened is None:
            return None
        key = opened.key
        stored = await self.client.execute("GET", key)
        if stored is None:
            self.log.info(
                "Session {fingerprint} is not in Redis (expired or signed out)",
                fingerprint=opened.ticket.fingerprint,
            )
            return None
        now = self._clock.seconds()
        last = opened.last
        # The same value opens to the same session, as long as its issue time is no
        # further ahead of the clock than an open allows (max_age 0, as below).
        if last is not None and last[0] == stored and is_fresh(last[1], 0, now):
            return last[2]
        text = stored.decode("ascii", "replace") if isinstance(stored, bytes) else str(stored)
        dated = opened.sealer.open_dated(text, key, 0, now)
        if dated is None:
            self.log.warn(
                "Session {fingerprint} in Redis does not open with its ticket",
                fingerprint=opened.ticket.fingerprint,
            )
            return None
        session = decode_logged(
            dated[1],
            self.log,
            "Session {fingerprint} in Redis is malformed: {reason}",
            opened.ticket.fingerprint,
        )
        if session is None:
            return None
        opened.last = (stored, dated[0], session)  # Session is frozen: safe to share
        self._memo.put(value, opened, _weight(value, opened) + len(text) + session_weight(session))
        return session

    async def clear(self, value: str) -> None:
        """Delete the session behind ``value`` from Redis (every copy of the cookie stops
        working). Nothing happens for a value that does not open."""
        opened = self._opened(value)
        if opened is None:
            return
        self._memo.pop(value)
        await self.client.execute("DEL", opened.key)
        self.log.info("Session {fingerprint} deleted", fingerprint=opened.ticket.fingerprint)

    def lock(self, value: str) -> AbstractAsyncContextManager[None]:
        """A lock in Redis on the session behind ``value``, held across instances.

        Entering waits up to ``lock_wait`` seconds for another holder, then raises
        StoreUnavailable; a value that does not open gets no lock (nothing to refresh).
        """
        opened = self._opened(value)
        return _RedisLock(self, None if opened is None else opened.ticket)

    async def check(self) -> None:
        """PING (every master of a cluster); raises StoreUnavailable if Redis fails."""
        await self.client.ping()

    # --- internals ---------------------------------------------------------------

    def _open(self, value: str) -> Ticket | None:
        """The ticket sealed in the cookie ``value``, if it opens and is not too old."""
        opened = self._opened(value)
        return None if opened is None else opened.ticket

    def _opened(self, value: str) -> _Opened | None:
        """:meth:`_open`, with what every request needs of the ticket."""
        now = self._clock.seconds()
        known = self._memo.get(value)
        if known is not None and is_fresh(known.issued_at, self._lifetime, now):
            return known
        # Not seen, or too old now: the full check (which refuses and logs an old value).
        dated = open_logged(self._sealer, value, self._purpose, self._lifetime, now, self.log)
        if dated is None:
            return None
        ticket = Ticket.from_bytes(dated[1])
        if ticket is None:
            log_unopened(value, self.log)
            return None
        opened = _Opened(
            dated[0],
            ticket,
            ticket.key(self._cookie_name),
            Sealer(ticket.secret, random=self._random),
        )
        self._memo.put(value, opened, _weight(value, opened))
        return opened

    def _lock_key(self, ticket: Ticket) -> str:
        return ticket.key(self._cookie_name) + ".lock"

    def _token(self) -> str:
        return self._random(16).hex()


def _weight(value: str, opened: _Opened) -> int:
    """About the bytes an opened ticket keeps (its Redis value and session: added)."""
    return 2 * len(value) + len(opened.key) + 1024  # the cipher context, mostly


class _RedisLock(AbstractAsyncContextManager[None]):
    def __init__(self, store: RedisSessionStore, ticket: Ticket | None) -> None:
        self._store = store
        self._ticket = ticket
        self._token = ""
        self._renewal: LoopingCall | None = None

    async def __aenter__(self) -> None:
        if self._ticket is None:
            return
        store = self._store
        clock = store._clock
        key = store._lock_key(self._ticket)
        token = store._token()
        ttl_ms = int(store._lock_ttl * 1000)
        deadline = clock.seconds() + store._lock_wait
        while True:
            taken = await store.client.execute("SET", key, token, "NX", "PX", ttl_ms)
            if taken is not None:
                break
            if clock.seconds() >= deadline:
                store.log.warn(
                    "Session {fingerprint} stayed locked by another refresh for {wait}s",
                    fingerprint=self._ticket.fingerprint,
                    wait=store._lock_wait,
                )
                raise StoreUnavailable("the session is being refreshed elsewhere; try again")
            await deferLater(clock, store._lock_retry, lambda: None)
        self._token = token
        renewal = LoopingCall(self._renew, key, token, ttl_ms)
        renewal.clock = clock
        renewal.start(store._lock_ttl / 3, now=False).addErrback(lambda _: None)
        self._renewal = renewal

    def _renew(self, key: str, token: str, ttl_ms: int) -> Deferred[None]:
        async def renew() -> None:
            try:
                kept = await self._store.client.execute("EVAL", RENEW_SCRIPT, 1, key, token, ttl_ms)
            except StoreUnavailable as e:
                self._store.log.warn("Cannot renew a refresh lock: {error}", error=str(e))
                return
            if not kept:
                self._store.log.warn("A refresh lock expired while held")

        return Deferred.fromCoroutine(renew())

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        renewal, self._renewal = self._renewal, None
        if renewal is not None and renewal.running:
            renewal.stop()
        if self._ticket is None or not self._token:
            return
        key = self._store._lock_key(self._ticket)
        try:
            await self._store.client.execute("EVAL", RELEASE_SCRIPT, 1, key, self._token)
        except StoreUnavailable as e:
            # It expires by itself within LOCK_TTL seconds.
            self._store.log.warn("Cannot release a refresh lock: {error}", error=str(e))
