"""Who is asking, and which rule lets a request through without a login.

Built once from the configuration (regexes and networks compiled at start-up); used by
the gate for every request. Every answer says *why*, for the auth log.
"""

from __future__ import annotations

import attrs
from twisted.logger import Logger
from twisted.web.server import Request

from oauthgate.authz.bearer import BearerVerifier, extract_token
from oauthgate.authz.htpasswd import Htpasswd, parse_basic
from oauthgate.config.options import Config
from oauthgate.errors import ConfigError, ProviderError, TokenError
from oauthgate.rules import ApiRoutes, RouteRules, TrustedIPs, client_address, compile_skip_rules
from oauthgate.session import Session

__all__ = ["AccessRules", "Credentials", "Identity"]


def header(request: Request, name: bytes) -> str | None:
    """The last value of header ``name``. Read as Latin-1, which never fails: a client
    sending bytes that are not UTF-8 gets no traceback, only a value that matches nothing."""
    values = request.requestHeaders.getRawHeaders(name)
    return values[-1].decode("latin-1") if values else None


@attrs.frozen
class AccessRules:
    """Skip-auth routes, API routes, trusted IPs and trusted front proxies."""

    skip: RouteRules
    api: ApiRoutes
    trusted_ips: TrustedIPs
    trusted_proxies: TrustedIPs | None
    reverse_proxy: bool
    client_ip_header: bytes
    client_ip_header_name: str

    @classmethod
    def from_config(cls, config: Config) -> AccessRules:
        """Raises ConfigError with one line per bad regex, address or network."""
        problems: list[str] = []
        skip = RouteRules(())
        try:
            skip = compile_skip_rules(
                config.skip_auth_routes, config.skip_auth_regex, config.skip_auth_preflight
            )
        except ConfigError as e:
            problems.extend(e.problems)
        api = ApiRoutes.parse(())
        try:
            api = ApiRoutes.parse(config.api_routes)
        except ValueError as e:
            problems.append(f"api_routes: {e}")
        trusted = TrustedIPs.parse(())
        try:
            trusted = TrustedIPs.parse(config.trusted_ips)
        except ValueError as e:
            problems.append(f"trusted_ips: {e}")
        proxies: TrustedIPs | None = None
        if config.trusted_proxy_ips:
            try:
                proxies = TrustedIPs.parse(config.trusted_proxy_ips)
            except ValueError as e:
                problems.append(f"trusted_proxy_ips: {e}")
        if problems:
            raise ConfigError(problems)
        return cls(
            skip=skip,
            api=api,
            trusted_ips=trusted,
            trusted_proxies=proxies,
            reverse_proxy=config.reverse_proxy,
            client_ip_header=config.real_client_ip_header.encode("latin-1"),
            client_ip_header_name=config.real_client_ip_header,
        )

    def peer(self, request: Request) -> str | None:
        return getattr(request.getClientAddress(), "host", None)

    def trusted_peer(self, request: Request) -> bool:
        """Whether this connection comes from a front proxy whose X-Forwarded-* may be
        believed: only with ``--reverse-proxy``, and then only from ``--trusted-proxy-ip``
        (any peer when that is not set, as in oauth2-proxy; UNIX socket peers always)."""
        if not self.reverse_proxy:
            return False
        if self.trusted_proxies is None:
            return True
        peer = self.peer(request)
        return peer is None or self.trusted_proxies.contains(peer)

    def client_ip(self, request: Request) -> str | None:
        """The client's address for logs: the peer, or behind a trusted front proxy what
        its header says (for X-Forwarded-For the right-most address that is not a trusted
        proxy); the peer when the header is missing or unreadable."""
        found = self._forwarded_client(request)
        return found if found is not None else self.peer(request)

    def _forwarded_client(self, request: Request) -> str | None:
        """The client address a trusted front proxy reports; the peer when it is no trusted
        proxy; None when a trusted proxy sent no usable address (then nobody is the
        client: the proxy's own address must never count as a trusted client)."""
        peer = self.peer(request)
        if not self.trusted_peer(request):
            return peer
        values = request.requestHeaders.getRawHeaders(self.client_ip_header) or []
        joined = ",".join(v.decode("latin-1") for v in values) or None
        return client_address(
            peer,
            joined,
            reverse_proxy=True,
            header_name=self.client_ip_header_name,
            trusted_proxies=self.trusted_proxies,
        )

    def forwarded_target(self, request: Request, trailing: str | None = None) -> str | None:
        """On ``/oauth2/auth``: the original request's target (path and query) as a trusted
        front proxy reports it: ``X-Forwarded-Uri``, else ``trailing`` (what Envoy's
        ``ext_authz`` appends to ``/oauth2/auth``). None from any other peer (a client
        must not choose the path it is judged by) or when neither came."""
        if not self.trusted_peer(request):
            return None
        if trailing is not None:
            # Envoy put the original path in our own path; an X-Forwarded-Uri next to it
            # may come from the client (Envoy passes allowed client headers through).
            return trailing
        return header(request, b"x-forwarded-uri") or None

    def skip_reason(
        self, request: Request, *, forwarded: bool = False, trailing: str | None = None
    ) -> str | None:
        """Why this request needs no login (a route rule, a trusted IP), or None.

        The path matched is the request's own. Only for ``/oauth2/auth`` (``forwarded``),
        behind a trusted front proxy, it is the original request's
        (``X-Forwarded-Uri``/``-Method``, or Envoy's ``trailing`` path, see
        :meth:`forwarded_target`): on a proxied request that header would let a client
        choose which rule its request is judged by."""
        method = request.method.decode("ascii", "replace")
        target: str | bytes = request.uri
        original = self.forwarded_target(request, trailing) if forwarded else None
        if original is not None:
            target = original
            if trailing is None:
                # Envoy's check request already carries the original method.
                method = header(request, b"x-forwarded-method") or method
        rule = self.skip.matches(method, target)
        if rule is not None:
            return f"skip-auth route {rule.text!r}"
        if not self.trusted_ips.networks:
            return None  # the common case: no address to work out on every request
        ip = self._forwarded_client(request)
        if ip is not None and self.trusted_ips.contains(ip):
            return f"trusted IP {ip}"
        return None

    def is_api(self, request: Request, target: str | None = None) -> bool:
        """Whether ``--api-route`` matches ``target`` (the original request's, on
        ``/oauth2/auth``), else the request's own URI."""
        return self.api.matches(target if target is not None else request.uri.decode("latin-1"))


