"""Tests for oauthgate.sessions.redis_cluster: slots, routing, MOVED/ASK, topology refresh,
against fake nodes in memory (real clusters: tests/integration/test_redis_cluster.py)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from oauthgate.errors import StoreUnavailable
from oauthgate.sessions.redis_client import ReplyError
from oauthgate.sessions.redis_cluster import SLOTS, ClusterClient, command_key, key_slot

T = TypeVar("T")

A, B, C = ("10.0.0.1", 7000), ("10.0.0.2", 7000), ("10.0.0.3", 7000)


class KeySlotTests(SynchronousTestCase):
    def test_known_slots(self) -> None:
        # Values from the Redis Cluster specification and CLUSTER KEYSLOT.
        self.assertEqual(key_slot("123456789"), 0x31C3 % SLOTS)
        self.assertEqual(key_slot("foo"), 12182)
        self.assertEqual(key_slot("bar"), 5061)
        self.assertEqual(key_slot(b"foo"), 12182)

    def test_hash_tags(self) -> None:
        self.assertEqual(key_slot("{user1000}.following"), key_slot("{user1000}.followers"))
        self.assertEqual(key_slot("{user1000}.following"), key_slot("user1000"))
        self.assertEqual(key_slot("foo{}{bar}"), key_slot("foo{}{bar}"))
        self.assertNotEqual(key_slot("foo{}{bar}"), key_slot("bar"))
        self.assertEqual(key_slot("foo{{bar}}zap"), key_slot("{bar"))
        self.assertEqual(key_slot("foo{bar}{zap}"), key_slot("bar"))

    def test_the_key_a_command_is_routed_by(self) -> None:
        self.assertEqual(command_key(("GET", "k")), "k")
        self.assertEqual(command_key(("SET", "k", "v", "PX", 10)), "k")
        self.assertEqual(command_key(("EVAL", "script", 1, "k", "token")), "k")
        self.assertIsNone(command_key(("EVAL", "script", 0)))
        self.assertIsNone(command_key(("PING",)))


class FakeCluster:
    """Nodes that own slot ranges, hold keys, and answer like Redis Cluster."""

    def __init__(self) -> None:
        third = SLOTS // 3
        self.owner: list[tuple[str, int]] = [A] * third + [B] * third + [C] * (SLOTS - 2 * third)
        self.importing: dict[int, tuple[str, int]] = {}
        self.data: dict[tuple[str, int], dict[str, str]] = {A: {}, B: {}, C: {}}
        self.down: set[tuple[str, int]] = set()
        self.sent: list[tuple[tuple[str, int], tuple[Any, ...], bool]] = []
        self.closed: list[tuple[str, int]] = []

    def slots_reply(self) -> list[list[Any]]:
        reply: list[list[Any]] = []
        start = 0
        for slot in range(1, SLOTS + 1):
            if slot == SLOTS or self.owner[slot] != self.owner[start]:
                host, port = self.owner[start]
                reply.append([start, slot - 1, [host, port, "id"]])
                start = slot
        return reply

    def answer(self, node: tuple[str, int], args: tuple[Any, ...], asking: bool) -> Any:
        self.sent.append((node, args, asking))
        if node in self.down:
            raise StoreUnavailable(f"Redis at {node}: connection refused")
        name = args[0]
        if name == "CLUSTER":
            return self.slots_reply()
        if name == "PING":
            return "PONG"
        key = args[1] if name != "EVAL" else args[3]
        slot = key_slot(key)
        owner = self.owner[slot]
        here = self.data[node]
        if owner != node and not (asking and self.importing.get(slot) == node):
            raise ReplyError(f"MOVED {slot} {owner[0]}:{owner[1]}")
        if owner == node and slot in self.importing and key not in here:
            target = self.importing[slot]
            raise ReplyError(f"ASK {slot} {target[0]}:{target[1]}")
        if name == "GET":
            return here.get(key)
        if name == "SET":
            here[key] = args[2]
            return "OK"
        raise AssertionError(args)


class FakeNode:
    def __init__(self, cluster: FakeCluster, address: tuple[str, int]) -> None:
        self.cluster = cluster
        self.address = address

    async def execute(self, *args: Any) -> Any:
        return self.cluster.answer(self.address, args, False)

    async def execute_asking(self, *args: Any) -> Any:
        return self.cluster.answer(self.address, args, True)

    def drop_if_idle(self, idle: float) -> None:
        pass

    def close(self) -> Deferred[None]:
        self.cluster.closed.append(self.address)
        return succeed(None)


class ClusterClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.cluster = FakeCluster()
        self.client = ClusterClient([A], self.connect, self.clock)
        self.client.start()

    def connect(self, host: str, port: int) -> FakeNode:
        return FakeNode(self.cluster, (host, port))

    def get(self, awaitable: Awaitable[T]) -> T:
        async def wait() -> T:
            return await awaitable

        return self.successResultOf(Deferred.fromCoroutine(wait()))

    def fails(self, awaitable: Awaitable[Any]) -> StoreUnavailable:
        async def wait() -> Any:
            return await awaitable

        failure = self.failureResultOf(Deferred.fromCoroutine(wait()), StoreUnavailable)
        return failure.value  # type: ignore[no-any-return]

    def test_commands_go_to_the_node_owning_the_slot(self) -> None:
        self.assertEqual(self.client.masters, (A, B, C))
        for key in ("foo", "bar", "123456789"):
            self.get(self.client.execute("SET", key, "v"))
            owner = self.cluster.owner[key_slot(key)]
            self.assertEqual(self.cluster.data[owner][key], "v")
            self.assertEqual(self.cluster.sent[-1][0], owner)

    def test_a_moved_slot_is_followed_and_remembered(self) -> None:
        slot = key_slot("foo")
        old = self.cluster.owner[slot]
        self.get(self.client.execute("SET", "foo", "v"))
        new = A if old != A else B
        self.cluster.owner[slot] = new
        self.cluster.data[new]["foo"] = self.cluster.data[old].pop("foo")
        self.assertEqual(self.get(self.client.execute("GET", "foo")), "v")
        self.assertEqual(self.client.node_for("foo"), new)
        self.cluster.sent.clear()
        self.get(self.client.execute("GET", "foo"))
        self.assertEqual([s[0] for s in self.cluster.sent], [new])

    def test_ask_is_followed_once_without_changing_the_map(self) -> None:
        slot = key_slot("foo")
        old = self.cluster.owner[slot]
        self.get(self.client.execute("SET", "foo", "v"))
        new = A if old != A else B
        self.cluster.importing[slot] = new
        self.cluster.data[new]["foo"] = self.cluster.data[old].pop("foo")
        self.cluster.sent.clear()
        self.assertEqual(self.get(self.client.execute("GET", "foo")), "v")
        self.assertEqual(
            [(node, asking) for node, _, asking in self.cluster.sent], [(old, False), (new, True)]
        )
        self.assertEqual(self.client.node_for("foo"), old)

    def test_endless_redirects_are_store_unavailable(self) -> None:
        slot = key_slot("foo")

        def ping_pong(node: tuple[str, int], args: tuple[Any, ...], asking: bool) -> Any:
            if args[0] == "CLUSTER":
                return self.cluster.slots_reply()
            other = B if node == A else A
            raise ReplyError(f"MOVED {slot} {other[0]}:{other[1]}")

        self.cluster.answer = ping_pong  # type: ignore[method-assign]
        self.fails(self.client.execute("GET", "foo"))

    def test_a_node_that_is_down_is_store_unavailable_and_triggers_a_refresh(self) -> None:
        key = next(k for k in ("foo", "bar", "baz", "qux") if self.cluster.owner[key_slot(k)] == B)
        self.cluster.down.add(B)
        self.clock.advance(2)
        self.cluster.sent.clear()
        self.fails(self.client.execute("GET", key))
        self.assertIn((A, ("CLUSTER", "SLOTS"), False), self.cluster.sent)
        # The cluster moved B's slots to C; the refresh found that out.
        self.cluster.owner = [C if o == B else o for o in self.cluster.owner]
        self.cluster.down.clear()
        self.clock.advance(2)
        self.cluster.down.add(B)
        self.fails(self.client.execute("GET", key))
        self.assertEqual(self.client.masters, (A, C))
        self.assertIsNone(self.get(self.client.execute("GET", key)))
        self.assertIn(B, self.cluster.closed)

    def test_refreshes_are_rate_limited(self) -> None:
        self.cluster.down.add(B)
        key = next(k for k in ("foo", "bar", "baz", "qux") if self.cluster.owner[key_slot(k)] == B)
        self.clock.advance(2)
        for _ in range(5):
            self.fails(self.client.execute("GET", key))
        slot_queries = [s for s in self.cluster.sent if s[1][0] == "CLUSTER"]
        self.assertEqual(len(slot_queries), 2)  # at start, then one after the failures

    def test_ping_asks_every_master(self) -> None:
        self.get(self.client.ping())
        self.assertEqual({s[0] for s in self.cluster.sent if s[1] == ("PING",)}, {A, B, C})
        self.cluster.down.add(C)
        self.fails(self.client.ping())

    def test_seeds_are_tried_in_turn(self) -> None:
        self.cluster.down.add(A)
        client = ClusterClient([A, B], self.connect, self.clock)
        client.start()
        self.assertEqual(client.masters, (A, B, C))

    def test_no_node_answering_is_store_unavailable(self) -> None:
        self.cluster.down.update({A, B, C})
        client = ClusterClient([A], self.connect, self.clock)
        client.start()
        self.fails(client.execute("GET", "foo"))

    def test_stop_closes_the_nodes_and_refuses_commands(self) -> None:
        self.get(self.client.ping())
        self.successResultOf(self.client.stop())
        self.assertEqual(sorted(self.cluster.closed), [A, B, C])
        self.fails(self.client.execute("GET", "foo"))
