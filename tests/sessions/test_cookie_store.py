"""Tests for oauthgate.sessions.cookie_store: the session sealed in the cookie."""

from __future__ import annotations

import base64
import json
from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from oauthgate.interfaces import ISessionStore
from oauthgate.session import Session
from oauthgate.sessions.cookie_store import CookieSessionStore
from oauthgate.sessions.crypto import Sealer

T = TypeVar("T")

SECRET = b"s" * 32
LIFETIME = 3600.0
START = 1_700_000_000.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def fake_jwt(claims: dict[str, Any]) -> str:
    header = b64(b'{"alg":"RS256","kid":"k1","typ":"JWT"}')
    return f"{header}.{b64(json.dumps(claims).encode())}.{b64(bytes(range(256)))}"


CLAIMS = {"iss": "https://idp.example.com", "sub": "alice", "email": "alice@example.com"}
SESSION = Session(
    user="alice",
    email="alice@example.com",
    groups=("admins", "dev"),
    preferred_username="alice",
    access_token=fake_jwt({**CLAIMS, "scope": "openid email"}),
    id_token=fake_jwt(CLAIMS),
    refresh_token="rt-opaque-123",
    created_at=START,
    expires_on=START + 300,
    provider="oidc",
)


class CookieSessionStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.store = self.make_store()

    def make_store(self, **kwargs: Any) -> CookieSessionStore:
        options: dict[str, Any] = {"purpose": "_oauth2_proxy", "lifetime": LIFETIME, **kwargs}
        return CookieSessionStore(Sealer(SECRET), self.clock, **options)

    def get_success(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.successResultOf(Deferred.fromCoroutine(coro))

    def test_store_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(ISessionStore, self.store))

    def test_saved_session_loads_back(self) -> None:
        value = self.get_success(self.store.save(SESSION))
        self.assertEqual(self.get_success(self.store.load(value)), SESSION)

    def test_small_session_round_trips(self) -> None:
        session = Session(user="bob")
        value = self.get_success(self.store.save(session))
        self.assertEqual(self.get_success(self.store.load(value)), session)

    def test_value_reveals_nothing_of_the_session(self) -> None:
        value = self.get_success(self.store.save(SESSION))
        self.assertNotIn("alice", value)
        self.assertNotIn(b"alice", base64.urlsafe_b64decode(value[2:] + "=="))

    def test_value_is_smaller_than_the_tokens_it_carries(self) -> None:
        """Compression keeps token-heavy sessions well below the 4 KB split point."""
        value = self.get_success(self.store.save(SESSION))
        tokens = len(SESSION.access_token) + len(SESSION.id_token) + len(SESSION.refresh_token)
        self.assertLess(len(value), tokens)

    def test_minimal_store_drops_tokens(self) -> None:
        store = self.make_store(minimal=True)
        loaded = self.get_success(store.load(self.get_success(store.save(SESSION))))
        self.assertEqual(loaded, SESSION.without_tokens())

    def test_tampered_value_loads_as_none_and_warns_without_the_value(self) -> None:
        value = self.get_success(self.store.save(SESSION))
        tampered = value[:-5] + ("A" if value[-5] != "A" else "B") + value[-4:]
        with capturedLogs() as events:
            self.assertIsNone(self.get_success(self.store.load(tampered)))
        self.assertEqual([e["log_level"] for e in events], [LogLevel.warn])
        self.assertNotIn(tampered, repr(events))
        self.assertEqual(len(events[0]["fingerprint"]), 12)

    def test_garbage_loads_as_none(self) -> None:
        for value in ("", "garbage", "1.", "1.AAAA", "2.abc", "1.!!!!"):
            self.assertIsNone(self.get_success(self.store.load(value)))

    def test_session_loads_until_its_lifetime_and_not_after(self) -> None:
        value = self.get_success(self.store.save(SESSION))
        self.clock.advance(LIFETIME - 1)
        self.assertEqual(self.get_success(self.store.load(value)), SESSION)
        self.clock.advance(2)
        self.assertIsNone(self.get_success(self.store.load(value)))

    def test_zero_lifetime_means_no_age_limit(self) -> None:
        store = self.make_store(lifetime=0.0)
        value = self.get_success(store.save(SESSION))
        self.clock.advance(365 * 86400)
        self.assertEqual(self.get_success(store.load(value)), SESSION)

    def test_value_for_another_purpose_does_not_load(self) -> None:
        csrf = self.make_store(purpose="_oauth2_proxy_csrf")
        value = self.get_success(csrf.save(SESSION))
        self.assertIsNone(self.get_success(self.store.load(value)))

    def test_value_under_another_secret_does_not_load(self) -> None:
        other = CookieSessionStore(
            Sealer(b"o" * 32), self.clock, purpose="_oauth2_proxy", lifetime=LIFETIME
        )
        self.assertIsNone(self.get_success(self.store.load(self.get_success(other.save(SESSION)))))

    def test_sealed_non_session_loads_as_none(self) -> None:
        sealer = Sealer(SECRET)
        for plain in (b"[1,2]", b'{"u":5}', b"znot deflate", b"\xff", b"{broken"):
            value = sealer.seal(plain, "_oauth2_proxy", self.clock.seconds())
            with capturedLogs() as events:
                self.assertIsNone(self.get_success(self.store.load(value)))
            self.assertEqual(len(events), 1)

    def test_clear_and_check_succeed(self) -> None:
        self.assertIsNone(self.get_success(self.store.clear("anything")))
        self.assertIsNone(self.get_success(self.store.check()))

    def test_lock_serialises_holders_of_one_value_and_leaves_nothing_behind(self) -> None:
        order: list[str] = []
        release_first: Deferred[None] = Deferred()

        async def first() -> None:
            async with self.store.lock("v"):
                order.append("first in")
                await release_first
                order.append("first out")

        async def second() -> None:
            async with self.store.lock("v"):
                order.append("second in")

        d1 = Deferred.fromCoroutine(first())
        d2 = Deferred.fromCoroutine(second())
        self.assertEqual(order, ["first in"])
        release_first.callback(None)
        self.assertEqual(order, ["first in", "first out", "second in"])
        self.successResultOf(d1)
        self.successResultOf(d2)
        self.assertEqual(self.store._locks, {})

    def test_locks_of_different_values_do_not_block_each_other(self) -> None:
        order: list[str] = []
        hold: Deferred[None] = Deferred()

        async def holder(value: str) -> None:
            async with self.store.lock(value):
                order.append(value)
                await hold

        d1 = Deferred.fromCoroutine(holder("a"))
        d2 = Deferred.fromCoroutine(holder("b"))
        self.assertEqual(order, ["a", "b"])
        hold.callback(None)
        self.successResultOf(d1)
        self.successResultOf(d2)
        self.assertEqual(self.store._locks, {})

    def test_lock_is_released_when_the_holder_fails(self) -> None:
        async def failing() -> None:
            async with self.store.lock("v"):
                raise RuntimeError("refresh failed")

        self.failureResultOf(Deferred.fromCoroutine(failing()), RuntimeError)
        self.assertEqual(self.store._locks, {})

        async def after() -> str:
            async with self.store.lock("v"):
                return "acquired"

        self.assertEqual(self.get_success(after()), "acquired")