@attrs.frozen
class Identity:
    """A request's session and how it was established; ``refused`` says why a credential
    the client sent was not accepted (for the auth log and ``WWW-Authenticate``)."""

    session: Session | None = None
    method: str = ""
    refused: str | None = None


@attrs.define
class Credentials:
    """The session loaders that come before the cookie: bearer JWT, then basic auth."""

    bearer: BearerVerifier | None = None
    htpasswd: Htpasswd | None = None
    login_fallback: bool = True

    log = Logger()

    async def load(self, request: Request) -> Identity | None:
        """The identity from the Authorization header, or None to go on with the cookie.

        Raises TokenError for a refused bearer token when ``bearer_token_login_fallback``
        is off (the gate answers 403)."""
        authorization = header(request, b"authorization")
        if not authorization:
            return None
        refused: str | None = None
        if self.bearer is not None:
            token = extract_token(authorization)
            if token is not None:
                try:
                    return Identity(await self.bearer.verify(token), "bearer token")
                except TokenError as e:
                    if not self.login_fallback:
                        raise
                    refused = str(e)
                except ProviderError as e:
                    self.log.error("Cannot verify bearer tokens now: {error}", error=str(e))
                    refused = "the token issuer's keys are not reachable"
        if self.htpasswd is not None:
            credentials = parse_basic(authorization)
            if credentials is not None:
                user, password = credentials
                session = await self.htpasswd.authenticate(user, password)
                if session is not None:
                    return Identity(session, f"htpasswd user {user!r}")
                refused = f"wrong user name or password for {user!r}"
        return Identity(None, "", refused) if refused else None
