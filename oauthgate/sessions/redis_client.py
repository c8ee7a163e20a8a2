"""Connections to Redis for the session store: standalone, TLS and Sentinel, over txredisapi.

txredisapi speaks the protocol, pools and reconnects (with backoff) and finds a Sentinel
master; it always schedules its own timers on the global reactor, so it is imported
lazily, here and in nothing but this module, and only once a client is started. Every
command additionally times out on the injected clock, and every failure reaches callers
as :class:`~oauthgate.errors.StoreUnavailable`: connection refused, a timeout, a
failover in progress, an error reply.

Redis Cluster is :mod:`oauthgate.sessions.redis_cluster`, built on the connections here.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlsplit

import attrs
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, gatherResults, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from oauthgate.errors import StoreUnavailable
from oauthgate.tls import client_tls_policy

if TYPE_CHECKING:
    from oauthgate.config.options import Config

__all__ = [
    "COMMAND_TIMEOUT",
    "CONNECT_WAIT",
    "Connection",
    "RedisClient",
    "RedisSettings",
    "RedisURL",
    "ReplyError",
    "SingleServerClient",
    "client_from_config",
    "close_all",
    "idle_loop",
    "parse_url",
    "redis_problems",
]

log = Logger()

#: Seconds a command may take once sent, or while a connection is up (then Redis is
#: considered unreachable and the request gets a 503).
COMMAND_TIMEOUT = 2.0
#: Seconds a command waits for a connection when none is up (start-up, reconnecting).
CONNECT_WAIT = 1.0
_DEFAULT_PORT = 6379
_SCHEMES = ("redis", "rediss")
# Error replies after which the connection is no longer to the master: drop it, so the
# reconnect asks Sentinel (or DNS) again.
_NOT_MASTER = ("READONLY", "MASTERDOWN", "LOADING")

Arg = str | bytes | int


class ReplyError(Exception):
    """Redis answered a command with an error reply (``MOVED 12 host:port``, ``READONLY``)."""


@attrs.frozen
class RedisURL:
    """One parsed ``redis://[user:password@]host[:port][/db]`` (``rediss://``: TLS)."""

    host: str
    port: int = _DEFAULT_PORT
    db: int = 0
    username: str = ""
    password: str = attrs.field(default="", repr=False)
    tls: bool = False


def parse_url(text: str) -> RedisURL:
    """The parts of a Redis URL, as go-redis (and so oauth2-proxy) reads them.

    Raises:
        ValueError: not a ``redis://`` or ``rediss://`` URL with a host; the message never
            contains the password.
    """
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        raise ValueError(
            "is not a valid URL; expected redis://[user:password@]host:6379/0"
        ) from None
    scheme = parts.scheme.lower()
    if scheme == "unix":
        raise ValueError("unix:// sockets are not supported; use redis://host:port")
    if scheme not in _SCHEMES:
        raise ValueError(
            "must start with redis:// (or rediss:// for TLS), e.g. redis://host:6379/0"
        )
    if not parts.hostname:
        raise ValueError("needs a host, e.g. redis://host:6379/0")
    if parts.query or parts.fragment:
        raise ValueError("query parameters are not supported; use the --redis-* options")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"the database must be a number (/0 .. /15), got /{path}")
    return RedisURL(
        host=parts.hostname,
        port=port or _DEFAULT_PORT,
        db=int(path) if path else 0,
        username=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        tls=scheme == "rediss",
    )


