"""SourceHut (``--provider=sourcehut``): meta.sr.ht OAuth 2.0 and its GraphQL API.

Who the user is comes from one GraphQL query, ``{ me { username, email } }``, POSTed
to ``profile_url`` (``https://meta.sr.ht/query``) with the access token: the username
is the user (and preferred username), the email the email. No groups, no refresh.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from oauthgate.errors import ProviderError
from oauthgate.providers.claims import get_claim
from oauthgate.providers.jwks import fetch
from oauthgate.providers.oauth2 import OAuth2Provider, OAuth2ProviderFactory
from oauthgate.providers.oidc import _printable
from oauthgate.session import Session

__all__ = ["QUERY", "SourceHutProvider", "factory"]

QUERY = "{ me { username, email } }"
"""The GraphQL query that asks meta.sr.ht who the token's owner is."""


class SourceHutProvider(OAuth2Provider):
    """meta.sr.ht's OAuth 2.0 endpoints and GraphQL API."""

    id: ClassVar[str] = "sourcehut"
    default_display_name: ClassVar[str] = "SourceHut"
    default_login_url: ClassVar[str] = "https://meta.sr.ht/oauth2/authorize"
    default_redeem_url: ClassVar[str] = "https://meta.sr.ht/oauth2/access-token"
    default_profile_url: ClassVar[str] = "https://meta.sr.ht/query"
    default_scope: ClassVar[str] = "meta.sr.ht/PROFILE:RO"

    async def identity(self, session: Session) -> dict[str, Any]:
        """username and email of ``me``. Raises ProviderError on a GraphQL error."""
        url = self.profile_url
        what = "the GraphQL API"
        result = await fetch(
            self._http_client,
            self._clock,
            "POST",
            url,
            what=what,
            data=json.dumps({"query": QUERY}).encode("utf-8"),
            headers={
                b"Content-Type": [b"application/json"],
                b"Accept": [b"application/json"],
                b"Authorization": [f"Bearer {session.access_token}".encode()],
            },
        )
        if result.code != 200:
            raise ProviderError(f"sourcehut: {what} ({url}) answered HTTP {result.code}")
        body = result.json(what, url)
        if not isinstance(body, dict):
            raise ProviderError(f"sourcehut: {what} ({url}) gave no JSON object")
        errors = body.get("errors")
        if errors:
            first = errors[0] if isinstance(errors, list) and errors else None
            message = _printable(first.get("message")) if isinstance(first, dict) else ""
            raise ProviderError(f"sourcehut: {what} ({url}) answered an error: {message}")
        username = get_claim(body, "data.me.username")
        email = get_claim(body, "data.me.email")
        if not isinstance(email, str) or not email:
            raise ProviderError(f"sourcehut: {what} ({url}) gave no email")
        username = username if isinstance(username, str) else ""
        return {"user": username, "email": email, "preferred_username": username}


factory = OAuth2ProviderFactory("sourcehut", SourceHutProvider)
