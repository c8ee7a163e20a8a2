"""The base of plain OAuth 2.0 providers (GitHub, GitLab's API, Facebook, ...).

Authorization code flow against fixed (or configured) endpoints; the identity comes from
the provider's own APIs in :meth:`OAuth2Provider.identity`, which each provider writes.
OpenID Connect providers derive from :class:`oauthgate.providers.oidc.OIDCProvider`.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import quote_plus, urlsplit

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from oauthgate.config.options import Config
from oauthgate.errors import ConfigError, ProviderError, RefreshError
from oauthgate.interfaces import IProvider, IProviderFactory
from oauthgate.providers.jwks import HTTPClientLike, fetch
from oauthgate.providers.oidc import (
    _add_query,
    _number,
    _TokenEndpointError,
    post_to_token_endpoint,
)
from oauthgate.session import Session

__all__ = ["OAuth2Provider", "OAuth2ProviderFactory"]

ACCESS_RECHECK = 300.0
"""Seconds a repository access decision is reused before the API is asked again."""
MAX_PAGES = 50
"""Pages of a listing :meth:`OAuth2Provider.paged` reads at most; the rest is ignored (and
logged)."""


def same_origin(url: str, base: str) -> bool:
    """Whether ``url`` has the scheme and host (with port) of ``base``."""
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme.lower(), a.netloc.lower()) == (b.scheme.lower(), b.netloc.lower())


@attrs.define
class AccessMemo:
    """Access decisions remembered for ``ttl`` seconds of ``clock``, keyed by a hash.

    Keys are made with :meth:`key` from values that may be secret (an access token):
    only a hash of them is kept. At most ``limit`` decisions are kept; the oldest go first.
    """

    _clock: IReactorTime
    ttl: float = ACCESS_RECHECK
    limit: int = 10_000
    _entries: dict[str, tuple[float, bool]] = attrs.field(factory=dict, repr=False)

    @staticmethod
    def key(*parts: str) -> str:
        return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()

    def get(self, key: str) -> bool | None:
        """The remembered decision, or None if there is none still valid."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock.seconds():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: str, allowed: bool) -> None:
        now = self._clock.seconds()
        self._entries.pop(key, None)
        if len(self._entries) >= self.limit:
            for old in [k for k, (until, _) in self._entries.items() if until <= now]:
                del self._entries[old]
            while len(self._entries) >= self.limit:
                del self._entries[next(iter(self._entries))]
        self._entries[key] = (now + self.ttl, allowed)