@attrs.frozen
class RedisSettings:
    """How to reach Redis, from the ``redis_*`` options.

    ``mode`` is ``standalone``, ``sentinel`` or ``cluster``; ``servers`` the server (one),
    the Sentinels, or the cluster seed nodes. The data connections authenticate with
    ``username``/``password`` (``--redis-username``/``--redis-password``, else the URL's);
    Sentinels with ``sentinel_password`` (else their URL's password).
    """

    mode: str
    servers: tuple[RedisURL, ...]
    db: int = 0
    username: str = ""
    password: str = attrs.field(default="", repr=False)
    tls: bool = False
    master_name: str = ""
    sentinel_password: str = attrs.field(default="", repr=False)
    ca_path: str = ""
    insecure_skip_verify: bool = False
    idle_timeout: float = 0.0

    @classmethod
    def from_config(cls, config: Config) -> RedisSettings:
        """Raises ValueError if the options are inconsistent (see :func:`redis_problems`)."""
        problems = redis_problems(config)
        if problems:
            raise ValueError("; ".join(problems))
        if config.redis_use_sentinel:
            mode, urls = "sentinel", config.redis_sentinel_connection_urls
        elif config.redis_use_cluster:
            mode, urls = "cluster", config.redis_cluster_connection_urls
        else:
            mode, urls = "standalone", (config.redis_connection_url,)
        servers = tuple(parse_url(u) for u in urls)
        # The data connections' URL: the standalone one, or the connection URL when given
        # in sentinel/cluster mode (credentials, db, TLS), else the first server's.
        data = (
            parse_url(config.redis_connection_url)
            if config.redis_connection_url and mode != "standalone"
            else servers[0]
        )
        return cls(
            mode=mode,
            servers=servers,
            db=data.db,
            username=config.redis_username or data.username,
            password=config.redis_password or data.password,
            tls=data.tls,
            master_name=config.redis_sentinel_master_name,
            sentinel_password=config.redis_sentinel_password,
            ca_path=config.redis_ca_path,
            insecure_skip_verify=config.redis_insecure_skip_tls_verify,
            idle_timeout=float(config.redis_connection_idle_timeout),
        )


def redis_problems(config: Config) -> list[str]:
    """Every problem with the ``redis_*`` options, one line each (for config validation)."""
    problems: list[str] = []
    if config.redis_use_sentinel and config.redis_use_cluster:
        problems.append("redis_use_sentinel: cannot be used with redis_use_cluster; choose one")
    if config.redis_use_sentinel:
        if not config.redis_sentinel_master_name:
            problems.append(
                "redis_sentinel_master_name: required with redis_use_sentinel "
                "(--redis-sentinel-master-name)"
            )
        if not config.redis_sentinel_connection_urls:
            problems.append(
                "redis_sentinel_connection_urls: required with redis_use_sentinel, "
                "e.g. redis://sentinel1:26379"
            )
    if config.redis_use_cluster and not config.redis_cluster_connection_urls:
        problems.append(
            "redis_cluster_connection_urls: required with redis_use_cluster, "
            "e.g. redis://node1:6379"
        )
    if not (config.redis_use_sentinel or config.redis_use_cluster) and not (
        config.redis_connection_url
    ):
        problems.append(
            "redis_connection_url: required with session_store_type redis, "
            "e.g. redis://127.0.0.1:6379/0 (or use Sentinel or Cluster)"
        )
    lists = (
        ("redis_connection_url", (config.redis_connection_url,)),
        ("redis_sentinel_connection_urls", config.redis_sentinel_connection_urls),
        ("redis_cluster_connection_urls", config.redis_cluster_connection_urls),
    )
    for key, urls in lists:
        for url in urls:
            if not url:
                continue
            try:
                parsed = parse_url(url)
            except ValueError as e:
                problems.append(f"{key}: {_shown(url)!r} {e}")
                continue
            if key == "redis_cluster_connection_urls" and parsed.db:
                problems.append(f"{key}: {_shown(url)!r}: Redis Cluster has only database 0")
    path = config.redis_ca_path
    if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
        problems.append(f"redis_ca_path: {path!r} does not exist or is not a readable file")
    elif path:
        try:
            client_tls_policy(ca_files=(path,))
        except (OSError, ValueError) as e:
            problems.append(f"redis_ca_path: {e}")
    if config.redis_connection_idle_timeout < 0:
        problems.append("redis_connection_idle_timeout: must be 0 (off) or a number of seconds")
    if config.redis_expiration < 0:
        problems.append("redis_expiration: must be 0 (use cookie_expire) or a positive duration")
    return problems


