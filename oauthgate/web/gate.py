"""The root resource: one request's way through oauthgate, read top to bottom.

1. client address  2. own endpoints  3. strip identity headers  4. session (cookie)
5. refresh  6. authorize  7. no session -> 401 / sign-in page; denied -> 403;
allowed -> identity headers, then the upstream.

The gate may offer several identity providers (:class:`GateProvider`). A login records
its provider's id in the sealed CSRF cookie, the callback redeems the code with that
provider, and the session carries the id (``Session.provider``): refresh, the provider's
own checks and sign-out go to the provider that made the session.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Callable, Coroutine, Generator, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from oauthgate.authz.query import check_query_constraints
from oauthgate.config.options import Config
from oauthgate.errors import (
    AuthError,
    ProviderError,
    StoreUnavailable,
    TokenError,
    UpstreamError,
)
from oauthgate.interfaces import (
    IAuthorizer,
    IProvider,
    ISessionStore,
    IUpstream,
    RequestInfo,
)
from oauthgate.logs import AccessLog
from oauthgate.memo import Memo, session_weight
from oauthgate.metrics import NO_METRICS, MetricsHook
from oauthgate.providers.pkce import challenge, make_verifier
from oauthgate.resource_metadata import (
    metadata_url,
    protected_resource_metadata,
    www_authenticate,
)
from oauthgate.session import Session
from oauthgate.sessions import cookies
from oauthgate.sessions.cookies import CookieSettings
from oauthgate.sessions.crypto import Sealer
from oauthgate.upstreams.routing import route
from oauthgate.upstreams.websocket import is_websocket_upgrade
from oauthgate.web.access import AccessRules, Credentials, Identity
from oauthgate.web.access import header as _header
from oauthgate.web.identity import IdentityHeaders, set_all
from oauthgate.web.pages import Pages
from oauthgate.web.redirects import RedirectValidator
from oauthgate.web.refresh import Refresher

__all__ = ["Gate", "GateProvider", "GateResource"]

_NO_CACHE = (
    (b"Expires", b"Thu, 01 Jan 1970 00:00:00 UTC"),
    (b"Cache-Control", b"no-cache, no-store, must-revalidate, max-age=0"),
    (b"X-Accel-Expires", b"0"),
)
_ROBOTS = b"User-agent: *\nDisallow: /\n"
_FORWARDING = (
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-proto",
    b"x-forwarded-uri",
    b"forwarded",
)


def _arg(request: Request, name: bytes) -> str | None:
    values = request.args.get(name)
    if not values:
        return None
    first: bytes = values[0]
    try:
        return first.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _wants_json(request: Request) -> bool:
    """API clients and scripts: anything that does not accept HTML (as oauth2-proxy treats
    non-browser clients) gets JSON and 401s, never a page or a redirect."""
    accept = _header(request, b"accept") or ""
    return "text/html" not in accept


@attrs.frozen
class GateProvider:
    """One identity provider the gate offers.

    ``id`` is unique in the gate and becomes ``Session.provider`` of the sessions it makes;
    ``config`` is the configuration the provider was built from (its PKCE method and
    backend logout URL are read from it).
    """

    id: str
    provider: IProvider
    config: Config = attrs.field(repr=False)


@attrs.define
class Gate:
    """Everything one request needs, assembled by :mod:`oauthgate.service`.

    ``providers`` lists the identity providers in sign-in page order (at least one).
    """

    config: Config
    providers: Sequence[GateProvider]
    store: ISessionStore
    sealer: Sealer
    cookie: CookieSettings
    authorizers: Sequence[IAuthorizer]
    upstreams: Sequence[IUpstream]
    redirects: RedirectValidator
    identity: IdentityHeaders
    pages: Pages
    clock: IReactorTime
    http_client: Any = None
    random: Callable[[int], bytes] = os.urandom
    access: AccessRules | None = None
    credentials: Credentials = attrs.field(factory=Credentials)
    metrics: MetricsHook = NO_METRICS
    access_log: AccessLog | None = None
    """When set, auth lines are written here (oauth2-proxy's template) instead of logged."""
    _rules: AccessRules = attrs.field(init=False)
    _metadata_path: bytes | None = attrs.field(init=False)
    _by_id: dict[str, GateProvider] = attrs.field(init=False)
    _refreshers: dict[str, Refresher] = attrs.field(init=False)
    _csrf: CookieSettings = attrs.field(init=False)
    _prefix: str = attrs.field(init=False)
    _own_cookie_prefix: bytes = attrs.field(init=False)
    # Sessions from before provider ids -> the same with the one provider's id.
    _adopted: Memo[Session, Session] = attrs.field(init=False, factory=Memo)

    log = Logger()

    def __attrs_post_init__(self) -> None:
        # The provider's redirect back is a cross-site navigation: a Strict CSRF cookie
        # would never come back with it, so the login cookie is at most Lax.
        samesite = "lax" if self.cookie.samesite == "strict" else self.cookie.samesite
        self._csrf = attrs.evolve(
            self.cookie,
            name=f"{self.cookie.name}_csrf",
            expire=self.config.cookie_csrf_expire,
            samesite=samesite,
        )
        if not self.providers:
            raise ValueError("a gate needs at least one identity provider")
        self._by_id = {entry.id: entry for entry in self.providers}
        if len(self._by_id) != len(self.providers):
            raise ValueError("identity provider ids must be unique")
        # One refresher per provider: a cookie value belongs to one session, hence to one.
        self._refreshers = {
            entry.id: Refresher(entry.provider, self.store, self.clock) for entry in self.providers
        }
        self._rules = (
            self.access if self.access is not None else AccessRules.from_config(self.config)
        )
        resource = self.config.protected_resource_metadata
        self._metadata_path = urlsplit(metadata_url(resource)).path.encode() if resource else None
        self._prefix = self.config.proxy_prefix
        self._own_cookie_prefix = self.cookie.name.encode()

    @property
    def provider(self) -> IProvider:
        """The first identity provider (the only one, in a gate with one)."""
        return self.providers[0].provider

    def _provider_of(self, session: Session) -> GateProvider | None:
        """The provider that made ``session``, or None (an htpasswd or bearer session)."""
        return self._by_id.get(session.provider)

    def _checked_by(self, session: Session) -> GateProvider | None:
        """The provider whose own checks, backend logout... apply to ``session``: the one
        that made it; in a gate with one provider, that one for every session (htpasswd and
        bearer sessions included, as before several providers existed)."""
        entry = self._provider_of(session)
        if entry is None and len(self.providers) == 1:
            return self.providers[0]
        return entry

    def _recognised(self, session: Session) -> Session | None:
        """``session`` if it still belongs here, else None.

        It does when its provider is configured, or it is an htpasswd sign-in while
        ``--htpasswd-file`` is set. With one provider, a session from before provider ids
        (none, or the provider's type) is that provider's and comes back with its id.
        A session whose provider was removed from the configuration is no session.
        """
        if session.provider in self._by_id:
            return session
        if session.provider == "htpasswd" and self.credentials.htpasswd is not None:
            return session
        if len(self.providers) == 1:
            only = self.providers[0]
            if session.provider in ("", only.config.provider, str(only.provider.id)):
                # Found again on every request of the session (the stores hand out the
                # same frozen Session for the same cookie value).
                adopted = self._adopted.get(session)
                if adopted is None:
                    adopted = attrs.evolve(session, provider=only.id)
                    self._adopted.put(session, adopted, session_weight(session))
                return adopted
        return None

    # --- 1. client address -------------------------------------------------------------

    def client_ip(self, request: Request) -> str | None:
        """The client's address: the peer, or behind a trusted front proxy the one its
        real-IP header names (see :class:`oauthgate.web.access.AccessRules`)."""
        return self._rules.client_ip(request)

    def _scheme(self, request: Request) -> str:
        if self._rules.trusted_peer(request):
            proto = _header(request, b"x-forwarded-proto")
            if proto in ("http", "https"):
                return proto
        return "https" if request.isSecure() else "http"

    def _host(self, request: Request) -> str:
        if self._rules.trusted_peer(request):
            forwarded = _header(request, b"x-forwarded-host")
            if forwarded:
                return forwarded
        return (_header(request, b"host") or "").strip()

    # --- the request's way ---------------------------------------------------------------

    async def handle(self, request: Request) -> None:
        if request.uri[:1] != b"/":
            _to_origin_form(request)
        path = request.path.decode("utf-8", "replace")
        config = self.config

        # 2. own endpoints that need nothing else
        if path == config.ping_path:
            return self._text(request, 200, b"OK")
        if path == config.ready_path:
            return await self._ready(request)
        if path == "/robots.txt":
            return self._text(request, 200, _ROBOTS)
        if self._metadata_path is not None and request.path == self._metadata_path:
            return self._resource_metadata(request)

        # 3. nobody may send what oauthgate injects
        self.identity.strip_from(request.requestHeaders)

        if path == self._prefix or path.startswith(self._prefix + "/"):
            endpoint = path[len(self._prefix) :]
            if endpoint == "/auth":
                return await self._auth(request)
            if endpoint.startswith("/auth/"):
                # Envoy's ext_authz (HTTP mode) appends the original path to path_prefix.
                own = len((self._prefix + "/auth").encode("utf-8"))
                return await self._auth(request, request.uri[own:].decode("latin-1"))
            for name, value in _NO_CACHE:
                request.setHeader(name, value)
            if endpoint == "/sign_in":
                return await self._sign_in(request)
            if endpoint == "/start":
                return await self._start(request)
            if endpoint == "/callback":
                return await self._callback(request)
            if endpoint == "/sign_out":
                return await self._sign_out(request)
            if endpoint == "/userinfo":
                return await self._userinfo(request)
            raise AuthError(404, "not_found", "There is nothing here.")

        return await self._proxy(request)

    # --- 4..6: who is this, and may they pass ------------------------------------------

    async def authenticate(self, request: Request) -> Session | None:
        """The request's valid session (refreshed when due), or None. Clears a cookie that
        does not open or whose session the provider ended."""
        value = cookies.read_value(request, self.cookie.name)
        if not value:
            return None
        stored = await self.store.load(value)
        if stored is None:
            cookies.clear(request, self.cookie)
            return None
        session = self._recognised(stored)
        if session is None:
            self.log.info(
                "Ignored the session of {user}: its provider {provider!r} is not configured",
                user=stored.email or stored.user,
                provider=stored.provider,
            )
            cookies.clear(request, self.cookie)
            return None
        if not self._needs_refresh(stored, self.clock.seconds()):
            return session  # the common case, without a coroutine for _maybe_refresh
        # The refresher compares with what the store holds: it gets the stored session.
        refreshed = await self._maybe_refresh(request, value, stored, session.provider)
        return None if refreshed is None else self._recognised(refreshed)

    def _needs_refresh(self, session: Session, now: float) -> bool:
        if not session.refresh_token:
            # Nothing to refresh with: the session lives until the cookie expires, as in
            # oauth2-proxy.
            return False
        refresh_after = self.config.cookie_refresh
        return session.is_expired(now) or (refresh_after > 0 and session.age(now) > refresh_after)

    async def _maybe_refresh(
        self, request: Request, value: str, session: Session, provider_id: str
    ) -> Session | None:
        """The session to use for this request; None when it has ended or is expired and
        could not be refreshed now. ``provider_id`` names the provider that refreshes it."""
        now = self.clock.seconds()
        refresher = self._refreshers.get(provider_id)
        if refresher is None or not self._needs_refresh(session, now):
            return session
        outcome = await refresher.refresh(value, session)
        if outcome.session is not None and outcome.value is not None:
            self.metrics.refresh("ok")
            cookies.write_value(request, self.cookie, outcome.value)
            return outcome.session
        if outcome.ended:
            self.metrics.refresh("ended")
            cookies.clear(request, self.cookie)
            return None
        self.metrics.refresh("failed")
        # The provider could not refresh it now: a still valid session goes on; an expired
        # one is sent to login for this request, but keeps its cookie for the next try.
        return None if session.is_expired(now) else session

    async def authorize(self, request: Request, session: Session) -> str | None:
        """None if every authorizer allows ``session``; else the public reason it may not pass."""
        client_ip = self.client_ip(request)
        request.oauthgate_client_ip = client_ip  # type: ignore[attr-defined] # the request log's
        info = RequestInfo(
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("utf-8", "replace"),
            host=self._host(request),
            client_ip=client_ip,
        )
        for authorizer in self.authorizers:
            decision = await authorizer.authorize(info, session)
            if not decision.allowed:
                self.metrics.auth(_auth_method(request), "denied")
                return decision.reason or "access denied"
        entry = self._checked_by(session)
        if entry is not None and not await entry.provider.authorize(session):
            self.metrics.auth(_auth_method(request), "denied")
            return "the identity provider's checks did not pass"
        return None

    # --- /oauth2/auth, /oauth2/userinfo ------------------------------------------------

    async def identify(self, request: Request) -> Identity:
        """The request's session: a bearer JWT, then basic auth (htpasswd), then the cookie.
        The first that yields a session wins."""
        try:
            # Credentials come in the Authorization header: without one (a browser with
            # its cookie), there is nothing to ask them.
            found = (
                await self.credentials.load(request)
                if request.requestHeaders.hasHeader(b"authorization")
                else None
            )
        except TokenError as e:
            self.metrics.auth("bearer", "refused")
            self._auth_log(request, None, "AuthFailure", f"bearer token refused: {e}")
            raise AuthError(403, "invalid_token", f"The bearer token was refused: {e}.") from None
        if found is not None and found.session is not None:
            method = "bearer" if found.method == "bearer token" else "basic"
            request.oauthgate_auth_method = method  # type: ignore[attr-defined]
            self.metrics.auth(method, "ok")
            self._note(request, found.session, found.method)
            return found
        refused = found.refused if found is not None else None
        if refused is not None:
            scheme = (_header(request, b"authorization") or "")[:6].lower()
            self.metrics.auth("basic" if scheme == "basic " else "bearer", "refused")
            self._auth_log(request, None, "AuthFailure", f"credentials refused: {refused}")
        session = await self.authenticate(request)
        if session is not None:
            request.oauthgate_auth_method = "cookie"  # type: ignore[attr-defined]
            self.metrics.auth("cookie", "ok")
            self._note(request, session, "cookie session")
            return Identity(session, "cookie session", refused)
        return Identity(None, "", refused)

    def _log_credential(self, request: Request, identity: Identity) -> None:
        """A bearer token or basic-auth user lets a request in: say so (the cookie session
        was logged once, at login)."""
        if identity.session is not None and identity.method != "cookie session":
            self._auth_log(
                request, identity.session, "AuthSuccess", f"authenticated via {identity.method}"
            )

    def _note(self, request: Request, session: Session | None, how: str) -> None:
        if session is None and how:  # let in by a skip-auth route or a trusted IP
            self.metrics.auth("trusted" if how.startswith("trusted IP") else "skip", "ok")
        self._set_user(request, (session.email or session.user) if session else "")
        request.oauthgate_via = how  # type: ignore[attr-defined]

    async def _auth(self, request: Request, trailing: str | None = None) -> None:
        """``/oauth2/auth``; ``/oauth2/auth<trailing>`` for Envoy, where ``trailing`` is the
        original request's path and query (used like ``X-Forwarded-Uri``; its query is
        the original request's, so it carries no ``allowed_groups``-style constraints)."""
        identity = await self.identify(request)
        session = identity.session
        if session is None:
            original = self._rules.forwarded_target(request, trailing)
            skip = self._rules.skip_reason(request, forwarded=True, trailing=trailing)
            if skip is not None:
                self._note(request, None, skip)
                self._auth_log(request, None, "AuthSuccess", f"allowed by {skip}")
                return self._empty(request, 202)
            target = self._forward_auth_target(request, original, envoy=trailing is not None)
            if target is not None:
                # Caddy forward_auth / Traefik forwardAuth hand this answer to the browser.
                start = f"{self._prefix}/start?rd={quote(target, safe='')}"
                for name, value in _NO_CACHE:
                    request.setHeader(name, value)
                return self._redirect(request, start)
            self._challenge(request, identity)
            return self._text(request, 401, b"Unauthorized")
        reason = await self.authorize(request, session)
        # A skip-auth route or trusted IP lets a session its authorizers refuse through
        # (without identity headers); it is only looked up for such a session.
        if (
            reason is not None
            and self._rules.skip_reason(request, forwarded=True, trailing=trailing) is None
        ):
            self._auth_log(request, session, "AuthFailure", reason)
            return self._text(request, 401, b"Unauthorized")
        constraint = check_query_constraints(request.args if trailing is None else {}, session)
        if not constraint.allowed:
            return self._text(request, 403, b"Forbidden")
        if reason is None:
            self._log_credential(request, identity)
            set_all(request.responseHeaders, self.identity.response(session, tokens=True))
        self._empty(request, 202)

    def _forward_auth_target(
        self, request: Request, original: str | None, *, envoy: bool = False
    ) -> str | None:
        """The original URL to log in for, when ``/oauth2/auth`` should answer a browser
        without a session with a redirect instead of 401 (``--forward-auth-mode``).

        ``original`` is the original request's target (``X-Forwarded-Uri`` or Envoy's
        trailing path, from a trusted peer); ``envoy``: the request came as
        ``/oauth2/auth/<path>``. Only for a trusted front proxy, a client accepting HTML,
        a target that is no ``--api-route``, and a URL rebuilt from
        ``X-Forwarded-Proto/-Host`` (Envoy: or ``Host``) that passes
        ``--whitelist-domain``: a forged host gets 401, never a redirect to it. nginx's
        ``auth_request`` needs the 401 (it makes a 500 of a 302): ``nginx`` mode, or
        ``auto`` when neither ``X-Forwarded-Method`` nor a trailing path came."""
        mode = self.config.forward_auth_mode
        if mode == "nginx" or not self._rules.trusted_peer(request):
            return None
        if mode == "auto" and not envoy and _header(request, b"x-forwarded-method") is None:
            return None
        if self.config.force_json_errors or _wants_json(request):
            return None
        uri = original or "/"
        if self._rules.is_api(request, uri):
            return None
        host = _header(request, b"x-forwarded-host")
        if not host and envoy:
            host = _header(request, b"host")
        if not host or not uri.startswith("/"):
            return None
        target = f"{self._scheme(request)}://{host}{uri}"
        return target if self.redirects.is_valid(target) else None

    async def _userinfo(self, request: Request) -> None:
        session = (await self.identify(request)).session
        if session is None or await self.authorize(request, session) is not None:
            return self._json(request, 401, {"error": "unauthorized"})
        body: dict[str, Any] = {"user": session.user, "email": session.email}
        if session.groups:
            body["groups"] = list(session.groups)
        if session.preferred_username:
            body["preferredUsername"] = session.preferred_username
        self._json(request, 200, body)

    # --- proxy -------------------------------------------------------------------------

    async def _proxy(self, request: Request) -> None:
        identity = await self.identify(request)
        session = identity.session
        skip = self._rules.skip_reason(request)
        inject: list[tuple[bytes, bytes]] = []
        if skip is not None:
            # Through without a login; a session that happens to be there (and may pass)
            # still gives the upstream its identity.
            if session is None or await self.authorize(request, session) is not None:
                self._note(request, None, skip)
            else:
                inject = self.identity.upstream(session, request.requestHeaders)
            self._auth_log(request, session, "AuthSuccess", f"allowed by {skip}")
        else:
            if session is None:
                return await self._need_login(request, identity)
            reason = await self.authorize(request, session)
            if reason is not None:
                self._auth_log(
                    request,
                    session,
                    "AuthFailure",
                    f"{reason} ({getattr(request, 'oauthgate_via', '')})",
                )
                if identity.method == "cookie session":
                    cookies.clear(request, self.cookie)
                raise AuthError(403, "access_denied", f"You may not use this site: {reason}.")
            constraint = check_query_constraints(request.args, session)
            if not constraint.allowed:
                raise AuthError(403, "access_denied", constraint.reason or "Forbidden")
            self._log_credential(request, identity)
            set_all(request.responseHeaders, self.identity.response(session, tokens=False))
            inject = self.identity.upstream(session, request.requestHeaders)
        upstream = self._upstream_for(request)
        if upstream is None:
            raise AuthError(404, "not_found", "No upstream serves this path.")
        self._strip_own_cookies(request)
        if not self._rules.trusted_peer(request):
            # Only a trusted front proxy may say where the request came from; the upstream
            # gets these from oauthgate itself.
            for name in _FORWARDING:
                request.requestHeaders.removeHeader(name)
        upstream_id = str(getattr(upstream, "id", ""))
        self.metrics.upstream(upstream_id, None)
        try:
            await upstream.forward(request, inject)
        except UpstreamError as e:
            self.metrics.upstream(upstream_id, e.status)
            raise

    def _upstream_for(self, request: Request) -> IUpstream | None:
        # The routing table (upstreams/routing.py) also rewrites paths and answers the
        # trailing-slash and dot-segment redirects.
        return route(self.upstreams, request)

    def _strip_own_cookies(self, request: Request) -> None:
        """The upstream never sees oauthgate's own cookies (session, parts, CSRF)."""
        raw = request.requestHeaders.getRawHeaders(b"cookie")
        if not raw:
            return
        own = self._own_cookie_prefix
        own_ = own + b"_"
        kept = []
        for header in raw:
            for part in header.split(b";"):
                pair = part.strip()
                name = pair.split(b"=", 1)[0].rstrip()
                if name == own or (name.startswith(own_) and _is_own_suffix(name[len(own_) :])):
                    continue
                if pair:
                    kept.append(pair)
        if kept:
            request.requestHeaders.setRawHeaders(b"cookie", [b"; ".join(kept)])
        else:
            request.requestHeaders.removeHeader(b"cookie")

    async def _need_login(self, request: Request, identity: Identity) -> None:
        # API clients, scripts and WebSocket clients cannot follow a sign-in page: 401.
        if (
            self.config.force_json_errors
            or _wants_json(request)
            or self._rules.is_api(request)
            or is_websocket_upgrade(request)
        ):
            self._challenge(request, identity)
            return self._json(request, 401, {})
        redirect = self.redirects.sanitize(request.uri.decode("utf-8", "replace"))
        for name, value in _NO_CACHE:
            request.setHeader(name, value)
        if self.config.skip_provider_button and len(self.providers) == 1:
            return await self._begin_login(request, redirect, self.providers[0])
        self._html(request, 403, self.pages.render_sign_in(redirect))

    def _challenge(self, request: Request, identity: Identity) -> None:
        """Tell a bearer client where to log in (RFC 9728), and why its token was refused."""
        resource = self.config.protected_resource_metadata
        if not resource:
            return
        value = www_authenticate(
            metadata_url(resource),
            error="invalid_token" if identity.refused else None,
            description=identity.refused,
        )
        request.responseHeaders.setRawHeaders(b"www-authenticate", [value])

    def _resource_metadata(self, request: Request) -> None:
        resource = self.config.protected_resource_metadata
        issuers = list(
            dict.fromkeys(
                e.config.oidc_issuer_url for e in self.providers if e.config.oidc_issuer_url
            )
        )
        self._json(request, 200, protected_resource_metadata(resource, issuers, self._scopes()))

    def _scopes(self) -> list[str]:
        """The scopes logins ask for (as the OIDC provider builds them)."""
        scope = self.config.scope or (
            "openid email profile" + (" groups" if self.config.allowed_groups else "")
        )
        return scope.split()

    # --- sign in / start / callback / sign out ----------------------------------------

    def _requested_redirect(self, request: Request) -> str:
        """``rd`` (query or form), then ``X-Auth-Request-Redirect``; the first valid one, else /."""
        for candidate in (_arg(request, b"rd"), _header(request, b"x-auth-request-redirect")):
            if candidate and self.redirects.is_valid(candidate):
                return candidate
            if candidate:
                self.log.warn(
                    "Ignored an invalid redirect target from {client}",
                    client=self.client_ip(request),
                )
        return "/"

    async def _sign_in(self, request: Request) -> None:
        # A fresh sign-in never carries an old session along (session fixation).
        cookies.clear(request, self.cookie)
        redirect = self._requested_redirect(request)
        if request.method == b"POST" and self.credentials.htpasswd is not None:
            return await self._password_sign_in(request, redirect)
        if self.config.skip_provider_button:
            entry = self._chosen_provider(request)
            if entry is not None:
                return await self._begin_login(request, redirect, entry)
        self._html(request, 200, self.pages.render_sign_in(redirect))

    async def _password_sign_in(self, request: Request, redirect: str) -> None:
        """The sign-in page's username/password form, checked against ``--htpasswd-file``."""
        assert self.credentials.htpasswd is not None
        user = _arg(request, b"username") or ""
        password = _arg(request, b"password") or ""
        if not user:
            page = self.pages.render_sign_in(redirect, message="Enter a user name.")
            return self._html(request, 400, page)
        session = await self.credentials.htpasswd.authenticate(user, password)
        if session is None:
            self.metrics.login("htpasswd", "failed")
            self._auth_log(
                request, None, "AuthFailure", f"wrong password for htpasswd user {user!r}"
            )
            page = self.pages.render_sign_in(redirect, message="Wrong user name or password.")
            return self._html(request, 401, page)
        session = attrs.evolve(session, created_at=self.clock.seconds())
        self._note(request, session, f"htpasswd user {user!r}")
        reason = await self.authorize(request, session)
        if reason is not None:
            self.metrics.login("htpasswd", "denied")
            self._auth_log(request, session, "AuthFailure", reason)
            raise AuthError(403, "access_denied", f"You may not use this site: {reason}.")
        cookies.write_value(request, self.cookie, await self.store.save(session, None))
        self.metrics.login("htpasswd", "ok")
        self._auth_log(request, session, "AuthSuccess", "authenticated via the htpasswd form")
        self._redirect(request, redirect)

    async def _start(self, request: Request) -> None:
        """``/start?provider=ID&rd=...``: log in with that provider. Without ``provider``, the
        only one; with several, the sign-in page to pick one."""
        redirect = self._requested_redirect(request)
        entry = self._chosen_provider(request)
        if entry is None:
            return self._html(request, 200, self.pages.render_sign_in(redirect))
        await self._begin_login(request, redirect, entry)

    def _chosen_provider(self, request: Request) -> GateProvider | None:
        """The provider the request's ``provider`` parameter names; without one, the only
        provider, or None when there are several. An unknown id is a 400."""
        wanted = _arg(request, b"provider")
        if not wanted:
            return self.providers[0] if len(self.providers) == 1 else None
        entry = self._by_id.get(wanted)
        if entry is None:
            raise AuthError(400, "unknown_provider", "There is no such identity provider here.")
        return entry

    def redirect_uri(self, request: Request) -> str:
        """The callback URL sent to the provider."""
        callback = self._prefix + "/callback"
        configured = self.config.redirect_url
        if configured:
            parts = urlsplit(configured)
            return configured if parts.path not in ("", "/") else configured.rstrip("/") + callback
        if self.config.relative_redirect_url:
            return callback
        scheme = "https" if self.config.cookie_secure else self._scheme(request)
        return f"{scheme}://{self._host(request)}{callback}"

    async def _begin_login(self, request: Request, redirect: str, entry: GateProvider) -> None:
        """Send the browser to ``entry``'s login; the sealed CSRF cookie remembers the state,
        nonce, PKCE verifier, target and which provider the callback must redeem with."""
        state = _token(self.random)
        nonce = _token(self.random)
        method = entry.config.code_challenge_method or None
        verifier = make_verifier(self.random) if method else None
        redirect_uri = self.redirect_uri(request)
        payload = json.dumps(
            {
                "s": state,
                "n": nonce,
                "v": verifier,
                "r": redirect,
                "u": redirect_uri,
                "p": entry.id,
            },
            separators=(",", ":"),
        ).encode()
        csrf = self.sealer.seal(payload, self._csrf_purpose, self.clock.seconds())
        try:
            url = await entry.provider.authorize_url(
                state=state,
                nonce=nonce,
                code_challenge=challenge(verifier, method) if verifier and method else None,
                code_challenge_method=method,
                redirect_uri=redirect_uri,
                extra_params=(),
            )
        except ProviderError as e:
            self.log.error(
                "Cannot start a login with {provider}: {reason}", provider=entry.id, reason=str(e)
            )
            raise AuthError(
                502,
                "provider_error",
                "The identity provider is not reachable. Please try again later.",
            ) from None
        cookies.write_value(request, self._csrf, csrf)
        self._redirect(request, url)

    @property
    def _csrf_purpose(self) -> str:
        return "csrf:" + self.cookie.name

    async def _callback(self, request: Request) -> None:
        error = _arg(request, b"error")
        if error:
            self._auth_log(request, None, "AuthFailure", f"provider returned error {error!r}")
            raise AuthError(
                403, "login_failed", f"Login failed: the identity provider said {error}."
            )
        value = cookies.read_value(request, self._csrf.name)
        opened = (
            self.sealer.open(
                value, self._csrf_purpose, self.config.cookie_csrf_expire, self.clock.seconds()
            )
            if value
            else None
        )
        if opened is None:
            raise AuthError(
                403,
                "csrf_missing",
                "Unable to find a valid CSRF token. Please try signing in again.",
            )
        try:
            flow = json.loads(opened)
            expected_state, nonce, verifier, redirect, redirect_uri = (
                flow["s"],
                flow["n"],
                flow["v"],
                flow["r"],
                flow["u"],
            )
        except (ValueError, KeyError, TypeError):
            raise AuthError(
                403,
                "csrf_missing",
                "Unable to find a valid CSRF token. Please try signing in again.",
            ) from None
        state = _arg(request, b"state") or ""
        if not secrets.compare_digest(state.encode(), str(expected_state).encode()):
            cookies.clear(request, self._csrf)
            raise AuthError(
                403, "state_mismatch", "The login state did not match. Please try again."
            )
        cookies.clear(request, self._csrf)
        entry = self._login_provider(flow.get("p"))
        code = _arg(request, b"code")
        if not code:
            raise AuthError(
                400, "missing_code", "The identity provider sent no authorization code."
            )
        try:
            session = await entry.provider.redeem(code, verifier, redirect_uri, nonce)
            session = await entry.provider.enrich(session)
        except TokenError as e:
            # TokenError messages say why, never the token itself: safe to show.
            self.metrics.login(entry.id, "failed")
            self._auth_log(request, None, "AuthFailure", f"invalid token: {e}")
            raise AuthError(
                403, "invalid_token", f"The identity provider's answer was not accepted: {e}."
            ) from None
        except ProviderError as e:
            self.metrics.login(entry.id, "error")
            self._auth_log(request, None, "AuthError", f"provider error: {e}")
            raise AuthError(
                502,
                "provider_error",
                "The identity provider could not complete the login. Please try again.",
            ) from None
        if session.created_at == 0:
            session = attrs.evolve(session, created_at=self.clock.seconds())
        # The provider that redeemed the code, whatever the session says: refresh, the
        # per-provider rules and sign-out rely on it.
        session = attrs.evolve(session, provider=entry.id)
        self._set_user(request, session.email or session.user)
        reason = await self.authorize(request, session)
        if reason is not None:
            self.metrics.login(entry.id, "denied")
            self._auth_log(request, session, "AuthFailure", reason)
            raise AuthError(403, "access_denied", f"You may not use this site: {reason}.")
        cookie_value = await self.store.save(session, None)
        self.metrics.login(entry.id, "ok")
        cookies.write_value(request, self.cookie, cookie_value)
        via = "OAuth2" if len(self.providers) == 1 else f"OAuth2 ({entry.id})"
        self._auth_log(request, session, "AuthSuccess", f"authenticated via {via}")
        self._redirect(request, self.redirects.sanitize(str(redirect)))

    def _login_provider(self, provider_id: object) -> GateProvider:
        """The provider a login was started with (recorded in the CSRF cookie). A cookie from
        before provider ids belongs to the only provider."""
        if provider_id is None and len(self.providers) == 1:
            return self.providers[0]
        entry = self._by_id.get(provider_id) if isinstance(provider_id, str) else None
        if entry is None:
            raise AuthError(
                403,
                "unknown_provider",
                "This login was started with an identity provider that is not configured "
                "any more. Please sign in again.",
            )
        return entry

    async def _sign_out(self, request: Request) -> None:
        """End the session here, at the backend (``backend_logout_url``) and at the provider.

        The browser goes to the provider's end-session page (RP-initiated logout, for OIDC
        the discovered ``end_session_endpoint`` with ``id_token_hint`` and the validated
        ``rd`` made absolute as ``post_logout_redirect_uri``) when the session's provider
        has one, else straight to ``rd``. An ``rd`` with an ``{id_token}`` placeholder is
        the operator's own logout URL: it is used as it is.
        """
        redirect = self._requested_redirect(request)
        value = cookies.read_value(request, self.cookie.name)
        stored = await self.store.load(value) if value else None
        session = self._recognised(stored) if stored is not None else None
        if value:
            await self.store.clear(value)
        cookies.clear(request, self.cookie)
        id_token = session.id_token if session else ""
        by_hand = "{id_token}" in redirect
        if by_hand:
            redirect = redirect.replace("{id_token}", quote(id_token, safe=""))
        if session is not None:
            self.metrics.sign_out()
            self._auth_log(request, session, "AuthSuccess", "signed out")
            checked = self._checked_by(session)
            if checked is not None and checked.config.backend_logout_url:
                await self._backend_logout(checked.config.backend_logout_url, id_token)
            own = self._provider_of(session)
            if own is not None and not by_hand:
                redirect = await self._provider_logout(request, own, session, redirect)
        self._redirect(request, redirect)

    async def _provider_logout(
        self, request: Request, entry: GateProvider, session: Session, redirect: str
    ) -> str:
        """Where to send the browser to end ``session`` at its provider too; ``redirect``
        when the provider has no logout URL or cannot give one now."""
        if urlsplit(redirect).scheme:
            absolute = redirect
        else:
            scheme = "https" if self.config.cookie_secure else self._scheme(request)
            absolute = f"{scheme}://{self._host(request)}{redirect}"
        try:
            url = await entry.provider.logout_url(session, absolute)
        except ProviderError as e:
            self.log.warn(
                "No logout at {provider} for {user}: {reason}",
                provider=entry.id,
                user=session.email or session.user,
                reason=str(e),
            )
            return redirect
        return str(url) if url else redirect

    async def _backend_logout(self, template: str, id_token: str) -> None:
        url = template.replace("{id_token}", quote(id_token, safe=""))
        if self.http_client is None:
            return
        try:
            d = self.http_client.get(url)
            d.addTimeout(10, self.clock)
            response = await d
            if response.code not in (200, 204):
                self.log.warn("Backend logout answered {code}", code=response.code)
        except Exception as e:
            self.log.error("Backend logout failed: {error}", error=type(e).__name__)

    # --- probes ------------------------------------------------------------------------

    async def _ready(self, request: Request) -> None:
        try:
            await self.store.check()
        except Exception as e:
            self.log.error("Not ready: session store check failed: {error}", error=str(e))
            return self._text(request, 503, b"error: session store unavailable")
        self._text(request, 200, b"OK")

    # --- answering ---------------------------------------------------------------------

    def _set_user(self, request: Request, user: str) -> None:
        request.oauthgate_user = user  # type: ignore[attr-defined]

    def _auth_log(
        self, request: Request, session: Session | None, status: str, message: str
    ) -> None:
        if not self.config.auth_logging:
            return
        if self.access_log is not None:
            user = (session.email or session.user) if session else "-"
            self.access_log.auth(request, user, status, message)
            return
        self.log.info(
            "{client} - {user} [{status}] {reason}",
            client=self.client_ip(request) or "-",
            user=(session.email or session.user) if session else "-",
            status=status,
            reason=message,
            log_category="auth",
        )

    def _answer(self, request: Request, code: int, content_type: bytes, body: bytes) -> None:
        request.setResponseCode(code)
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()

    def _empty(self, request: Request, code: int) -> None:
        request.setResponseCode(code)
        request.setHeader(b"content-length", b"0")
        request.finish()

    def _text(self, request: Request, code: int, body: bytes) -> None:
        self._answer(request, code, b"text/plain; charset=utf-8", body)

    def _json(self, request: Request, code: int, body: Any) -> None:
        self._answer(request, code, b"application/json", json.dumps(body).encode())

    def _html(self, request: Request, code: int, body: bytes) -> None:
        self._answer(request, code, b"text/html; charset=utf-8", body)

    def _redirect(self, request: Request, url: str) -> None:
        request.setResponseCode(302)
        request.setHeader(b"location", url.encode("utf-8"))
        request.setHeader(b"content-length", b"0")
        request.finish()

    def render_error(self, request: Request, error: AuthError) -> None:
        if self.config.force_json_errors or _wants_json(request):
            return self._json(
                request, error.status, {"error": error.code, "message": error.message}
            )
        redirect = self._requested_redirect(request) if error.status != 404 else "/"
        for name, value in _NO_CACHE:
            request.setHeader(name, value)
        title = {
            400: "Bad Request",
            401: "Unauthorized",
            403: "Forbidden",
            404: "Not Found",
            500: "Internal Server Error",
            502: "Bad Gateway",
            503: "Service Unavailable",
            504: "Gateway Timeout",
        }.get(error.status, "Error")
        self._html(
            request,
            error.status,
            self.pages.render_error(
                error.status,
                title,
                error.message,
                redirect=redirect,
                request_id=_request_id(request),
            ),
        )


def _to_origin_form(request: Request) -> None:
    """``GET http://host/path`` (absolute form) is routed like ``GET /path``: own endpoints
    must not be reachable as proxied paths, nor proxied paths as anything else."""
    parts = urlsplit(request.uri)
    path = parts.path or b"/"
    request.path = path
    request.uri = path + (b"?" + parts.query if parts.query else b"")


def _is_own_suffix(suffix: bytes) -> bool:
    return suffix == b"csrf" or suffix.isdigit()


def _token(random: Callable[[int], bytes]) -> str:
    return base64.urlsafe_b64encode(random(32)).rstrip(b"=").decode("ascii")


def _auth_method(request: Request) -> str:
    """How :meth:`Gate.identify` identified the request; "login" for a session being made."""
    return str(getattr(request, "oauthgate_auth_method", "login"))


def _request_id(request: Request) -> str:
    rid = getattr(request, "oauthgate_request_id", None)
    if rid is None:
        rid = (_header(request, b"x-request-id") or secrets.token_hex(8))[:64]
        request.oauthgate_request_id = rid  # type: ignore[attr-defined]
    return str(rid)


def _resume(handling: Coroutine[Any, Any, None], waiting: Any) -> Generator[Any, Any, None]:
    """The rest of a started ``handling`` coroutine, now waiting for ``waiting`` (a
    Deferred), as a generator :meth:`Deferred.fromCoroutine` drives: it yields what the
    coroutine waits for and passes each result, failure or cancellation on unchanged."""
    while True:
        try:
            result = yield waiting
        except GeneratorExit:
            handling.close()
            raise
        except BaseException as e:
            try:
                waiting = handling.throw(e)
            except StopIteration:
                return
        else:
            try:
                waiting = handling.send(result)
            except StopIteration:
                return


class GateResource(Resource):
    """Twisted's side of the gate: every path is handled by :meth:`Gate.handle`."""

    isLeaf = True
    log = Logger()

    def __init__(self, gate: Gate) -> None:
        Resource.__init__(self)
        self._gate = gate

    def render(self, request: Request) -> int:
        gate = self._gate
        request.oauthgate_started = gate.clock.seconds()  # type: ignore[attr-defined]
        metrics = gate.metrics
        if metrics is not NO_METRICS:
            metrics.request_started()
            # Asked before handling: a request answered at once still tells its end.
            request.notifyFinish().addBoth(lambda _: metrics.request_ended())
        # The handler runs at once, up to the first thing it waits for. Many requests
        # (/oauth2/auth with a cookie session) are answered before that, and need no
        # Deferred, no cancellation hook and no failure handler chained for later.
        handling = gate.handle(request)
        try:
            waiting = handling.send(None)
        except StopIteration:
            return NOT_DONE_YET
        except BaseException:
            self._failed(Failure(), request)
            return NOT_DONE_YET
        # It waits (Redis, the IdP, the upstream): Twisted drives the rest.
        d = Deferred.fromCoroutine(_resume(handling, waiting))
        if getattr(request, "_disconnected", False):
            d.cancel()
        else:
            request.notifyFinish().addErrback(lambda _: d.cancel())  # the client went away
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _failed(self, failure: Failure, request: Request) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return  # the client went away (its Deferred was cancelled): nobody to answer
        if failure.check(CancelledError):
            self.log.error(
                "A request was cancelled while its client waited: {path}",
                path=request.path.decode("utf-8", "replace"),
            )
        if request.startedWriting:
            # Headers are out; the only honest thing left is to cut the connection.
            self.log.failure("Failed after the response started", failure)
            abort = getattr(request.transport, "abortConnection", None)
            if abort is not None:
                abort()
            return
        try:
            self._answer_failure(failure, request)
        except Exception:
            # Rendering the error page failed too: answer something minimal, always.
            self.log.failure("Rendering an error page failed", Failure())
            if not request.startedWriting:
                request.setResponseCode(500)
                request.responseHeaders.setRawHeaders(b"content-type", [b"text/plain"])
                request.write(b"Internal Server Error")
            if not request.finished:
                request.finish()

    def _answer_failure(self, failure: Failure, request: Request) -> None:
        error = failure.value
        if isinstance(error, AuthError):
            self.log.info(
                "{status} {code} for {path}",
                status=error.status,
                code=error.code,
                path=request.path.decode("utf-8", "replace"),
            )
            self._gate.render_error(request, error)
            return
        if isinstance(error, StoreUnavailable):
            self.log.error("Session store unavailable: {reason}", reason=str(error))
            self._gate.render_error(
                request,
                AuthError(
                    503,
                    "store_unavailable",
                    "Sessions cannot be checked right now. Please try again shortly.",
                ),
            )
            return
        if isinstance(error, ProviderError):
            self.log.error("Identity provider error: {reason}", reason=str(error))
            self._gate.render_error(
                request,
                AuthError(
                    502,
                    "provider_error",
                    "The identity provider is not reachable. Please try again later.",
                ),
            )
            return
        if isinstance(error, UpstreamError):
            self.log.warn("Upstream error: {reason}", reason=str(error))
            message = (
                "The upstream server did not answer in time."
                if error.status == 504
                else "The upstream server could not be reached."
            )
            self._gate.render_error(request, AuthError(error.status, "upstream_error", message))
            return
        self.log.failure("Request failed: {request_id}", failure, request_id=_request_id(request))
        self._gate.render_error(
            request, AuthError(500, "internal_error", "Something went wrong on our side.")
        )
