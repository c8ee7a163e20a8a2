"""Polling a file for changes on an injected clock, keeping the last good contents."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["FileWatcher"]

T = TypeVar("T")

_Signature = tuple[int, int, int]


def _signature(path: str) -> _Signature:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class FileWatcher(Generic[T]):
    """Reloads ``path`` with ``load`` whenever its mtime, size or inode changes.

    :meth:`load_now` reads the file once (raising what ``load`` or ``os.stat`` raise);
    between :meth:`start` and :meth:`stop` the file is polled every ``poll_interval``
    seconds of ``clock`` and ``on_change`` gets each newly loaded value. A poll that
    fails with OSError or ValueError keeps the last good value: ``on_error`` is called
    once for a run of failures, and the file is reloaded once it is readable again,
    even if unchanged. Nothing here touches the file system outside of the polls.
    """

    def __init__(
        self,
        path: str,
        clock: IReactorTime,
        load: Callable[[str], T],
        on_change: Callable[[T], None],
        *,
        on_error: Callable[[Exception], None],
        log: Logger,
        name: str,
        poll_interval: float = 5.0,
    ) -> None:
        self._path = path
        self._clock = clock
        self._load = load
        self._on_change = on_change
        self._on_error = on_error
        self._log = log
        self._name = name
        self._poll_interval = poll_interval
        self._signature: _Signature | None = None
        self._failing = False
        self._call: LoopingCall | None = None

    def load_now(self) -> T:
        """Read the file now and remember its signature (does not call ``on_change``)."""
        signature = _signature(self._path)
        loaded = self._load(self._path)
        self._signature = signature
        return loaded

    def start(self) -> None:
        """Start polling (no-op if started)."""
        if self._call is not None:
            return
        call = LoopingCall(self._poll)
        call.clock = self._clock
        self._call = call
        d: Deferred[LoopingCall] = call.start(self._poll_interval, now=False)
        d.addErrback(self._poll_crashed)

    def stop(self) -> None:
        """Stop polling."""
        call, self._call = self._call, None
        if call is not None and call.running:
            call.stop()

    def check_now(self) -> None:
        """Reload the file now, even if it looks unchanged (SIGHUP). A failure keeps the
        last good value and is reported to ``on_error`` as a poll's would be."""
        self._signature = None
        self._failing = False
        self._poll()

    def _poll(self) -> None:
        try:
            signature = _signature(self._path)
            if signature == self._signature:
                return
            loaded = self._load(self._path)
        except (OSError, ValueError) as e:
            self._signature = None  # reload once it is back, even if unchanged
            if not self._failing:
                self._failing = True
                self._on_error(e)
            return
        self._failing = False
        self._signature = signature
        self._on_change(loaded)

    def _poll_crashed(self, failure: Failure) -> None:
        self._call = None
        self._log.failure("Watching {name} stopped", failure, name=self._name)
