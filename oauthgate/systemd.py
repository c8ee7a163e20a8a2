"""Tell systemd how the service is doing (``sd_notify``), without any dependency.

A ``Type=notify`` unit starts oauthgate with ``$NOTIFY_SOCKET``: the path of a UNIX
datagram socket (``@name`` for one in the abstract namespace). Each message is one
datagram of ``KEY=value`` lines: ``READY=1`` once oauthgate serves, ``STOPPING=1`` when
it begins to shut down, ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` when the unit sets
``WatchdogSec=``, ``STATUS=...`` free text shown by ``systemctl status``.

The environment is read once, at start-up (:meth:`Notifier.from_environ`); nothing here
reads ``os.environ``. Without ``$NOTIFY_SOCKET`` every message is dropped silently, so
the same code runs under systemd and anywhere else.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["Notifier", "message", "socket_address"]


def socket_address(name: str) -> str | bytes:
    """The address to send to for ``$NOTIFY_SOCKET``: a file path as it is; a name that
    starts with ``@`` in Linux's abstract namespace (a leading NUL byte)."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode("utf-8")
    return name


def message(**states: str) -> bytes:
    """One notification: ``KEY=value`` lines, newline-terminated, in the order given.

    >>> message(READY="1", STATUS="Serving")
    b'READY=1\\nSTATUS=Serving\\n'
    """
    lines = []
    for key, value in states.items():
        if "\n" in value:
            raise ValueError(f"{key}: a notification value is one line")
        lines.append(f"{key}={value}\n")
    return "".join(lines).encode("utf-8")


@attrs.frozen
class Notifier:
    """Sends notifications to systemd's ``$NOTIFY_SOCKET``; does nothing without one.

    Sending never raises: a notification that cannot be delivered is logged once per
    reason, and the service carries on.
    """

    address: str | bytes | None = None
    """Where messages go (see :func:`socket_address`); None: nowhere."""
    watchdog_interval: float | None = None
    """Seconds between ``WATCHDOG=1`` pings (half ``$WATCHDOG_USEC``); None: no watchdog."""
    log = Logger()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], pid: int) -> Notifier:
        """The notifier ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID`` describe.

        ``pid`` is this process's id: a ``$WATCHDOG_PID`` naming another process means the
        watchdog is not ours to feed (systemd's ``sd_watchdog_enabled`` rule).
        """
        name = environ.get("NOTIFY_SOCKET", "")
        address = socket_address(name) if name and name not in ("@",) else None
        interval = None
        usec = environ.get("WATCHDOG_USEC", "")
        watchdog_pid = environ.get("WATCHDOG_PID", "")
        if usec and address is not None and (not watchdog_pid or watchdog_pid == str(pid)):
            try:
                microseconds = int(usec)
            except ValueError:
                microseconds = 0
            if microseconds > 0:
                interval = microseconds / 2 / 1_000_000
        return cls(address, interval)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **states: str) -> bool:
        """Send one message with ``states``; True if it was handed to systemd."""
        if self.address is None:
            return False
        data = message(**states)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.setblocking(False)  # a full receive queue never stalls the reactor
                s.sendto(data, self.address)
        except OSError as e:
            self.log.warn(
                "Could not notify systemd ({states}): {error}",
                states=",".join(states),
                error=e.strerror or str(e),
            )
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """``READY=1``: start-up is complete (systemd then starts the units after ours)."""
        return self.notify(READY="1", **({"STATUS": status} if status else {}))

    def stopping(self, status: str = "") -> bool:
        """``STOPPING=1``: oauthgate has begun to shut down."""
        return self.notify(STOPPING="1", **({"STATUS": status} if status else {}))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: still alive (the reactor turns)."""
        return self.notify(WATCHDOG="1")

    def start_watchdog(self, clock: IReactorTime) -> LoopingCall | None:
        """Send ``WATCHDOG=1`` now and every :attr:`watchdog_interval` on ``clock``; the
        running call (stop it at shutdown), or None without a watchdog."""
        if self.watchdog_interval is None:
            return None
        call = LoopingCall(self.watchdog)
        call.clock = clock
        call.start(self.watchdog_interval, now=True)
        return call

    def status(self, text: str) -> bool:
        """``STATUS=...``: free text for ``systemctl status``."""
        return self.notify(STATUS=text)