@implementer(IProvider)
@attrs.define
class OAuth2Provider:
    """A plain OAuth 2.0 provider. Subclasses set the class attributes and write
    :meth:`identity` (and :meth:`check_access` for provider-specific rules)."""

    _config: Config
    _http_client: HTTPClientLike
    _clock: IReactorTime

    id: ClassVar[str] = "oauth2"
    default_display_name: ClassVar[str] = "OAuth 2.0"
    default_login_url: ClassVar[str] = ""
    default_redeem_url: ClassVar[str] = ""
    default_profile_url: ClassVar[str] = ""
    default_validate_url: ClassVar[str] = ""
    default_scope: ClassVar[str] = ""
    #: "post": client_id and client_secret in the form (most OAuth2 APIs); "basic": HTTP Basic
    client_auth: ClassVar[str] = "post"
    #: whether the token endpoint's refresh_token grant is used to refresh sessions
    supports_refresh: ClassVar[bool] = False

    log: ClassVar[Logger] = Logger()

    _access_memo: AccessMemo = attrs.field(init=False)

    @_access_memo.default
    def _access_memo_default(self) -> AccessMemo:
        return AccessMemo(self._clock)

    @property
    def display_name(self) -> str:
        return self._config.provider_display_name or self.default_display_name

    @property
    def login_url(self) -> str:
        return self._config.login_url or self.default_login_url

    @property
    def redeem_url(self) -> str:
        return self._config.redeem_url or self.default_redeem_url

    @property
    def profile_url(self) -> str:
        return self._config.profile_url or self.default_profile_url

    @property
    def scope(self) -> str:
        return self._config.scope or self.default_scope

    @classmethod
    def check_config(cls, config: Config) -> list[str]:
        """Problems with the provider options, one line each (raised as a ConfigError)."""
        problems = []
        if not config.client_id:
            problems.append(f"client_id: is required for provider {cls.id}")
        if not (config.login_url or cls.default_login_url):
            problems.append(f"login_url: is required for provider {cls.id}")
        if not (config.redeem_url or cls.default_redeem_url):
            problems.append(f"redeem_url: is required for provider {cls.id}")
        return problems

    # --- IProvider ----------------------------------------------------------------------

    async def authorize_url(
        self,
        state: str,
        nonce: str,
        code_challenge: str | None,
        code_challenge_method: str | None,
        redirect_uri: str,
        extra_params: Sequence[tuple[str, str]],
    ) -> str:
        config = self._config
        params: list[tuple[str, str]] = [
            ("client_id", config.client_id),
            ("redirect_uri", redirect_uri),
            ("response_type", "code"),
            ("state", state),
        ]
        if self.scope:
            params.append(("scope", self.scope))
        if code_challenge:
            params.append(("code_challenge", code_challenge))
            params.append(("code_challenge_method", code_challenge_method or "plain"))
        if config.prompt:
            params.append(("prompt", config.prompt))
        elif config.approval_prompt:
            params.append(("approval_prompt", config.approval_prompt))
        if config.acr_values:
            params.append(("acr_values", config.acr_values))
        protected = {
            "client_id",
            "redirect_uri",
            "response_type",
            "state",
            "code_challenge",
            "code_challenge_method",
        }
        extra = [(n, v) for n, v in extra_params if n not in protected]
        overridden = {n for n, _ in extra}
        params = [(n, v) for n, v in params if n not in overridden] + extra
        return _add_query(self.login_url, params)

    async def redeem(
        self, code: str, code_verifier: str | None, redirect_uri: str, nonce: str
    ) -> Session:
        """Exchange ``code`` for tokens; the identity is filled in by :meth:`enrich`."""
        form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
        ]
        if code_verifier:
            form.append(("code_verifier", code_verifier))
        tokens = await self.token_request(form)
        access_token = tokens.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise ProviderError(f"{self.id}: the token endpoint answered without an access_token")
        return self._session_from_tokens(tokens, Session(provider=self.id))

    async def enrich(self, session: Session) -> Session:
        """Ask the provider's API who this is (once), and refuse a session without email."""
        if not session.email:
            found = await self.identity(session)
            session = attrs.evolve(session, **found)
        if not session.email:
            raise ProviderError(f"{self.id}: the provider gave no email address for this user")
        return session

    async def refresh(self, session: Session) -> Session | None:
        if not self.supports_refresh or not session.refresh_token:
            return None
        try:
            tokens = await self.token_request(
                [("grant_type", "refresh_token"), ("refresh_token", session.refresh_token)]
            )
        except _TokenEndpointError as e:
            raise RefreshError(
                str(e), fatal=e.error in ("invalid_grant", "invalid_client")
            ) from None
        except ProviderError as e:
            raise RefreshError(str(e), fatal=False) from None
        refreshed = self._session_from_tokens(tokens, session)
        try:
            found = await self.identity(refreshed)
        except ProviderError as e:
            self.log.warn(
                "{provider}: identity not re-read after refresh: {error}",
                provider=self.id,
                error=str(e),
            )
            return refreshed
        return attrs.evolve(refreshed, **found)

    async def authorize(self, session: Session) -> bool:
        """Provider-specific rules (an org, a team); the common authorizers run besides."""
        return await self.check_access(session)

    async def logout_url(self, session: Session, redirect: str) -> str | None:
        return None

    # --- for subclasses -----------------------------------------------------------------

    async def identity(self, session: Session) -> dict[str, Any]:
        """``user``, ``email``, ``groups``, ``preferred_username`` from the provider's APIs,
        with ``session.access_token``. Raise ProviderError when the API fails."""
        raise NotImplementedError

    async def check_access(self, session: Session) -> bool:
        return True

    def _refused(self, session: Session, reason: str) -> None:
        """Log that :meth:`check_access` refuses ``session``'s user, and why."""
        self.log.info(
            "{provider}: refused {user}: {reason}",
            provider=self.id,
            user=session.user,
            reason=reason,
        )

    async def _remembered_access(
        self, session: Session, target: str, check: Callable[[], Awaitable[bool]]
    ) -> bool:
        """``check()``'s decision on ``session``'s access to ``target``, reused for
        :data:`ACCESS_RECHECK` seconds per user and access token. A ProviderError from
        ``check`` is logged and refuses, and is not remembered (fails closed)."""
        fingerprint = hashlib.sha256(session.access_token.encode("utf-8")).hexdigest()
        key = AccessMemo.key(target, session.user, fingerprint)
        known = self._access_memo.get(key)
        if known is not None:
            return known
        try:
            allowed = await check()
        except ProviderError as e:
            self.log.error(
                "{provider}: cannot check {user}'s access to {target}: {error}",
                provider=self.id,
                user=session.user,
                target=target,
                error=str(e),
            )
            return False
        self._access_memo.put(key, allowed)
        return allowed

    async def api_get(
        self,
        url: str,
        session: Session,
        *,
        what: str,
        auth_scheme: str = "Bearer",
        headers: Mapping[bytes, list[bytes]] | None = None,
        allow: Sequence[int] = (200,),
    ) -> tuple[int, Any]:
        """GET ``url`` with the session's access token; (status, parsed JSON or None).

        A status outside ``allow`` raises ProviderError naming ``what``; the token is never
        part of a message."""
        sent = {b"Accept": [b"application/json"], **(headers or {})}
        sent[b"Authorization"] = [f"{auth_scheme} {session.access_token}".encode()]
        result = await fetch(self._http_client, self._clock, "GET", url, what=what, headers=sent)
        if result.code not in allow:
            raise ProviderError(f"{self.id}: {what} ({url}) answered HTTP {result.code}")
        if not result.body:
            return result.code, None
        return result.code, result.json(what, url)

    async def paged(
        self,
        url: str,
        what: str,
        read_page: Callable[[str], Awaitable[tuple[Iterable[Any], str | None]]],
        *,
        origin: str,
    ) -> list[Mapping[str, Any]]:
        """Every object entry of a paged listing that starts at ``url``.

        ``read_page(url)`` answers a page's entries and the URL of the next page (None at
        the last). A next URL off ``origin``'s scheme and host is not followed (the access
        token would go there), and at most :data:`MAX_PAGES` pages are read; both are
        logged. ProviderErrors from ``read_page`` pass through."""
        entries: list[Mapping[str, Any]] = []
        next_url: str | None = url
        for _ in range(MAX_PAGES):
            if next_url is None:
                return entries
            values, found = await read_page(next_url)
            entries.extend(v for v in values if isinstance(v, dict))
            if found is not None and not same_origin(found, origin):
                self.log.warn(
                    "{provider}: not following a pagination link to another host: {url}",
                    provider=self.id,
                    url=found,
                )
                found = None
            next_url = found
        if next_url is not None:
            self.log.warn(
                "{provider}: {what} has more than {pages} pages; the rest is not read",
                provider=self.id,
                what=what,
                pages=MAX_PAGES,
            )
        return entries

    async def token_request(self, form: list[tuple[str, str]]) -> dict[str, Any]:
        """POST ``form`` to the token endpoint with the client's credentials."""
        config = self._config
        headers = {b"Accept": [b"application/json"]}
        data = list(form)
        if self.client_auth == "basic" and config.client_secret:
            pair = f"{quote_plus(config.client_id)}:{quote_plus(config.client_secret)}"
            headers[b"Authorization"] = [b"Basic " + base64.b64encode(pair.encode())]
            data.append(("client_id", config.client_id))
        else:
            data.append(("client_id", config.client_id))
            if config.client_secret:
                data.append(("client_secret", config.client_secret))
        return await post_to_token_endpoint(
            self._http_client, self._clock, self.redeem_url, data, headers, self.log
        )

    def _session_from_tokens(self, tokens: Mapping[str, Any], session: Session) -> Session:
        now = self._clock.seconds()
        expires_in = _number(tokens.get("expires_in"))
        access = tokens.get("access_token")
        refresh = tokens.get("refresh_token")
        id_token = tokens.get("id_token")
        return attrs.evolve(
            session,
            access_token=access if isinstance(access, str) else session.access_token,
            refresh_token=refresh
            if isinstance(refresh, str) and refresh
            else session.refresh_token,
            id_token=id_token if isinstance(id_token, str) else session.id_token,
            created_at=now,
            expires_on=now + expires_in if expires_in else None,
        )


@implementer(IProviderFactory)
@attrs.frozen
class OAuth2ProviderFactory:
    """The entry-point object of a plain OAuth 2.0 provider."""

    name: str
    provider_class: type[OAuth2Provider]

    def build(self, config: Any, http_client: Any, clock: IReactorTime) -> OAuth2Provider:
        problems = self.provider_class.check_config(config)
        if problems:
            raise ConfigError(problems)
        return self.provider_class(config, http_client, clock)
