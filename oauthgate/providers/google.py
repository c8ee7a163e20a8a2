"""Google (``--provider=google``): OAuth 2.0 sign-in, groups from the Workspace Directory.

Login and code redemption use Google's OAuth 2.0 endpoints (``access_type=offline``, so
Google issues a refresh token). The identity is the ``id_token`` Google returns with the
tokens, which, unlike oauth2-proxy, is **verified**: signature against Google's keys
(``https://www.googleapis.com/oauth2/v3/certs``), issuer, audience (the client id),
expiry, nonce, and ``email_verified`` must be true.

Groups come from the Admin SDK Directory API, as a service account acting for a Workspace
admin (``--google-service-account-json`` and ``--google-admin-email``; with
``--google-target-principal``, that key only signs in to impersonate the target service
account through IAM ``signJwt``):

- with ``--google-group``, each listed group is checked with ``members.hasMember`` (nested
  groups count; for members from another domain, ``members.get`` with status ``ACTIVE``)
  and the session's groups are the listed groups the user is in; a user in none is refused;
- without, the session's groups are all the user's groups (``groups.list``, paged).

Directory access tokens are cached until shortly before they expire. Groups are read
again on every refresh. Application Default Credentials are not supported yet.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

import attrs
import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from oauthgate.config.options import Config
from oauthgate.errors import ConfigError, ProviderError, RefreshError, TokenError
from oauthgate.interfaces import IProviderFactory
from oauthgate.providers.jwks import (
    HTTPClientLike,
    JWKSCache,
    SingleFlight,
    bearer_headers,
    fetch,
)
from oauthgate.providers.oauth2 import OAuth2Provider
from oauthgate.providers.oidc import LEEWAY, _number, _parse_token_response, _printable
from oauthgate.session import Session

__all__ = [
    "DIRECTORY_SCOPE",
    "DIRECTORY_URL",
    "GOOGLE_CERTS_URL",
    "IAM_CREDENTIALS_URL",
    "DirectoryCredentials",
    "GoogleDirectory",
    "GoogleProvider",
    "GoogleProviderFactory",
    "ServiceAccount",
    "factory",
]

GOOGLE_LOGIN_URL = "https://accounts.google.com/o/oauth2/auth?access_type=offline"
GOOGLE_TOKEN_URL = "https://www.googleapis.com/oauth2/v3/token"
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v3/certs"
GOOGLE_ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
DIRECTORY_URL = "https://admin.googleapis.com/admin/directory/v1"
DIRECTORY_SCOPE = "https://www.googleapis.com/auth/admin.directory.group.readonly"
IAM_CREDENTIALS_URL = "https://iamcredentials.googleapis.com/v1"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
SERVICE_ACCOUNT_TOKEN_URL = "https://oauth2.googleapis.com/token"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"

_ASSERTION_LIFETIME = 3600  # seconds; Google accepts at most one hour
_TOKEN_MARGIN = 60.0  # a cached directory token is replaced this long before it expires
_MAX_PAGES = 100  # groups.list pages of 200: a loop guard, not a real limit
_FATAL_REFRESH_ERRORS = frozenset({"invalid_grant", "invalid_client"})


class _UnverifiedEmail(TokenError):
    """The id_token is Google's, but its email is not verified."""


# --- service account credentials ---------------------------------------------------------


