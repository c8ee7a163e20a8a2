"""Header injection rules: what oauthgate adds to proxied requests and to its answers.

One rule is one header (oauth2-proxy's alpha ``injectRequestHeaders`` /
``injectResponseHeaders`` entries); its values come from session claims or from the
configuration. Rules are plain frozen values: the alpha loader builds them from YAML,
:func:`legacy_header_rules` builds them from the legacy header flags, and
:class:`oauthgate.web.identity.IdentityHeaders` applies them, so both configuration styles
go through one engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from oauthgate.config.options import Config

__all__ = [
    "CLAIMS",
    "TOKEN_CLAIMS",
    "HeaderRule",
    "HeaderValue",
    "legacy_header_rules",
]

CLAIMS = (
    "user",
    "email",
    "groups",
    "preferred_username",
    "access_token",
    "id_token",
    "refresh_token",
    "created_at",
    "expires_on",
)
"""The session claims a header value may come from."""

TOKEN_CLAIMS = frozenset({"access_token", "id_token", "refresh_token"})
"""Claims that are credentials: never sent to the browser (see :attr:`HeaderValue.secret`)."""


@attrs.frozen
class HeaderValue:
    """One value of a header: a session claim, or a fixed value from the configuration.

    With ``claim``, each non-empty claim value becomes ``prefix + value``, or with
    ``basic_auth_password`` (not None) ``Basic base64(value:password)`` and ``prefix`` is
    not used. Without ``claim``, ``value`` is sent as it is. Secret material (the
    password, a fixed value from a secret source) is kept out of ``repr``.
    """

    claim: str = ""
    prefix: str = ""
    basic_auth_password: str | None = attrs.field(default=None, repr=False)
    value: str | None = attrs.field(default=None, repr=False)

    @property
    def secret(self) -> bool:
        """True when the value is a credential (a token claim or Basic credentials).

        Such values go to the upstream and to ``/oauth2/auth`` callers, never into a
        proxied response, where page scripts in the browser could read them.
        """
        return self.claim in TOKEN_CLAIMS or self.basic_auth_password is not None


@attrs.frozen
class HeaderRule:
    """One injected header: its name and where its values come from.

    ``preserve_request_value`` (request headers only) keeps the client's copies of the
    header and adds the injected values after them; otherwise client copies are removed
    before the request goes anywhere. oauthgate's fixed identity headers are removed
    whatever this says.
    """

    name: str
    preserve_request_value: bool = False
    values: tuple[HeaderValue, ...] = ()


def _claim(name: str, claim: str, prefix: str = "") -> HeaderRule:
    return HeaderRule(name, values=(HeaderValue(claim=claim, prefix=prefix),))


def _basic_auth(prefer_email_to_user: bool, password: str) -> HeaderRule:
    claim = "email" if prefer_email_to_user else "user"
    return HeaderRule(
        "Authorization",
        values=(HeaderValue(claim=claim, prefix="Basic ", basic_auth_password=password),),
    )


def legacy_header_rules(config: Config) -> tuple[tuple[HeaderRule, ...], tuple[HeaderRule, ...]]:
    """The (request, response) rules the legacy header flags stand for.

    oauth2-proxy's conversion (``--convert-config-to-alpha``), header for header:
    ``pass_user_headers`` or ``pass_basic_auth`` send X-Forwarded-User (the email with
    ``prefer_email_to_user``), -Email (not with ``prefer_email_to_user``), -Groups and
    -Preferred-Username; ``pass_basic_auth`` with a ``basic_auth_password`` sends
    ``Authorization: Basic``; ``pass_access_token`` X-Forwarded-Access-Token;
    ``pass_authorization_header`` ``Authorization: Bearer <id_token>``. Response:
    ``set_xauthrequest`` X-Auth-Request-User/-Email/-Preferred-Username/-Groups (and
    -Access-Token with ``pass_access_token``), ``set_basic_auth`` and
    ``set_authorization_header`` the two Authorization forms.

    One difference on purpose: ``preserveRequestValue`` is always false, because
    oauthgate always strips client copies of the headers it injects
    (``skip_auth_strip_headers=false`` is not honoured).
    """
    request: list[HeaderRule] = []
    if config.pass_user_headers or config.pass_basic_auth:
        if config.prefer_email_to_user:
            request.append(_claim("X-Forwarded-User", "email"))
        else:
            request.append(_claim("X-Forwarded-User", "user"))
            request.append(_claim("X-Forwarded-Email", "email"))
        request.append(_claim("X-Forwarded-Groups", "groups"))
        request.append(_claim("X-Forwarded-Preferred-Username", "preferred_username"))
    if config.pass_basic_auth and config.basic_auth_password:
        request.append(_basic_auth(config.prefer_email_to_user, config.basic_auth_password))
    if config.pass_access_token:
        request.append(_claim("X-Forwarded-Access-Token", "access_token"))
    if config.pass_authorization_header:
        request.append(_claim("Authorization", "id_token", "Bearer "))

    response: list[HeaderRule] = []
    if config.set_xauthrequest:
        response.append(_claim("X-Auth-Request-User", "user"))
        response.append(_claim("X-Auth-Request-Email", "email"))
        response.append(_claim("X-Auth-Request-Preferred-Username", "preferred_username"))
        response.append(_claim("X-Auth-Request-Groups", "groups"))
        if config.pass_access_token:
            response.append(_claim("X-Auth-Request-Access-Token", "access_token"))
    if config.set_basic_auth:
        response.append(_basic_auth(config.prefer_email_to_user, config.basic_auth_password))
    if config.set_authorization_header:
        response.append(_claim("Authorization", "id_token", "Bearer "))
    return _merged(request), _merged(response)


def _merged(rules: list[HeaderRule]) -> tuple[HeaderRule, ...]:
    """``rules`` with those of one name (Basic and Bearer ``Authorization``) made one rule.

    An alpha file may name a header only once; the values of a merged rule are joined
    with ``,`` exactly as oauth2-proxy joins the values of its two Authorization rules.
    """
    merged: dict[str, HeaderRule] = {}
    for rule in rules:
        key = rule.name.lower()
        if key in merged:
            merged[key] = attrs.evolve(merged[key], values=merged[key].values + rule.values)
        else:
            merged[key] = rule
    return tuple(merged.values())
