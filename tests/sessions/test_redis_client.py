"""Tests for oauthgate.sessions.redis_client: URLs, option rules, settings, and how a
connection's failures reach the store (all in memory; real servers are in
tests/integration/test_redis_*.py)."""

from __future__ import annotations

import base64
from typing import Any

import attrs
import txredisapi
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from oauthgate.config.options import Config
from oauthgate.config.validate import validate
from oauthgate.errors import ConfigError, StoreUnavailable
from oauthgate.sessions.redis_client import (
    Connection,
    RedisSettings,
    RedisURL,
    ReplyError,
    SingleServerClient,
    client_from_config,
    parse_url,
)
from oauthgate.sessions.redis_cluster import ClusterClient
from tests.config.test_validate import self_signed_pem

VALID = Config(
    provider="oidc",
    oidc_issuer_url="https://idp.example.com",
    client_id="app",
    client_secret="client-secret-value",
    cookie_secret=base64.urlsafe_b64encode(b"k" * 32).decode(),
    email_domains=("example.com",),
    session_store_type="redis",
    redis_connection_url="redis://127.0.0.1:6379/0",
)


def redis_config(**changes: Any) -> Config:
    return attrs.evolve(VALID, **changes)


class ParseURLTests(SynchronousTestCase):
    def test_the_url_forms_go_redis_accepts(self) -> None:
        self.assertEqual(parse_url("redis://cache"), RedisURL("cache"))
        self.assertEqual(parse_url("redis://cache:6380/2"), RedisURL("cache", 6380, 2))
        self.assertEqual(
            parse_url("rediss://user:p%40ss@cache.example.com/0"),
            RedisURL("cache.example.com", 6379, 0, "user", "p@ss", tls=True),
        )
        self.assertEqual(parse_url("redis://:secret@[::1]:7000").host, "::1")
        self.assertEqual(parse_url("redis://:secret@h").password, "secret")

    def test_other_forms_are_refused_without_showing_the_password(self) -> None:
        for url, fragment in (
            ("http://cache:6379", "must start with redis://"),
            ("unix:///run/redis.sock", "unix:// sockets are not supported"),
            ("redis://", "needs a host"),
            ("redis://:pw@cache/x", "the database must be a number"),
            ("redis://:pw@cache/0?dial_timeout=3", "query parameters"),
            ("redis://:pw@cache:99999", "not a valid URL"),
        ):
            with self.assertRaises(ValueError, msg=url) as caught:
                parse_url(url)
            self.assertIn(fragment, str(caught.exception))
            self.assertNotIn("pw", str(caught.exception))

    def test_the_password_is_not_in_the_repr(self) -> None:
        self.assertNotIn("secret", repr(parse_url("redis://:secret@h")))


