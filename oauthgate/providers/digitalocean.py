"""DigitalOcean (``--provider=digitalocean``): DigitalOcean OAuth, then ``GET /v2/account``.

The email is ``account.email`` of the account the access token belongs to; an
account whose email DigitalOcean marks unverified (``email_verified: false``) cannot
log in. No groups, no refresh.
"""

from __future__ import annotations

from typing import Any, ClassVar

from oauthgate.errors import ProviderError, TokenError
from oauthgate.providers.oauth2 import OAuth2Provider, OAuth2ProviderFactory
from oauthgate.session import Session

__all__ = ["DigitalOceanProvider", "factory"]


class DigitalOceanProvider(OAuth2Provider):
    """DigitalOcean's OAuth API and account endpoint."""

    id: ClassVar[str] = "digitalocean"
    default_display_name: ClassVar[str] = "DigitalOcean"
    default_login_url: ClassVar[str] = "https://cloud.digitalocean.com/v1/oauth/authorize"
    default_redeem_url: ClassVar[str] = "https://cloud.digitalocean.com/v1/oauth/token"
    default_profile_url: ClassVar[str] = "https://api.digitalocean.com/v2/account"
    default_scope: ClassVar[str] = "read"

    async def identity(self, session: Session) -> dict[str, Any]:
        """``account.email`` of ``GET /v2/account``; the user is the email, as in oauth2-proxy."""
        url = self.profile_url
        _, body = await self.api_get(url, session, what="the account endpoint")
        account = body.get("account") if isinstance(body, dict) else None
        if not isinstance(account, dict):
            raise ProviderError(f"digitalocean: the account endpoint ({url}) gave no account")
        email = account.get("email")
        if not isinstance(email, str) or not email:
            raise ProviderError(f"digitalocean: the account endpoint ({url}) gave no email")
        if account.get("email_verified") is False and not (
            self._config.insecure_oidc_allow_unverified_email
        ):
            raise TokenError(f"digitalocean: the email {email} is not verified")
        return {"user": email, "email": email}


factory = OAuth2ProviderFactory("digitalocean", DigitalOceanProvider)
