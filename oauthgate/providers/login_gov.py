"""login.gov (``--provider=login.gov``): the US government's sign-in, with private_key_jwt.

login.gov speaks OpenID Connect but wants what oauth2-proxy's ``login.gov`` provider
does, so the endpoints are fixed (or configured) rather than discovered:

- the login URL carries a ``nonce`` and ``acr_values`` (by default
  ``http://idmanagement.gov/ns/assurance/loa/1``);
- the client authenticates at the token endpoint with a **client assertion**: a JWT
  signed (RS256) with the RSA key of ``--jwt-key`` / ``--jwt-key-file``, issued by and
  about the client id, for the token URL, valid for five minutes (``private_key_jwt``).
  There is no client secret (one configured is never sent). A client registered for
  PKCE instead sets ``--code-challenge-method=S256`` and no key;
- the id_token is verified against the keys at ``--pubjwk-url``: signature, issuer (the
  login URL's origin, or ``--oidc-issuer-url``), audience (the client id), expiry and
  the nonce of this login;
- the email comes from the userinfo endpoint and must be verified.

No refresh (login.gov issues no refresh tokens).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

import attrs

from oauthgate.config.options import Config
from oauthgate.errors import ConfigError, ProviderError, TokenError
from oauthgate.providers.client_auth import JWT_BEARER, SigningKey, signing_key_from_config
from oauthgate.providers.jwks import JWKSCache
from oauthgate.providers.oauth2 import OAuth2Provider, OAuth2ProviderFactory
from oauthgate.providers.oidc import LEEWAY, _number, _printable
from oauthgate.session import Session

__all__ = [
    "DEFAULT_ACR_VALUES",
    "DEFAULT_PUBJWK_URL",
    "LoginGovProvider",
    "factory",
]

DEFAULT_ACR_VALUES = "http://idmanagement.gov/ns/assurance/loa/1"
"""The ``acr_values`` sent when ``--acr-values`` is not set."""
DEFAULT_PUBJWK_URL = "https://secure.login.gov/api/openid_connect/certs"
"""login.gov's signing keys; the default ``pubjwk_url`` with the default URLs."""

_DEFAULT_LOGIN_URL = "https://secure.login.gov/openid_connect/authorize"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/"


