"""Facebook (``--provider=facebook``): Facebook Login, then the Graph API's ``/me``.

The login goes to Facebook's OAuth dialog, the code is redeemed at the Graph API, and
the email comes from ``GET <profile_url>?fields=name,email`` with the access token.
A user who did not share an email (or has none) cannot log in. No groups, no refresh.
"""

from __future__ import annotations

from typing import Any, ClassVar

from oauthgate.errors import ProviderError
from oauthgate.providers.oauth2 import OAuth2Provider, OAuth2ProviderFactory
from oauthgate.providers.oidc import _add_query
from oauthgate.session import Session

__all__ = ["FacebookProvider", "factory"]


class FacebookProvider(OAuth2Provider):
    """Facebook Login (Graph API v2.5 by default, as in oauth2-proxy)."""

    id: ClassVar[str] = "facebook"
    default_display_name: ClassVar[str] = "Facebook"
    default_login_url: ClassVar[str] = "https://www.facebook.com/v2.5/dialog/oauth"
    default_redeem_url: ClassVar[str] = "https://graph.facebook.com/v2.5/oauth/access_token"
    default_profile_url: ClassVar[str] = "https://graph.facebook.com/v2.5/me"
    default_scope: ClassVar[str] = "public_profile email"

    async def identity(self, session: Session) -> dict[str, Any]:
        """The email from ``/me?fields=name,email``; the user is the email, as in oauth2-proxy."""
        url = _add_query(self.profile_url, [("fields", "name,email")])
        _, me = await self.api_get(url, session, what="the Graph API /me")
        email = me.get("email") if isinstance(me, dict) else None
        if not isinstance(email, str) or not email:
            raise ProviderError("facebook: the Graph API gave no email for this user")
        return {"user": email, "email": email}


factory = OAuth2ProviderFactory("facebook", FacebookProvider)
