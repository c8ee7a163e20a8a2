"""Tests for oauthgate.sessions.redis_store, in memory: a fake Redis on a Clock.

The same behaviour against real redis-server (standalone, Sentinel, Cluster) is in
tests/integration/test_redis_*.py.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Awaitable
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from oauthgate.errors import StoreUnavailable
from oauthgate.interfaces import ISessionStore
from oauthgate.session import Session
from oauthgate.sessions.cookie_store import CookieSessionStore
from oauthgate.sessions.crypto import Sealer
from oauthgate.sessions.redis_store import (
    DEFAULT_TTL,
    RELEASE_SCRIPT,
    RENEW_SCRIPT,
    RedisSessionStore,
)
from oauthgate.web.refresh import Refresher

T = TypeVar("T")

SECRET = b"s" * 32
COOKIE = "_oauth2_proxy"
START = 1_700_000_000.0
SESSION = Session(
    user="alice",
    email="alice@example.com",
    groups=("admins",),
    access_token="access-token-value",
    id_token="id-token-value",
    refresh_token="refresh-token-value",
    created_at=START,
    expires_on=START + 300,
    provider="oidc",
)


class FakeRedis:
    """The commands the store sends, on a Clock: GET, SET (PX, NX, XX), DEL, PING and the
    store's two lock scripts. ``down`` makes every command fail like an outage."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.data: dict[str, tuple[str, float | None]] = {}
        self.commands: list[tuple[Any, ...]] = []
        self.down = False
        self.started = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> Deferred[None]:
        self.started = False
        return succeed(None)

    def _get(self, key: str) -> str | None:
        entry = self.data.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires is not None and expires <= self.clock.seconds():
            del self.data[key]
            return None
        return value

    def live_keys(self, pattern: str = "*") -> list[str]:
        return [
            k for k in list(self.data) if self._get(k) is not None and fnmatch.fnmatch(k, pattern)
        ]

    def ttl(self, key: str) -> float | None:
        expires = self.data[key][1]
        return None if expires is None else expires - self.clock.seconds()

    async def execute(self, *args: Any) -> Any:
        self.commands.append(args)
        if self.down:
            raise StoreUnavailable("Redis at fake: ConnectionRefusedError")
        name = str(args[0]).upper()
        if name == "PING":
            return "PONG"
        if name == "GET":
            return self._get(args[1])
        if name == "DEL":
            return int(self.data.pop(args[1], None) is not None)
        if name == "SET":
            key, value, options = args[1], args[2], [str(a).upper() for a in args[3:]]
            exists = self._get(key) is not None
            if ("NX" in options and exists) or ("XX" in options and not exists):
                return None
            expires = None
            if "PX" in options:
                expires = self.clock.seconds() + int(options[options.index("PX") + 1]) / 1000
            self.data[key] = (value, expires)
            return "OK"
        if name == "EVAL":
            script, _, key, token = args[1], args[2], args[3], args[4]
            if self._get(key) != token:
                return 0
            if script == RELEASE_SCRIPT:
                del self.data[key]
                return 1
            if script == RENEW_SCRIPT:
                self.data[key] = (token, self.clock.seconds() + int(args[5]) / 1000)
                return 1
        raise AssertionError(f"unexpected command {args!r}")

    async def ping(self) -> None:
        await self.execute("PING")


class StoreTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.redis = FakeRedis(self.clock)
        self.store = self.make_store()

    def make_store(self, redis: FakeRedis | None = None, **kwargs: Any) -> RedisSessionStore:
        options: dict[str, Any] = {"cookie_name": COOKIE, "lifetime": 3600.0, **kwargs}
        return RedisSessionStore(redis or self.redis, Sealer(SECRET), self.clock, **options)

    def get(self, awaitable: Awaitable[T]) -> T:
        async def wait() -> T:
            return await awaitable

        return self.successResultOf(Deferred.fromCoroutine(wait()))

    def fails(self, awaitable: Awaitable[Any], exc: type[Exception]) -> Exception:
        async def wait() -> Any:
            return await awaitable

        failure = self.failureResultOf(Deferred.fromCoroutine(wait()), exc)
        return failure.value  # type: ignore[no-any-return]


