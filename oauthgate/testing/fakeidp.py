"""An in-memory OpenID Connect identity provider for tests and the ``--demo`` mode.

:class:`FakeIdP` is a ``twisted.web`` resource tree: serve it through
:func:`oauthgate.testing.memory_http_client` (optionally behind
:class:`oauthgate.testing.ByHost`) in unit tests, or with a real ``Site`` on a
port. It issues real ES256 id_tokens timed by the injected clock, so a relying
party verifies them exactly as it would verify a real provider's.

Security note: this is a test double. It checks what a strict provider checks
(client authentication, redirect_uri binding, PKCE, single-use and expiring
codes, rotating refresh tokens) but it has no login: whoever reaches the
authorization endpoint picks a user.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import os
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote_plus

import attrs
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from hyperlink import DecodedURL
from jwt.algorithms import ECAlgorithm
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

__all__ = ["CODE_LIFETIME", "FakeIdP", "TokenRequest", "default_clients", "default_users"]

CODE_LIFETIME = 60.0
"""Seconds an authorization code stays redeemable (on the injected clock)."""

_JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_USER_CLAIMS = ("sub", "email", "email_verified", "groups", "preferred_username", "name")


def default_users() -> dict[str, dict[str, Any]]:
    """The users a :class:`FakeIdP` knows when none are given (a fresh copy each call).

    ``alice`` is an admin, ``bob`` is staff in another domain, ``mallory`` has an
    unverified email address.
    """
    return {
        "alice": {
            "sub": "1001",
            "email": "alice@example.com",
            "email_verified": True,
            "groups": ["admins", "staff"],
            "preferred_username": "alice",
            "name": "Alice Example",
        },
        "bob": {
            "sub": "1002",
            "email": "bob@example.org",
            "email_verified": True,
            "groups": ["staff"],
            "preferred_username": "bob",
            "name": "Bob Example",
        },
        "mallory": {
            "sub": "1003",
            "email": "mallory@example.net",
            "email_verified": False,
            "groups": [],
            "preferred_username": "mallory",
            "name": "Mallory Example",
        },
    }


def default_clients() -> dict[str, str]:
    """The registered clients (client_id -> client_secret) when none are given."""
    return {"oauthgate": "oauthgate-demo-secret"}


@attrs.frozen
class TokenRequest:
    """One request the token endpoint received. The client secret is never kept."""

    form: Mapping[str, str]
    """The posted form fields, without ``client_secret`` or ``client_assertion``."""
    client_id: str | None
    """The client that authenticated (or tried to), from Basic auth or the form."""
    auth_method: str | None
    """``client_secret_basic``, ``client_secret_post``, ``private_key_jwt`` or None."""


@attrs.frozen
class _Code:
    client_id: str
    redirect_uri: str
    user: str
    scope: str
    nonce: str | None
    challenge: str | None
    challenge_method: str | None
    issued_at: float


@attrs.frozen
class _Grant:
    user: str
    client_id: str
    scope: str
    expires_at: float = 0.0


class _OAuthError(Exception):
    """An RFC 6749 error answer from the token endpoint."""

    def __init__(self, error: str, status: int = 400) -> None:
        super().__init__(error)
        self.error = error
        self.status = status


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _args(request: Request) -> dict[str, str]:
    """The first value of every query or form parameter, as text."""
    out: dict[str, str] = {}
    for key, values in (request.args or {}).items():
        if values:
            out[key.decode("utf-8", "replace")] = values[0].decode("utf-8", "replace")
    return out


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; background: #f4f5f7; color: #222; margin: 0; }}
main {{ max-width: 32rem; margin: 4rem auto; background: #fff; padding: 2rem;
        border-radius: 8px; box-shadow: 0 1px 4px rgba(0,0,0,.1); }}
h1 {{ font-size: 1.3rem; margin-top: 0; }}
button {{ display: block; width: 100%; text-align: left; margin: .5rem 0; padding: .7rem 1rem;
          border: 1px solid #ccd; border-radius: 6px; background: #fafbff; cursor: pointer;
          font-size: 1rem; }}
button:hover {{ background: #eef1ff; }}
small {{ color: #667; }}
.note {{ color: #667; font-size: .85rem; }}
</style></head>
<body><main><h1>{title}</h1>{body}</main></body></html>
"""


