"""The generic OpenID Connect provider (``--provider=oidc``), and the base of OIDC-based ones.

Endpoints come from discovery (``<oidc_issuer_url>/.well-known/openid-configuration``,
fetched on first use and cached once it succeeds) or from ``login_url``, ``redeem_url``,
``profile_url`` and ``oidc_jwks_url``. Every id_token is verified before a session is
built: signature (key and algorithm from the JWKS), issuer, audience, expiry against the
injected clock, and nonce. Tokens, codes and the client secret are never logged.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit, urlunsplit

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from oauthgate.config.options import Config
from oauthgate.errors import ConfigError, ProviderError, RefreshError, TokenError
from oauthgate.interfaces import IProvider, IProviderFactory
from oauthgate.providers.claims import coerce_groups, get_claim
from oauthgate.providers.client_auth import JWT_BEARER, SigningKey, signing_key_from_config
from oauthgate.providers.jwks import (
    HTTPClientLike,
    HTTPResult,
    JWKSCache,
    SingleFlight,
    bearer_headers,
    fetch,
)
from oauthgate.session import Session

__all__ = [
    "CLIENT_AUTH_METHODS",
    "LEEWAY",
    "Endpoints",
    "OIDCProvider",
    "OIDCProviderFactory",
    "factory",
]

LEEWAY = 60.0  # seconds of clock skew tolerated on exp, iat and nbf

_DEFAULT_SCOPE = "openid email profile"
CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")
_NO_JWT_KEY = "jwt_key: required (or jwt_key_file) with client_auth_method private_key_jwt"
_FATAL_REFRESH_ERRORS = frozenset({"invalid_grant", "invalid_client"})
# The session fields a provider's claims fill in (besides ``user``, the subject).
_IDENTITY_FIELDS = ("email", "groups", "preferred_username")
# Parameters the login flow must not override through extra_params.
_PROTECTED_PARAMS = frozenset(
    {
        "client_id",
        "redirect_uri",
        "response_type",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
    }
)


@attrs.frozen
class Endpoints:
    """Where the provider's endpoints are, once discovery (or the configuration) said so."""

    login: str
    redeem: str
    jwks: str
    profile: str = ""
    end_session: str = ""
    code_challenge_methods: tuple[str, ...] = ()


@attrs.frozen
class _Discovered:
    endpoints: Endpoints
    jwks: JWKSCache