class RememberedSessionTests(SynchronousTestCase):
    """The store remembers what a value opened to; every rule of opening still holds."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.store = CookieSessionStore(
            Sealer(SECRET), self.clock, purpose="_oauth2_proxy", lifetime=LIFETIME
        )

    def load(self, value: str, store: CookieSessionStore | None = None) -> Session | None:
        return self.successResultOf(Deferred.fromCoroutine((store or self.store).load(value)))

    def save(self, session: Session, store: CookieSessionStore | None = None) -> str:
        return self.successResultOf(Deferred.fromCoroutine((store or self.store).save(session)))

    def test_a_remembered_session_is_the_one_that_opened(self) -> None:
        value = self.save(SESSION)
        first = self.load(value)
        self.assertEqual(first, SESSION)
        self.assertIs(self.load(value), first)  # frozen, hence shared

    def test_a_remembered_session_still_ends_with_its_lifetime(self) -> None:
        value = self.save(SESSION)
        self.assertEqual(self.load(value), SESSION)
        self.clock.advance(LIFETIME)
        self.assertEqual(self.load(value), SESSION)
        self.clock.advance(0.5)
        with capturedLogs() as events:
            self.assertIsNone(self.load(value))
        self.assertEqual([e["log_level"] for e in events], [LogLevel.warn])
        self.assertIsNone(self.load(value))

    def test_a_remembered_value_from_too_far_in_the_future_is_refused(self) -> None:
        """The clock may be set back (NTP): the skew rule applies as when opening."""
        value = self.save(SESSION)
        self.assertEqual(self.load(value), SESSION)
        self.clock.advance(-300)
        self.assertEqual(self.load(value), SESSION)
        self.clock.advance(-1)
        self.assertIsNone(self.load(value))
        self.clock.advance(1)
        self.assertEqual(self.load(value), SESSION)

    def test_a_tampered_copy_of_a_remembered_value_never_loads(self) -> None:
        value = self.save(SESSION)
        self.assertEqual(self.load(value), SESSION)
        for i in (2, 10, len(value) // 2, len(value) - 1):
            flipped = value[:i] + ("A" if value[i] != "A" else "B") + value[i + 1 :]
            self.assertIsNone(self.load(flipped), i)
        self.assertIsNone(self.load(value + "A"))
        self.assertIsNone(self.load(value[:-1]))
        self.assertEqual(self.load(value), SESSION)

    def test_a_value_remembered_by_one_store_does_not_open_in_another(self) -> None:
        """Each store remembers only what opened under its own secret and purpose."""
        value = self.save(SESSION)
        self.assertEqual(self.load(value), SESSION)
        csrf = CookieSessionStore(Sealer(SECRET), self.clock, purpose="csrf", lifetime=LIFETIME)
        other = CookieSessionStore(
            Sealer(b"o" * 32), self.clock, purpose="_oauth2_proxy", lifetime=0
        )
        self.assertIsNone(self.load(value, csrf))
        self.assertIsNone(self.load(value, other))

    def test_a_malformed_session_is_not_remembered(self) -> None:
        value = Sealer(SECRET).seal(b'{"u":5}', "_oauth2_proxy", self.clock.seconds())
        for _ in range(2):
            with capturedLogs() as events:
                self.assertIsNone(self.load(value))
            self.assertEqual(len(events), 1)
        self.assertEqual(len(self.store._memo), 0)

    def test_the_memo_is_bounded_and_forgotten_values_open_again(self) -> None:
        store = CookieSessionStore(
            Sealer(SECRET), self.clock, purpose="_oauth2_proxy", lifetime=LIFETIME, memo_entries=3
        )
        sessions = [Session(user=f"user{i}", created_at=START) for i in range(10)]
        values = [self.save(s, store) for s in sessions]
        for _ in range(2):
            for session, value in zip(sessions, values, strict=True):
                self.assertEqual(self.load(value, store), session)
                self.assertLessEqual(len(store._memo), 3)
