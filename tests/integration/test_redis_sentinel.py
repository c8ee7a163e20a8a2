"""The Redis session store through Sentinel: one master, one replica, three sentinels, and
failovers while a client keeps using sessions.

Marked ``integration``; never skipped: without redis-server these tests fail.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from oauthgate.config.options import Config
from oauthgate.errors import StoreUnavailable
from oauthgate.session import Session
from oauthgate.sessions.crypto import Sealer
from oauthgate.sessions.redis_client import client_from_config
from oauthgate.sessions.redis_store import RedisSessionStore
from tests.integration.redis_servers import SentinelGroup

pytestmark = pytest.mark.integration

SECRET = b"e" * 32


def session(n: int) -> Session:
    return Session(user=f"user{n}", email=f"user{n}@example.com", access_token=f"at-{n}")


class SentinelStoreTests(TestCase):
    timeout = 90

    def setUp(self) -> None:
        self.group = SentinelGroup(Path(self.mktemp()))
        self.addCleanup(self.group.stop)
        self.group.start()
        config = attrs.evolve(
            Config(),
            session_store_type="redis",
            redis_use_sentinel=True,
            redis_sentinel_master_name=self.group.name,
            redis_sentinel_connection_urls=tuple(self.group.sentinel_urls),
        )
        self.store = RedisSessionStore(
            client_from_config(config, reactor),
            Sealer(SECRET),
            reactor,
            cookie_name="_oauth2_proxy",
            lifetime=3600.0,
        )
        self.store.start()
        self.addCleanup(self.store.stop)

    async def use_sessions_through(self, event: Any, values: dict[int, str]) -> dict[str, Any]:
        """Keep loading the sessions in ``values`` (written and replicated before) and
        saving new ones while ``event()`` brings about a failover; returns what was seen:
        StoreUnavailable failures, and seconds until the new master was in use."""
        old_master = self.group.master_port()
        event()
        started = time.monotonic()
        failures, first_failure, recovered = 0, None, None
        moved = False
        n = 1000
        while time.monotonic() - started < 40:
            # Only an iteration that begins once Sentinel names the new master counts as
            # using it.
            moved = moved or self.group.master_port() != old_master
            try:
                for i, value in values.items():
                    self.assertEqual(await self.store.load(value), session(i), f"session {i}")
                # Writes during the failover may be lost (replication is asynchronous);
                # only their success is checked.
                await self.store.save(session(n))
                n += 1
                if moved:
                    recovered = time.monotonic() - started
                    break
            except StoreUnavailable:
                failures += 1
                if first_failure is None:
                    first_failure = time.monotonic() - started
            await deferLater(reactor, 0.05, lambda: None)
        self.assertIsNotNone(recovered, "the store did not follow the failover within 40 s")
        return {"failures": failures, "first_failure": first_failure, "recovered": recovered}

    async def saved_and_replicated(self, count: int) -> dict[int, str]:
        values = {i: await self.store.save(session(i)) for i in range(count)}
        replicas = await self.store.client.execute("WAIT", 1, 2000)
        self.assertEqual(replicas, 1)
        return values

    def test_sessions_survive_a_sentinel_failover(self) -> Deferred[None]:
        async def go() -> None:
            await self.store.check()
            values = await self.saved_and_replicated(20)
            seen = await self.use_sessions_through(self.group.failover, values)
            self.assertEqual(self.group.master_port(), self.group.replica.port)
            # Every session written before the failover is still there, and new writes go
            # to the new master.
            for i, value in values.items():
                self.assertEqual(await self.store.load(value), session(i))
            fresh = await self.store.save(session(999))
            self.assertEqual(await self.store.load(fresh), session(999))
            self.assertEqual(self.group.replica.cli("ROLE").split()[0], "master")
            await self.store.check()
            print(f"\nsentinel failover (SENTINEL FAILOVER): {seen}")

        return Deferred.fromCoroutine(go())

    def test_sessions_survive_the_master_being_killed(self) -> Deferred[None]:
        async def go() -> None:
            values = await self.saved_and_replicated(10)
            seen = await self.use_sessions_through(self.group.master.kill, values)
            self.assertGreater(seen["failures"], 0)
            for i, value in values.items():
                self.assertEqual(await self.store.load(value), session(i))
            await self.store.check()
            print(f"\nsentinel failover (master killed): {seen}")

        return Deferred.fromCoroutine(go())
