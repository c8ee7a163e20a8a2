"""``--workers N``: N supervised worker processes serving one address.

The main process (``twistd oauthgate --workers=N``) serves no requests itself. It creates
the listening sockets (in ``privilegedStartService``, so a privileged port works with
``twistd -u``), then starts N workers, ``python -m oauthgate.workers``, each with its own
reactor. A worker gets its listening socket as file descriptor 3 and the effective
configuration (pickled) on its standard input, which stays open: when the main process
goes away, the worker sees end-of-file and stops. A worker that exits is started again
after a delay that doubles with each quick failure (0.5 s up to 30 s). Stopping the main
process (SIGTERM, SIGINT) stops every worker (SIGTERM, then SIGKILL if one is still there
10 s after its shutdown timeout) and then the main process.

On Linux each worker gets a socket of its own, all bound to the address with
SO_REUSEPORT, so the kernel spreads new connections evenly over the workers; the main
process keeps every socket open, so connections that arrive while a worker restarts wait
in its socket's queue instead of being refused. Elsewhere the workers share one socket.

Sessions work across workers: cookie sessions carry everything, Redis sessions are shared.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable
from typing import IO, Any, cast

import attrs
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.error import ConnectionDone, ProcessDone, ReactorNotRunning
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IReadDescriptor,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from oauthgate.config.options import Config
from oauthgate.config.validate import listen_description
from oauthgate.errors import ConfigError

__all__ = [
    "Listener",
    "WorkerSupervisor",
    "listening_sockets",
    "parse_listener",
    "restart_delay",
    "supervisor_service",
]

log = Logger(namespace="oauthgate.workers")

LISTEN_FD = 3
"""The file descriptor a worker finds its listening socket on."""
FIRST_DELAY = 0.5
MAX_DELAY = 30.0
STABLE_AFTER = 10.0
"""A worker that ran this long before exiting is restarted after FIRST_DELAY again."""
KILL_AFTER = 10.0
_HEADER = struct.Struct("!I")


@attrs.frozen
class Listener:
    """What a worker listens on: a TCP address, optionally behind the PROXY protocol."""

    family: socket.AddressFamily
    host: str
    port: int
    backlog: int = 50
    haproxy: bool = False


def parse_listener(http_address: str) -> Listener:
    """The listener for ``http_address``; only TCP addresses can be shared by workers.

    Raises:
        ValueError: another kind of endpoint; the message names the limitation.
    """
    description = listen_description(http_address)
    haproxy = description.lower().startswith("haproxy:")
    if haproxy:
        description = description[len("haproxy:") :]
    kind, _, rest = description.partition(":")
    if kind.lower() not in ("tcp", "tcp6"):
        raise ValueError(
            f"{http_address!r}: workers > 1 needs a TCP address (host:port, tcp:, tcp6: or "
            "haproxy:tcp:); unix:, ssl: and systemd: listeners are served by one process "
            "only (use --workers=1, or TLS in a front proxy)"
        )
    family = socket.AF_INET6 if kind.lower() == "tcp6" else socket.AF_INET
    fields = [f.replace("\\:", ":").replace("\\=", "=") for f in re.split(r"(?<!\\):", rest)]
    port: int | None = None
    host = "::" if family == socket.AF_INET6 else "0.0.0.0"
    backlog = 50
    for field in fields:
        name, equals, value = field.partition("=")
        try:
            if not equals and port is None:
                port = int(name)
            elif name in ("port",):
                port = int(value)
            elif name == "interface":
                host = value
            elif name == "backlog":
                backlog = int(value)
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"{http_address!r}: cannot use {field!r} with workers > 1") from None
    if port is None:
        raise ValueError(f"{http_address!r}: no port")
    return Listener(family, host, port, backlog, haproxy)


def _can_reuse_port() -> bool:
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def listening_sockets(
    listener: Listener, count: int, *, reuse_port: bool | None = None
) -> list[socket.socket]:
    """``count`` listening, non-blocking sockets for the workers (one each).

    With ``reuse_port`` (default: on Linux) they are ``count`` sockets bound with
    SO_REUSEPORT; otherwise one socket ``count`` times. Raises OSError (address in use).
    """
    if reuse_port is None:
        reuse_port = _can_reuse_port()
    made: list[socket.socket] = []
    port = listener.port
    try:
        for _ in range(count if reuse_port else 1):
            sock = socket.socket(listener.family, socket.SOCK_STREAM)
            made.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if listener.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((listener.host, port))
            port = sock.getsockname()[1]  # port 0: the others bind the port the first got
            sock.listen(listener.backlog)
            sock.setblocking(False)
    except OSError:
        for sock in made:
            sock.close()
        raise
    return made if reuse_port else made * count


def restart_delay(failures: int) -> float:
    """Seconds to wait before starting a worker that exited after ``failures`` quick exits."""
    return float(min(FIRST_DELAY * 2 ** max(failures - 1, 0), MAX_DELAY))


class _WorkerProtocol(ProcessProtocol):
    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.supervisor._ended(self, reason)


class WorkerSupervisor(Service):
    """Creates the listening sockets, starts ``count`` workers and keeps them running."""

    def __init__(
        self,
        config: Config,
        listener: Listener,
        reactor: Any,
        *,
        command: tuple[str, ...] = (sys.executable, "-m", "oauthgate.workers"),
        make_sockets: Callable[[Listener, int], list[socket.socket]] = listening_sockets,
    ) -> None:
        self.config = config
        self.listener = listener
        self.count = config.workers
        self._reactor = reactor
        self._command = command
        self._make_sockets = make_sockets
        self._sockets: list[socket.socket] = []
        self._running: dict[int, _WorkerProtocol] = {}
        self._started_at: dict[int, float] = {}
        self._failures: dict[int, int] = {}
        self._pending: dict[int, IDelayedCall] = {}
        self._stopping = False

    @property
    def pids(self) -> list[int]:
        """The process ids of the running workers."""
        return [p.transport.pid for p in self._running.values() if p.transport is not None]

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        try:
            self._sockets = self._make_sockets(self.listener, self.count)
        except OSError as e:
            address = f"{self.listener.host}:{self.listener.port}"
            reason = e.strerror or str(e)
            log.critical(
                "oauthgate: cannot listen on {address}: {reason}", address=address, reason=reason
            )
            print(f"oauthgate: cannot listen on {address}: {reason}", file=sys.__stderr__)
            raise SystemExit(1) from None

    def startService(self) -> None:
        Service.startService(self)
        if not self._sockets:  # started without privilegedStartService (tests)
            self.privilegedStartService()
        self._stopping = False
        host, port = self._sockets[0].getsockname()[:2]
        log.info(
            "oauthgate: starting {count} workers on {host}:{port}{proxy}",
            count=self.count,
            host=host,
            port=port,
            proxy=" (PROXY protocol)" if self.listener.haproxy else "",
        )
        for index in range(self.count):
            self._spawn(index)
        # SIGHUP must not end the supervisor (and with it every worker): pass it on, so
        # each worker reloads its certificates, files and templates.
        if threading.current_thread() is threading.main_thread():
            self._previous_hup = signal.signal(
                signal.SIGHUP, lambda *_: self._reactor.callFromThread(self._forward_hangup)
            )

    def _forward_hangup(self) -> None:
        log.info("oauthgate: SIGHUP: asking the workers to reload")
        for protocol in list(self._running.values()):
            _signal(protocol, "HUP")

    def _spawn(self, index: int) -> None:
        self._pending.pop(index, None)
        protocol = _WorkerProtocol(self, index)
        sock = self._sockets[index]
        self._reactor.spawnProcess(
            protocol,
            self._command[0],
            list(self._command),
            env=dict(os.environ),
            childFDs={0: "w", 1: 1, 2: 2, LISTEN_FD: sock.fileno()},
        )
        message = pickle.dumps(
            {
                "config": self.config,
                "index": index + 1,
                "family": int(self.listener.family),
                "haproxy": self.listener.haproxy,
            }
        )
        assert protocol.transport is not None
        protocol.transport.write(_HEADER.pack(len(message)) + message)  # stdin stays open
        self._running[index] = protocol
        self._started_at[index] = self._reactor.seconds()
        log.info(
            "oauthgate: worker {index} started (pid {pid})",
            index=index + 1,
            pid=protocol.transport.pid,
        )

    def _ended(self, protocol: _WorkerProtocol, reason: Failure) -> None:
        index = protocol.index
        if self._running.get(index) is protocol:
            del self._running[index]
        if self._stopping:
            return
        ran = self._reactor.seconds() - self._started_at.get(index, 0.0)
        failures = 1 if ran >= STABLE_AFTER else self._failures.get(index, 0) + 1
        self._failures[index] = failures
        delay = restart_delay(failures)
        how = "exited" if reason.check(ProcessDone) else str(reason.value)
        log.warn(
            "oauthgate: worker {index} ended ({how}); starting it again in {delay}s",
            index=index + 1,
            how=how,
            delay=delay,
        )
        self._pending[index] = self._reactor.callLater(delay, self._spawn, index)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        self._stopping = True
        previous = getattr(self, "_previous_hup", None)
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, previous)
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        running = list(self._running.values())
        for protocol in running:
            _signal(protocol, "TERM")

        def kill_all() -> None:
            for protocol in running:
                _signal(protocol, "KILL")

        # Workers finish requests in flight first (--shutdown-timeout, where there is one).
        grace = float(getattr(self.config, "shutdown_timeout", 0.0) or 0.0) + KILL_AFTER
        kill = self._reactor.callLater(grace, kill_all)

        async def wait() -> None:
            for protocol in running:
                await protocol.ended
            if kill.active():
                kill.cancel()
            for sock in set(self._sockets):
                sock.close()
            self._sockets = []

        return Deferred.fromCoroutine(wait())


def _signal(protocol: _WorkerProtocol, name: str) -> None:
    try:
        if protocol.transport is not None:
            protocol.transport.signalProcess(name)
    except Exception:  # already gone
        pass


def supervisor_service(config: Config, *, reactor: Any) -> MultiService:
    """The main process of ``--workers N``: a supervisor of N workers. Raises ConfigError."""
    problems = []
    if config.workers < 1:
        problems.append(f"workers: must be 1 or more, not {config.workers}")
    if config.https_address:
        problems.append(
            "https_address: not supported with workers > 1 yet; terminate TLS in front, "
            "or use --workers=1"
        )
    if config.logging_filename:
        problems.append(
            "logging_filename: not supported with workers > 1 yet (N processes would rotate "
            "one file); the workers log to the main process's output, use --workers=1 for a "
            "log file"
        )
    if config.metrics_address or config.metrics_secure_address:
        problems.append(
            "metrics_address: not supported with workers > 1 yet (each worker would count "
            "only its own requests); use --workers=1 with metrics"
        )
    try:
        listener = parse_listener(config.http_address)
    except ValueError as e:
        problems.append(f"http_address: {e}")
    if problems:
        raise ConfigError(problems)
    service = MultiService()
    supervisor: IService = WorkerSupervisor(config, listener, reactor)
    supervisor.setServiceParent(service)
    return service


# --- the worker process ---------------------------------------------------------------


@implementer(IReadDescriptor)
class _ParentWatch:
    """Stops the worker's reactor when its standard input (from the main process) closes."""

    def __init__(self, reactor: Any, fd: int) -> None:
        self._reactor = reactor
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> Any:
        try:
            data = os.read(self._fd, 4096)
        except OSError:
            data = b""
        return None if data else ConnectionDone()

    def connectionLost(self, reason: Failure) -> None:
        self._reactor.removeReader(self)
        log.info("oauthgate: the main process is gone; stopping")
        if self._reactor.running:
            with contextlib.suppress(ReactorNotRunning):  # a signal may have come first
                self._reactor.stop()

    def logPrefix(self) -> str:
        return "oauthgate-parent"


