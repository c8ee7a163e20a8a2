"""Keycloak, the legacy way (``--provider=keycloak``): plain OAuth 2.0 plus Keycloak's userinfo.

oauth2-proxy's deprecated non-OIDC Keycloak provider. The login goes to ``login_url``,
the code is redeemed at ``redeem_url``, and who the user is comes from one GET of
``profile_url`` (Keycloak's userinfo endpoint) with the access token: ``email``,
``groups`` (with a Group Membership mapper), ``preferred_username`` and ``user`` (or the
subject, ``sub``); an email marked unverified is refused, as for OpenID Connect. No
id_token is verified and sessions are not refreshed: prefer ``--provider=keycloak-oidc``.

The default URLs are oauth2-proxy's placeholders on ``keycloak.org``; they never work,
so oauthgate refuses to start until all three are set to the realm's endpoints.
``--keycloak-group`` admits only members of one of the listed groups.
"""

from __future__ import annotations

from typing import Any, ClassVar

from oauthgate.config.options import Config
from oauthgate.errors import ProviderError, TokenError
from oauthgate.providers.oauth2 import OAuth2Provider, OAuth2ProviderFactory
from oauthgate.session import Session

__all__ = ["KeycloakProvider", "factory"]

_PLACEHOLDER_HOST = "https://keycloak.org/"


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str) and v)


class KeycloakProvider(OAuth2Provider):
    """Keycloak's OAuth 2.0 endpoints and userinfo, without OpenID Connect."""

    id: ClassVar[str] = "keycloak"
    default_display_name: ClassVar[str] = "Keycloak"
    default_login_url: ClassVar[str] = "https://keycloak.org/oauth/authorize"
    default_redeem_url: ClassVar[str] = "https://keycloak.org/oauth/token"
    default_profile_url: ClassVar[str] = "https://keycloak.org/api/v3/user"
    default_scope: ClassVar[str] = "api"

    @classmethod
    def check_config(cls, config: Config) -> list[str]:
        """The three URLs must be the realm's: the defaults are placeholders."""
        problems = super().check_config(config)
        realm = "https://<keycloak>/realms/<realm>/protocol/openid-connect"
        for key, default, path in (
            ("login_url", cls.default_login_url, "auth"),
            ("redeem_url", cls.default_redeem_url, "token"),
            ("profile_url", cls.default_profile_url, "userinfo"),
        ):
            value = getattr(config, key) or default
            if value.startswith(_PLACEHOLDER_HOST):
                problems.append(
                    f"{key}: required for provider keycloak (the default {default} is a "
                    f"placeholder); set it to {realm}/{path}"
                )
        return problems

    async def identity(self, session: Session) -> dict[str, Any]:
        """email, groups, preferred_username and user from Keycloak's userinfo endpoint."""
        url = self.profile_url
        _, info = await self.api_get(url, session, what="the userinfo endpoint")
        if not isinstance(info, dict):
            raise ProviderError(f"keycloak: the userinfo endpoint ({url}) gave no JSON object")
        email = info.get("email")
        if not isinstance(email, str) or not email:
            raise ProviderError(f"keycloak: the userinfo endpoint ({url}) gave no email")
        if info.get("email_verified") is False and not (
            self._config.insecure_oidc_allow_unverified_email
        ):
            raise TokenError(f"keycloak: the email {email} is not verified")
        user = info.get("user")
        if not isinstance(user, str) or not user:
            sub = info.get("sub")
            user = sub if isinstance(sub, str) else ""
        name = info.get("preferred_username")
        return {
            "user": user,
            "email": email,
            "groups": _strings(info.get("groups")),
            "preferred_username": name if isinstance(name, str) else "",
        }

    async def check_access(self, session: Session) -> bool:
        """With ``--keycloak-group``: True only for members of at least one of those groups."""
        wanted = {g.strip() for g in self._config.keycloak_groups if g.strip()}
        if not wanted:
            return True
        allowed = bool(wanted.intersection(session.groups))
        if not allowed:
            self.log.info(
                "keycloak: {email} is in none of the keycloak_groups", email=session.email
            )
        return allowed


factory = OAuth2ProviderFactory("keycloak", KeycloakProvider)
