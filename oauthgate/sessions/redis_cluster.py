"""A small Redis Cluster client: slot routing, MOVED/ASK redirects, topology refresh.

txredisapi has no cluster support, so this layer sits on its per-node connections
(:class:`oauthgate.sessions.redis_client.Connection`). The slot map comes from
``CLUSTER SLOTS`` (asked of any known node, then the seeds). A ``MOVED`` reply updates
the slot at once and refreshes the whole map in the background (at most once a second);
an ``ASK`` reply sends the command once to the named node, preceded by ``ASKING``. A node
that cannot be reached triggers a refresh too, so a failed-over master is followed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from oauthgate.errors import StoreUnavailable
from oauthgate.sessions.redis_client import Arg, ReplyError, close_all, idle_loop

__all__ = ["SLOTS", "ClusterClient", "NodeConnection", "command_key", "key_slot"]

#: Number of hash slots of a Redis Cluster.
SLOTS = 16384
#: Redirects followed for one command before giving up (a resharding in a loop).
MAX_REDIRECTS = 5
#: Least seconds between two background refreshes of the slot map.
REFRESH_INTERVAL = 1.0

Address = tuple[str, int]


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC16 = _crc16_table()


def _crc16(data: bytes) -> int:
    """CRC-16/XMODEM, the checksum Redis Cluster hashes keys with."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ byte) & 0xFF]
    return crc


def key_slot(key: str | bytes) -> int:
    """The hash slot of ``key``; a non-empty ``{tag}`` alone is hashed if present."""
    raw = key.encode("utf-8") if isinstance(key, str) else key
    start = raw.find(b"{")
    if start != -1:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return _crc16(raw) % SLOTS


def command_key(args: Sequence[Arg]) -> str | bytes | None:
    """The key a command is routed by: ``EVAL``'s first key, else the first argument after
    the command name; None for commands without a key (``PING``)."""
    name = str(args[0]).upper()
    if name in ("EVAL", "EVALSHA"):
        if len(args) > 3 and int(args[2]) > 0:
            key = args[3]
            return key if not isinstance(key, int) else str(key)
        return None
    if name in ("PING", "INFO", "CLUSTER", "TIME", "DBSIZE") or len(args) < 2:
        return None
    key = args[1]
    return key if not isinstance(key, int) else str(key)


class NodeConnection(Protocol):
    """One node's connection, as :class:`~oauthgate.sessions.redis_client.Connection`."""

    async def execute(self, *args: Arg) -> Any: ...

    async def execute_asking(self, *args: Arg) -> Any: ...

    def drop_if_idle(self, idle: float) -> None: ...

    def close(self) -> Deferred[None]: ...