class _TokenEndpointError(ProviderError):
    """The token endpoint refused: its HTTP status and OAuth ``error`` code are kept."""

    def __init__(self, message: str, *, status: int, error: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


def _printable(value: Any, limit: int = 200) -> str:
    """A provider-supplied string, made safe to log and show (no control characters)."""
    text = value if isinstance(value, str) else ""
    return "".join(c for c in text if c.isprintable())[:limit]


def _add_query(url: str, params: Sequence[tuple[str, str]]) -> str:
    """``url`` with ``params`` appended to the query it already has."""
    parts = urlsplit(url)
    extra = urlencode(params, quote_via=quote)
    query = f"{parts.query}&{extra}" if parts.query and extra else parts.query or extra
    return urlunsplit(parts._replace(query=query))


def _is_absolute_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _same_issuer(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _parse_token_response(result: HTTPResult) -> dict[str, Any] | None:
    """A token endpoint's answer as a mapping, whether JSON or form-encoded; None if neither."""
    text = result.body.decode("utf-8", "replace")
    if result.media_type not in ("application/x-www-form-urlencoded", "text/plain"):
        try:
            payload = json.loads(text)
        except ValueError:
            pass
        else:
            return payload if isinstance(payload, dict) else None
    form = dict(parse_qsl(text, keep_blank_values=True))
    return form or None


async def post_to_token_endpoint(
    http_client: HTTPClientLike,
    clock: IReactorTime,
    url: str,
    data: list[tuple[str, str]],
    headers: dict[bytes, list[bytes]],
    log: Logger,
) -> dict[str, Any]:
    """POST ``data`` to a token endpoint and return its answer (JSON or form-encoded).

    Raises _TokenEndpointError (with the provider's ``error`` code) for an error answer,
    ProviderError for anything unreadable. Shared by the OIDC and plain OAuth 2.0 bases;
    messages name the endpoint and error code, never the form's secrets."""
    result = await fetch(
        http_client, clock, "POST", url, what="the token endpoint", data=data, headers=headers
    )
    payload = _parse_token_response(result)
    if not 200 <= result.code < 300 or (payload is not None and "error" in payload):
        payload = payload or {}
        error = _printable(payload.get("error")) or "no error code"
        description = _printable(payload.get("error_description"))
        log.error(
            "The token endpoint {url} answered HTTP {status}: {error}",
            url=url,
            status=result.code,
            error=error,
        )
        message = f"the token endpoint ({url}) answered HTTP {result.code}: {error}"
        if description:
            message += f": {description}"
        raise _TokenEndpointError(message, status=result.code, error=error)
    if payload is None:
        raise ProviderError(f"the token endpoint ({url}) answered neither JSON nor a form")
    return payload


@implementer(IProvider)
@attrs.define
class OIDCProvider:
    """A provider speaking OpenID Connect: authorization code flow with PKCE and nonce.

    Subclasses (keycloak-oidc, ...) override ``id``, ``default_display_name`` and, for
    extra claims, :meth:`_identity`.
    """

    id: ClassVar[str] = "oidc"
    default_display_name: ClassVar[str] = "OpenID Connect"
    log: ClassVar[Logger] = Logger()

    _config: Config
    _http_client: HTTPClientLike
    _clock: IReactorTime
    display_name: str = attrs.field(init=False)
    _discovered: _Discovered | None = attrs.field(default=None, init=False)
    _discovery: SingleFlight[_Discovered] = attrs.field(factory=SingleFlight, init=False)
    _signing_key: SigningKey | None = attrs.field(init=False, repr=False)
    _random: Callable[[int], bytes] = attrs.field(default=os.urandom, kw_only=True, repr=False)

    @display_name.default
    def _display_name_default(self) -> str:
        return self._config.provider_display_name or self.default_display_name

    @_signing_key.default
    def _signing_key_default(self) -> SigningKey | None:
        """The private_key_jwt key, read once here; a ConfigError if it is missing or bad."""
        if self._config.client_auth_method != "private_key_jwt":
            return None
        key = signing_key_from_config(self._config)
        if key is None:
            raise ConfigError([_NO_JWT_KEY])
        return key

    @classmethod
    def check_config(cls, config: Config) -> list[str]:
        """The problems with this provider's options, one readable line each."""
        problems = []
        if not config.client_id:
            problems.append(f"client_id: required for --provider={cls.id}")
        if config.skip_oidc_discovery:
            for key in ("login_url", "redeem_url", "oidc_jwks_url"):
                if not getattr(config, key):
                    problems.append(f"{key}: required when skip_oidc_discovery is set")
            if not config.oidc_issuer_url and not config.insecure_oidc_skip_issuer_verification:
                problems.append(
                    "oidc_issuer_url: required to check the id_token issuer (or set "
                    "insecure_oidc_skip_issuer_verification)"
                )
        elif not config.oidc_issuer_url:
            problems.append(
                f"oidc_issuer_url: required for --provider={cls.id} (or set "
                "skip_oidc_discovery with login_url, redeem_url and oidc_jwks_url)"
            )
        if config.code_challenge_method not in ("", "S256", "plain"):
            problems.append(
                f"code_challenge_method: must be S256, plain or empty, got "
                f"{config.code_challenge_method!r}"
            )
        if config.client_auth_method not in CLIENT_AUTH_METHODS:
            problems.append(
                f"client_auth_method: must be {', '.join(CLIENT_AUTH_METHODS)}, got "
                f"{config.client_auth_method!r}"
            )
        elif config.client_auth_method == "private_key_jwt":
            try:
                if signing_key_from_config(config) is None:
                    problems.append(_NO_JWT_KEY)
            except ConfigError as e:
                problems.extend(e.problems)
        return problems

    # --- discovery ----------------------------------------------------------------------

    async def start(self) -> None:
        """Run discovery now, so a misconfigured issuer shows up at start-up.

        Raises ProviderError (already logged); the service logs it and carries on, and
        the next use retries.
        """
        await self._endpoints()

    async def _endpoints(self) -> _Discovered:
        if self._discovered is not None:
            return self._discovered
        return await self._discovery.run(self._discover)

    async def _discover(self) -> _Discovered:
        config = self._config
        if config.skip_oidc_discovery:
            endpoints = Endpoints(
                login=config.login_url,
                redeem=config.redeem_url,
                jwks=config.oidc_jwks_url,
                profile=config.profile_url,
            )
        else:
            try:
                endpoints = await self._fetch_discovery()
            except ProviderError as e:
                self.log.error(
                    "OIDC discovery for {issuer} failed: {reason}",
                    issuer=config.oidc_issuer_url,
                    reason=str(e),
                )
                raise
        if "S256" in endpoints.code_challenge_methods and not config.code_challenge_method:
            self.log.warn(
                "The provider supports PKCE (S256) but code_challenge_method is not set; "
                "set --code-challenge-method=S256"
            )
        self._discovered = _Discovered(
            endpoints, JWKSCache(self._http_client, self._clock, endpoints.jwks)
        )
        return self._discovered

    def _check_discovered_issuer(self, issuer: object, url: str) -> None:
        """Raise ProviderError unless the discovery document at ``url`` names the
        configured issuer (not called with ``insecure_oidc_skip_issuer_verification``)."""
        expected = self._config.oidc_issuer_url
        if not (isinstance(issuer, str) and _same_issuer(issuer, expected)):
            raise ProviderError(
                f"OIDC discovery ({url}) names the issuer {_printable(issuer)!r}, but "
                f"oidc_issuer_url is {expected!r}"
            )

    async def _fetch_discovery(self) -> Endpoints:
        config = self._config
        url = config.oidc_issuer_url.rstrip("/") + "/.well-known/openid-configuration"
        result = await fetch(
            self._http_client,
            self._clock,
            "GET",
            url,
            what="OIDC discovery",
            headers={b"Accept": [b"application/json"]},
        )
        if result.code != 200:
            raise ProviderError(f"OIDC discovery ({url}) answered HTTP {result.code}")
        document = result.json("OIDC discovery", url)
        if not isinstance(document, dict):
            raise ProviderError(f"OIDC discovery ({url}) did not answer a JSON object")
        if not config.insecure_oidc_skip_issuer_verification:
            self._check_discovered_issuer(document.get("issuer"), url)

        def endpoint(configured: str, key: str, required: bool) -> str:
            value = configured or document.get(key) or ""
            if not isinstance(value, str) or (required and not value):
                raise ProviderError(f"OIDC discovery ({url}) has no {key}")
            return value

        methods = document.get("code_challenge_methods_supported")
        return Endpoints(
            login=endpoint(config.login_url, "authorization_endpoint", True),
            redeem=endpoint(config.redeem_url, "token_endpoint", True),
            jwks=endpoint(config.oidc_jwks_url, "jwks_uri", True),
            profile=endpoint(config.profile_url, "userinfo_endpoint", False),
            end_session=endpoint("", "end_session_endpoint", False),
            code_challenge_methods=tuple(m for m in methods if isinstance(m, str))
            if isinstance(methods, list)
            else (),
        )

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
        """The login URL with client_id, redirect_uri, scope, state, nonce, PKCE and prompt.

        ``extra_params`` may replace optional parameters (prompt, scope, login_hint...) but
        never the ones that bind the login to this request (state, nonce, redirect_uri...).
        """
        config = self._config
        discovered = await self._endpoints()
        scope = config.scope or (
            _DEFAULT_SCOPE + " groups" if config.allowed_groups else _DEFAULT_SCOPE
        )
        params: list[tuple[str, str]] = [
            ("client_id", config.client_id),
            ("redirect_uri", redirect_uri),
            ("response_type", "code"),
            ("scope", scope),
            ("state", state),
        ]
        if not config.insecure_oidc_skip_nonce:
            params.append(("nonce", nonce))
        if code_challenge:
            params.append(("code_challenge", code_challenge))
            params.append(("code_challenge_method", code_challenge_method or "plain"))
        if config.prompt:
            params.append(("prompt", config.prompt))
        elif config.approval_prompt:
            params.append(("approval_prompt", config.approval_prompt))
        if config.acr_values:
            params.append(("acr_values", config.acr_values))
        extra = []
        for name, value in extra_params:
            if name in _PROTECTED_PARAMS:
                self.log.warn("Ignoring login parameter {name}: it is set by oauthgate", name=name)
            else:
                extra.append((name, value))
        overridden = {name for name, _ in extra}
        params = [(n, v) for n, v in params if n not in overridden] + extra
        return _add_query(discovered.endpoints.login, params)

    async def redeem(
        self, code: str, code_verifier: str | None, redirect_uri: str, nonce: str
    ) -> Session:
        """Exchange ``code`` at the token endpoint and verify the id_token it returns.

        The session holds what the verified id_token says and nothing else: userinfo is
        not asked here. The caller then calls :meth:`enrich` once, which fills in what
        the id_token lacked and refuses a session without an email.

        Raises:
            TokenError: the id_token failed verification, or its email is marked unverified.
            ProviderError: the token endpoint refused or failed.
        """
        discovered = await self._endpoints()
        form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
        ]
        if code_verifier:
            form.append(("code_verifier", code_verifier))
        tokens = await self._token_request(discovered.endpoints.redeem, form)
        access_token = tokens.get("access_token")
        id_token = tokens.get("id_token")
        if not isinstance(access_token, str) or not access_token:
            raise ProviderError("the token endpoint answered without an access_token")
        if not isinstance(id_token, str) or not id_token:
            raise ProviderError("the token endpoint answered without an id_token")
        claims = await self._verify_id_token(
            discovered, id_token, None if self._config.insecure_oidc_skip_nonce else nonce
        )
        now = self._clock.seconds()
        refresh_token = tokens.get("refresh_token")
        return Session(
            **self._identity(claims),
            access_token=access_token,
            id_token=id_token,
            refresh_token=refresh_token if isinstance(refresh_token, str) else "",
            created_at=now,
            expires_on=self._expires_on(tokens, claims, now),
            provider=self.id,
        )

    async def enrich(self, session: Session) -> Session:
        """Fill a missing email, groups or preferred_username from userinfo; require an email.

        userinfo is asked at most once, only when something is missing, and never with
        ``skip_claims_from_profile_url``. Its answer is used only when its ``sub`` is the
        session's user (OIDC Core 5.3.2); an answer without ``sub``, for another user, or
        a failed request is logged and ignored. Idempotent.

        Raises:
            ProviderError: the session still has no email.
            TokenError: userinfo's email is marked unverified.
        """
        missing = [name for name in _IDENTITY_FIELDS if not getattr(session, name)]
        if missing and session.access_token and not self._config.skip_claims_from_profile_url:
            discovered = await self._endpoints()
            try:
                claims = await self._userinfo(discovered, session.access_token, session.user)
            except ProviderError as e:
                self.log.warn("Not using userinfo, only the id_token: {reason}", reason=str(e))
            else:
                if claims is not None:
                    session = attrs.evolve(session, **self._from_userinfo(claims, missing))
        if not session.email:
            raise ProviderError("neither the id_token nor the userinfo endpoint gave an email")
        return session

    async def refresh(self, session: Session) -> Session | None:
        """The session with new tokens from the refresh_token grant; None without one.

        The identity follows the provider, so removals (a group taken away) take effect:

        - with a new id_token (verified, without nonce, and for the same user), the
          identity comes from it as a whole. A claim it does not carry is asked of
          userinfo again (unless ``skip_claims_from_profile_url``), and otherwise cleared;
          if that userinfo request fails, those claims keep their previous values.
        - without one, the groups are asked of userinfo with the new access token
          (unless ``skip_claims_from_profile_url``) and replaced by its answer; if that
          request fails, the previous identity is kept.

        Raises:
            RefreshError: ``fatal`` when the provider says ``invalid_grant`` or
                ``invalid_client``, or the refreshed identity is unusable (another user,
                an unverified email, or no email); not fatal for outages.
        """
        if not session.refresh_token:
            return None
        try:
            discovered = await self._endpoints()
            tokens = await self._token_request(
                discovered.endpoints.redeem,
                [("grant_type", "refresh_token"), ("refresh_token", session.refresh_token)],
            )
        except _TokenEndpointError as e:
            fatal = e.status in (400, 401) and e.error in _FATAL_REFRESH_ERRORS
            raise RefreshError(str(e), fatal=fatal) from None
        except ProviderError as e:
            raise RefreshError(str(e), fatal=False) from None
        access_token = tokens.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise RefreshError("the token endpoint answered without an access_token", fatal=False)
        return await self._refreshed_session(discovered, session, tokens, access_token)

    async def _refreshed_session(
        self,
        discovered: _Discovered,
        session: Session,
        tokens: Mapping[str, Any],
        access_token: str,
    ) -> Session:
        """``session`` with the refresh_token grant's ``tokens`` (whose ``access_token``
        is checked) and the identity they give, as :meth:`refresh` says."""
        now = self._clock.seconds()
        refresh_token = tokens.get("refresh_token")
        refreshed = attrs.evolve(
            session,
            access_token=access_token,
            refresh_token=refresh_token
            if isinstance(refresh_token, str) and refresh_token
            else session.refresh_token,
            created_at=now,
            expires_on=self._expires_on(tokens, None, now),
        )
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            return await self._refresh_groups(discovered, refreshed)
        try:
            claims = await self._verify_id_token(discovered, id_token, None)
        except ProviderError as e:
            self.log.error("The refreshed id_token was rejected: {reason}", reason=str(e))
            raise RefreshError(f"the refreshed id_token was rejected: {e}", fatal=False) from None
        try:
            identity = self._identity(claims)
        except ProviderError as e:
            raise RefreshError(str(e), fatal=True) from None
        if identity["user"] != session.user:
            raise RefreshError("the refreshed id_token is for another user", fatal=True)
        missing = self._not_carried(claims, identity)
        if missing and not self._config.skip_claims_from_profile_url:
            try:
                info = await self._userinfo(discovered, access_token, session.user)
            except ProviderError as e:
                self.log.warn(
                    "Not using userinfo after a refresh, keeping the previous {fields}: {reason}",
                    fields=", ".join(missing),
                    reason=str(e),
                )
                identity.update({name: getattr(session, name) for name in missing})
            else:
                if info is not None:
                    try:
                        identity.update(self._from_userinfo(info, missing))
                    except TokenError as e:
                        raise RefreshError(str(e), fatal=True) from None
        if not identity["email"]:
            raise RefreshError(
                "neither the refreshed id_token nor the userinfo endpoint gave an email",
                fatal=True,
            )
        return attrs.evolve(
            refreshed,
            **identity,
            id_token=id_token,
            expires_on=self._expires_on(tokens, claims, now),
        )

    def _not_carried(self, claims: Mapping[str, Any], identity: Mapping[str, Any]) -> list[str]:
        """The identity fields an id_token does not carry (an empty groups list is carried)."""
        groups_absent = get_claim(claims, self._config.oidc_groups_claim) is None
        return [
            name
            for name in _IDENTITY_FIELDS
            if (groups_absent if name == "groups" else not identity[name])
        ]

    async def _refresh_groups(self, discovered: _Discovered, session: Session) -> Session:
        """``session`` with its groups as userinfo now gives them (the refresh had no id_token).

        The previous identity is kept when userinfo is not to be asked or fails.
        """
        if self._config.skip_claims_from_profile_url:
            return session
        try:
            claims = await self._userinfo(discovered, session.access_token, session.user)
        except ProviderError as e:
            self.log.warn(
                "Not using userinfo after a refresh, keeping the previous groups: {reason}",
                reason=str(e),
            )
            return session
        if claims is None:
            return session
        return attrs.evolve(session, groups=self._userinfo_groups(claims))

    def _userinfo_groups(self, claims: Mapping[str, Any]) -> tuple[str, ...]:
        """The groups in a userinfo answer read after a refresh without an id_token."""
        return coerce_groups(get_claim(claims, self._config.oidc_groups_claim))

    async def authorize(self, session: Session) -> bool:
        """Always True: groups and emails are checked by the common authorizers."""
        return True

    async def logout_url(self, session: Session, redirect: str) -> str | None:
        """The provider's end_session_endpoint (RP-initiated logout), or None without one.

        ``redirect`` is passed as post_logout_redirect_uri only when it is an absolute URL.
        """
        try:
            discovered = await self._endpoints()
        except ProviderError:
            return None
        end_session = discovered.endpoints.end_session
        if not end_session:
            return None
        params = []
        if session.id_token:
            params.append(("id_token_hint", session.id_token))
        if _is_absolute_http_url(redirect):
            params.append(("post_logout_redirect_uri", redirect))
        params.append(("client_id", self._config.client_id))
        return _add_query(end_session, params)

    # --- helpers ------------------------------------------------------------------------

    async def _token_request(self, url: str, form: list[tuple[str, str]]) -> dict[str, Any]:
        """POST ``form`` to the token endpoint with client authentication.

        ``client_auth_method`` says how: ``private_key_jwt`` adds a client assertion signed
        with the ``jwt_key`` for this endpoint (``aud`` = ``url``); with a client secret,
        ``client_secret_basic`` (the default) sends HTTP Basic (id and secret form-encoded
        first, as RFC 6749 §2.3.1 says) and ``client_secret_post`` puts them in the form.
        Without a secret: only client_id (a public client, PKCE). A ``form`` that already
        carries a ``client_assertion`` (a subclass's federated token) gets nothing else.
        """
        config = self._config
        headers = {b"Accept": [b"application/json"]}
        data = [*form, ("client_id", config.client_id)]
        if any(name == "client_assertion" for name, _ in form):
            pass
        elif self._signing_key is not None:
            assertion = self._signing_key.assertion(
                config.client_id, url, self._clock, self._random
            )
            data += [("client_assertion_type", JWT_BEARER), ("client_assertion", assertion)]
        elif config.client_secret and config.client_auth_method == "client_secret_post":
            data.append(("client_secret", config.client_secret))
        elif config.client_secret:
            pair = f"{quote_plus(config.client_id)}:{quote_plus(config.client_secret)}"
            headers[b"Authorization"] = [b"Basic " + base64.b64encode(pair.encode("utf-8"))]
        return await post_to_token_endpoint(
            self._http_client, self._clock, url, data, headers, self.log
        )

    async def _verify_id_token(
        self, discovered: _Discovered, id_token: str, nonce: str | None
    ) -> dict[str, Any]:
        """The id_token's claims once signature, issuer, audience, times and nonce check out.

        ``nonce`` None skips the nonce check (refresh, or insecure_oidc_skip_nonce).
        """
        try:
            claims = await discovered.jwks.verify(id_token)
            self._check_claims(claims, nonce)
        except TokenError as e:
            self.log.warn("Rejected an id_token: {reason}", reason=str(e))
            raise TokenError(f"id_token rejected: {e}") from None
        return claims

    def _check_claims(self, claims: Mapping[str, Any], nonce: str | None) -> None:
        config = self._config
        now = self._clock.seconds()
        if not config.insecure_oidc_skip_issuer_verification:
            iss = claims.get("iss")
            if not isinstance(iss, str) or not _same_issuer(iss, config.oidc_issuer_url):
                raise TokenError(f"issuer {_printable(iss, 100)!r} is not the configured one")
        self._check_audience(claims)
        exp = _number(claims.get("exp"))
        if exp is None:
            raise TokenError("no expiry (exp)")
        if now > exp + LEEWAY:
            raise TokenError("expired")
        iat = _number(claims.get("iat"))
        if "iat" in claims and iat is None:
            raise TokenError("malformed issue time (iat)")
        if iat is not None and iat > now + LEEWAY:
            raise TokenError("issued in the future (iat)")
        nbf = _number(claims.get("nbf"))
        if "nbf" in claims and nbf is None:
            raise TokenError("malformed not-before time (nbf)")
        if nbf is not None and nbf > now + LEEWAY:
            raise TokenError("not valid yet (nbf)")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise TokenError("no subject (sub)")
        if nonce is not None:
            got = claims.get("nonce")
            if not isinstance(got, str):
                raise TokenError("no nonce")
            if not hmac.compare_digest(got.encode("utf-8"), nonce.encode("utf-8")):
                raise TokenError("the nonce does not match this login")

    def _check_audience(self, claims: Mapping[str, Any]) -> None:
        config = self._config
        accepted = {config.client_id, *config.oidc_extra_audiences}
        for name in config.oidc_audience_claims:
            if name not in claims:
                continue
            value = claims[name]
            audiences = [value] if isinstance(value, str) else value
            if isinstance(audiences, list) and any(
                isinstance(a, str) and a in accepted for a in audiences
            ):
                return
            raise TokenError(f"audience ({name}) is not this client")
        raise TokenError("no audience claim (" + ", ".join(config.oidc_audience_claims) + ")")

    def _email_claim(self) -> str:
        config = self._config
        if config.oidc_email_claim == "email" and config.user_id_claim not in ("", "email"):
            return config.user_id_claim
        return config.oidc_email_claim

    def _check_email_verified(self, claims: Mapping[str, Any]) -> None:
        if self._email_claim() != "email" or self._config.insecure_oidc_allow_unverified_email:
            return
        verified = claims.get("email_verified")
        if verified is False or (isinstance(verified, str) and verified.lower() == "false"):
            raise TokenError("email not verified")

    def _identity(self, claims: Mapping[str, Any]) -> dict[str, Any]:
        """The session's identity fields from verified id_token claims.

        Raises TokenError when the email is present but marked unverified.
        """
        email = get_claim(claims, self._email_claim())
        email = email if isinstance(email, str) else ""
        if email:
            self._check_email_verified(claims)
        groups_value = get_claim(claims, self._config.oidc_groups_claim)
        preferred_username = claims.get("preferred_username")
        return {
            "user": claims["sub"],
            "email": email,
            "groups": coerce_groups(groups_value),
            "preferred_username": preferred_username if isinstance(preferred_username, str) else "",
        }

    async def _userinfo(
        self, discovered: _Discovered, access_token: str, user: str
    ) -> dict[str, Any] | None:
        """userinfo's claims about ``user``; None when there is no endpoint or access token.

        Raises:
            ProviderError: the request failed, or the answer is not about ``user``: its
                ``sub`` is missing or another (OIDC Core 5.3.2: then it must not be used).
        """
        url = discovered.endpoints.profile
        if not url or not access_token:
            return None
        result = await fetch(
            self._http_client,
            self._clock,
            "GET",
            url,
            what="the userinfo endpoint",
            headers=bearer_headers(access_token),
        )
        if result.code != 200:
            raise ProviderError(f"the userinfo endpoint ({url}) answered HTTP {result.code}")
        if result.media_type == "application/jwt":
            claims = await discovered.jwks.verify(result.body.decode("ascii", "replace").strip())
        else:
            claims = result.json("the userinfo endpoint", url)
            if not isinstance(claims, dict):
                raise ProviderError(f"the userinfo endpoint ({url}) did not answer a JSON object")
        sub = claims.get("sub")
        if sub is None:
            raise ProviderError(f"the userinfo endpoint ({url}) answered without a subject (sub)")
        if sub != user:
            raise ProviderError(f"the userinfo endpoint ({url}) answered for another user (sub)")
        return claims

    def _from_userinfo(self, claims: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
        """The identity ``fields`` that userinfo ``claims`` give (those it does not are left out).

        Raises TokenError when it gives an email marked unverified.
        """
        updates: dict[str, Any] = {}
        if "email" in fields:
            email = get_claim(claims, self._email_claim())
            if isinstance(email, str) and email:
                self._check_email_verified(claims)
                updates["email"] = email
        if "groups" in fields:
            groups = coerce_groups(get_claim(claims, self._config.oidc_groups_claim))
            if groups:
                updates["groups"] = groups
        if "preferred_username" in fields:
            name = claims.get("preferred_username")
            if isinstance(name, str) and name:
                updates["preferred_username"] = name
        return updates

    @staticmethod
    def _expires_on(
        tokens: Mapping[str, Any], claims: Mapping[str, Any] | None, now: float
    ) -> float | None:
        expires_in = _number(tokens.get("expires_in"))
        if expires_in is not None:
            return now + expires_in
        if claims is not None:
            return _number(claims.get("exp"))
        return None


@implementer(IProviderFactory)
@attrs.frozen
class OIDCProviderFactory:
    """Builds an :class:`OIDCProvider` (or ``provider_class``) after checking its options.

    Reuse for OIDC-based providers: ``OIDCProviderFactory("keycloak-oidc", KeycloakProvider)``.
    """

    name: str = "oidc"
    provider_class: type[OIDCProvider] = OIDCProvider

    def build(self, config: Any, http_client: Any, clock: IReactorTime) -> OIDCProvider:
        problems = self.provider_class.check_config(config)
        if problems:
            raise ConfigError(problems)
        return self.provider_class(config, http_client, clock)


factory = OIDCProviderFactory()
