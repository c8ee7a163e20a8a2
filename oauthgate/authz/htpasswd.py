"""The htpasswd user database: ``htpasswd_file`` and ``htpasswd_user_groups`` (oauth2-proxy §6.8).

Users sign in with HTTP Basic (API clients, on every request) or the sign-in page's
password form. Only bcrypt (``$2a$``, ``$2b$``, ``$2x$``, ``$2y$``) and SHA-1
(``{SHA}base64``) entries are accepted; plain text, MD5-crypt (``$apr1$``), crypt and
anything else are refused line by line with a warning that names the line and user,
never the hash.

bcrypt takes 50-250 ms, so it runs through an injected ``run_blocking`` (a thread pool
in production, see :func:`in_thread_pool`), never on the reactor thread. Successful
checks are remembered for a short while, so clients that send Basic credentials on
every request pay bcrypt once a minute, not every time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Literal

import attrs
import bcrypt
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from oauthgate.authz.watch import FileWatcher
from oauthgate.errors import ConfigError
from oauthgate.providers.jwks import SingleFlight
from oauthgate.session import Session

__all__ = [
    "Htpasswd",
    "HtpasswdFile",
    "RefusedLine",
    "RunBlocking",
    "in_thread_pool",
    "parse_basic",
    "parse_htpasswd",
    "run_inline",
]

RunBlocking = Callable[[Callable[[], bool]], Awaitable[bool]]
"""Runs a slow, blocking check off the reactor thread and gives its result."""

_BCRYPT = re.compile(r"\$2[abxy]\$(\d\d)\$[./A-Za-z0-9]{53}\Z")
_BCRYPT_MAX_PASSWORD = 72  # bcrypt reads no further; the bcrypt package refuses longer ones
_DEFAULT_COST = 10
_SHA_DUMMY = bytes(20)


def in_thread_pool(reactor: IReactorFromThreads, pool: ThreadPool) -> RunBlocking:
    """A ``run_blocking`` that runs checks in ``pool`` and fires on ``reactor``'s thread.

    Use a pool of its own (not the reactor's, which name resolution needs), sized to
    the password checks per second you can afford: a flood of wrong passwords queues
    there instead of starving other work.
    """

    def run(check: Callable[[], bool]) -> Deferred[bool]:
        return deferToThreadPool(reactor, pool, check)

    return run


def run_inline(check: Callable[[], bool]) -> Deferred[bool]:
    """A ``run_blocking`` that runs the check at once, blocking: for tests and tools only."""
    return succeed(check())


def parse_basic(
    authorization_header: str | bytes | None, *, allow_empty_user: bool = False
) -> tuple[str, str] | None:
    """``(user, password)`` from ``Authorization: Basic <base64(user:password)>``, or None.

    The scheme is case-insensitive; the credentials must be strict base64 of UTF-8 text
    with a ``:`` and, unless ``allow_empty_user``, a non-empty user name.
    """
    if authorization_header is None:
        return None
    if isinstance(authorization_header, bytes):
        authorization_header = authorization_header.decode("latin-1")
    scheme, _, value = authorization_header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(":")
    if not colon or not (user or allow_empty_user):
        return None
    return user, password


@attrs.frozen
class _Entry:
    kind: Literal["bcrypt", "sha"]
    value: bytes = attrs.field(repr=False)  # the bcrypt hash, or the SHA-1 digest
    cost: int = 0


@attrs.frozen
class RefusedLine:
    """A line of the file that is not used, and why (never its hash)."""

    line: int
    user: str
    reason: str


@attrs.frozen
class HtpasswdFile:
    """What a htpasswd file holds: the usable entries and the refused lines."""

    entries: Mapping[str, _Entry] = attrs.field(repr=False)
    refused: tuple[RefusedLine, ...] = ()

    @property
    def users(self) -> frozenset[str]:
        return frozenset(self.entries)


def _classify(hashed: str) -> _Entry | str:
    """The entry for ``hashed``, or the reason it is refused."""
    if hashed.startswith("{SHA}"):
        try:
            digest = base64.b64decode(hashed[5:], validate=True)
        except (binascii.Error, ValueError):
            digest = b""
        if len(digest) != 20:
            return "malformed {SHA} hash (expected the base64 of 20 bytes)"
        return _Entry("sha", digest)
    match = _BCRYPT.match(hashed)
    if match is not None:
        cost = int(match.group(1))
        if not 4 <= cost <= 31:
            return "bcrypt cost out of range (4 to 31)"
        return _Entry("bcrypt", hashed.encode("ascii"), cost)
    if hashed.startswith("$2"):
        return "malformed bcrypt hash"
    if hashed.startswith("$apr1$"):
        return "MD5-crypt ($apr1$) hashes are not supported; use bcrypt (htpasswd -B)"
    if hashed.startswith("$"):
        return "crypt hashes are not supported; use bcrypt (htpasswd -B)"
    return "not a bcrypt or {SHA} hash (plain text and crypt are not supported)"


def parse_htpasswd(text: str) -> HtpasswdFile:
    """Parse the text of a htpasswd file: ``user:hash`` lines, ``#`` comments, blank lines.

    A user listed twice keeps its first entry (as Apache does); later ones are refused.
    """
    entries: dict[str, _Entry] = {}
    first_line: dict[str, int] = {}
    refused: list[RefusedLine] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, colon, hashed = line.partition(":")
        if not colon or not user:
            refused.append(RefusedLine(number, user if colon else "", "not a user:hash line"))
            continue
        if user in entries:
            refused.append(
                RefusedLine(number, user, f"duplicate user; line {first_line[user]} is used")
            )
            continue
        entry = _classify(hashed.strip())
        if isinstance(entry, str):
            refused.append(RefusedLine(number, user, entry))
            continue
        entries[user] = entry
        first_line[user] = number
    return HtpasswdFile(entries, tuple(refused))


def _read(path: str) -> HtpasswdFile:
    """Read and parse ``path``. Raises OSError, or ValueError if it is not UTF-8 text."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text: {e}") from None
    return parse_htpasswd(text)


