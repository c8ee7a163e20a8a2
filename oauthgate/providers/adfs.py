"""Active Directory Federation Services (``--provider=adfs``): OpenID Connect, ADFS style.

Everything :class:`~oauthgate.providers.oidc.OIDCProvider` does (discovery at
``https://<adfs>/adfs``, id_token verification, refresh), and:

- with ``--resource``, the resource (the Web API the tokens are for) is sent on the
  login URL and the token requests, and prefixes the scope the way ADFS expects:
  ``<resource>/openid email profile``;
- the email is the ``email`` claim, else ``upn`` (ADFS often sends only the UPN).

oauth2-proxy escapes the ``state`` parameter twice for ADFS because its state carries
the application URL (``<nonce>:<redirect>``). oauthgate's state is an opaque URL-safe
token (the redirect is kept in the sealed CSRF cookie), which ADFS returns unchanged
with one ordinary level of escaping, so nothing extra is needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from oauthgate.providers.oidc import OIDCProvider, OIDCProviderFactory

__all__ = ["AdfsProvider", "adfs_scope", "factory"]

_DEFAULT_SCOPE = "openid email profile"


def adfs_scope(scope: str, resource: str) -> str:
    """``scope`` prefixed by ``resource/`` (once), as ADFS expects with a resource."""
    if not resource:
        return scope
    prefix = resource if resource.endswith("/") else resource + "/"
    return scope if scope.startswith(prefix) else prefix + scope


class AdfsProvider(OIDCProvider):
    """OpenID Connect against ADFS (2016 or later)."""

    id: ClassVar[str] = "adfs"
    default_display_name: ClassVar[str] = "ADFS"

    async def authorize_url(
        self,
        state: str,
        nonce: str,
        code_challenge: str | None,
        code_challenge_method: str | None,
        redirect_uri: str,
        extra_params: Sequence[tuple[str, str]],
    ) -> str:
        """The OIDC login URL with ADFS's scope and, when configured, its ``resource``.

        Parameters in ``extra_params`` win over these.
        """
        config = self._config
        ours = [("scope", adfs_scope(config.scope or _DEFAULT_SCOPE, config.resource))]
        if config.resource:
            ours.append(("resource", config.resource))
        given = {name for name, _ in extra_params}
        return await super().authorize_url(
            state,
            nonce,
            code_challenge,
            code_challenge_method,
            redirect_uri,
            [*(p for p in ours if p[0] not in given), *extra_params],
        )

    async def _token_request(self, url: str, form: list[tuple[str, str]]) -> dict[str, Any]:
        if self._config.resource:
            form = [*form, ("resource", self._config.resource)]
        return await super()._token_request(url, form)

    def _identity(self, claims: Mapping[str, Any]) -> dict[str, Any]:
        """As OIDC; without an email claim, the ``upn`` is the email."""
        identity = super()._identity(claims)
        if not identity["email"]:
            upn = claims.get("upn")
            identity["email"] = upn if isinstance(upn, str) else ""
        return identity


factory = OIDCProviderFactory("adfs", AdfsProvider)
