"""Refreshing sessions at the provider: one refresh per session at a time.

Parallel requests that arrive with the same old cookie share one refresh and its
outcome, failures included; requests that arrive shortly after with the old cookie
reuse the refreshed session instead of spending a (possibly rotated) refresh token
again. A refresh, once started, runs to the end even if the request that started it
goes away, so a rotated refresh token is never lost half-way.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from oauthgate.errors import RefreshError, StoreUnavailable
from oauthgate.interfaces import IProvider, ISessionStore
from oauthgate.session import Session

__all__ = ["Outcome", "Refresher"]

# How long a refreshed session is remembered for requests that still carry the old cookie.
REMEMBER = 30.0


@attrs.frozen
class Outcome:
    """What a refresh came to.

    ``session``/``value``: the refreshed session and its new cookie value (success).
    ``ended``: the provider says the grant is gone; the session must end.
    Neither: the refresh could not be done now (provider unreachable, no refresh token);
    the caller keeps the old session while it is valid.
    """

    session: Session | None = None
    value: str | None = None
    ended: bool = False


_UNAVAILABLE = Outcome()
_ENDED = Outcome(ended=True)


@attrs.define
class Refresher:
    """Refreshes sessions at ``provider``; the gate keeps one per identity provider."""

    provider: IProvider
    store: ISessionStore
    clock: IReactorTime
    _inflight: dict[str, Deferred[Outcome]] = attrs.field(factory=dict, repr=False)
    _recent: dict[str, tuple[float, Outcome]] = attrs.field(factory=dict, repr=False)

    log = Logger()

    def refresh(self, value: str, session: Session) -> Deferred[Outcome]:
        """The outcome of refreshing the session behind cookie ``value``. Cancelling the
        returned Deferred abandons the wait, never the refresh itself."""
        now = self.clock.seconds()
        self._forget_before(now - REMEMBER)
        recent = self._recent.get(value)
        if recent is not None:
            return Deferred.fromCoroutine(_value(recent[1]))
        shared = self._inflight.get(value)
        if shared is None:
            shared = Deferred.fromCoroutine(self._refresh(value, session))
            self._inflight[value] = shared
            shared.addBoth(self._done, value)
        return _follow(shared)

    def _done(self, result: Outcome, value: str) -> Outcome:
        del self._inflight[value]
        if result.session is not None:
            self._recent[value] = (self.clock.seconds(), result)
        return result

    def _forget_before(self, cutoff: float) -> None:
        for key in [k for k, (at, _) in self._recent.items() if at < cutoff]:
            del self._recent[key]

    async def _refresh(self, value: str, session: Session) -> Outcome:
        """Never fails: every way a refresh can go is an Outcome."""
        try:
            return await self._attempt(value, session)
        except StoreUnavailable as e:
            self.log.error(
                "Cannot refresh the session of {user} now: {reason}",
                user=session.email or session.user,
                reason=str(e),
            )
            return _UNAVAILABLE
        except Exception:
            self.log.failure(
                "Refresh failed unexpectedly for {user}", user=session.email or session.user
            )
            return _UNAVAILABLE

    async def _attempt(self, value: str, session: Session) -> Outcome:
        who = session.email or session.user
        async with self.store.lock(value):
            # A shared store (Redis) may hold a newer session than the one this request
            # loaded: another instance refreshed it while we waited for the lock. Use that
            # one instead of spending the (possibly rotated) refresh token again. A cookie
            # store loads the same session again.
            current = await self.store.load(value)
            if current is None:
                return _ENDED  # signed out (or expired) meanwhile
            if current != session:
                self.log.info("Session of {user} was refreshed elsewhere", user=who)
                return Outcome(session=current, value=value)
            try:
                refreshed = await self.provider.refresh(session)
            except RefreshError as e:
                if e.fatal:
                    self.log.warn(
                        "Refresh refused for {user}; the session ends: {reason}",
                        user=who,
                        reason=str(e),
                    )
                    return _ENDED
                self.log.error(
                    "Refresh failed for {user}, will retry: {reason}", user=who, reason=str(e)
                )
                return _UNAVAILABLE
            if refreshed is None:
                return _UNAVAILABLE
            if refreshed.provider != session.provider:
                # The session stays with the provider id the gate gave it, whatever the
                # provider (which knows only its type) put there.
                refreshed = attrs.evolve(refreshed, provider=session.provider)
            new_value = await self.store.save(refreshed, value)
        self.log.info("Refreshed session for {user}", user=refreshed.email or refreshed.user)
        return Outcome(session=refreshed, value=new_value)


async def _value(outcome: Outcome) -> Outcome:
    return outcome


def _follow(shared: Deferred[Outcome]) -> Deferred[Outcome]:
    """A Deferred that fires with ``shared``'s outcome (``shared`` never fails) but whose
    cancellation leaves ``shared`` running."""
    mine: Deferred[Outcome] = Deferred()

    def relay(outcome: Outcome) -> Outcome:
        if not mine.called:
            mine.callback(outcome)
        return outcome

    shared.addCallback(relay)
    return mine