def _shown(url: str) -> str:
    """``url`` without its password, fit for a message."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username or ''}:***@{netloc}").geturl()


class RedisClient(Protocol):
    """What the session store needs from Redis: commands, a health check, a lifecycle.

    ``execute`` sends one command (``"GET", key``) and returns its reply (bulk replies as
    str, integers as int, None for nil); it raises StoreUnavailable for any failure.
    Commands naming a key carry it as the first argument (``EVAL`` as its first key), so
    a cluster client can route them.
    """

    def start(self) -> None: ...

    def stop(self) -> Deferred[None]: ...

    async def execute(self, *args: Arg) -> Any: ...

    async def ping(self) -> None: ...


class Connection:
    """A txredisapi connection pool to one server (reconnecting, with backoff).

    Commands time out on ``clock``: ``timeout`` seconds while a connection is up (a
    timeout then drops the pool's connections, so a hung one is replaced), ``wait``
    seconds while none is. Error replies raise ReplyError, everything else
    StoreUnavailable.
    """

    def __init__(
        self,
        factory: Any,
        address: str,
        clock: IReactorTime,
        *,
        timeout: float = COMMAND_TIMEOUT,
        wait: float = CONNECT_WAIT,
    ) -> None:
        self._factory = factory
        self._handler = factory.handler
        self.address = address
        self._clock = clock
        self._timeout = timeout
        self._wait = wait
        self.last_used = clock.seconds()
        self._pending: set[Deferred[Any]] = set()

    @property
    def connected(self) -> bool:
        return bool(self._factory.size)

    def send(self, *args: Arg) -> Deferred[Any]:
        """The raw txredisapi Deferred of one command (no timeout, no error mapping)."""
        self.last_used = self._clock.seconds()
        pool = self._factory.pool
        if pool and getattr(pool[0], "connected", 0):
            # The connection txredisapi's handler would pick (the first ready one),
            # without the Deferreds its connection queue costs per command.
            d: Deferred[Any] = pool[0].execute_command(*args)
        else:
            d = self._handler.execute_command(*args)  # waits for a connection
        return d

    async def execute(self, *args: Arg) -> Any:
        return await self.finish(self.send(*args))

    async def execute_asking(self, *args: Arg) -> Any:
        """``ASKING`` then the command, back to back on the one connection of this pool."""
        asking = self.send("ASKING")
        asking.addErrback(lambda _: None)
        return await self.finish(self.send(*args))

    async def finish(self, d: Deferred[Any]) -> Any:
        import txredisapi

        timeout = self._timeout if self.connected else self._wait
        d.addTimeout(timeout, self._clock)
        self._pending.add(d)
        try:
            return await d
        except CancelledError:
            raise StoreUnavailable(f"Redis connection to {self.address} closed") from None
        except txredisapi.ResponseError as e:
            raise ReplyError(str(e)) from None
        except TimeoutError:
            if self.connected:
                self.drop()
                raise StoreUnavailable(
                    f"Redis at {self.address} did not answer within {timeout:g}s"
                ) from None
            raise StoreUnavailable(f"Redis at {self.address} is not reachable") from None
        except Exception as e:
            raise StoreUnavailable(f"Redis at {self.address}: {_describe(e)}") from None
        finally:
            self._pending.discard(d)

    def drop(self) -> None:
        """Close the live connections; the pool reconnects (and rediscovers the master)."""
        for protocol in list(self._factory.pool):
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.abortConnection()

    def drop_if_idle(self, idle: float) -> None:
        if self.connected and self._clock.seconds() - self.last_used >= idle:
            log.debug("Closing Redis connections to {address} idle for {idle}s",
                      address=self.address, idle=idle)  # fmt: skip
            self.drop()
            self.last_used = self._clock.seconds()

    def close(self) -> Deferred[None]:
        """Stop reconnecting, close the connections, fail the commands still waiting."""
        for pending in list(self._pending):
            pending.cancel()
        d: Deferred[None] = self._factory.disconnect()
        d.addErrback(lambda _: None)
        return d


def _log_connect_failure(failure: Failure, address: str) -> None:
    log.error(
        "Redis at {address} refused the connection: {error}",
        address=address,
        error=failure.getErrorMessage(),
    )


def _describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@functools.cache
def _factories() -> tuple[type[Any], type[Any]]:
    """txredisapi's pool factories with a short reconnect backoff (0.1 s growing to 2 s
    instead of 1 s to 10 s): a restarted Redis or a new master is used within seconds."""
    import txredisapi

    class Factory(txredisapi.RedisFactory):  # type: ignore[misc]
        initialDelay = 0.1
        maxDelay = 2.0

    class SentinelFactory(txredisapi.SentinelConnectionFactory):  # type: ignore[misc]
        initialDelay = 0.1
        maxDelay = 2.0

    return Factory, SentinelFactory


@attrs.define
class Connector:
    """Makes :class:`Connection` pools from settings: credentials, TLS, timeouts."""

    settings: RedisSettings
    reactor: Any
    timeout: float = COMMAND_TIMEOUT
    wait: float = CONNECT_WAIT

    _policy: IPolicyForHTTPS | None = attrs.field(default=None, init=False)

    def endpoint(self, host: str, port: int, tls: bool) -> IStreamClientEndpoint:
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self.reactor, host, port, timeout=self.timeout
        )
        if tls:
            policy = self._policy
            if policy is None:  # once, not per connection attempt (the CA file is read)
                policy = self._policy = client_tls_policy(
                    insecure_skip_verify=self.settings.insecure_skip_verify,
                    ca_files=(self.settings.ca_path,) if self.settings.ca_path else (),
                )
            creator = policy.creatorForNetloc(host.encode("idna"), port)
            endpoint = wrapClientTLS(creator, endpoint)
        return endpoint

    def connect(
        self,
        host: str,
        port: int,
        *,
        tls: bool,
        username: str,
        password: str,
        db: int = 0,
        poolsize: int = 1,
    ) -> Connection:
        """A started pool of ``poolsize`` connections to ``host:port``."""
        import txredisapi

        factory_class, _ = _factories()
        factory = factory_class(
            f"{host}:{port}",
            db or None,
            poolsize,
            True,  # lazy: the handler is usable before the connections are up
            txredisapi.ConnectionHandler,
            "utf-8",
            password or None,
            None,  # timeouts are ours, on the injected clock
            False,  # keep replies as strings
            username or None,
        )
        # The pool's "all connected" Deferred fails when authentication or SELECT fails;
        # txredisapi then stops reconnecting. Say so once, readably.
        factory.deferred.addErrback(_log_connect_failure, f"{host}:{port}")
        factory.startConnecting(self.endpoint(host, port, tls))
        return Connection(
            factory, f"{host}:{port}", self.reactor, timeout=self.timeout, wait=self.wait
        )

    def node(self, host: str, port: int) -> Connection:
        """A one-connection pool to a cluster node, with the data credentials and TLS."""
        s = self.settings
        return self.connect(host, port, tls=s.tls, username=s.username, password=s.password)


@implementer(IStreamClientEndpoint)
class _SentinelMasterEndpoint:
    """Asks the Sentinels for the master before every connection attempt (txredisapi's
    discovery), then connects to it with our TLS settings; when the master moved, the
    pool's other connections are dropped so they follow."""

    def __init__(self, sentinel: Any, name: str, connector: Connector, pool: Any) -> None:
        self._sentinel = sentinel
        self._name = name
        self._connector = connector
        self._pool = pool
        self._master: tuple[str, int] | None = None

    def connect(self, protocol_factory: Any) -> Deferred[Any]:
        d: Deferred[tuple[str, int]] = self._sentinel.discover_master(self._name)
        return d.addCallback(self._connect, protocol_factory)

    def _connect(self, address: tuple[str, int], protocol_factory: Any) -> Deferred[Any]:
        host, port = address
        if self._master is not None and self._master != address:
            log.info(
                "Redis master {name} moved from {old} to {new}",
                name=self._name,
                old="{}:{}".format(*self._master),
                new=f"{host}:{port}",
            )
            for protocol in list(self._pool.pool):
                protocol.transport.loseConnection()
        self._master = address
        endpoint = self._connector.endpoint(host, port, self._connector.settings.tls)
        result: Deferred[Any] = endpoint.connect(protocol_factory)
        return result