@attrs.frozen
class ServiceAccount:
    """A service account key (the JSON file Google gives), parsed and checked."""

    client_email: str
    private_key: RSAPrivateKey = attrs.field(repr=False)
    private_key_id: str = ""
    token_uri: str = SERVICE_ACCOUNT_TOKEN_URL

    @classmethod
    def from_json(cls, data: bytes) -> ServiceAccount:
        """Raises ValueError saying what is wrong (never quoting the key)."""
        try:
            document = json.loads(data)
        except ValueError:
            raise ValueError("is not JSON") from None
        if not isinstance(document, dict) or document.get("type") != "service_account":
            raise ValueError('is not a service account key ("type": "service_account")')
        email = document.get("client_email")
        pem = document.get("private_key")
        if not isinstance(email, str) or not email:
            raise ValueError("has no client_email")
        if not isinstance(pem, str) or not pem:
            raise ValueError("has no private_key")
        try:
            key = load_pem_private_key(pem.encode("utf-8"), password=None)
        except (ValueError, TypeError):
            raise ValueError("has a private_key that is not a PEM private key") from None
        if not isinstance(key, RSAPrivateKey):
            raise ValueError("has a private_key that is not an RSA key")
        key_id = document.get("private_key_id")
        token_uri = document.get("token_uri")
        if token_uri is not None and (
            not isinstance(token_uri, str) or not token_uri.startswith("https://")
        ):
            raise ValueError("has a token_uri that is not an https URL")
        return cls(
            email,
            key,
            key_id if isinstance(key_id, str) else "",
            token_uri or SERVICE_ACCOUNT_TOKEN_URL,
        )

    def sign(self, claims: Mapping[str, Any]) -> str:
        """``claims`` as a JWT signed RS256 with this account's key."""
        headers = {"kid": self.private_key_id} if self.private_key_id else None
        return jwt.encode(dict(claims), self.private_key, algorithm="RS256", headers=headers)


@attrs.define
class DirectoryCredentials:
    """Access tokens for the Directory API, as ``subject`` (a Workspace admin).

    The service account signs a JWT assertion (RS256, ``sub`` = the admin) and exchanges
    it at its token URL. With ``target_principal``, the service account instead gets a
    token of its own (cloud-platform scope), asks IAM ``signJwt`` to sign the assertion
    as the target service account, and exchanges that. A token is kept until
    ``_TOKEN_MARGIN`` seconds before it expires; concurrent callers share one fetch.
    """

    log: ClassVar[Logger] = Logger()

    _http_client: HTTPClientLike
    _clock: IReactorTime
    _account: ServiceAccount
    _subject: str
    _target_principal: str = ""
    _token: tuple[str, float] | None = attrs.field(default=None, init=False, repr=False)
    _flight: SingleFlight[str] = attrs.field(factory=SingleFlight, init=False)

    async def access_token(self) -> str:
        """A current access token. Raises ProviderError when none can be had."""
        if self._token is not None and self._clock.seconds() < self._token[1]:
            return self._token[0]
        return await self._flight.run(self._fetch)

    def forget(self) -> None:
        """Drop the cached token (the API refused it)."""
        self._token = None

    async def _fetch(self) -> str:
        now = int(self._clock.seconds())
        claims = {
            "sub": self._subject,
            "scope": DIRECTORY_SCOPE,
            "aud": self._account.token_uri,
            "iat": now,
            "exp": now + _ASSERTION_LIFETIME,
        }
        if self._target_principal:
            source, _ = await self._exchange(
                self._account.sign(
                    {
                        "iss": self._account.client_email,
                        "scope": CLOUD_PLATFORM_SCOPE,
                        "aud": self._account.token_uri,
                        "iat": now,
                        "exp": now + _ASSERTION_LIFETIME,
                    }
                )
            )
            assertion = await self._sign_as_target(
                source, {"iss": self._target_principal, **claims}
            )
        else:
            assertion = self._account.sign({"iss": self._account.client_email, **claims})
        token, expires_in = await self._exchange(assertion)
        self._token = (token, self._clock.seconds() + max(expires_in - _TOKEN_MARGIN, 0.0))
        return token

    async def _exchange(self, assertion: str) -> tuple[str, float]:
        """(access token, lifetime in seconds) for a signed assertion."""
        url = self._account.token_uri
        result = await fetch(
            self._http_client,
            self._clock,
            "POST",
            url,
            what="the service account token exchange",
            data=[("grant_type", JWT_BEARER_GRANT), ("assertion", assertion)],
            headers={b"Accept": [b"application/json"]},
        )
        payload = _parse_token_response(result) or {}
        token = payload.get("access_token")
        if result.code != 200 or not isinstance(token, str) or not token:
            error = _printable(payload.get("error")) or "no access_token"
            self.log.error(
                "The service account token exchange at {url} failed: HTTP {status}: {error}",
                url=url,
                status=result.code,
                error=error,
            )
            raise ProviderError(
                f"the service account token exchange ({url}) answered HTTP {result.code}: {error}"
            )
        return token, _number(payload.get("expires_in")) or 3600.0

    async def _sign_as_target(self, source_token: str, claims: Mapping[str, Any]) -> str:
        """``claims`` signed by the target service account (IAM credentials signJwt)."""
        url = (
            f"{IAM_CREDENTIALS_URL}/projects/-/serviceAccounts/"
            f"{quote(self._target_principal, safe='@')}:signJwt"
        )
        result = await fetch(
            self._http_client,
            self._clock,
            "POST",
            url,
            what="IAM signJwt",
            data=json.dumps({"payload": json.dumps(dict(claims))}).encode("utf-8"),
            headers={**bearer_headers(source_token), b"Content-Type": [b"application/json"]},
        )
        if result.code != 200:
            raise ProviderError(f"IAM signJwt ({url}) answered HTTP {result.code}")
        answer = result.json("IAM signJwt", url)
        signed = answer.get("signedJwt") if isinstance(answer, dict) else None
        if not isinstance(signed, str) or not signed:
            raise ProviderError(f"IAM signJwt ({url}) answered without a signedJwt")
        return signed


