"""Nextcloud (``--provider=nextcloud``): Nextcloud's OAuth2 app and the OCS user API.

Nextcloud has no default URLs: ``login_url`` (``<nextcloud>/index.php/apps/oauth2/authorize``),
``redeem_url`` (``<nextcloud>/index.php/apps/oauth2/api/v1/token``) and ``profile_url``
(``<nextcloud>/ocs/v2.php/cloud/user?format=json``) are all required. Who the user is
comes from the OCS answer: ``ocs.data.id`` is the user, ``ocs.data.email`` the email
(``--oidc-email-claim`` may name another dotted path) and ``ocs.data.groups`` the groups
(``--oidc-groups-claim`` likewise). No refresh.
"""

from __future__ import annotations

from typing import Any, ClassVar

from oauthgate.config.options import Config
from oauthgate.errors import ProviderError
from oauthgate.providers.claims import coerce_groups, get_claim
from oauthgate.providers.oauth2 import OAuth2Provider, OAuth2ProviderFactory
from oauthgate.session import Session

__all__ = ["EMAIL_CLAIM", "GROUPS_CLAIM", "NextcloudProvider", "factory"]

EMAIL_CLAIM = "ocs.data.email"
"""Where the email is in the OCS answer unless ``--oidc-email-claim`` says otherwise."""
GROUPS_CLAIM = "ocs.data.groups"
"""Where the groups are in the OCS answer unless ``--oidc-groups-claim`` says otherwise."""

_DEFAULT_EMAIL_CLAIM = "email"
_DEFAULT_GROUPS_CLAIM = "groups"


class NextcloudProvider(OAuth2Provider):
    """A Nextcloud server's OAuth2 app; identity from ``/ocs/v2.php/cloud/user``."""

    id: ClassVar[str] = "nextcloud"
    default_display_name: ClassVar[str] = "Nextcloud"

    @classmethod
    def check_config(cls, config: Config) -> list[str]:
        problems = super().check_config(config)
        if not config.profile_url:
            problems.append(
                "profile_url: is required for provider nextcloud "
                "(<nextcloud>/ocs/v2.php/cloud/user?format=json)"
            )
        return problems

    @property
    def email_claim(self) -> str:
        claim = self._config.oidc_email_claim
        return EMAIL_CLAIM if claim == _DEFAULT_EMAIL_CLAIM else claim

    @property
    def groups_claim(self) -> str:
        claim = self._config.oidc_groups_claim
        return GROUPS_CLAIM if claim == _DEFAULT_GROUPS_CLAIM else claim

    async def identity(self, session: Session) -> dict[str, Any]:
        """user, email and groups from the OCS user endpoint.

        Raises ProviderError when the OCS status is not ``ok`` or there is no email.
        """
        url = self.profile_url
        _, body = await self.api_get(
            url, session, what="the OCS user API", headers={b"OCS-APIRequest": [b"true"]}
        )
        if not isinstance(body, dict):
            raise ProviderError(f"nextcloud: the OCS user API ({url}) gave no JSON object")
        status = get_claim(body, "ocs.meta.status")
        if status is not None and status != "ok":
            raise ProviderError(f"nextcloud: the OCS user API ({url}) answered status {status!r}")
        email = get_claim(body, self.email_claim)
        if not isinstance(email, str) or not email:
            raise ProviderError(
                f"nextcloud: the OCS user API ({url}) gave no email ({self.email_claim})"
            )
        user = get_claim(body, "ocs.data.id")
        return {
            "user": user if isinstance(user, str) else "",
            "email": email,
            "groups": coerce_groups(get_claim(body, self.groups_claim)),
        }


factory = OAuth2ProviderFactory("nextcloud", NextcloudProvider)
