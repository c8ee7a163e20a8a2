"""Tests for oauthgate.authz.htpasswd: the htpasswd user database and Basic credentials."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from typing import Any

import bcrypt
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from oauthgate.authz.htpasswd import (
    Htpasswd,
    RefusedLine,
    in_thread_pool,
    parse_basic,
    parse_htpasswd,
)
from oauthgate.errors import ConfigError
from oauthgate.session import Session


def bcrypt_hash(password: str, prefix: str = "$2b$", rounds: int = 4) -> str:
    hashed = bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds=rounds)).decode()
    return prefix + hashed[4:]


def sha_hash(password: str) -> str:
    return "{SHA}" + base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()


def basic(credentials: bytes) -> str:
    return "Basic " + base64.b64encode(credentials).decode()


ALICE_HASH = bcrypt_hash("alice-pw")
BOB_HASH = sha_hash("bob-pw")


class RecordingRunner:
    """A ``run_blocking`` that counts calls and runs them inline, or holds them when asked."""

    def __init__(self) -> None:
        self.calls = 0
        self.hold = False
        self.held: list[tuple[Callable[[], bool], Deferred[bool]]] = []

    def __call__(self, check: Callable[[], bool]) -> Deferred[bool]:
        self.calls += 1
        if self.hold:
            d: Deferred[bool] = Deferred()
            self.held.append((check, d))
            return d
        return succeed(check())

    def release(self) -> None:
        held, self.held = self.held, []
        for check, d in held:
            d.callback(check())


class HtpasswdTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.runner = RecordingRunner()
        self.path = self.mktemp()

    def write(self, *lines: str) -> None:
        with open(self.path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        # Make the change visible to the poller even within one timestamp tick.
        st = os.stat(self.path)
        os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

    def db(self, *lines: str, **kwargs: Any) -> Htpasswd:
        self.write(*lines)
        return Htpasswd(self.path, self.clock, run_blocking=self.runner, **kwargs)

    def check(self, db: Htpasswd, user: str, password: str) -> bool:
        return self.successResultOf(Deferred.fromCoroutine(db.check(user, password)))


class ParseHtpasswdTests(SynchronousTestCase):
    def test_accepted_and_refused_lines(self) -> None:
        table = [
            # (line, accepted, refusal reason prefix)
            (f"a:{bcrypt_hash('x', '$2a$')}", True, ""),
            (f"b:{bcrypt_hash('x', '$2b$')}", True, ""),
            (f"x:{bcrypt_hash('x', '$2x$')}", True, ""),
            (f"y:{bcrypt_hash('x', '$2y$')}", True, ""),
            (f"s:{sha_hash('x')}", True, ""),
            ("plain:secret", False, "not a bcrypt or {SHA} hash"),
            ("md5:$apr1$salt$Kq3JqGdXk1vC2n1uJvR3a/", False, "MD5-crypt ($apr1$)"),
            ("des:rl0uE1Ih6cYLk", False, "not a bcrypt or {SHA} hash"),
            ("sha512:$6$salt$abcdefghijklmnop", False, "crypt hashes are not supported"),
            ("md5crypt:$1$salt$abcdefghijklmnop", False, "crypt hashes are not supported"),
            ("shortbcrypt:$2b$04$tooShort", False, "malformed bcrypt hash"),
            ("bigcost:$2b$99$" + "." * 53, False, "bcrypt cost out of range"),
            ("badsha:{SHA}bm90IDIwIGJ5dGVz", False, "malformed {SHA} hash"),
            ("badb64:{SHA}***", False, "malformed {SHA} hash"),
            ("ssha:{SSHA}abcd", False, "not a bcrypt or {SHA} hash"),
            ("empty:", False, "not a bcrypt or {SHA} hash"),
        ]
        for line, accepted, reason in table:
            parsed = parse_htpasswd(line + "\n")
            user = line.split(":", 1)[0]
            if accepted:
                self.assertEqual(parsed.users, {user}, line)
                self.assertEqual(parsed.refused, (), line)
            else:
                self.assertEqual(parsed.users, frozenset(), line)
                self.assertEqual(len(parsed.refused), 1, line)
                self.assertEqual((parsed.refused[0].line, parsed.refused[0].user), (1, user))
                self.assertTrue(parsed.refused[0].reason.startswith(reason), parsed.refused[0])

    def test_comments_blank_lines_and_line_numbers(self) -> None:
        text = "\n".join(
            [
                "# users",
                "",
                f"alice:{ALICE_HASH}",
                "garbage-without-colon",
                ":nouser",
                f"alice:{BOB_HASH}",
                f"  bob:{BOB_HASH}  \r",
            ]
        )
        parsed = parse_htpasswd(text)
        self.assertEqual(parsed.users, {"alice", "bob"})
        self.assertEqual(
            parsed.refused,
            (
                RefusedLine(4, "", "not a user:hash line"),
                RefusedLine(5, "", "not a user:hash line"),
                RefusedLine(6, "alice", "duplicate user; line 3 is used"),
            ),
        )

    def test_refusals_never_carry_the_hash(self) -> None:
        parsed = parse_htpasswd("u:$apr1$SECRETSALT$SECRETHASH\nv:plaintextsecret\n")
        for refused in parsed.refused:
            self.assertNotIn("SECRET", repr(refused))
            self.assertNotIn("plaintextsecret", repr(refused))


class CheckTests(HtpasswdTestCase):
    def test_passwords(self) -> None:
        db = self.db(
            f"alice:{ALICE_HASH}",
            f"bob:{BOB_HASH}",
            f"carol:{bcrypt_hash('carol-pw', '$2y$')}",
            f"dave:{bcrypt_hash('dave-pw', '$2a$')}",
            f"erin:{bcrypt_hash('ünïcødé', '$2x$')}",
        )
        table = [
            ("alice", "alice-pw", True),
            ("alice", "alice-PW", False),
            ("alice", "", False),
            ("alice", "bob-pw", False),
            ("bob", "bob-pw", True),
            ("bob", "bob-pw ", False),
            ("carol", "carol-pw", True),
            ("dave", "dave-pw", True),
            ("erin", "ünïcødé", True),
            ("erin", "unicode", False),
            ("ALICE", "alice-pw", False),
            ("nobody", "alice-pw", False),
            ("", "", False),
            ("alice", "\ud800", False),  # a lone surrogate never raises
        ]
        for user, password, expected in table:
            self.assertEqual(self.check(db, user, password), expected, (user, password))

    def test_bcrypt_reads_only_the_first_72_bytes(self) -> None:
        long = "p" * 72
        db = self.db(f"alice:{bcrypt_hash(long)}")
        self.assertTrue(self.check(db, "alice", long + "ignored"))
        self.assertFalse(self.check(db, "alice", long[:-1]))

    def test_bcrypt_runs_through_run_blocking_and_never_inline(self) -> None:
        db = self.db(f"alice:{ALICE_HASH}")
        self.runner.hold = True
        d = Deferred.fromCoroutine(db.check("alice", "alice-pw"))
        self.assertNoResult(d)
        self.assertEqual(self.runner.calls, 1)
        self.runner.release()
        self.assertTrue(self.successResultOf(d))

    def test_sha_checks_need_no_thread(self) -> None:
        db = self.db(f"bob:{BOB_HASH}")
        self.assertTrue(self.check(db, "bob", "bob-pw"))
        self.assertEqual(self.runner.calls, 0)

    def test_unknown_user_costs_a_bcrypt_check_like_a_known_one(self) -> None:
        """Otherwise a fast answer would tell an attacker the user does not exist."""
        db = self.db(f"alice:{ALICE_HASH}", f"bob:{BOB_HASH}")
        self.assertFalse(self.check(db, "mallory", "x"))
        self.assertEqual(self.runner.calls, 1)
        self.assertFalse(self.check(db, "alice", "x"))
        self.assertEqual(self.runner.calls, 2)

    def test_unknown_user_dummy_check_runs_at_the_files_highest_cost(self) -> None:
        checks: list[Callable[[], bool]] = []

        def run(check: Callable[[], bool]) -> Deferred[bool]:
            checks.append(check)
            return succeed(False)

        self.write(f"alice:{ALICE_HASH}", f"carol:{bcrypt_hash('c', rounds=5)}")
        db = Htpasswd(self.path, self.clock, run_blocking=run)
        self.check(db, "mallory", "x")
        # The dummy hash is well-formed (bcrypt really runs) and has the highest cost.
        self.assertEqual(db._dummy, b"$2b$05$" + b"." * 53)
        self.assertFalse(checks[0]())

    def test_unknown_user_without_bcrypt_entries_needs_no_thread(self) -> None:
        db = self.db(f"bob:{BOB_HASH}")
        self.assertFalse(self.check(db, "mallory", "bob-pw"))
        self.assertEqual(self.runner.calls, 0)

    def test_a_failing_check_is_a_refusal(self) -> None:
        def broken(check: Callable[[], bool]) -> Deferred[bool]:
            raise RuntimeError("thread pool stopped")

        self.write(f"alice:{ALICE_HASH}")
        db = Htpasswd(self.path, self.clock, run_blocking=broken)
        with capturedLogs() as events:
            self.assertFalse(self.check(db, "alice", "alice-pw"))
        self.assertEqual([e["log_level"] for e in events], [LogLevel.critical])
        self.flushLoggedErrors(RuntimeError)

    def test_passwords_are_never_logged(self) -> None:
        with capturedLogs() as events:
            db = self.db(f"alice:{ALICE_HASH}", "bad:$apr1$x$y", f"bob:{BOB_HASH}")
            self.check(db, "alice", "alice-pw")
            self.check(db, "bob", "wrong-pw")
            self.write(f"alice:{ALICE_HASH}")
            db.start()
            self.clock.advance(5)
            db.stop()
        text = repr(events)
        for secret in ("alice-pw", "wrong-pw", ALICE_HASH, BOB_HASH, "$apr1$x$y"):
            self.assertNotIn(secret, text)


class CacheTests(HtpasswdTestCase):
    def test_success_is_cached_for_a_minute(self) -> None:
        db = self.db(f"alice:{ALICE_HASH}")
        self.assertTrue(self.check(db, "alice", "alice-pw"))
        self.clock.advance(59.9)
        self.assertTrue(self.check(db, "alice", "alice-pw"))
        self.assertEqual(self.runner.calls, 1)
        self.clock.advance(0.1)
        self.assertTrue(self.check(db, "alice", "alice-pw"))
        self.assertEqual(self.runner.calls, 2)

    def test_cache_ttl_is_configurable(self) -> None:
        db = self.db(f"alice:{ALICE_HASH}", cache_ttl=5)
        self.check(db, "alice", "alice-pw")
        self.clock.advance(5)
        self.check(db, "alice", "alice-pw")
        self.assertEqual(self.runner.calls, 2)

    def test_failures_are_not_cached_and_never_hit_a_cached_success(self) -> None:
        db = self.db(f"alice:{ALICE_HASH}")
        self.assertTrue(self.check(db, "alice", "alice-pw"))
        for _ in range(3):
            self.assertFalse(self.check(db, "alice", "alice-pw2"))
        self.assertEqual(self.runner.calls, 4)

    def test_cache_is_bounded(self) -> None:
        db = self.db(
            f"alice:{ALICE_HASH}",
            f"carol:{bcrypt_hash('carol-pw')}",
            f"dave:{bcrypt_hash('dave-pw')}",
            cache_size=2,
        )
        for user in ("alice", "carol", "dave"):
            self.assertTrue(self.check(db, user, f"{user}-pw"))
        self.assertEqual(self.runner.calls, 3)
        self.check(db, "dave", "dave-pw")
        self.check(db, "carol", "carol-pw")
        self.assertEqual(self.runner.calls, 3)
        self.check(db, "alice", "alice-pw")  # the least recently used was evicted
        self.assertEqual(self.runner.calls, 4)

    def test_concurrent_checks_of_the_same_credentials_share_one_bcrypt_run(self) -> None:
        db = self.db(f"alice:{ALICE_HASH}")
        self.runner.hold = True
        first = Deferred.fromCoroutine(db.check("alice", "alice-pw"))
        second = Deferred.fromCoroutine(db.check("alice", "alice-pw"))
        other = Deferred.fromCoroutine(db.check("alice", "wrong"))
        self.assertEqual(self.runner.calls, 2)
        self.runner.release()
        self.assertEqual(
            [self.successResultOf(d) for d in (first, second, other)], [True, True, False]
        )

    def test_a_check_running_across_a_reload_is_not_shared_with_the_new_hash(self) -> None:
        db = self.db(f"alice:{ALICE_HASH}")
        db.start()
        self.runner.hold = True
        before = Deferred.fromCoroutine(db.check("alice", "alice-pw"))
        self.write(f"alice:{bcrypt_hash('new-pw')}")
        self.clock.advance(5)
        after = Deferred.fromCoroutine(db.check("alice", "alice-pw"))
        self.assertEqual(self.runner.calls, 2)
        self.runner.release()
        self.assertEqual((self.successResultOf(before), self.successResultOf(after)), (True, False))
        self.runner.hold = False
        self.assertFalse(self.check(db, "alice", "alice-pw"))
        db.stop()

    def test_changed_password_ends_the_cached_success_at_reload(self) -> None:
        db = self.db(f"alice:{ALICE_HASH}")
        db.start()
        self.assertTrue(self.check(db, "alice", "alice-pw"))
        self.write(f"alice:{bcrypt_hash('new-pw')}")
        self.clock.advance(5)
        self.assertFalse(self.check(db, "alice", "alice-pw"))
        self.assertTrue(self.check(db, "alice", "new-pw"))
        db.stop()

    def test_removed_user_is_refused_at_reload_despite_the_cache(self) -> None:
        db = self.db(f"alice:{ALICE_HASH}", f"bob:{BOB_HASH}")
        db.start()
        self.assertTrue(self.check(db, "alice", "alice-pw"))
        self.write(f"bob:{BOB_HASH}")
        self.clock.advance(5)
        self.assertFalse(self.check(db, "alice", "alice-pw"))
        db.stop()


class ReloadTests(HtpasswdTestCase):
    def test_file_is_polled_between_start_and_stop(self) -> None:
        db = self.db(f"alice:{ALICE_HASH}")
        db.start()
        db.start()  # idempotent
        self.write(f"alice:{ALICE_HASH}", f"bob:{BOB_HASH}")
        self.clock.advance(4.9)
        self.assertEqual(db.users, {"alice"})
        with capturedLogs() as events:
            self.clock.advance(0.1)
        self.assertEqual(db.users, {"alice", "bob"})
        self.assertEqual(
            events[-1]["log_format"], "Reloaded the htpasswd file {path}: {count} users"
        )
        db.stop()
        self.write(f"carol:{BOB_HASH}")
        self.clock.advance(60)
        self.assertEqual(db.users, {"alice", "bob"})

    def test_unreadable_file_keeps_the_last_users_and_logs_once(self) -> None:
        db = self.db(f"alice:{ALICE_HASH}")
        db.start()
        os.remove(self.path)
        with capturedLogs() as events:
            self.clock.advance(5)
            self.clock.advance(5)
        self.assertEqual([e["log_level"] for e in events], [LogLevel.error])
        self.assertTrue(self.check(db, "alice", "alice-pw"))
        self.write(f"bob:{BOB_HASH}")
        self.clock.advance(5)
        self.assertEqual(db.users, {"bob"})
        db.stop()

    def test_refused_lines_are_warned_about_with_line_and_user(self) -> None:
        with capturedLogs() as events:
            db = self.db(f"alice:{ALICE_HASH}", "mallory:$apr1$abc$def")
        self.assertEqual(db.users, {"alice"})
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertEqual((warnings[0]["line"], warnings[0]["user"]), (2, "mallory"))
        self.assertIn("MD5-crypt", warnings[0]["reason"])

    def test_a_file_without_usable_entries_is_warned_about(self) -> None:
        with capturedLogs() as events:
            db = self.db("# nobody yet")
        self.assertEqual(db.users, frozenset())
        self.assertEqual(
            [e["log_format"] for e in events], ["The htpasswd file {path} has no usable entries"]
        )

    def test_unreadable_file_at_start_is_a_config_error(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            Htpasswd(self.path, self.clock, run_blocking=self.runner)
        self.assertTrue(caught.exception.problems[0].startswith("htpasswd_file: cannot read"))
        with open(self.path, "wb") as f:
            f.write(b"alice:\xff\xfe\n")
        with self.assertRaises(ConfigError):
            Htpasswd(self.path, self.clock, run_blocking=self.runner)


class FileFormatTests(HtpasswdTestCase):
    def test_a_file_written_on_windows_is_read(self) -> None:
        """A UTF-8 byte order mark and CRLF line ends, as Windows editors save files."""
        with open(self.path, "wb") as f:
            f.write(f"\ufeffalice:{ALICE_HASH}\r\nbob:{BOB_HASH}\r\n".encode())
        db = Htpasswd(self.path, self.clock, run_blocking=self.runner)
        self.assertEqual(db.users, {"alice", "bob"})
        self.assertTrue(self.check(db, "alice", "alice-pw"))
        self.assertTrue(self.check(db, "bob", "bob-pw"))

    def test_bcrypt_and_sha_entries_live_side_by_side(self) -> None:
        db = self.db(
            "# mixed formats",
            f"alice:{ALICE_HASH}",
            f"bob:{BOB_HASH}",
            "carol:plain-text",
            f"dave:{bcrypt_hash('dave-pw', '$2y$')}",
        )
        self.assertEqual(db.users, {"alice", "bob", "dave"})
        table = [
            ("alice", "alice-pw", True),
            ("bob", "bob-pw", True),
            ("carol", "plain-text", False),
            ("dave", "dave-pw", True),
        ]
        for user, password, expected in table:
            self.assertEqual(self.check(db, user, password), expected, user)


class AuthenticateTests(HtpasswdTestCase):
    def test_session_carries_the_user_and_the_configured_groups(self) -> None:
        db = self.db(f"alice:{ALICE_HASH}", user_groups=["ops", "", "devs"])
        session = self.successResultOf(Deferred.fromCoroutine(db.authenticate("alice", "alice-pw")))
        self.assertEqual(
            session,
            Session(
                user="alice",
                groups=("ops", "devs"),
                created_at=self.clock.seconds(),
                provider="htpasswd",
            ),
        )
        assert session is not None
        self.assertEqual(session.email, "")

    def test_wrong_password_gives_no_session(self) -> None:
        db = self.db(f"alice:{ALICE_HASH}")
        self.assertIsNone(
            self.successResultOf(Deferred.fromCoroutine(db.authenticate("alice", "nope")))
        )


class ParseBasicTests(SynchronousTestCase):
    def test_parse_basic(self) -> None:
        table: list[tuple[str | bytes | None, tuple[str, str] | None]] = [
            (basic(b"alice:pw"), ("alice", "pw")),
            (basic(b"alice:pw:with:colons"), ("alice", "pw:with:colons")),
            (basic(b"alice:"), ("alice", "")),
            (basic("zoë:pässwörd".encode()), ("zoë", "pässwörd")),
            ("basic " + base64.b64encode(b"a:b").decode(), ("a", "b")),
            ("  Basic   " + base64.b64encode(b"a:b").decode() + "  ", ("a", "b")),
            (b"Basic " + base64.b64encode(b"a:b"), ("a", "b")),
            (None, None),
            ("", None),
            ("Basic", None),
            ("Basic !!!", None),
            ("Basic " + base64.b64encode(b"a:b").decode()[:-1], None),
            (basic(b"no-colon"), None),
            (basic(b":pw"), None),
            (basic(b"\xff:pw"), None),
            ("Bearer " + base64.b64encode(b"a:b").decode(), None),
            ("Digest username=a", None),
        ]
        for header, expected in table:
            self.assertEqual(parse_basic(header), expected, header)


class FakeReactor:
    def __init__(self) -> None:
        self.from_thread = 0

    def callFromThread(self, f: Callable[..., object], *args: object) -> None:
        self.from_thread += 1
        f(*args)


class FakePool:
    def __init__(self) -> None:
        self.ran = 0

    def callInThreadWithCallback(
        self, on_result: Callable[[bool, object], None], f: Callable[[], object]
    ) -> None:
        self.ran += 1
        on_result(True, f())


class InThreadPoolTests(SynchronousTestCase):
    def test_checks_run_in_the_pool_and_fire_on_the_reactor_thread(self) -> None:
        reactor, pool = FakeReactor(), FakePool()
        run = in_thread_pool(reactor, pool)  # type: ignore[arg-type]
        self.assertTrue(self.successResultOf(Deferred.fromCoroutine(_await(run(lambda: True)))))
        self.assertEqual((pool.ran, reactor.from_thread), (1, 1))


async def _await(awaitable: Any) -> Any:
    return await awaitable