@attrs.define
class LoginGovProvider(OAuth2Provider):
    """login.gov: OAuth 2.0 code flow, private_key_jwt, a verified id_token and userinfo."""

    id: ClassVar[str] = "login.gov"
    default_display_name: ClassVar[str] = "login.gov"
    default_login_url: ClassVar[str] = _DEFAULT_LOGIN_URL
    default_redeem_url: ClassVar[str] = "https://secure.login.gov/api/openid_connect/token"
    default_profile_url: ClassVar[str] = "https://secure.login.gov/api/openid_connect/userinfo"
    default_scope: ClassVar[str] = "email openid"

    _random: Callable[[int], bytes] = attrs.field(default=os.urandom, kw_only=True)
    _signing_key: SigningKey | None = attrs.field(init=False, default=None, repr=False)
    _jwks: JWKSCache = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._signing_key = signing_key_from_config(self._config)
        # login.gov has no client secret: one configured anyway is never sent.
        self._config = attrs.evolve(self._config, client_secret="")
        self._jwks = JWKSCache(self._http_client, self._clock, self.pubjwk_url)

    @property
    def pubjwk_url(self) -> str:
        config = self._config
        if config.pubjwk_url:
            return config.pubjwk_url
        return DEFAULT_PUBJWK_URL if not config.login_url else ""

    @property
    def issuer(self) -> str:
        """The ``iss`` the id_token must have: ``--oidc-issuer-url`` or the login URL's origin."""
        return self._config.oidc_issuer_url or _origin(self.login_url)

    @classmethod
    def check_config(cls, config: Config) -> list[str]:
        problems = super().check_config(config)
        try:
            key = signing_key_from_config(config)
        except ConfigError as e:
            problems.extend(e.problems)
        else:
            if key is None and not config.code_challenge_method:
                problems.append(
                    "jwt_key: provider login.gov needs jwt_key or jwt_key_file (the RSA key "
                    "registered at login.gov), or code_challenge_method=S256 for a PKCE client"
                )
            elif key is not None and key.algorithm != "RS256":
                where = "jwt_key" if config.jwt_key else "jwt_key_file"
                problems.append(
                    f"{where}: login.gov signs client assertions with RS256 only; give an RSA "
                    f"private key, not a {key.algorithm} one"
                )
        if config.login_url and not config.pubjwk_url:
            problems.append(
                "pubjwk_url: required for provider login.gov when login_url is set "
                "(e.g. https://idp.int.identitysandbox.gov/api/openid_connect/certs)"
            )
        return problems

    async def authorize_url(
        self,
        state: str,
        nonce: str,
        code_challenge: str | None,
        code_challenge_method: str | None,
        redirect_uri: str,
        extra_params: Sequence[tuple[str, str]],
    ) -> str:
        """The login URL with this login's ``nonce`` and ``acr_values`` (login.gov's default
        unless ``--acr-values`` or a login parameter sets it); the nonce cannot be replaced."""
        given = [(n, v) for n, v in extra_params if n != "nonce"]
        extra: list[tuple[str, str]] = [("nonce", nonce)]
        if not self._config.acr_values and all(n != "acr_values" for n, _ in given):
            extra.append(("acr_values", DEFAULT_ACR_VALUES))
        return await super().authorize_url(
            state, nonce, code_challenge, code_challenge_method, redirect_uri, extra + given
        )

    async def redeem(
        self, code: str, code_verifier: str | None, redirect_uri: str, nonce: str
    ) -> Session:
        """Redeem ``code`` (with a client assertion) and verify the id_token it comes with.

        Raises:
            TokenError: the id_token is missing its nonce, for another login, expired,
                for another client, from another issuer, or badly signed.
            ProviderError: the token endpoint or the key set failed.
        """
        session = await super().redeem(code, code_verifier, redirect_uri, nonce)
        if not session.id_token:
            raise ProviderError("login.gov: the token endpoint answered without an id_token")
        claims = await self._verify_id_token(session.id_token, nonce)
        return attrs.evolve(session, user=claims["sub"])

    async def token_request(self, form: list[tuple[str, str]]) -> dict[str, Any]:
        """POST ``form`` with a fresh client assertion (or only the client id, for PKCE)."""
        data = list(form)
        if self._signing_key is not None:
            assertion = self._signing_key.assertion(
                self._config.client_id, self.redeem_url, self._clock, self._random
            )
            data += [("client_assertion", assertion), ("client_assertion_type", JWT_BEARER)]
        return await super().token_request(data)

    async def identity(self, session: Session) -> dict[str, Any]:
        """The verified email from userinfo, which must be about the id_token's subject."""
        url = self.profile_url
        _, info = await self.api_get(url, session, what="the userinfo endpoint")
        if not isinstance(info, dict):
            raise ProviderError(f"login.gov: the userinfo endpoint ({url}) gave no JSON object")
        sub = info.get("sub")
        if session.user and sub is not None and sub != session.user:
            raise ProviderError(f"login.gov: the userinfo endpoint ({url}) is about another user")
        email = info.get("email")
        if not isinstance(email, str) or not email:
            raise ProviderError(f"login.gov: the userinfo endpoint ({url}) gave no email")
        if info.get("email_verified") is not True:
            raise TokenError(f"login.gov: the email {_printable(email)} is not verified")
        return {"user": session.user or (sub if isinstance(sub, str) else ""), "email": email}

    async def _verify_id_token(self, id_token: str, nonce: str) -> dict[str, Any]:
        try:
            claims = await self._jwks.verify(id_token)
            self._check_claims(claims, nonce)
        except TokenError as e:
            self.log.warn("login.gov: rejected an id_token: {reason}", reason=str(e))
            raise TokenError(f"id_token rejected: {e}") from None
        return claims

    def _check_claims(self, claims: Mapping[str, Any], nonce: str) -> None:
        now = self._clock.seconds()
        iss = claims.get("iss")
        if not isinstance(iss, str) or iss.rstrip("/") != self.issuer.rstrip("/"):
            raise TokenError(f"issuer {_printable(iss, 100)!r} is not {self.issuer!r}")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if self._config.client_id not in audiences:
            raise TokenError("the audience (aud) is not this client")
        exp = _number(claims.get("exp"))
        if exp is None:
            raise TokenError("no expiry (exp)")
        if now > exp + LEEWAY:
            raise TokenError("expired")
        iat = _number(claims.get("iat"))
        if iat is not None and iat > now + LEEWAY:
            raise TokenError("issued in the future (iat)")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise TokenError("no subject (sub)")
        got = claims.get("nonce")
        if not isinstance(got, str):
            raise TokenError("no nonce")
        if not hmac.compare_digest(got.encode("utf-8"), nonce.encode("utf-8")):
            raise TokenError("the nonce does not match this login")


factory = OAuth2ProviderFactory("login.gov", LoginGovProvider)
