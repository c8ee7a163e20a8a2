"""The Redis session store on a real Redis Cluster of three masters: sessions spread over
slots, and MOVED (after resharding) and ASK (during a migration) are followed.

Marked ``integration``; never skipped: without redis-server these tests fail.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from oauthgate.config.options import Config
from oauthgate.errors import StoreUnavailable
from oauthgate.session import Session
from oauthgate.sessions.crypto import Sealer
from oauthgate.sessions.redis_client import client_from_config
from oauthgate.sessions.redis_cluster import ClusterClient, key_slot
from oauthgate.sessions.redis_store import RedisSessionStore
from tests.integration.redis_servers import Cluster

pytestmark = pytest.mark.integration

SECRET = b"f" * 32
COOKIE = "_oauth2_proxy"


def session(n: int) -> Session:
    return Session(user=f"user{n}", email=f"user{n}@example.com", refresh_token=f"rt-{n}")


class ClusterStoreTests(TestCase):
    timeout = 90

    def setUp(self) -> None:
        self.cluster = Cluster(Path(self.mktemp()))
        self.addCleanup(self.cluster.stop)
        self.cluster.start()
        config = attrs.evolve(
            Config(),
            session_store_type="redis",
            redis_use_cluster=True,
            redis_cluster_connection_urls=(self.cluster.urls[0],),
        )
        client = client_from_config(config, reactor)
        assert isinstance(client, ClusterClient)
        self.client = client
        self.store = RedisSessionStore(
            client, Sealer(SECRET), reactor, cookie_name=COOKIE, lifetime=3600.0
        )
        self.store.start()
        self.addCleanup(self.store.stop)

    def key_of(self, value: str) -> str:
        ticket = self.store._open(value)
        assert ticket is not None
        return ticket.key(COOKIE)

    def test_sessions_spread_over_the_masters(self) -> Deferred[None]:
        async def go() -> None:
            values = {i: await self.store.save(session(i)) for i in range(60)}
            for i, value in values.items():
                self.assertEqual(await self.store.load(value), session(i))
            counts = [int(node.cli("DBSIZE")) for node in self.cluster.nodes]
            self.assertEqual(sum(counts), 60)
            self.assertTrue(all(c > 0 for c in counts), counts)
            self.assertEqual(len(self.client.masters), 3)
            await self.store.check()
            await self.store.clear(values[0])
            self.assertIsNone(await self.store.load(values[0]))

        return Deferred.fromCoroutine(go())

    def test_a_moved_slot_is_followed(self) -> Deferred[None]:
        async def go() -> None:
            value = await self.store.save(session(1))
            key = self.key_of(value)
            slot = key_slot(key)
            source = self.cluster.owner(slot)
            target = next(n for n in self.cluster.nodes if n is not source)
            self.assertEqual(self.client.node_for(key), ("127.0.0.1", source.port))
            self.cluster.move_slot(slot, target)
            # The client still sends the key to the old owner, which answers MOVED.
            self.assertEqual(await self.store.load(value), session(1))
            self.assertEqual(self.client.node_for(key), ("127.0.0.1", target.port))
            refreshed = await self.store.save(session(2), value)
            self.assertEqual(await self.store.load(refreshed), session(2))
            self.assertEqual(target.cli("EXISTS", key).strip(), "1")

        return Deferred.fromCoroutine(go())

    def test_a_slot_being_migrated_is_followed_with_ask(self) -> Deferred[None]:
        async def go() -> None:
            value = await self.store.save(session(3))
            key = self.key_of(value)
            slot = key_slot(key)
            source = self.cluster.owner(slot)
            target = next(n for n in self.cluster.nodes if n is not source)
            self.cluster.begin_move(slot, target)
            # The key has moved, the slot not yet: the old owner answers ASK.
            self.assertEqual(await self.store.load(value), session(3))
            self.assertEqual(self.client.node_for(key), ("127.0.0.1", source.port))
            self.cluster.finish_move(slot, target)
            self.assertEqual(await self.store.load(value), session(3))

        return Deferred.fromCoroutine(go())

    def test_not_ready_while_a_master_is_down(self) -> Deferred[None]:
        async def go() -> None:
            await self.store.check()
            self.cluster.nodes[2].kill()
            with self.assertRaises(StoreUnavailable):
                await self.store.check()

        return Deferred.fromCoroutine(go())