@attrs.define
class GoogleDirectory:
    """The two Directory API questions the provider asks, with ``credentials``."""

    log: ClassVar[Logger] = Logger()

    _http_client: HTTPClientLike
    _clock: IReactorTime
    _credentials: DirectoryCredentials
    _base_url: str = DIRECTORY_URL

    async def has_member(self, group: str, email: str) -> bool:
        """Whether ``email`` is in ``group`` (directly or through nested groups).

        An unknown group is logged and counts as "not a member". Raises ProviderError
        when the API fails.
        """
        base = f"{self._base_url}/groups/{quote(group, safe='@')}"
        code, answer = await self._get(
            f"{base}/hasMember/{quote(email, safe='@')}", "members.hasMember", (200, 400, 404)
        )
        if code == 200:
            return isinstance(answer, dict) and answer.get("isMember") is True
        if code == 404:
            self.log.warn("Google group {group} does not exist", group=group)
            return False
        # 400: hasMember cannot answer for a member from another domain; ask for the member.
        code, answer = await self._get(
            f"{base}/members/{quote(email, safe='@')}", "members.get", (200, 404)
        )
        return code == 200 and isinstance(answer, dict) and answer.get("status") == "ACTIVE"

    async def groups_of(self, email: str) -> tuple[str, ...]:
        """The emails of every group ``email`` is a direct member of (groups.list, paged)."""
        groups: list[str] = []
        page_token = ""
        for _ in range(_MAX_PAGES):
            query = [("userKey", email), ("maxResults", "200")]
            if page_token:
                query.append(("pageToken", page_token))
            _, answer = await self._get(
                f"{self._base_url}/groups?{urlencode(query)}", "groups.list", (200,)
            )
            if not isinstance(answer, dict):
                raise ProviderError("the Directory API groups.list did not answer an object")
            for group in answer.get("groups") or []:
                if isinstance(group, dict) and isinstance(group.get("email"), str):
                    groups.append(group["email"])
            next_token = answer.get("nextPageToken")
            if not isinstance(next_token, str) or not next_token:
                return tuple(dict.fromkeys(groups))
            page_token = next_token
        raise ProviderError(f"the Directory API listed more than {_MAX_PAGES} pages of groups")

    async def _get(self, url: str, what: str, allow: Sequence[int]) -> tuple[int, Any]:
        """GET with a directory token; a 401 drops the cached token and retries once."""
        for attempt in range(2):
            token = await self._credentials.access_token()
            result = await fetch(
                self._http_client,
                self._clock,
                "GET",
                url,
                what=f"the Directory API {what}",
                headers=bearer_headers(token),
            )
            if result.code == 401 and attempt == 0:
                self._credentials.forget()
                continue
            if result.code not in allow:
                raise ProviderError(f"the Directory API {what} answered HTTP {result.code}")
            body = result.json(f"the Directory API {what}", url) if result.body else None
            return result.code, body
        raise AssertionError("unreachable")  # pragma: no cover


# --- the provider --------------------------------------------------------------------------