def _sha1(password: bytes) -> bytes:
    return hashlib.sha1(password).digest()


def _bcrypt_check(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password[:_BCRYPT_MAX_PASSWORD], hashed)
    except ValueError:
        return False


class Htpasswd:
    """The users of a htpasswd file and their password checks.

    Security properties:

    - SHA-1 digests are compared with :func:`hmac.compare_digest`, bcrypt with its own
      constant-time check.
    - An unknown user costs what a known one does (a bcrypt check against a dummy hash
      of the file's highest cost; a SHA-1 compare when the file has no bcrypt entries),
      so user names cannot be probed by timing.
    - Successful checks are cached for ``cache_ttl`` seconds of ``clock``, at most
      ``cache_size`` of them, keyed by an HMAC of user and password under a random
      per-instance key (so the cache holds nothing that can be attacked offline). An
      entry counts only while the user's hash in the file is the one it was checked
      against: a changed password or a removed user takes effect at the next reload.
      Failures are not cached. Concurrent checks of the same credentials share one
      bcrypt run.

    The file is read in the constructor (ConfigError if it cannot be), then polled every
    ``poll_interval`` seconds between :meth:`start` and :meth:`stop`; a file that
    becomes unreadable keeps the last good users and logs an error.
    """

    log = Logger()

    def __init__(
        self,
        path: str,
        clock: IReactorTime,
        *,
        run_blocking: RunBlocking,
        user_groups: Iterable[str] = (),
        poll_interval: float = 5.0,
        cache_ttl: float = 60.0,
        cache_size: int = 1024,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._path = path
        self._clock = clock
        self._run_blocking = run_blocking
        self._user_groups = tuple(g for g in user_groups if g.strip())
        self._cache_ttl = cache_ttl
        self._cache_size = cache_size
        self._cache_key = random(32)
        self._cache: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()
        self._in_flight: dict[tuple[bytes, bytes], SingleFlight[bool]] = {}
        self._watcher = FileWatcher(
            path,
            clock,
            _read,
            self._reloaded,
            on_error=self._reload_failed,
            log=self.log,
            name="the htpasswd file",
            poll_interval=poll_interval,
        )
        try:
            loaded = self._watcher.load_now()
        except (OSError, ValueError) as e:
            raise ConfigError([f"htpasswd_file: cannot read {path!r}: {e}"]) from None
        self._use(loaded)

    @property
    def users(self) -> frozenset[str]:
        """The user names with a usable entry."""
        return frozenset(self._entries)

    def start(self) -> None:
        """Start watching the file for changes (no-op if started)."""
        self._watcher.start()

    def stop(self) -> None:
        """Stop watching the file."""
        self._watcher.stop()

    def check_now(self) -> None:
        """Re-read the file now (SIGHUP); a broken file keeps the users loaded before."""
        self._watcher.check_now()

    async def check(self, user: str, password: str) -> bool:
        """True if ``password`` is ``user``'s. Never raises for any input."""
        secret = password.encode("utf-8", "surrogatepass")
        entry = self._entries.get(user)
        if entry is None:
            await self._dummy_check(secret)
            return False
        if entry.kind == "sha":
            return hmac.compare_digest(_sha1(secret), entry.value)
        key = hmac.new(
            self._cache_key,
            user.encode("utf-8", "surrogatepass") + b"\x00" + secret,
            hashlib.sha256,
        ).digest()
        now = self._clock.seconds()
        cached = self._cache.get(key)
        if cached is not None:
            expires, hashed = cached
            if expires > now and hmac.compare_digest(hashed, entry.value):
                self._cache.move_to_end(key)
                return True
            del self._cache[key]
        # Shared only by checks against the same hash: a reload mid-check starts a new one.
        flight_key = (key, entry.value)
        flight = self._in_flight.setdefault(flight_key, SingleFlight())

        async def run() -> bool:
            try:
                return await self._run_blocking(lambda: _bcrypt_check(secret, entry.value))
            finally:
                self._in_flight.pop(flight_key, None)

        try:
            ok = await flight.run(run)
        except Exception:
            self.log.failure("The password check for {user} failed", user=user)
            return False
        if ok:
            self._remember(key, entry.value)
        return ok

    async def authenticate(self, user: str, password: str) -> Session | None:
        """A session for ``user`` with ``htpasswd_user_groups`` if the password is right.

        The session has no email and no tokens (``provider`` is ``"htpasswd"``), so the
        email authorizer must not be asked about it.
        """
        if not await self.check(user, password):
            return None
        return Session(
            user=user,
            groups=self._user_groups,
            created_at=self._clock.seconds(),
            provider="htpasswd",
        )

    # --- helpers ------------------------------------------------------------------------

    def _use(self, loaded: HtpasswdFile) -> None:
        self._entries = dict(loaded.entries)
        costs = [e.cost for e in loaded.entries.values() if e.kind == "bcrypt"]
        self._dummy: bytes | None = (
            f"$2b${max(costs):02d}${'.' * 53}".encode("ascii") if costs else None
        )
        for refused in loaded.refused:
            self.log.warn(
                "Ignoring line {line} of the htpasswd file {path} (user {user!r}): {reason}",
                path=self._path,
                line=refused.line,
                user=refused.user,
                reason=refused.reason,
            )
        if not self._entries:
            self.log.warn("The htpasswd file {path} has no usable entries", path=self._path)

    async def _dummy_check(self, secret: bytes) -> None:
        dummy = self._dummy
        if dummy is None:
            hmac.compare_digest(_sha1(secret), _SHA_DUMMY)
        else:
            await self._run_blocking(lambda: _bcrypt_check(secret, dummy))

    def _remember(self, key: bytes, hashed: bytes) -> None:
        self._cache[key] = (self._clock.seconds() + self._cache_ttl, hashed)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _reload_failed(self, error: Exception) -> None:
        self.log.error(
            "Cannot reload the htpasswd file {path}; keeping the {count} users "
            "loaded before: {error}",
            path=self._path,
            count=len(self._entries),
            error=str(error),
        )

    def _reloaded(self, loaded: HtpasswdFile) -> None:
        self._use(loaded)
        self.log.info(
            "Reloaded the htpasswd file {path}: {count} users",
            path=self._path,
            count=len(self._entries),
        )
