"""SIGHUP: re-read the files oauthgate serves from, without dropping a connection.

On SIGHUP the TLS certificate and key, the htpasswd file, the authenticated emails file and
the page templates are read again. Whatever fails to load keeps its current version and
logs an error; the rest is reloaded all the same.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from oauthgate.web.gate import Gate
from oauthgate.web.pages import Pages

__all__ = ["ReloadOnHangup", "reload_actions"]

log = Logger()

Action = tuple[str, Callable[[], object]]


class ReloadOnHangup(Service):
    """Runs ``actions`` (name, callable) in order on the reactor thread at each SIGHUP,
    between :meth:`startService` and :meth:`stopService`."""

    name = "reload on SIGHUP"

    def __init__(self, reactor: Any, actions: Sequence[Action]) -> None:
        self._reactor = reactor
        self._actions = tuple(actions)
        self._previous: Any = None
        self._installed = False

    def startService(self) -> None:
        Service.startService(self)
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may handle signals (embedded use)
        self._previous = signal.signal(signal.SIGHUP, self._on_signal)
        self._installed = True

    def stopService(self) -> Any:
        Service.stopService(self)
        if self._installed:
            signal.signal(signal.SIGHUP, self._previous)
            self._installed = False
        return None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # A signal handler interrupts whatever the reactor thread was doing: run the
        # reload as the reactor's next call instead.
        self._reactor.callFromThread(self.reload_now)

    def reload_now(self) -> None:
        """Run every action; one that raises is logged and does not stop the others."""
        log.info("SIGHUP: reloading certificates and files")
        for name, action in self._actions:
            try:
                action()
            except Exception as e:
                log.error("Reloading {what} failed: {error}", what=name, error=str(e))


def reload_actions(gate: Gate, watched: Sequence[object] | None = None) -> list[Action]:
    """The reloads for the files the gate reads: each of ``watched`` (by default the gate's
    authorizers and htpasswd file) that has a ``check_now()``, and the page templates."""
    if watched is None:
        watched = (*gate.authorizers, gate.credentials.htpasswd)
    actions: list[Action] = []
    for part in watched:
        check_now = getattr(part, "check_now", None)
        if callable(check_now):
            actions.append((type(part).__name__, check_now))
    actions.append(("the page templates", lambda: reload_pages(gate)))
    return actions


def reload_pages(gate: Gate) -> None:
    """Build the pages from the templates again; a broken template keeps the pages served
    before (the error is raised for the caller to log)."""
    first = gate.providers[0].provider
    gate.pages = Pages.from_config(
        gate.config,
        str(first.display_name),
        providers=[(p.id, str(p.provider.display_name)) for p in gate.providers],
    )