@attrs.define
class GoogleProvider(OAuth2Provider):
    """Google sign-in with a verified id_token, and Directory groups (module docs)."""

    id: ClassVar[str] = "google"
    default_display_name: ClassVar[str] = "Google"
    default_login_url: ClassVar[str] = GOOGLE_LOGIN_URL
    default_redeem_url: ClassVar[str] = GOOGLE_TOKEN_URL
    default_scope: ClassVar[str] = "profile email"
    supports_refresh: ClassVar[bool] = True

    _directory: GoogleDirectory | None = attrs.field(default=None, kw_only=True)
    _jwks: JWKSCache = attrs.field(init=False)

    @_jwks.default
    def _jwks_default(self) -> JWKSCache:
        url = self._config.oidc_jwks_url or GOOGLE_CERTS_URL
        return JWKSCache(self._http_client, self._clock, url)

    @classmethod
    def check_config(cls, config: Config) -> list[str]:
        problems = super().check_config(config)
        if config.google_use_application_default_credentials:
            problems.append(
                "google_use_application_default_credentials: not supported yet; use "
                "google_service_account_json (and google_target_principal to impersonate)"
            )
        if config.google_use_organization_id:
            problems.append("google_use_organization_id: not supported yet")
        if config.google_admin_api_user_scope not in ("readonly", "user", "cloud"):
            problems.append(
                "google_admin_api_user_scope: must be readonly, user or cloud, got "
                f"{config.google_admin_api_user_scope!r}"
            )
        if not config.google_service_account_json:
            for key in ("google_groups", "google_target_principal", "google_admin_email"):
                if getattr(config, key):
                    problems.append(
                        f"{key}: needs google_service_account_json (and google_admin_email) "
                        "to use the Directory API"
                    )
        elif not config.google_admin_email:
            problems.append(
                "google_admin_email: required with google_service_account_json (the Workspace "
                "admin the service account acts as)"
            )
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
        """Google's login URL; the nonce is sent, and comes back in the id_token."""
        params = [(n, v) for n, v in extra_params if n != "nonce"]
        if not self._config.insecure_oidc_skip_nonce:
            params.append(("nonce", nonce))
        return await super().authorize_url(
            state, nonce, code_challenge, code_challenge_method, redirect_uri, params
        )

    async def redeem(
        self, code: str, code_verifier: str | None, redirect_uri: str, nonce: str
    ) -> Session:
        """Exchange the code; the identity is the verified id_token's ``sub`` and email.

        Raises:
            TokenError: the id_token failed verification or its email is not verified.
            ProviderError: the token endpoint failed or sent no id_token.
        """
        session = await super().redeem(code, code_verifier, redirect_uri, nonce)
        if not session.id_token:
            raise ProviderError(
                "google: the token endpoint answered without an id_token (ask for the "
                "'email' scope)"
            )
        check_nonce = None if self._config.insecure_oidc_skip_nonce else nonce
        claims = await self._verify_id_token(session.id_token, check_nonce)
        return attrs.evolve(session, user=claims["sub"], email=claims["email"])

    async def identity(self, session: Session) -> dict[str, Any]:
        """``user`` and ``email`` from the session's id_token (verified again)."""
        claims = await self._verify_id_token(session.id_token, None)
        return {"user": claims["sub"], "email": claims["email"]}

    async def enrich(self, session: Session) -> Session:
        """The Directory groups (when configured). Raises ProviderError when the API fails."""
        session = await super().enrich(session)
        if self._directory is None or session.groups:  # read once: enrich is idempotent
            return session
        return attrs.evolve(session, groups=await self._groups(session.email))

    async def refresh(self, session: Session) -> Session | None:
        """New tokens from the refresh token, the new id_token checked, the groups read again.

        Raises:
            RefreshError: fatal when Google says the grant is gone or the refreshed
                id_token is for another user or an unverified email; not fatal when
                Google or the Directory API fails.
        """
        if not session.refresh_token:
            return None
        try:
            tokens = await self.token_request(
                [("grant_type", "refresh_token"), ("refresh_token", session.refresh_token)]
            )
        except ProviderError as e:
            fatal = getattr(e, "error", "") in _FATAL_REFRESH_ERRORS
            raise RefreshError(str(e), fatal=fatal) from None
        refreshed = self._session_from_tokens(tokens, session)
        id_token = tokens.get("id_token")
        if isinstance(id_token, str) and id_token:
            try:
                claims = await self._verify_id_token(id_token, None)
            except TokenError as e:
                # A token that no longer checks out may be a glitch; an unverified email is not.
                raise RefreshError(str(e), fatal=isinstance(e, _UnverifiedEmail)) from None
            except ProviderError as e:
                raise RefreshError(str(e), fatal=False) from None
            if claims["sub"] != session.user:
                raise RefreshError("the refreshed id_token is for another user", fatal=True)
            refreshed = attrs.evolve(refreshed, email=claims["email"])
        if self._directory is None:
            return refreshed
        try:
            groups = await self._groups(refreshed.email)
        except ProviderError as e:
            raise RefreshError(f"groups not read again after a refresh: {e}", fatal=False) from None
        return attrs.evolve(refreshed, groups=groups)

    async def check_access(self, session: Session) -> bool:
        """With ``--google-group``: the user must be in one of those groups."""
        wanted = {g.strip().lower() for g in self._config.google_groups if g.strip()}
        if not wanted:
            return True
        return any(g.lower() in wanted for g in session.groups)

    # --- helpers ------------------------------------------------------------------------

    async def _groups(self, email: str) -> tuple[str, ...]:
        assert self._directory is not None
        wanted = [g.strip() for g in self._config.google_groups if g.strip()]
        if not wanted:
            return await self._directory.groups_of(email)
        return tuple([g for g in wanted if await self._directory.has_member(g, email)])

    async def _verify_id_token(self, id_token: str, nonce: str | None) -> dict[str, Any]:
        """The id_token's claims once Google's signature, issuer, audience, times, nonce
        and ``email_verified`` check out. Raises TokenError naming the reason."""
        try:
            claims = await self._jwks.verify(id_token)
            self._check_claims(claims, nonce)
        except TokenError as e:
            self.log.warn("google: rejected an id_token: {reason}", reason=str(e))
            raise type(e)(f"google: id_token rejected: {e}") from None
        return claims

    def _check_claims(self, claims: Mapping[str, Any], nonce: str | None) -> None:
        now = self._clock.seconds()
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise TokenError(f"issuer {_printable(claims.get('iss'), 100)!r} is not Google")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if self._config.client_id not in audiences:
            raise TokenError("audience (aud) is not this client")
        exp = _number(claims.get("exp"))
        if exp is None or now > exp + LEEWAY:
            raise TokenError("expired, or no expiry (exp)")
        iat = _number(claims.get("iat"))
        if iat is not None and iat > now + LEEWAY:
            raise TokenError("issued in the future (iat)")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise TokenError("no subject (sub)")
        email = claims.get("email")
        if not isinstance(email, str) or not email:
            raise TokenError("no email (ask for the 'email' scope)")
        verified = claims.get("email_verified")
        if verified is not True and verified != "true":
            raise _UnverifiedEmail("email not verified")
        if nonce is not None:
            got = claims.get("nonce")
            if not isinstance(got, str) or not hmac.compare_digest(
                got.encode("utf-8"), nonce.encode("utf-8")
            ):
                raise TokenError("the nonce does not match this login")


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@implementer(IProviderFactory)
@attrs.frozen
class GoogleProviderFactory:
    """Builds the Google provider; reads the service account key once, at start-up."""

    name: str = "google"
    read_file: Callable[[str], bytes] = _read_file

    def build(self, config: Any, http_client: Any, clock: IReactorTime) -> GoogleProvider:
        problems = GoogleProvider.check_config(config)
        directory = None
        path = config.google_service_account_json
        if path and not problems:
            try:
                account = ServiceAccount.from_json(self.read_file(path))
            except OSError as e:
                problems.append(f"google_service_account_json: cannot read {path}: {e.strerror}")
            except ValueError as e:
                problems.append(f"google_service_account_json: {path} {e}")
            else:
                credentials = DirectoryCredentials(
                    http_client,
                    clock,
                    account,
                    config.google_admin_email,
                    config.google_target_principal,
                )
                directory = GoogleDirectory(http_client, clock, credentials)
        if problems:
            raise ConfigError(problems)
        return GoogleProvider(config, http_client, clock, directory=directory)


factory = GoogleProviderFactory()