class RedisSessionStoreTests(StoreTestCase):
    def test_it_is_a_session_store(self) -> None:
        verifyObject(ISessionStore, self.store)

    def test_a_saved_session_loads_back(self) -> None:
        value = self.get(self.store.save(SESSION))
        self.assertEqual(self.get(self.store.load(value)), SESSION)

    def test_the_cookie_carries_only_a_small_ticket(self) -> None:
        value = self.get(self.store.save(SESSION))
        self.assertLess(len(value), 130)
        for secret in ("alice", "access-token-value", "refresh-token-value"):
            self.assertNotIn(secret, value)
        (key,) = self.redis.live_keys()
        self.assertRegex(key, rf"^{COOKIE}-[0-9a-f]{{32}}$")
        self.assertNotIn(key.partition("-")[2], value)

    def test_redis_holds_nothing_that_opens_without_the_cookie(self) -> None:
        self.get(self.store.save(SESSION))
        (key,) = self.redis.live_keys()
        stored = self.redis.data[key][0]
        for secret in ("alice", "access-token-value", "refresh-token-value"):
            self.assertNotIn(secret, stored)
        for purpose in (key, COOKIE, f"ticket:{COOKIE}"):
            self.assertIsNone(Sealer(SECRET).open(stored, purpose, 0, self.clock.seconds()))

    def test_a_tampered_cookie_never_reaches_redis(self) -> None:
        value = self.get(self.store.save(SESSION))
        sent = len(self.redis.commands)
        for i in range(2, len(value)):
            flipped = value[:i] + ("A" if value[i] != "A" else "B") + value[i + 1 :]
            self.assertIsNone(self.get(self.store.load(flipped)))
        self.assertIsNone(self.get(self.store.load("")))
        self.assertEqual(len(self.redis.commands), sent)

    def test_a_cookie_store_value_is_not_a_ticket(self) -> None:
        cookie_store = CookieSessionStore(
            Sealer(SECRET), self.clock, purpose=COOKIE, lifetime=3600.0
        )
        value = self.get(cookie_store.save(SESSION))
        self.assertIsNone(self.get(self.store.load(value)))

    def test_values_swapped_between_keys_do_not_open(self) -> None:
        one = self.get(self.store.save(SESSION))
        two = self.get(self.store.save(attrs.evolve(SESSION, user="bob")))
        key_one, key_two = (self.store._open(v).key(COOKIE) for v in (one, two))  # type: ignore[union-attr]
        self.redis.data[key_one], self.redis.data[key_two] = (
            self.redis.data[key_two],
            self.redis.data[key_one],
        )
        self.assertIsNone(self.get(self.store.load(one)))
        self.assertIsNone(self.get(self.store.load(two)))

    def test_another_cookie_secret_opens_nothing(self) -> None:
        value = self.get(self.store.save(SESSION))
        other = RedisSessionStore(
            self.redis, Sealer(b"o" * 32), self.clock, cookie_name=COOKIE, lifetime=3600.0
        )
        self.assertIsNone(self.get(other.load(value)))

    def test_entries_expire_with_the_cookie(self) -> None:
        value = self.get(self.store.save(SESSION))
        (key,) = self.redis.live_keys()
        self.assertEqual(self.redis.ttl(key), 3600.0)
        self.clock.advance(3599)
        self.assertEqual(self.get(self.store.load(value)), SESSION)
        self.clock.advance(1)
        self.assertIsNone(self.get(self.store.load(value)))

    def test_redis_expiration_may_extend_the_ttl_not_shorten_it(self) -> None:
        longer = self.make_store(expiration=7200.0)
        self.get(longer.save(SESSION))
        shorter = self.make_store(expiration=60.0)
        self.get(shorter.save(SESSION))
        self.assertEqual(
            sorted(self.redis.ttl(k) for k in self.redis.live_keys()), [3600.0, 7200.0]
        )

    def test_a_browser_session_cookie_keeps_the_default_ttl(self) -> None:
        store = self.make_store(lifetime=0.0)
        value = self.get(store.save(SESSION))
        (key,) = self.redis.live_keys()
        self.assertEqual(self.redis.ttl(key), DEFAULT_TTL)
        self.clock.advance(30 * 24 * 3600)
        self.redis.data.clear()
        # No age limit on the ticket itself when cookie_expire is 0: only Redis decides.
        self.assertIsNone(self.get(store.load(value)))

    def test_saving_with_the_previous_value_reuses_the_entry(self) -> None:
        value = self.get(self.store.save(SESSION))
        refreshed = attrs.evolve(SESSION, access_token="new", created_at=START + 60)
        self.clock.advance(60)
        again = self.get(self.store.save(refreshed, value))
        self.assertEqual(len(self.redis.live_keys()), 1)
        self.assertEqual(self.get(self.store.load(value)), refreshed)
        self.assertEqual(self.get(self.store.load(again)), refreshed)
        # The new cookie value is sealed now, so the cookie's own age starts again.
        self.clock.advance(3590)
        self.assertIsNone(self.get(self.store.load(value)))
        self.assertEqual(self.get(self.store.load(again)), refreshed)

    def test_a_new_login_never_reuses_a_ticket(self) -> None:
        value = self.get(self.store.save(SESSION))
        self.get(self.store.save(SESSION, None))
        self.assertEqual(len(self.redis.live_keys()), 2)
        self.assertEqual(self.get(self.store.load(value)), SESSION)

    def test_sign_out_ends_every_copy_and_is_not_undone_by_a_late_refresh(self) -> None:
        value = self.get(self.store.save(SESSION))
        other_instance = self.make_store()
        self.get(other_instance.clear(value))
        self.assertEqual(self.redis.live_keys(), [])
        self.assertIsNone(self.get(self.store.load(value)))
        self.get(self.store.save(attrs.evolve(SESSION, access_token="late"), value))
        self.assertIsNone(self.get(self.store.load(value)))

    def test_clearing_an_unknown_value_does_nothing(self) -> None:
        self.get(self.store.clear("not a ticket"))
        self.assertEqual(self.redis.commands, [])

    def test_minimal_keeps_tokens_out_of_redis(self) -> None:
        store = self.make_store(minimal=True)
        value = self.get(store.save(SESSION))
        self.assertEqual(self.get(store.load(value)), SESSION.without_tokens())

    def test_an_outage_is_store_unavailable_not_a_logout(self) -> None:
        value = self.get(self.store.save(SESSION))
        self.redis.down = True
        self.fails(self.store.load(value), StoreUnavailable)
        self.fails(self.store.check(), StoreUnavailable)
        self.fails(self.store.save(SESSION), StoreUnavailable)
        self.redis.down = False
        self.get(self.store.check())
        self.assertEqual(self.get(self.store.load(value)), SESSION)

    def test_logs_never_show_the_cookie_or_the_key(self) -> None:
        with capturedLogs() as events:
            value = self.get(self.store.save(SESSION))
            (key,) = self.redis.live_keys()
            self.get(self.store.load(value[:-2] + "xx"))
            self.get(self.store.clear(value))
            self.get(self.store.load(value))
        text = repr(events)
        self.assertGreater(len(events), 0)
        self.assertNotIn(value, text)
        self.assertNotIn(key.partition("-")[2], text)

    def test_start_and_stop_drive_the_client(self) -> None:
        self.store.start()
        self.assertTrue(self.redis.started)
        self.successResultOf(self.store.stop())
        self.assertFalse(self.redis.started)