def _read_message(stream: IO[bytes]) -> dict[str, Any]:
    def exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = stream.read(size - len(data))
            if not chunk:
                raise SystemExit("oauthgate worker: no configuration from the main process")
            data += chunk
        return data

    (size,) = _HEADER.unpack(exactly(_HEADER.size))
    message: dict[str, Any] = pickle.loads(exactly(size))  # from our parent's private pipe
    return message


def _log_observer(index: int, out: IO[str]) -> ILogObserver:
    from twisted.logger import textFileLogObserver

    observer = textFileLogObserver(out)
    pid = os.getpid()

    def observe(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        name = level.name if isinstance(level, type(LogLevel.info)) else "-"
        system = f"worker {index} pid {pid}] [{event.get('log_namespace', '-')}#{name}"
        observer(dict(event, log_system=system))

    return cast(ILogObserver, observe)


def worker_main() -> None:
    """``python -m oauthgate.workers``: one worker, started by the main process."""
    message = _read_message(sys.stdin.buffer)
    config: Config = message["config"]
    index = int(message["index"])

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner
    from twisted.protocols.haproxy import proxyEndpoint

    from oauthgate.errors import PluginError
    from oauthgate.logs import LogService, access_log_from_config
    from oauthgate.plugins import Plugins
    from oauthgate.reload import ReloadOnHangup, reload_actions
    from oauthgate.service import OAuthGateService, build_components, gate_site

    globalLogBeginner.beginLoggingTo([_log_observer(index, sys.stdout)], redirectStandardIO=False)
    try:
        components = build_components(config, reactor=reactor, plugins=Plugins.from_entry_points())
    except (ConfigError, PluginError, OSError, ValueError) as e:
        print(f"oauthgate worker {index}: cannot start: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    service = OAuthGateService(
        components, reactor=reactor, shutdown_timeout=config.shutdown_timeout
    )
    endpoint: IStreamServerEndpoint = AdoptedStreamServerEndpoint(
        reactor, LISTEN_FD, socket.AddressFamily(message["family"])
    )  # closes LISTEN_FD once adopted (the port holds a duplicate)
    if message["haproxy"]:
        endpoint = proxyEndpoint(endpoint)
    ports: list[IListeningPort] = []
    # SIGHUP (forwarded by the supervisor) re-reads certificates, files and templates here.
    MultiService.addService(service, ReloadOnHangup(reactor, reload_actions(components.gate)))
    # Request and auth lines through the same buffered writer as one process (whole
    # lines per write, so the workers' lines never interleave on the shared stdout).
    try:
        access_log = access_log_from_config(config, reactor, components.gate.client_ip, shared=True)
    except ConfigError as e:
        print(f"oauthgate worker {index}: cannot start: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    if access_log is not None:
        components.gate.access_log = access_log
        MultiService.addService(service, LogService(access_log, reactor))
    site = gate_site(
        config, components, reactor, in_flight=service.in_flight, access_log=access_log
    )
    endpoint.listen(site).addCallback(ports.append)

    def stop() -> Any:
        for port in ports:
            port.stopListening()
        return service.stopService()

    reactor.addReader(_ParentWatch(reactor, sys.stdin.fileno()))
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    service.privilegedStartService()
    service.startService()
    log.info("oauthgate: worker {index} (pid {pid}) serving", index=index, pid=os.getpid())
    reactor.run()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # until the reactor installs its handlers
    worker_main()