def _page(title: str, body_html: str) -> bytes:
    """A small HTML page; ``title`` is escaped here, ``body_html`` must be escaped already."""
    return _PAGE.format(title=html.escape(title), body=body_html).encode("utf-8")


class FakeIdP:
    """An OpenID Connect provider that runs in memory or on a port.

    Endpoints, relative to ``issuer`` (which may have a path):
    ``/.well-known/openid-configuration``, ``/jwks``, ``/authorize``, ``/token``,
    ``/userinfo`` and ``/end_session``.

    Switches (plain attributes) change every token issued while they are set:
    ``expired_tokens``, ``wrong_audience``, ``wrong_issuer``, ``bad_signature``
    (signed by a key that is not published, under a published ``kid``) and
    ``omit_nonce``. ``error_redirect`` makes ``/authorize`` redirect back with
    ``error=<value>``; ``fail_token_endpoint`` makes ``/token`` answer that status;
    ``fail_refresh`` makes refresh grants fail with that error code (a str) or
    HTTP status (an int or a digit string).

    ``client_keys`` (client_id -> public key) registers ``private_key_jwt`` clients: they
    authenticate at ``/token`` with a signed client assertion only.

    What happened is recorded in ``authorize_requests``, ``token_requests`` (no
    client secrets) and ``end_session_requests``.
    """

    log = Logger()

    def __init__(
        self,
        issuer: str,
        clock: IReactorTime,
        *,
        clients: Mapping[str, str] | None = None,
        users: Mapping[str, Mapping[str, Any]] | None = None,
        token_lifetime: float = 3600,
        auto_login: str | None = None,
        random: Callable[[int], bytes] = os.urandom,
        client_keys: Mapping[str, Any] | None = None,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self._clock = clock
        self._clients = dict(default_clients() if clients is None else clients)
        # private_key_jwt clients: client_id -> public key (a cryptography key or PEM bytes).
        # They authenticate with a signed client assertion only, never with a secret.
        self._client_keys = dict(client_keys or {})
        self._seen_assertions: set[str] = set()
        for key_client in self._client_keys:
            self._clients.setdefault(key_client, "")
        source = default_users() if users is None else users
        self._users: dict[str, dict[str, Any]] = {
            name: {"sub": name, "preferred_username": name, **claims}
            for name, claims in source.items()
        }
        if auto_login is not None and auto_login not in self._users:
            raise ValueError(f"auto_login: unknown user {auto_login!r}")
        self.token_lifetime = token_lifetime
        self.auto_login = auto_login
        self._random = random

        self._keys: list[tuple[str, ec.EllipticCurvePrivateKey]] = []
        self._rogue_key = ec.generate_private_key(ec.SECP256R1())
        self.rotate_key()

        self._codes: dict[str, _Code] = {}
        self._access_tokens: dict[str, _Grant] = {}
        self._refresh_tokens: dict[str, _Grant] = {}

        # Test switches.
        self.expired_tokens = False
        self.wrong_audience = False
        self.wrong_issuer = False
        self.bad_signature = False
        self.omit_nonce = False
        self.error_redirect: str | None = None
        self.fail_token_endpoint: int | None = None
        self.fail_refresh: str | int | None = None

        # Records.
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[TokenRequest] = []
        self.end_session_requests: list[dict[str, str]] = []

        self._resource = _IdPResource(self)

    # -- public helpers -------------------------------------------------------------------

    def resource(self) -> Resource:
        """The root resource serving every endpoint (always the same object)."""
        return self._resource

    def url(self, endpoint: str) -> str:
        """The absolute URL of ``endpoint`` (``"/token"``, ``"/jwks"``, ...)."""
        return self.issuer + endpoint

    @property
    def users(self) -> Mapping[str, Mapping[str, Any]]:
        """The known users and their claims (read-only)."""
        return MappingProxyType(self._users)

    @property
    def signing_kid(self) -> str:
        """The ``kid`` of the key that signs new tokens."""
        return self._keys[-1][0]

    @property
    def published_kids(self) -> tuple[str, ...]:
        """The ``kid`` of every key in the JWKS, oldest first."""
        return tuple(kid for kid, _ in self._keys)

    def rotate_key(self, *, keep_old: bool = True) -> str:
        """Generate a new signing key and return its kid.

        With ``keep_old`` (the default) the previous keys stay in the JWKS, as
        during a real provider's rotation; otherwise they are dropped, so tokens
        they signed no longer verify.
        """
        kid = _b64url(self._random(9))
        key = ec.generate_private_key(ec.SECP256R1())
        if not keep_old:
            self._keys.clear()
        self._keys.append((kid, key))
        return kid

    def jwks(self) -> dict[str, Any]:
        """The published key set, as served at ``/jwks``."""
        keys = []
        for kid, key in self._keys:
            jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
            jwk.update(kid=kid, use="sig", alg="ES256")
            keys.append(jwk)
        return {"keys": keys}

    def discovery(self) -> dict[str, Any]:
        """The OpenID Connect discovery document."""
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.url("/authorize"),
            "token_endpoint": self.url("/token"),
            "userinfo_endpoint": self.url("/userinfo"),
            "jwks_uri": self.url("/jwks"),
            "end_session_endpoint": self.url("/end_session"),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "code_challenge_methods_supported": ["S256", "plain"],
            "scopes_supported": ["openid", "email", "profile", "groups", "offline_access"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                *(["private_key_jwt"] if self._client_keys else []),
            ],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "claims_supported": ["iss", "aud", "exp", "iat", "nonce", *_USER_CLAIMS],
        }

    def issue_id_token(
        self, user: str, *, audience: str, nonce: str | None = None, **overrides: Any
    ) -> str:
        """A signed id_token for ``user``, as the token endpoint would issue it now.

        The switches apply. ``overrides`` replace claims; an override of None
        removes the claim.
        """
        claims = self._id_token_claims(user, audience, nonce)
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return self._sign(claims)

    def issue_code(
        self,
        user: str,
        *,
        client_id: str,
        redirect_uri: str,
        nonce: str | None = None,
        code_challenge: str | None = None,
        method: str | None = None,
    ) -> str:
        """An authorization code for ``user``, as ``/authorize`` would send back now.

        For tests that start at the callback, without a browser. The code is bound to
        ``client_id``, ``redirect_uri`` and the PKCE challenge (``method`` defaults to
        ``plain`` when a challenge is given), single use, and expires after
        :data:`CODE_LIFETIME` seconds, exactly like one from ``/authorize``.

        Raises ValueError for an unknown user or client.
        """
        if user not in self._users:
            raise ValueError(f"issue_code: unknown user {user!r}")
        if client_id not in self._clients:
            raise ValueError(f"issue_code: unknown client {client_id!r}")
        code = self._token()
        self._codes[code] = _Code(
            client_id=client_id,
            redirect_uri=redirect_uri,
            user=user,
            scope="openid email profile",
            nonce=nonce,
            challenge=code_challenge,
            challenge_method=(method or "plain") if code_challenge else None,
            issued_at=self._clock.seconds(),
        )
        return code

    # -- tokens ---------------------------------------------------------------------------

    def _token(self) -> str:
        return _b64url(self._random(32))

    def _id_token_claims(self, user: str, audience: str, nonce: str | None) -> dict[str, Any]:
        now = self._clock.seconds()
        iat = now - self.token_lifetime - 600 if self.expired_tokens else now
        claims: dict[str, Any] = {
            "iss": "https://wrong-issuer.invalid" if self.wrong_issuer else self.issuer,
            "aud": "another-client" if self.wrong_audience else audience,
            "azp": audience,
            "iat": int(iat),
            "exp": int(iat + self.token_lifetime),
        }
        if nonce is not None and not self.omit_nonce:
            claims["nonce"] = nonce
        profile = self._users[user]
        for name in _USER_CLAIMS:
            if name in profile:
                claims[name] = profile[name]
        return claims

    def _sign(self, claims: Mapping[str, Any]) -> str:
        kid, key = self._keys[-1]
        if self.bad_signature:
            key = self._rogue_key
        return jwt.encode(dict(claims), key, algorithm="ES256", headers={"kid": kid})

    def _issue_tokens(
        self, user: str, client_id: str, scope: str, nonce: str | None
    ) -> dict[str, Any]:
        now = self._clock.seconds()
        expires_at = now - 600 if self.expired_tokens else now + self.token_lifetime
        access_token = self._token()
        refresh_token = self._token()
        self._access_tokens[access_token] = _Grant(user, client_id, scope, expires_at)
        self._refresh_tokens[refresh_token] = _Grant(user, client_id, scope)
        self.log.info("Issued tokens for {user} to {client_id}", user=user, client_id=client_id)
        return {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": max(0, round(expires_at - now)),
            "id_token": self._sign(self._id_token_claims(user, client_id, nonce)),
            "refresh_token": refresh_token,
            "scope": scope,
        }

    # -- endpoints ------------------------------------------------------------------------

    def _authorize(self, request: Request) -> bytes:
        params = _args(request)
        self.authorize_requests.append(dict(params))
        client_id = params.get("client_id", "")
        redirect_uri = params.get("redirect_uri", "")
        if client_id not in self._clients:
            return _error_page(request, 400, "Unknown client", "The client_id is not registered.")
        if not redirect_uri:
            return _error_page(request, 400, "Bad request", "The redirect_uri is missing.")
        state = params.get("state")
        if self.error_redirect is not None:
            return _redirect_back(request, redirect_uri, state, error=self.error_redirect)
        if params.get("response_type") != "code":
            return _redirect_back(request, redirect_uri, state, error="unsupported_response_type")
        challenge = params.get("code_challenge") or None
        method = params.get("code_challenge_method") or ("plain" if challenge else None)
        if challenge is not None and method not in ("S256", "plain"):
            return _redirect_back(request, redirect_uri, state, error="invalid_request")

        user = self.auto_login
        if user is None:
            chosen = params.get("user") or None
            if chosen is not None:
                if chosen not in self._users:
                    return _error_page(request, 400, "Unknown user", "No such user here.")
                user = chosen
            elif params.get("login_hint") in self._users:
                user = params["login_hint"]
        if user is None:
            return self._login_form(request, params)

        code = self._token()
        self._codes[code] = _Code(
            client_id=client_id,
            redirect_uri=redirect_uri,
            user=user,
            scope=params.get("scope", "openid"),
            nonce=params.get("nonce"),
            challenge=challenge,
            challenge_method=method,
            issued_at=self._clock.seconds(),
        )
        return _redirect_back(request, redirect_uri, state, code=code)

    def _login_form(self, request: Request, params: Mapping[str, str]) -> bytes:
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in params.items()
            if k != "user"
        )
        buttons = "".join(
            f'<button type="submit" name="user" value="{html.escape(name)}">'
            f"<strong>{html.escape(str(claims.get('name', name)))}</strong><br>"
            f"<small>{html.escape(name)} &middot; {html.escape(str(claims.get('email', '')))}"
            f" &middot; groups: {html.escape(', '.join(map(str, claims.get('groups', []))))}"
            "</small></button>"
            for name, claims in self._users.items()
        )
        body = (
            f"<p>Application <code>{html.escape(params.get('client_id', ''))}</code> "
            "asks who you are. Pick a user:</p>"
            f'<form method="post" action="{html.escape(self.url("/authorize"))}">'
            f"{hidden}{buttons}</form>"
            '<p class="note">This is oauthgate\'s fake identity provider: '
            "there are no passwords.</p>"
        )
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return _page("Sign in", body)

    def _token_endpoint(self, request: Request) -> bytes:
        form = _args(request)
        client_id, secret, auth_method = _client_credentials(request, form)
        assertion = form.get("client_assertion")
        if assertion is not None:
            auth_method = "private_key_jwt"
        self.token_requests.append(
            TokenRequest(
                form={
                    k: v for k, v in form.items() if k not in ("client_secret", "client_assertion")
                },
                client_id=client_id,
                auth_method=auth_method,
            )
        )
        if self.fail_token_endpoint is not None:
            status = self.fail_token_endpoint
            error = "temporarily_unavailable" if status == 503 else "server_error"
            return _json(request, {"error": error}, status)
        try:
            if assertion is not None:
                client_id = self._authenticate_assertion(form, assertion)
            else:
                client_id = self._authenticate_client(client_id, secret)
            grant_type = form.get("grant_type")
            if grant_type == "authorization_code":
                answer = self._redeem_code(client_id, form)
            elif grant_type == "refresh_token":
                answer = self._refresh(client_id, form)
            else:
                raise _OAuthError("unsupported_grant_type")
        except _OAuthError as e:
            if e.status == 401 and auth_method == "client_secret_basic":
                request.setHeader(b"WWW-Authenticate", b'Basic realm="fakeidp"')
            return _json(request, {"error": e.error}, e.status)
        return _json(request, answer)

    def _authenticate_client(self, client_id: str | None, secret: str | None) -> str:
        """The authenticated client's id; raises invalid_client otherwise."""
        if client_id is None or client_id not in self._clients:
            raise _OAuthError("invalid_client", 401)
        if client_id in self._client_keys:  # only a client assertion will do
            raise _OAuthError("invalid_client", 401)
        expected = self._clients[client_id]
        if expected == "":  # a public client: PKCE protects its codes
            return client_id
        if secret is None or not hmac.compare_digest(secret.encode(), expected.encode()):
            raise _OAuthError("invalid_client", 401)
        return client_id

    def _authenticate_assertion(self, form: Mapping[str, str], assertion: str) -> str:
        """The client a private_key_jwt assertion proves; raises invalid_client otherwise.

        Checked as RFC 7523 §3 says: the registered key's signature, ``iss`` = ``sub`` =
        the client, ``aud`` = this token endpoint, not expired on the injected clock, and
        a ``jti`` never seen before (no replay).
        """
        if form.get("client_assertion_type") != _JWT_BEARER:
            raise _OAuthError("invalid_client", 401)
        try:
            client_id = jwt.decode(assertion, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            raise _OAuthError("invalid_client", 401) from None
        key = self._client_keys.get(client_id) if isinstance(client_id, str) else None
        if key is None or form.get("client_id", client_id) != client_id:
            raise _OAuthError("invalid_client", 401)
        try:
            claims = jwt.decode(
                assertion,
                key,
                algorithms=["RS256", "ES256", "ES384", "ES512"],
                audience=self.url("/token"),
                issuer=client_id,
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
            )
        except (jwt.PyJWTError, TypeError, ValueError):  # a key of another type: TypeError
            raise _OAuthError("invalid_client", 401) from None
        exp = claims.get("exp")
        jti = claims.get("jti")
        if (
            claims.get("sub") != client_id
            or not isinstance(exp, int | float)
            or exp <= self._clock.seconds()
            or not isinstance(jti, str)
            or jti in self._seen_assertions
        ):
            raise _OAuthError("invalid_client", 401)
        self._seen_assertions.add(jti)
        return str(client_id)

    def _redeem_code(self, client_id: str, form: Mapping[str, str]) -> dict[str, Any]:
        code = self._codes.pop(form.get("code", ""), None)  # single use, even on failure
        if code is None:
            raise _OAuthError("invalid_grant")
        if self._clock.seconds() >= code.issued_at + CODE_LIFETIME:
            raise _OAuthError("invalid_grant")
        if code.client_id != client_id or code.redirect_uri != form.get("redirect_uri"):
            raise _OAuthError("invalid_grant")
        verifier = form.get("code_verifier")
        if code.challenge is None:
            if verifier is not None:  # refuse a PKCE downgrade
                raise _OAuthError("invalid_grant")
        elif verifier is None:
            raise _OAuthError("invalid_grant")
        else:
            if code.challenge_method == "S256":
                computed = _b64url(hashlib.sha256(verifier.encode("ascii", "replace")).digest())
            else:
                computed = verifier
            if not hmac.compare_digest(computed.encode(), code.challenge.encode()):
                raise _OAuthError("invalid_grant")
        return self._issue_tokens(code.user, client_id, code.scope, code.nonce)

    def _refresh(self, client_id: str, form: Mapping[str, str]) -> dict[str, Any]:
        failure = self.fail_refresh
        if failure is not None:
            if isinstance(failure, int) or failure.isdigit():
                status = int(failure)
                error = "temporarily_unavailable" if status == 503 else "server_error"
                raise _OAuthError(error, status)
            raise _OAuthError(failure, 401 if failure == "invalid_client" else 400)
        grant = self._refresh_tokens.pop(form.get("refresh_token", ""), None)  # rotates
        if grant is None or grant.client_id != client_id:
            raise _OAuthError("invalid_grant")
        return self._issue_tokens(grant.user, client_id, grant.scope, None)

    def _userinfo(self, request: Request) -> bytes:
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        grant = self._access_tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if grant is None or grant.expires_at <= self._clock.seconds():
            request.setHeader(b"WWW-Authenticate", b'Bearer error="invalid_token"')
            return _json(request, {"error": "invalid_token"}, 401)
        profile = self._users[grant.user]
        return _json(request, {k: profile[k] for k in _USER_CLAIMS if k in profile})

    def _end_session(self, request: Request) -> bytes:
        params = _args(request)
        self.end_session_requests.append(dict(params))
        target = params.get("post_logout_redirect_uri")
        if target:
            url = DecodedURL.from_text(target)
            if "state" in params:
                url = url.add("state", params["state"])
            request.redirect(url.to_uri().to_text().encode("ascii"))
            return b""
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return _page("Signed out", "<p>You are signed out of the fake identity provider.</p>")


def _client_credentials(
    request: Request, form: Mapping[str, str]
) -> tuple[str | None, str | None, str | None]:
    """(client_id, client_secret, method) from HTTP Basic (RFC 6749 2.3.1) or the form."""
    header = (request.getHeader(b"authorization") or b"").decode("latin-1")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except ValueError:
            return None, None, "client_secret_basic"
        user, _, password = decoded.partition(":")
        return unquote_plus(user), unquote_plus(password), "client_secret_basic"
    if "client_secret" in form:
        return form.get("client_id"), form["client_secret"], "client_secret_post"
    return form.get("client_id"), None, None


def _json(request: Request, body: Mapping[str, Any], status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body).encode("utf-8")


def _error_page(request: Request, status: int, title: str, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    return _page(title, f"<p>{html.escape(message)}</p>")


def _redirect_back(request: Request, redirect_uri: str, state: str | None, **params: str) -> bytes:
    url = DecodedURL.from_text(redirect_uri)
    for name, value in params.items():
        url = url.add(name, value)
    if state is not None:
        url = url.add("state", state)
    request.setHeader(b"Cache-Control", b"no-store")
    request.redirect(url.to_uri().to_text().encode("ascii"))
    return b""


class _IdPResource(Resource):
    """Dispatches on the request path relative to the issuer's path, wherever it is mounted."""

    isLeaf = True

    def __init__(self, idp: FakeIdP) -> None:
        Resource.__init__(self)
        self._idp = idp
        self._prefix = tuple(s for s in DecodedURL.from_text(idp.issuer).path if s)

    def render(self, request: Request) -> bytes:
        segments = tuple(
            s.decode("utf-8", "replace") for s in (request.path or b"/").split(b"/") if s
        )
        n = len(self._prefix)
        endpoint = "/" + "/".join(segments[n:]) if segments[:n] == self._prefix else None
        method = request.method
        idp = self._idp
        if endpoint == "/.well-known/openid-configuration" and method in (b"GET", b"HEAD"):
            request.setHeader(b"Access-Control-Allow-Origin", b"*")
            return _json(request, idp.discovery())
        if endpoint == "/jwks" and method in (b"GET", b"HEAD"):
            request.setHeader(b"Access-Control-Allow-Origin", b"*")
            return _json(request, idp.jwks())
        if endpoint == "/authorize" and method in (b"GET", b"POST"):
            return idp._authorize(request)
        if endpoint == "/token" and method == b"POST":
            return idp._token_endpoint(request)
        if endpoint == "/userinfo" and method in (b"GET", b"POST"):
            return idp._userinfo(request)
        if endpoint == "/end_session" and method in (b"GET", b"POST"):
            return idp._end_session(request)
        if endpoint in ("/token", "/authorize", "/userinfo", "/end_session", "/jwks"):
            return _error_page(request, 405, "Method not allowed", "Wrong method.")
        return _error_page(request, 404, "Not found", "No such endpoint.")