@attrs.define
class SingleServerClient:
    """A :class:`RedisClient` for one server, given directly or found through Sentinel.

    Nothing connects before :meth:`start`. Error replies are StoreUnavailable too; after
    ``READONLY`` (the master became a replica in a failover) the connections are dropped
    so that they reconnect to the new master.
    """

    settings: RedisSettings
    reactor: Any
    poolsize: int = 2
    timeout: float = COMMAND_TIMEOUT
    wait: float = CONNECT_WAIT
    _connection: Connection | None = attrs.field(default=None, init=False)
    _closers: list[Callable[[], Deferred[None]]] = attrs.field(factory=list, init=False)
    _idle: LoopingCall | None = attrs.field(default=None, init=False)

    def start(self) -> None:
        if self._connection is not None:
            return
        connector = Connector(self.settings, self.reactor, self.timeout, self.wait)
        s = self.settings
        if s.mode == "sentinel":
            self._connection = self._sentinel_master(connector)
        else:
            server = s.servers[0]
            self._connection = connector.connect(
                server.host,
                server.port,
                tls=s.tls,
                username=s.username,
                password=s.password,
                db=s.db,
                poolsize=self.poolsize,
            )
        self._closers.append(self._connection.close)
        if s.idle_timeout > 0:
            connection, idle = self._connection, s.idle_timeout
            self._idle = idle_loop(self.reactor, idle, lambda: connection.drop_if_idle(idle))

    def _sentinel_master(self, connector: Connector) -> Connection:
        import txredisapi

        s = self.settings
        sentinels = [
            connector.connect(
                url.host,
                url.port,
                tls=url.tls,
                username="",
                password=s.sentinel_password or url.password,
            )
            for url in s.servers
        ]
        self._closers.extend(c.close for c in sentinels)
        manager = txredisapi.Sentinel([])
        manager.sentinels = [c._handler for c in sentinels]
        manager.discovery_timeout = self.wait
        _, sentinel_factory = _factories()
        factory = sentinel_factory(
            sentinel_manager=manager,
            service_name=s.master_name,
            is_master=True,
            uuid=None,
            dbid=s.db or None,
            poolsize=self.poolsize,
            isLazy=True,
            password=s.password or None,
            username=s.username or None,
            convertNumbers=False,
        )
        factory.deferred.addErrback(_log_connect_failure, f"sentinel master {s.master_name}")
        factory.startConnecting(_SentinelMasterEndpoint(manager, s.master_name, connector, factory))
        return Connection(
            factory,
            f"sentinel master {s.master_name}",
            self.reactor,
            timeout=self.timeout,
            wait=self.wait,
        )

    def stop(self) -> Deferred[None]:
        if self._idle is not None and self._idle.running:
            self._idle.stop()
        closers, self._closers = self._closers, []
        self._connection = None
        return close_all(close() for close in closers)

    async def execute(self, *args: Arg) -> Any:
        connection = self._connection
        if connection is None:
            raise StoreUnavailable("the Redis client is not started")
        try:
            return await connection.execute(*args)
        except ReplyError as e:
            message = str(e)
            if message.startswith(_NOT_MASTER):
                connection.drop()
            raise StoreUnavailable(f"Redis at {connection.address}: {message}") from None

    async def ping(self) -> None:
        await self.execute("PING")


def idle_loop(clock: IReactorTime, idle: float, check: Callable[[], None]) -> LoopingCall:
    """A started loop running ``check`` (drop connections idle for ``idle`` seconds) every
    half of ``idle``, at most twice a second, on ``clock``."""
    loop = LoopingCall(check)
    loop.clock = clock
    loop.start(max(idle / 2, 0.5), now=False)
    return loop


def close_all(closing: Iterable[Deferred[None]]) -> Deferred[None]:
    """Fires once every close in ``closing`` is done, whatever their outcome."""
    ds = list(closing)
    if not ds:
        return succeed(None)
    return gatherResults(ds, consumeErrors=True).addBoth(lambda _: None)


def client_from_config(config: Config, reactor: Any) -> RedisClient:
    """The client the options ask for; it connects when started.

    Raises:
        ValueError: the options are inconsistent (validation reports this earlier).
    """
    settings = RedisSettings.from_config(config)
    if settings.mode == "cluster":
        from oauthgate.sessions.redis_cluster import ClusterClient

        connector = Connector(settings, reactor)
        return ClusterClient(
            [(u.host, u.port) for u in settings.servers],
            connector.node,
            reactor,
            idle_timeout=settings.idle_timeout,
        )
    return SingleServerClient(settings, reactor)
