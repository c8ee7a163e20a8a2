"""Every exception oauthgate raises on purpose. Plugins may import and raise these."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "AuthError",
    "ConfigError",
    "PluginError",
    "ProviderError",
    "RefreshError",
    "StoreUnavailable",
    "TokenError",
    "UpstreamError",
]


class ConfigError(Exception):
    """Start-up configuration is invalid: one readable line per problem.

    ``problems`` are lines such as ``cookie_secret: must be 16, 24 or 32 bytes, got 10``.
    """

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


class PluginError(Exception):
    """A plugin named by the configuration is missing, fails to load or is not a valid plugin."""


class AuthError(Exception):
    """An expected refusal while handling a request.

    Rendered to the user as an escaped HTML page or JSON with ``status``; ``code`` is a
    short machine-readable reason (``access_denied``, ``state_mismatch``); ``message`` is
    safe to show publicly and must never contain a token or secret.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"{status} {code}: {message}")


class ProviderError(Exception):
    """The identity provider failed or answered something unusable (network, 5xx, bad JSON).

    ``message`` is safe to log and show; it never contains tokens or the client secret.
    """


class TokenError(ProviderError):
    """A token (id_token, bearer JWT) failed verification; ``str(e)`` says why, never the token."""


class RefreshError(ProviderError):
    """A refresh failed. ``fatal`` is True only when the provider says the grant is gone
    (``invalid_grant``, ``invalid_client``): then the session must end. Otherwise the
    session is kept while it is still valid."""

    def __init__(self, message: str, *, fatal: bool) -> None:
        super().__init__(message)
        self.fatal = fatal


class UpstreamError(Exception):
    """The upstream could not be reached (``status`` 502) or did not answer in time (504)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class StoreUnavailable(Exception):
    """The session store cannot be reached now (Redis down, failing over). Requests get a
    503 page; nobody is logged out; ``/ready`` answers 503 until it is back."""
