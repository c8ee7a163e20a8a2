"""The email authorizer: ``email_domains`` and ``authenticated_emails_file`` (oauth2-proxy §6.5)."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from oauthgate.errors import ConfigError
from oauthgate.interfaces import Decision, IAuthorizer, RequestInfo
from oauthgate.session import Session

__all__ = ["EmailAuthorizer", "read_emails_file"]

_Signature = tuple[int, int, int]


def read_emails_file(path: str) -> frozenset[str]:
    """The addresses in an authenticated emails file: first CSV column, trimmed, lower-cased.

    Blank lines and lines starting with ``#`` are skipped. Raises OSError if the file
    cannot be read and ValueError if it is not UTF-8 text or not CSV.
    """
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(str(e)) from None
    emails: set[str] = set()
    for row in rows:
        if not row:
            continue
        first = row[0].strip().lower()
        if first and not first.startswith("#"):
            emails.add(first)
    return frozenset(emails)


def _signature(path: str) -> _Signature:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@implementer(IAuthorizer)
class EmailAuthorizer:
    """Allows a session whose email is in an allowed domain or in the emails file.

    Domains: ``*`` allows any address, ``example.com`` exactly ``x@example.com``,
    ``.example.com`` and ``*.example.com`` sub-domains only (not the apex, never
    ``evilexample.com``). Matching is case-insensitive and the address must contain
    exactly one ``@`` (GHSA-c5c4-8r6x-56w3). An empty email is denied.

    The emails file is read once in the constructor (a ConfigError if unreadable), then
    polled every ``poll_interval`` seconds on ``clock`` between :meth:`start` and
    :meth:`stop`, so requests never touch the file system. If the file becomes missing or
    unreadable, the last good list is kept and an error is logged.
    """

    log = Logger()

    def __init__(
        self,
        email_domains: Iterable[str],
        clock: IReactorTime,
        emails_file: str | None = None,
        *,
        poll_interval: float = 5.0,
    ) -> None:
        self._clock = clock
        self._path = emails_file or None
        self._poll_interval = poll_interval
        self._allow_all = False
        exact: set[str] = set()
        suffixes: set[str] = set()
        for entry in email_domains:
            domain = entry.strip().lower().lstrip("@")
            if not domain:
                continue
            if domain == "*":
                self._allow_all = True
            elif domain.startswith("*."):
                suffixes.add(domain[1:])
            elif domain.startswith("."):
                suffixes.add(domain)
            else:
                exact.add(domain)
        self._domains = frozenset(exact)
        self._suffixes = tuple(sorted(suffixes))
        self._emails: frozenset[str] = frozenset()
        self._file_signature: _Signature | None = None
        self._failing = False
        self._call: LoopingCall | None = None
        if self._path is not None:
            try:
                self._file_signature = _signature(self._path)
                self._emails = read_emails_file(self._path)
            except (OSError, ValueError) as e:
                raise ConfigError(
                    [f"authenticated_emails_file: cannot read {self._path!r}: {e}"]
                ) from None

    @classmethod
    def from_config(cls, config: Any, clock: IReactorTime) -> EmailAuthorizer:
        """Build from ``config.email_domains`` and ``config.authenticated_emails_file``."""
        return cls(config.email_domains, clock, config.authenticated_emails_file or None)

    def start(self) -> None:
        """Start watching the emails file for changes (no-op without a file or if started)."""
        if self._path is None or self._call is not None:
            return
        call = LoopingCall(self._poll)
        call.clock = self._clock
        self._call = call
        d: Deferred[LoopingCall] = call.start(self._poll_interval, now=False)
        d.addErrback(self._poll_crashed)

    def stop(self) -> None:
        """Stop watching the emails file."""
        call, self._call = self._call, None
        if call is not None and call.running:
            call.stop()

    def check_email(self, email: str) -> Decision:
        """The decision for ``email``; the reason is meant to be shown to that user."""
        address = email.strip().lower()
        if not address:
            return Decision.deny("no email")
        if address.count("@") != 1:
            return Decision.deny(f"the email address {email} is not valid")
        local, domain = address.split("@")
        if not local or not domain:
            return Decision.deny(f"the email address {email} is not valid")
        if (
            self._allow_all
            or domain in self._domains
            or domain.endswith(self._suffixes)
            or address in self._emails
        ):
            return Decision.allow()
        return Decision.deny(f"the email address {email} is not allowed")

    async def authorize(self, request: RequestInfo, session: Session) -> Decision:
        if not session.email and session.provider == "htpasswd":
            # Users of the operator's own htpasswd file have no email; the file is their
            # allow-list (as in oauth2-proxy, only non-empty emails are checked for them).
            return Decision.allow()
        return self.check_email(session.email)

    def _poll(self) -> None:
        assert self._path is not None
        try:
            signature = _signature(self._path)
            if signature == self._file_signature:
                return
            emails = read_emails_file(self._path)
        except (OSError, ValueError) as e:
            self._file_signature = None  # reload once it is back, even if unchanged
            if not self._failing:
                self._failing = True
                self.log.error(
                    "Cannot reload the authenticated emails file {path}; keeping the "
                    "{count} addresses loaded before: {error}",
                    path=self._path,
                    count=len(self._emails),
                    error=str(e),
                )
            return
        self._emails = emails
        self._file_signature = signature
        self._failing = False
        self.log.info(
            "Reloaded the authenticated emails file {path}: {count} addresses",
            path=self._path,
            count=len(emails),
        )

    def _poll_crashed(self, failure: Failure) -> None:
        self._call = None
        self.log.failure("Watching the authenticated emails file stopped", failure)