def _redirect(message: str) -> tuple[str, int, Address] | None:
    """``("MOVED"|"ASK", slot, (host, port))`` of a redirect reply, else None."""
    parts = message.split()
    if len(parts) != 3 or parts[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = parts[2].rpartition(":")
    try:
        return parts[0], int(parts[1]), (host.strip("[]"), int(port))
    except ValueError:
        return None


class ClusterClient:
    """A :class:`~oauthgate.sessions.redis_client.RedisClient` for Redis Cluster.

    ``connect(host, port)`` makes a node connection (credentials and TLS are its
    business). Every failure is StoreUnavailable; keyless commands go to any master,
    :meth:`ping` to every master.
    """

    log = Logger()

    def __init__(
        self,
        seeds: Sequence[Address],
        connect: Callable[[str, int], NodeConnection],
        clock: IReactorTime,
        *,
        idle_timeout: float = 0.0,
    ) -> None:
        if not seeds:
            raise ValueError("a cluster client needs at least one seed node")
        self._seeds = tuple(seeds)
        self._connect = connect
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._nodes: dict[Address, NodeConnection] = {}
        self._slots: list[Address | None] = [None] * SLOTS
        self._masters: tuple[Address, ...] = ()
        self._waiters: list[Deferred[None]] = []
        self._last_refresh = float("-inf")
        self._started = False
        self._idle: LoopingCall | None = None

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._started = True
        if self._idle_timeout > 0 and self._idle is None:
            self._idle = idle_loop(self._clock, self._idle_timeout, self._close_idle)
        self._background_refresh(force=True)

    def stop(self) -> Deferred[None]:
        self._started = False
        if self._idle is not None and self._idle.running:
            self._idle.stop()
        nodes, self._nodes = self._nodes, {}
        return close_all(node.close() for node in nodes.values())

    def _close_idle(self) -> None:
        for node in self._nodes.values():
            node.drop_if_idle(self._idle_timeout)

    @property
    def masters(self) -> tuple[Address, ...]:
        """The masters serving slots, as last seen (for tests and logs)."""
        return self._masters

    def node_for(self, key: str | bytes) -> Address | None:
        """The node the slot map sends ``key`` to now (None before the first refresh)."""
        return self._slots[key_slot(key)]

    # --- commands ------------------------------------------------------------------

    async def execute(self, *args: Arg) -> Any:
        if not self._started:
            raise StoreUnavailable("the Redis client is not started")
        if not self._masters:
            await self.refresh()
        key = command_key(args)
        slot = key_slot(key) if key is not None else None
        address = self._address(slot)
        asking = False
        for _ in range(MAX_REDIRECTS + 1):
            node = self._node(address)
            try:
                if asking:
                    return await node.execute_asking(*args)
                return await node.execute(*args)
            except StoreUnavailable:
                self._background_refresh()
                raise
            except ReplyError as e:
                redirect = _redirect(str(e))
                if redirect is None:
                    if str(e).startswith(("CLUSTERDOWN", "TRYAGAIN")):
                        self._background_refresh()
                    raise StoreUnavailable(f"Redis Cluster node {_show(address)}: {e}") from None
                kind, moved_slot, target = redirect
                if not target[0]:
                    target = (address[0], target[1])
                if kind == "MOVED":
                    self._slots[moved_slot] = target
                    self._background_refresh()
                    asking = False
                else:
                    asking = True
                address = target
        raise StoreUnavailable(
            f"Redis Cluster: more than {MAX_REDIRECTS} redirects for one command"
        )

    async def ping(self) -> None:
        """Every master answers PING (so a cluster missing a master is not ready)."""
        if not self._started:
            raise StoreUnavailable("the Redis client is not started")
        if not self._masters:
            await self.refresh()
        for address in self._masters:
            await self._ping(address)

    async def _ping(self, address: Address) -> None:
        try:
            await self._node(address).execute("PING")
        except ReplyError as e:
            raise StoreUnavailable(f"Redis Cluster node {_show(address)}: {e}") from None
        except StoreUnavailable:
            self._background_refresh()
            raise

    def _address(self, slot: int | None) -> Address:
        if slot is None:
            return self._masters[0]
        address = self._slots[slot]
        if address is None:
            self._background_refresh()
            raise StoreUnavailable(f"Redis Cluster: no node serves slot {slot}")
        return address

    def _node(self, address: Address) -> NodeConnection:
        node = self._nodes.get(address)
        if node is None:
            if not self._started:
                raise StoreUnavailable("the Redis client is stopped")
            node = self._nodes[address] = self._connect(*address)
        return node

    # --- topology ------------------------------------------------------------------

    def refresh(self) -> Deferred[None]:
        """Reload the slot map (one refresh at a time; callers share its outcome)."""
        mine: Deferred[None] = Deferred()
        self._waiters.append(mine)
        if len(self._waiters) == 1:
            self._last_refresh = self._clock.seconds()
            Deferred.fromCoroutine(self._load_slots()).addBoth(self._refreshed)
        return mine

    def _refreshed(self, result: Failure | None) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(None)

    def _background_refresh(self, *, force: bool = False) -> None:
        if self._waiters:
            return
        if not force and self._clock.seconds() - self._last_refresh < REFRESH_INTERVAL:
            return
        d = self.refresh()
        d.addErrback(
            lambda f: self.log.error(
                "Cannot load the Redis Cluster slot map: {error}", error=f.getErrorMessage()
            )
        )

    async def _load_slots(self) -> None:
        candidates = list(dict.fromkeys([*self._masters, *self._nodes, *self._seeds]))
        errors = []
        for address in candidates:
            try:
                reply = await self._node(address).execute("CLUSTER", "SLOTS")
                self._apply(reply, address)
                return
            except (StoreUnavailable, ReplyError, ValueError, TypeError, IndexError) as e:
                errors.append(f"{_show(address)}: {e}")
        raise StoreUnavailable(
            "Redis Cluster: no node answered CLUSTER SLOTS (" + "; ".join(errors) + ")"
        )

    def _apply(self, reply: Any, source: Address) -> None:
        slots: list[Address | None] = [None] * SLOTS
        masters: dict[Address, None] = {}
        for entry in reply:
            start, end, master = int(entry[0]), int(entry[1]), entry[2]
            host = str(master[0]) or source[0]
            address = (host, int(master[1]))
            masters[address] = None
            for slot in range(start, end + 1):
                slots[slot] = address
        if not masters:
            raise ValueError("the cluster serves no slots")
        before = set(self._masters)
        self._slots = slots
        self._masters = tuple(masters)
        if before and set(self._masters) != before:
            self.log.info(
                "Redis Cluster masters are now {masters}",
                masters=", ".join(_show(a) for a in self._masters),
            )
        for address in [a for a in self._nodes if a not in masters and a not in self._seeds]:
            self._nodes.pop(address).close()


def _show(address: Address) -> str:
    return f"{address[0]}:{address[1]}"
