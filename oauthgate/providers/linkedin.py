"""LinkedIn (``--provider=linkedin``): LinkedIn OAuth 2.0 and the v2 ``emailAddress`` API.

oauth2-proxy's (legacy) LinkedIn provider: the email is the first element's
``handle~.emailAddress`` of ``GET <profile_url>?q=members&projection=(elements*(handle~))``,
asked with the headers LinkedIn's v2 API wants (``x-li-format: json``). No groups,
no refresh. LinkedIn's newer "Sign In with LinkedIn using OpenID Connect" works with
``--provider=oidc`` and ``--oidc-issuer-url=https://www.linkedin.com/oauth``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from oauthgate.errors import ProviderError
from oauthgate.providers.oauth2 import OAuth2Provider, OAuth2ProviderFactory
from oauthgate.session import Session

__all__ = ["LinkedInProvider", "factory"]

_QUERY = "q=members&projection=(elements*(handle~))"


class LinkedInProvider(OAuth2Provider):
    """LinkedIn's OAuth 2.0 endpoints and its v2 email address API."""

    id: ClassVar[str] = "linkedin"
    default_display_name: ClassVar[str] = "LinkedIn"
    default_login_url: ClassVar[str] = "https://www.linkedin.com/oauth/v2/authorization"
    default_redeem_url: ClassVar[str] = "https://www.linkedin.com/uas/oauth2/accessToken"
    default_profile_url: ClassVar[str] = "https://api.linkedin.com/v2/emailAddress"
    default_scope: ClassVar[str] = "r_emailaddress r_liteprofile"

    async def identity(self, session: Session) -> dict[str, Any]:
        """The primary email address; the user is the email, as in oauth2-proxy."""
        # Sent as LinkedIn documents it: Rest.li projections are not percent-encoded.
        separator = "&" if "?" in self.profile_url else "?"
        url = f"{self.profile_url}{separator}{_QUERY}"
        _, body = await self.api_get(
            url, session, what="the email address API", headers={b"x-li-format": [b"json"]}
        )
        elements = body.get("elements") if isinstance(body, dict) else None
        first = elements[0] if isinstance(elements, list) and elements else None
        handle = first.get("handle~") if isinstance(first, dict) else None
        email = handle.get("emailAddress") if isinstance(handle, dict) else None
        if not isinstance(email, str) or not email:
            raise ProviderError("linkedin: the email address API gave no email for this user")
        return {"user": email, "email": email}


factory = OAuth2ProviderFactory("linkedin", LinkedInProvider)
