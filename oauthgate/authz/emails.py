"""The email authorizer: ``email_domains`` and ``authenticated_emails_file`` (oauth2-proxy §6.5)."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from oauthgate.authz.watch import FileWatcher
from oauthgate.errors import ConfigError
from oauthgate.interfaces import Decision, IAuthorizer, RequestInfo
from oauthgate.memo import Memo
from oauthgate.session import Session

__all__ = ["EmailAuthorizer", "read_emails_file"]


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
        # email -> decision, for the emails file as loaded now (forgotten at each reload).
        self._decisions: Memo[str, Decision] = Memo()
        self._watcher: FileWatcher[frozenset[str]] | None = None
        if self._path is not None:
            self._watcher = FileWatcher(
                self._path,
                clock,
                read_emails_file,
                self._reloaded,
                on_error=self._reload_failed,
                log=self.log,
                name="the authenticated emails file",
                poll_interval=poll_interval,
            )
            try:
                self._emails = self._watcher.load_now()
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
        if self._watcher is not None:
            self._watcher.start()

    def stop(self) -> None:
        """Stop watching the emails file."""
        if self._watcher is not None:
            self._watcher.stop()

    def check_now(self) -> None:
        """Re-read the emails file now (SIGHUP); a broken file keeps the list loaded before."""
        if self._watcher is not None:
            self._watcher.check_now()

    def check_email(self, email: str) -> Decision:
        """The decision for ``email``; the reason is meant to be shown to that user.

        Decided once per address (the same few arrive on every request) until the emails
        file is reloaded."""
        decision = self._decisions.get(email)
        if decision is None:
            decision = self._decide(email)
            self._decisions.put(email, decision, len(email))
        return decision

    def _decide(self, email: str) -> Decision:
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

    def _reload_failed(self, error: Exception) -> None:
        self.log.error(
            "Cannot reload the authenticated emails file {path}; keeping the "
            "{count} addresses loaded before: {error}",
            path=self._path,
            count=len(self._emails),
            error=str(error),
        )

    def _reloaded(self, emails: frozenset[str]) -> None:
        self._emails = emails
        self._decisions.clear()
        self.log.info(
            "Reloaded the authenticated emails file {path}: {count} addresses",
            path=self._path,
            count=len(emails),
        )
