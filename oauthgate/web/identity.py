"""Identity headers: which ones oauthgate injects, and stripping every client copy of them.

The strip set is computed once from the configuration; stripping runs on every request,
also on routes that skip authentication, so no client can spoof an identity. Header
names are compared normalised (case-insensitive, ``_`` equal to ``-``), which closes the
header-smuggling variants of GHSA-vjrc-mh2v-45x6.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import attrs
from twisted.web.http_headers import Headers

from oauthgate.config.options import Config
from oauthgate.session import Session

__all__ = ["IDENTITY_HEADERS", "IdentityHeaders", "normalise"]

Pairs = list[tuple[bytes, bytes]]

# Headers oauthgate sets towards the upstream or in its own responses. Clients never
# get to send them, whatever is configured.
IDENTITY_HEADERS = (
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Groups",
    "X-Forwarded-Preferred-Username",
    "X-Forwarded-Access-Token",
    "X-Auth-Request-User",
    "X-Auth-Request-Email",
    "X-Auth-Request-Groups",
    "X-Auth-Request-Preferred-Username",
    "X-Auth-Request-Access-Token",
    "GAP-Auth",
    "GAP-Signature",
)


def normalise(name: bytes | str) -> bytes:
    """A header name as compared for stripping: lower case, ``_`` read as ``-``."""
    if isinstance(name, str):
        name = name.encode("latin-1")
    return name.lower().replace(b"_", b"-")


_CONTROL = dict.fromkeys([*range(32), 127], " ")


def _header_value(value: str) -> bytes:
    # Identity values come from the IdP: no line breaks, NULs or other control characters
    # may reach a header.
    return value.translate(_CONTROL).encode("utf-8")


@attrs.frozen
class IdentityHeaders:
    """What to strip from requests and what to add for an authenticated session."""

    pass_user_headers: bool
    prefer_email_to_user: bool
    basic_auth_password: str = attrs.field(repr=False)
    pass_basic_auth: bool
    pass_access_token: bool
    pass_authorization_header: bool
    set_xauthrequest: bool
    set_authorization_header: bool
    set_basic_auth: bool
    strip: frozenset[bytes]

    @classmethod
    def from_config(cls, config: Config) -> IdentityHeaders:
        strip = {normalise(h) for h in IDENTITY_HEADERS}
        sends_authorization = config.pass_authorization_header or (
            config.pass_basic_auth and bool(config.basic_auth_password)
        )
        if sends_authorization:
            strip.add(b"authorization")
        return cls(
            pass_user_headers=config.pass_user_headers or config.pass_basic_auth,
            prefer_email_to_user=config.prefer_email_to_user,
            basic_auth_password=config.basic_auth_password,
            pass_basic_auth=config.pass_basic_auth,
            pass_access_token=config.pass_access_token,
            pass_authorization_header=config.pass_authorization_header,
            set_xauthrequest=config.set_xauthrequest,
            set_authorization_header=config.set_authorization_header,
            set_basic_auth=config.set_basic_auth,
            strip=frozenset(strip),
        )

    def strip_from(self, headers: Headers) -> list[bytes]:
        """Remove every incoming copy of an identity header; returns the names removed."""
        removed = [name for name, _ in headers.getAllRawHeaders() if normalise(name) in self.strip]
        for name in removed:
            headers.removeHeader(name)
        return removed

    def _user(self, session: Session) -> str:
        if self.prefer_email_to_user and session.email:
            return session.email
        return session.user or session.email

    def _basic(self, session: Session) -> bytes:
        raw = f"{self._user(session)}:{self.basic_auth_password}".encode()
        return b"Basic " + base64.b64encode(raw)

    def upstream(self, session: Session) -> Pairs:
        """Headers added to the request sent upstream (proxy mode)."""
        out: Pairs = []
        if self.pass_user_headers:
            out.append((b"X-Forwarded-User", _header_value(self._user(session))))
            if session.email and not self.prefer_email_to_user:
                out.append((b"X-Forwarded-Email", _header_value(session.email)))
            if session.groups:
                out.append((b"X-Forwarded-Groups", _header_value(",".join(session.groups))))
            if session.preferred_username:
                out.append(
                    (b"X-Forwarded-Preferred-Username", _header_value(session.preferred_username))
                )
        if self.pass_basic_auth and self.basic_auth_password:
            out.append((b"Authorization", self._basic(session)))
        if self.pass_access_token and session.access_token:
            out.append((b"X-Forwarded-Access-Token", _header_value(session.access_token)))
        if self.pass_authorization_header and session.id_token:
            out.append((b"Authorization", b"Bearer " + _header_value(session.id_token)))
        return out

    def response(self, session: Session, *, tokens: bool) -> Pairs:
        """Headers added to oauthgate's answer: ``/oauth2/auth`` (``tokens=True``) and
        proxied responses (``tokens=False``: tokens never go to the browser, where page
        scripts could read them)."""
        out: Pairs = [(b"GAP-Auth", _header_value(session.email or session.user))]
        if self.set_xauthrequest:
            out.append((b"X-Auth-Request-User", _header_value(self._user(session))))
            if session.email:
                out.append((b"X-Auth-Request-Email", _header_value(session.email)))
            if session.groups:
                out.append((b"X-Auth-Request-Groups", _header_value(",".join(session.groups))))
            if session.preferred_username:
                out.append(
                    (
                        b"X-Auth-Request-Preferred-Username",
                        _header_value(session.preferred_username),
                    )
                )
            if tokens and self.pass_access_token and session.access_token:
                out.append((b"X-Auth-Request-Access-Token", _header_value(session.access_token)))
        if tokens and self.set_basic_auth:
            out.append((b"Authorization", self._basic(session)))
        if tokens and self.set_authorization_header and session.id_token:
            out.append((b"Authorization", b"Bearer " + _header_value(session.id_token)))
        return out


def set_all(headers: Headers, pairs: Sequence[tuple[bytes, bytes]]) -> None:
    """Set each header, replacing any value of the same name."""
    for name, value in pairs:
        headers.setRawHeaders(name, [value])