class RedisOptionRulesTests(SynchronousTestCase):
    def problems(self, **changes: Any) -> tuple[str, ...]:
        try:
            validate(redis_config(**changes))
        except ConfigError as e:
            return e.problems
        return ()

    def test_a_standalone_url_is_enough(self) -> None:
        self.assertEqual(self.problems(), ())

    def test_standalone_needs_a_url(self) -> None:
        self.assertEqual(
            self.problems(redis_connection_url=""),
            (
                "redis_connection_url: required with session_store_type redis, e.g. "
                "redis://127.0.0.1:6379/0 (or use Sentinel or Cluster)",
            ),
        )

    def test_a_bad_url_is_named_without_its_password(self) -> None:
        (problem,) = self.problems(redis_connection_url="http://u:hunter2@cache")
        self.assertTrue(problem.startswith("redis_connection_url: 'http://u:***@cache'"), problem)

    def test_sentinel_needs_a_master_name_and_urls(self) -> None:
        self.assertEqual(
            self.problems(redis_connection_url="", redis_use_sentinel=True),
            (
                "redis_sentinel_master_name: required with redis_use_sentinel "
                "(--redis-sentinel-master-name)",
                "redis_sentinel_connection_urls: required with redis_use_sentinel, "
                "e.g. redis://sentinel1:26379",
            ),
        )
        self.assertEqual(
            self.problems(
                redis_connection_url="",
                redis_use_sentinel=True,
                redis_sentinel_master_name="mymaster",
                redis_sentinel_connection_urls=("redis://s1:26379", "redis://s2:26379"),
            ),
            (),
        )

    def test_sentinel_and_cluster_exclude_each_other(self) -> None:
        problems = self.problems(
            redis_use_sentinel=True,
            redis_sentinel_master_name="m",
            redis_sentinel_connection_urls=("redis://s1:26379",),
            redis_use_cluster=True,
            redis_cluster_connection_urls=("redis://n1:6379",),
        )
        self.assertEqual(
            problems, ("redis_use_sentinel: cannot be used with redis_use_cluster; choose one",)
        )

    def test_cluster_needs_urls_and_database_0(self) -> None:
        self.assertEqual(
            self.problems(redis_connection_url="", redis_use_cluster=True),
            (
                "redis_cluster_connection_urls: required with redis_use_cluster, "
                "e.g. redis://node1:6379",
            ),
        )
        self.assertEqual(
            self.problems(
                redis_use_cluster=True, redis_cluster_connection_urls=("redis://n1:6379/1",)
            ),
            (
                "redis_cluster_connection_urls: 'redis://n1:6379/1': Redis Cluster has only "
                "database 0",
            ),
        )

    def test_a_missing_ca_file_is_reported(self) -> None:
        self.assertEqual(
            self.problems(redis_ca_path="/nonexistent/ca.pem"),
            ("redis_ca_path: '/nonexistent/ca.pem' does not exist or is not a readable file",),
        )

    def test_a_ca_file_that_is_not_pem_is_one_readable_line(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not a certificate\n")
        self.assertEqual(
            self.problems(redis_ca_path=path),
            (f"redis_ca_path: {path!r} is not a PEM CA certificate",),
        )
        with open(path, "wb") as f:
            f.write(self_signed_pem())
        self.assertEqual(self.problems(redis_ca_path=path), ())

    def test_skipping_tls_verification_is_warned_about(self) -> None:
        warnings = validate(redis_config(redis_insecure_skip_tls_verify=True))
        self.assertIn(
            "redis_insecure_skip_tls_verify is on: the Redis server's TLS certificate is not "
            "verified; do not use this in production",
            warnings,
        )

    def test_minimal_sessions_still_refuse_options_that_need_tokens(self) -> None:
        problems = self.problems(session_cookie_minimal=True, pass_access_token=True)
        self.assertEqual(len(problems), 1)
        self.assertIn("session_cookie_minimal: pass_access_token", problems[0])


class SettingsTests(SynchronousTestCase):
    def test_options_override_the_credentials_in_the_url(self) -> None:
        settings = RedisSettings.from_config(
            redis_config(
                redis_connection_url="rediss://u:from-url@cache:6380/3",
                redis_password="from-option",
            )
        )
        self.assertEqual(settings.mode, "standalone")
        self.assertEqual((settings.username, settings.password), ("u", "from-option"))
        self.assertEqual((settings.db, settings.tls), (3, True))
        self.assertNotIn("from-option", repr(settings))

    def test_sentinel_settings(self) -> None:
        settings = RedisSettings.from_config(
            redis_config(
                redis_connection_url="",
                redis_use_sentinel=True,
                redis_sentinel_master_name="mymaster",
                redis_sentinel_connection_urls=("redis://s1:26379", "redis://s2:26379"),
                redis_sentinel_password="sentinel-secret",
                redis_password="data-secret",
            )
        )
        self.assertEqual(settings.mode, "sentinel")
        self.assertEqual([s.host for s in settings.servers], ["s1", "s2"])
        self.assertEqual(settings.sentinel_password, "sentinel-secret")
        self.assertEqual(settings.password, "data-secret")

    def test_the_client_matches_the_mode_and_connects_only_when_started(self) -> None:
        clock = Clock()
        standalone = client_from_config(redis_config(), clock)
        self.assertIsInstance(standalone, SingleServerClient)
        cluster = client_from_config(
            redis_config(redis_use_cluster=True, redis_cluster_connection_urls=("redis://n:1",)),
            clock,
        )
        self.assertIsInstance(cluster, ClusterClient)
        for client in (standalone, cluster):
            failure = self.failureResultOf(
                Deferred.fromCoroutine(client.execute("GET", "k")), StoreUnavailable
            )
            self.assertIn("not started", str(failure.value))


class FakeFactory:
    """What Connection uses of a txredisapi RedisFactory: the handler, pool and size."""

    def __init__(self) -> None:
        self.handler = self
        self.pool: list[Any] = []
        self.size = 0
        self.sent: list[tuple[Any, ...]] = []
        self.replies: list[Deferred[Any]] = []
        self.disconnected = False

    def execute_command(self, *args: Any) -> Deferred[Any]:
        self.sent.append(args)
        d: Deferred[Any] = Deferred()
        self.replies.append(d)
        return d

    def disconnect(self) -> Deferred[None]:
        self.disconnected = True
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class ConnectionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.factory = FakeFactory()
        self.connection = Connection(self.factory, "cache:6379", self.clock)

    def start(self, *args: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(self.connection.execute(*args))

    def connect(self) -> FakeTransport:
        transport = FakeTransport()
        self.factory.pool.append(attrs.make_class("P", ["transport"])(transport))
        self.factory.size = 1
        return transport

    def test_commands_go_straight_to_the_first_ready_connection(self) -> None:
        ready = FakeFactory()  # a protocol: it has execute_command too
        ready.connected = 1  # type: ignore[attr-defined]
        self.factory.pool.append(ready)
        self.factory.size = 1
        d = self.start("GET", "k")
        self.assertEqual((ready.sent, self.factory.sent), ([("GET", "k")], []))
        ready.replies[0].callback("v")
        self.assertEqual(self.successResultOf(d), "v")
        ready.connected = 0  # type: ignore[attr-defined]  # lost: the handler waits for another
        self.start("GET", "k")
        self.assertEqual(self.factory.sent, [("GET", "k")])

    def test_a_reply_is_returned(self) -> None:
        self.connect()
        d = self.start("GET", "k")
        self.factory.replies[0].callback("v")
        self.assertEqual(self.successResultOf(d), "v")

    def test_an_error_reply_is_a_reply_error(self) -> None:
        self.connect()
        d = self.start("GET", "k")
        self.factory.replies[0].errback(txredisapi.ResponseError("MOVED 1 h:1"))
        self.assertEqual(str(self.failureResultOf(d, ReplyError).value), "MOVED 1 h:1")

    def test_a_lost_connection_is_store_unavailable(self) -> None:
        self.connect()
        d = self.start("GET", "k")
        self.factory.replies[0].errback(txredisapi.ConnectionError("Lost connection"))
        self.failureResultOf(d, StoreUnavailable)

    def test_no_connection_fails_after_the_connect_wait(self) -> None:
        d = self.start("PING")
        self.clock.advance(0.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertIn("not reachable", str(self.failureResultOf(d, StoreUnavailable).value))

    def test_a_hung_connection_times_out_and_is_dropped(self) -> None:
        transport = self.connect()
        d = self.start("GET", "k")
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertIn("did not answer", str(self.failureResultOf(d, StoreUnavailable).value))
        self.assertTrue(transport.aborted)

    def test_close_fails_the_waiting_commands(self) -> None:
        d = self.start("GET", "k")
        self.successResultOf(self.connection.close())
        self.assertTrue(self.factory.disconnected)
        self.failureResultOf(d, StoreUnavailable)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_idle_connections_are_dropped(self) -> None:
        transport = self.connect()
        self.clock.advance(10)
        self.connection.drop_if_idle(30)
        self.assertFalse(transport.aborted)
        self.clock.advance(20)
        self.connection.drop_if_idle(30)
        self.assertTrue(transport.aborted)

    def test_asking_precedes_the_command(self) -> None:
        self.connect()
        d = Deferred.fromCoroutine(self.connection.execute_asking("GET", "k"))
        self.assertEqual(self.factory.sent, [("ASKING",), ("GET", "k")])
        self.factory.replies[0].callback("OK")
        self.factory.replies[1].callback("v")
        self.assertEqual(self.successResultOf(d), "v")


class SingleServerClientTests(SynchronousTestCase):
    def test_readonly_drops_the_connection_so_it_finds_the_new_master(self) -> None:
        clock = Clock()
        factory = FakeFactory()
        transport = FakeTransport()
        factory.pool.append(attrs.make_class("P", ["transport"])(transport))
        factory.size = 1
        client = SingleServerClient(RedisSettings.from_config(redis_config()), clock)
        client._connection = Connection(factory, "cache:6379", clock)
        d = Deferred.fromCoroutine(client.execute("SET", "k", "v"))
        factory.replies[0].errback(
            txredisapi.ResponseError("READONLY You can't write against a read only replica.")
        )
        self.assertIn("READONLY", str(self.failureResultOf(d, StoreUnavailable).value))
        self.assertTrue(transport.aborted)
