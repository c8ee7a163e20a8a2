"""The contracts between oauthgate's parts. Every varying part implements one of these.

Methods that do I/O return awaitables: a ``Deferred`` or a coroutine (``async def``)
both satisfy them. Implementations are checked with ``verifyObject`` when the
service is assembled. Plugins import only this module, :mod:`oauthgate.errors`,
:mod:`oauthgate.session`, :mod:`oauthgate.testing`, and the provider base classes
:mod:`oauthgate.providers.oauth2` and :mod:`oauthgate.providers.oidc`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import attrs
from zope.interface import Attribute, Interface

from oauthgate.session import Session

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime
    from twisted.web.server import Request

__all__ = [
    "Decision",
    "IAuthorizer",
    "IProvider",
    "IProviderFactory",
    "ISessionStore",
    "IUpstream",
    "RequestInfo",
]


@attrs.frozen
class RequestInfo:
    """What authorizers may know about the request being decided (never headers or cookies)."""

    method: str
    path: str
    host: str
    client_ip: str | None = None


@attrs.frozen
class Decision:
    """An authorizer's answer. ``reason`` is shown on the 403 page, so it must be public."""

    allowed: bool
    reason: str = ""

    @classmethod
    def allow(cls) -> Decision:
        return cls(True)

    @classmethod
    def deny(cls, reason: str) -> Decision:
        return cls(False, reason)


class IProvider(Interface):
    """An identity provider: builds the login redirect, redeems codes, refreshes sessions.

    Implementations never log tokens, codes or the client secret, and raise
    :class:`oauthgate.errors.ProviderError` (or a subclass) for every expected failure.
    """

    id = Attribute("str: unique id of this provider in the instance (e.g. 'oidc').")
    display_name = Attribute("str: shown on the sign-in button ('Sign in with <display_name>').")

    def authorize_url(
        state: str,
        nonce: str,
        code_challenge: str | None,
        code_challenge_method: str | None,
        redirect_uri: str,
        extra_params: Sequence[tuple[str, str]],
    ) -> Awaitable[str]:
        """The absolute URL of the provider's authorization endpoint to send the browser to."""

    def redeem(
        code: str, code_verifier: str | None, redirect_uri: str, nonce: str
    ) -> Awaitable[Session]:
        """Exchange an authorization code for a verified session.

        The id_token (if any) is verified (signature, issuer, audience, expiry, and
        ``nonce`` unless the configuration skips it) before a Session is returned.
        Raises TokenError when verification fails, ProviderError otherwise.
        """

    def enrich(session: Session) -> Awaitable[Session]:
        """Fill in what the token did not carry (email, groups) from the provider's APIs."""

    def refresh(session: Session) -> Awaitable[Session | None]:
        """A refreshed session, or None when this session cannot be refreshed (no refresh token,
        or a provider without refresh). Raises RefreshError on failure (``fatal`` when the grant
        is gone)."""

    def authorize(session: Session) -> Awaitable[bool]:
        """Provider-specific checks beyond the common authorizers (a GitHub org, say)."""

    def logout_url(session: Session, redirect: str) -> Awaitable[str | None]:
        """Where to send the browser to end the session at the provider too, or None."""


class IProviderFactory(Interface):
    """Found through the ``oauthgate.providers`` entry-point group; builds one provider."""

    name = Attribute("str: the --provider value that selects this factory.")

    def build(config: Any, http_client: Any, clock: IReactorTime) -> IProvider:
        """Build a provider from the frozen configuration.

        ``http_client`` is a ``treq.HTTPClient`` (or a compatible test double); ``clock``
        is the only source of time the provider may use. Raise
        :class:`oauthgate.errors.ConfigError` for invalid provider options.
        """


class ISessionStore(Interface):
    """Turns a session into an opaque cookie value and back.

    Values are unforgeable and confidential: a value that was not produced by this
    store (or a tampered one) loads as None, and a value reveals nothing of the
    session to someone without the cookie secret.
    """

    def save(session: Session, previous: str | None = None) -> Awaitable[str]:
        """Store ``session`` and return the cookie value for it. ``previous`` is the value the
        request came with, so a server-side store may reuse (and update) the same entry."""

    def load(value: str) -> Awaitable[Session | None]:
        """The session behind ``value``; None if unknown, expired, tampered or unopenable."""

    def clear(value: str) -> Awaitable[None]:
        """Forget the session behind ``value`` (sign-out). Never fails for an unknown value."""

    def lock(value: str) -> AbstractAsyncContextManager[None]:
        """An async context manager held while refreshing the session behind ``value``, so only
        one refresh of a session runs at a time (across instances for shared stores)."""

    def check() -> Awaitable[None]:
        """Raise if the store cannot serve requests now (``/ready`` answers 503 then)."""


class IAuthorizer(Interface):
    """One configuration-level access check; every configured authorizer must allow."""

    def authorize(request: RequestInfo, session: Session) -> Awaitable[Decision]:
        """Allow or deny ``session`` for ``request``. A deny's reason is shown to the user."""


class IUpstream(Interface):
    """Where allowed requests go: an HTTP(S) server, a static answer, a directory."""

    id = Attribute("str: unique id, used in logs and metrics.")
    path = Attribute("str: the path prefix this upstream serves.")

    def matches(path: str) -> bool:
        """True if this upstream serves ``path`` (the request's path, without the query)."""

    def forward(request: Request, inject: Sequence[tuple[bytes, bytes]]) -> Awaitable[None]:
        """Answer ``request`` from the upstream, adding the ``inject`` headers to what is sent.

        Incoming copies of identity headers were already removed by the gate. Writes the
        response to ``request`` and finishes it. Raises
        :class:`oauthgate.errors.UpstreamError` if no response could be started (502/504).
        """