class RememberedTicketTests(StoreTestCase):
    """The store remembers opened tickets and the session of the last Redis value it
    saw; Redis is still asked every time, and every rule of opening still holds."""

    def gets(self) -> int:
        return sum(1 for c in self.redis.commands if c[0] == "GET")

    def test_every_load_asks_redis_even_when_remembered(self) -> None:
        value = self.get(self.store.save(SESSION))
        for n in range(1, 4):
            self.assertEqual(self.get(self.store.load(value)), SESSION)
            self.assertEqual(self.gets(), n)

    def test_a_sign_out_elsewhere_ends_a_remembered_session_at_once(self) -> None:
        value = self.get(self.store.save(SESSION))
        self.assertEqual(self.get(self.store.load(value)), SESSION)
        self.assertEqual(self.get(self.store.load(value)), SESSION)
        self.get(self.make_store().clear(value))  # another instance
        self.assertIsNone(self.get(self.store.load(value)))

    def test_a_refresh_elsewhere_is_seen_at_once(self) -> None:
        value = self.get(self.store.save(SESSION))
        self.assertEqual(self.get(self.store.load(value)), SESSION)
        refreshed = attrs.evolve(SESSION, access_token="new", created_at=START + 60)
        self.clock.advance(60)
        self.get(self.make_store().save(refreshed, value))
        self.assertEqual(self.get(self.store.load(value)), refreshed)

    def test_values_swapped_between_remembered_keys_do_not_open(self) -> None:
        one = self.get(self.store.save(SESSION))
        two = self.get(self.store.save(attrs.evolve(SESSION, user="bob")))
        self.assertEqual(self.get(self.store.load(one)), SESSION)
        self.assertEqual(self.get(self.store.load(two)).user, "bob")  # type: ignore[union-attr]
        key_one, key_two = (self.store._open(v).key(COOKIE) for v in (one, two))  # type: ignore[union-attr]
        self.redis.data[key_one], self.redis.data[key_two] = (
            self.redis.data[key_two],
            self.redis.data[key_one],
        )
        self.assertIsNone(self.get(self.store.load(one)))
        self.assertIsNone(self.get(self.store.load(two)))

    def test_a_tampered_redis_value_does_not_open_after_the_good_one_did(self) -> None:
        value = self.get(self.store.save(SESSION))
        self.assertEqual(self.get(self.store.load(value)), SESSION)
        (key,) = self.redis.live_keys()
        stored, expires = self.redis.data[key]
        self.redis.data[key] = (
            stored[:-3] + ("A" if stored[-3] != "A" else "B") + stored[-2:],
            expires,
        )
        self.assertIsNone(self.get(self.store.load(value)))
        self.redis.data[key] = (stored, expires)
        self.assertEqual(self.get(self.store.load(value)), SESSION)

    def test_a_remembered_ticket_still_ends_with_the_cookie_lifetime(self) -> None:
        store = self.make_store(expiration=7 * 86400.0)  # Redis keeps it longer
        value = self.get(store.save(SESSION))
        self.assertEqual(self.get(store.load(value)), SESSION)
        self.clock.advance(3600)
        self.assertEqual(self.get(store.load(value)), SESSION)
        self.clock.advance(0.5)
        gets = self.gets()
        self.assertIsNone(self.get(store.load(value)))
        self.assertEqual(self.gets(), gets)  # refused before Redis
        # Saving with it as the previous value makes a new ticket: the old one is too old.
        self.get(store.save(SESSION, value))
        self.assertEqual(len(self.redis.live_keys()), 2)

    def test_a_remembered_ticket_from_too_far_in_the_future_is_refused(self) -> None:
        value = self.get(self.store.save(SESSION))
        self.assertEqual(self.get(self.store.load(value)), SESSION)
        self.clock.advance(-301)  # the clock was set back
        self.assertIsNone(self.get(self.store.load(value)))
        self.clock.advance(1)
        self.assertEqual(self.get(self.store.load(value)), SESSION)

    def test_a_tampered_cookie_never_reaches_redis_after_the_good_one_did(self) -> None:
        value = self.get(self.store.save(SESSION))
        self.assertEqual(self.get(self.store.load(value)), SESSION)
        gets = self.gets()
        for i in (2, 10, len(value) // 2, len(value) - 1):
            flipped = value[:i] + ("A" if value[i] != "A" else "B") + value[i + 1 :]
            self.assertIsNone(self.get(self.store.load(flipped)))
        self.assertEqual(self.gets(), gets)

    def test_the_memo_is_bounded_and_forgotten_tickets_open_again(self) -> None:
        store = self.make_store(memo_entries=3)
        sessions = [attrs.evolve(SESSION, user=f"user{i}") for i in range(10)]
        values = [self.get(store.save(s)) for s in sessions]
        for _ in range(2):
            for session, value in zip(sessions, values, strict=True):
                self.assertEqual(self.get(store.load(value)), session)
                self.assertLessEqual(len(store._memo), 3)


class RedisLockTests(StoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.value = self.get(self.store.save(SESSION))
        self.other = self.make_store()

    def enter(self, store: RedisSessionStore) -> tuple[Any, Deferred[None]]:
        lock = store.lock(self.value)
        return lock, Deferred.fromCoroutine(_enter(lock))

    def test_a_second_holder_waits_until_the_first_releases(self) -> None:
        first, entered = self.enter(self.store)
        self.successResultOf(entered)
        second, waiting = self.enter(self.other)
        self.clock.advance(1)
        self.assertNoResult(waiting)
        self.successResultOf(Deferred.fromCoroutine(first.__aexit__(None, None, None)))
        self.clock.advance(0.05)
        self.successResultOf(waiting)
        self.successResultOf(Deferred.fromCoroutine(second.__aexit__(None, None, None)))
        self.assertEqual(self.redis.live_keys("*.lock"), [])

    def test_a_waiter_gives_up_after_lock_wait(self) -> None:
        self.successResultOf(self.enter(self.store)[1])
        _, waiting = self.enter(self.other)
        self.clock.advance(4.9)
        self.assertNoResult(waiting)
        self.clock.advance(0.2)
        self.failureResultOf(waiting, StoreUnavailable)

    def test_a_held_lock_is_renewed_and_a_crashed_one_expires(self) -> None:
        holder, entered = self.enter(self.store)
        self.successResultOf(entered)
        (lock_key,) = self.redis.live_keys("*.lock")
        for _ in range(10):
            self.clock.advance(3.4)
            self.assertEqual(self.redis.live_keys("*.lock"), [lock_key])
        # The holder "crashes": nobody renews or releases; the lock lapses within LOCK_TTL.
        holder._renewal.stop()
        patient = self.make_store(lock_wait=12.0)
        _, waiting = self.enter(patient)
        for _ in range(190):
            self.clock.advance(0.05)
        self.assertNoResult(waiting)
        for _ in range(20):
            self.clock.advance(0.05)
        self.successResultOf(waiting)

    def test_releasing_never_removes_someone_elses_lock(self) -> None:
        holder, entered = self.enter(self.store)
        self.successResultOf(entered)
        (lock_key,) = self.redis.live_keys("*.lock")
        self.redis.data[lock_key] = ("someone-else", None)
        self.successResultOf(Deferred.fromCoroutine(holder.__aexit__(None, None, None)))
        self.assertEqual(self.redis.live_keys("*.lock"), [lock_key])

    def test_a_value_that_does_not_open_gets_no_lock(self) -> None:
        lock = self.store.lock("garbage")
        self.successResultOf(Deferred.fromCoroutine(_enter(lock)))
        self.successResultOf(Deferred.fromCoroutine(lock.__aexit__(None, None, None)))
        self.assertEqual(self.redis.live_keys("*.lock"), [])


async def _enter(lock: Any) -> None:
    await lock.__aenter__()


class SlowProvider:
    """Refreshes only when the test says so; counts refreshes."""

    def __init__(self) -> None:
        self.calls = 0
        self.pending: list[Deferred[Session | None]] = []

    def refresh(self, session: Session) -> Deferred[Session | None]:
        self.calls += 1
        d: Deferred[Session | None] = Deferred()
        self.pending.append(d)
        return d


class RefreshAcrossInstancesTests(StoreTestCase):
    """Two instances (a Refresher and a store each) sharing one Redis refresh a session
    once: the second waits for the lock, re-loads, and uses the first one's result."""

    def test_one_refresh_for_two_instances(self) -> None:
        value = self.get(self.store.save(SESSION))
        provider = SlowProvider()
        one = Refresher(provider, self.store, self.clock)  # type: ignore[arg-type]
        two = Refresher(provider, self.make_store(), self.clock)  # type: ignore[arg-type]
        first = one.refresh(value, SESSION)
        second = two.refresh(value, SESSION)
        self.assertEqual(provider.calls, 1)
        refreshed = attrs.evolve(SESSION, access_token="new", created_at=START + 1)
        self.clock.advance(1)
        provider.pending[0].callback(refreshed)
        self.clock.advance(0.05)
        self.assertEqual(self.successResultOf(first).session, refreshed)
        self.assertEqual(self.successResultOf(second).session, refreshed)
        self.assertEqual(provider.calls, 1)

    def test_a_session_signed_out_meanwhile_ends(self) -> None:
        value = self.get(self.store.save(SESSION))
        provider = SlowProvider()
        self.get(self.make_store().clear(value))
        outcome = self.successResultOf(
            Refresher(provider, self.store, self.clock).refresh(value, SESSION)  # type: ignore[arg-type]
        )
        self.assertTrue(outcome.ended)
        self.assertEqual(provider.calls, 0)

    def test_an_outage_during_refresh_keeps_the_session(self) -> None:
        value = self.get(self.store.save(SESSION))
        self.redis.down = True
        provider = SlowProvider()
        outcome = self.successResultOf(
            Refresher(provider, self.store, self.clock).refresh(value, SESSION)  # type: ignore[arg-type]
        )
        self.assertFalse(outcome.ended)
        self.assertIsNone(outcome.session)


class ServiceAssemblyTests(SynchronousTestCase):
    def test_the_service_builds_a_redis_store_that_connects_only_when_started(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        from oauthgate.config.options import Config
        from oauthgate.plugins import Plugins
        from oauthgate.service import build_components

        config = attrs.evolve(
            Config(),
            provider="oidc",
            oidc_issuer_url="https://idp.test",
            client_id="app",
            client_secret="app-secret",
            cookie_secret="0123456789abcdef0123456789abcdef",
            email_domains=("example.com",),
            upstreams=("http://upstream.test/",),
            session_store_type="redis",
            redis_connection_url="redis://127.0.0.1:1/0",
            redis_expiration=30 * 24 * 3600.0,
        )
        reactor = MemoryReactorClock()
        components = build_components(config, reactor=reactor, plugins=Plugins.from_entry_points())
        store = components.store
        self.assertIsInstance(store, RedisSessionStore)
        assert isinstance(store, RedisSessionStore)
        self.assertEqual(store.ttl, 30 * 24 * 3600.0)
        self.assertEqual(reactor.tcpClients, [])
