"""Forgejo and Gitea as oauthgate identity providers (``--provider=forgejo``).

An example of a third-party provider plugin: a package of its own that registers
:data:`factory` in the ``oauthgate.providers`` entry-point group.

Forgejo (and Gitea, which it forked from) is a plain OAuth 2.0 provider here:

- the browser logs in at ``<base>/login/oauth/authorize``;
- codes and refresh tokens are redeemed at ``<base>/login/oauth/access_token``;
- the user is ``GET <base>/api/v1/user`` (``login`` is the user name, ``email`` the
  address), and their organizations (``GET <base>/api/v1/user/orgs``, paged) are the
  groups, so ``--allowed-group=my-org`` admits the members of ``my-org``.

``<base>`` is the instance's URL, and it is taken from ``--login-url``: a plugin cannot
add options of its own yet, and the login URL has to be given anyway. It must end with
``/login/oauth/authorize``; everything before that is the base (an instance under a
sub-path, ``https://example.com/git/login/oauth/authorize``, works). ``--redeem-url``
and ``--profile-url`` still override the token endpoint and the user endpoint.

Tokens, codes and the client secret are never logged.
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from oauthgate.errors import ProviderError
from oauthgate.providers.oauth2 import OAuth2Provider, OAuth2ProviderFactory
from oauthgate.session import Session

__all__ = ["AUTHORIZE_PATH", "ForgejoProvider", "factory", "instance_base"]

AUTHORIZE_PATH = "/login/oauth/authorize"
"""Where an instance's authorization endpoint is, relative to its base URL."""

PAGE_SIZE = 50  # Forgejo's default (and usual maximum) page size
MAX_PAGES = 100  # a user in more than 5000 organizations gets the first 5000


def instance_base(login_url: str) -> str | None:
    """The instance's base URL from its authorization endpoint; None if that is not one.

    ``https://git.example.com/login/oauth/authorize`` -> ``https://git.example.com``.
    """
    parts = urlsplit(login_url)
    path = parts.path.rstrip("/")
    if (
        parts.scheme not in ("http", "https")
        or not parts.netloc
        or parts.query
        or parts.fragment
        or not path.endswith(AUTHORIZE_PATH)
    ):
        return None
    return urlunsplit((parts.scheme, parts.netloc, path[: -len(AUTHORIZE_PATH)], "", ""))


class ForgejoProvider(OAuth2Provider):
    """A Forgejo or Gitea instance; the groups are the user's organizations."""

    id: ClassVar[str] = "forgejo"
    default_display_name: ClassVar[str] = "Forgejo"
    # Forgejo does not implement OAuth2 scopes yet: every token may use the whole API.
    default_scope: ClassVar[str] = ""
    supports_refresh: ClassVar[bool] = True

    @classmethod
    def check_config(cls, config: Any) -> list[str]:
        problems = []
        if not config.client_id:
            problems.append(f"client_id: is required for provider {cls.id}")
        if not config.login_url:
            problems.append(
                f"login_url: is required for provider {cls.id}: your instance's "
                f"authorization endpoint, e.g. https://git.example.com{AUTHORIZE_PATH}"
            )
        elif instance_base(config.login_url) is None:
            problems.append(
                f"login_url: must be an http(s) URL ending with {AUTHORIZE_PATH} for provider "
                f"{cls.id} (the instance's URL is taken from it), got {config.login_url!r}"
            )
        return problems

    @property
    def base_url(self) -> str:
        """The instance's URL, from ``login_url`` (checked at start-up)."""
        return instance_base(self.login_url) or ""

    @property
    def redeem_url(self) -> str:
        return self._config.redeem_url or self.base_url + "/login/oauth/access_token"

    @property
    def profile_url(self) -> str:
        return self._config.profile_url or self.base_url + "/api/v1/user"

    async def identity(self, session: Session) -> dict[str, Any]:
        """``login`` and ``email`` of ``/api/v1/user``; the organizations as groups."""
        _, user = await self.api_get(self.profile_url, session, what="the user API")
        if not isinstance(user, dict):
            raise ProviderError(f"{self.id}: the user API ({self.profile_url}) gave no user")
        login = user.get("login")
        email = user.get("email")
        if not isinstance(login, str) or not login:
            raise ProviderError(f"{self.id}: the user API ({self.profile_url}) gave no login")
        return {
            "user": login,
            "preferred_username": login,
            "email": email if isinstance(email, str) else "",
            "groups": await self._organizations(session),
        }

    async def _organizations(self, session: Session) -> tuple[str, ...]:
        """The names of the user's organizations, every page of them.

        Pages are read until one comes back empty, since an instance may serve fewer
        than :data:`PAGE_SIZE` items per page.
        """
        url = self.base_url + "/api/v1/user/orgs"
        names: list[str] = []
        for page in range(1, MAX_PAGES + 1):
            _, orgs = await self.api_get(
                f"{url}?page={page}&limit={PAGE_SIZE}", session, what="the organizations API"
            )
            if not isinstance(orgs, list):
                raise ProviderError(f"{self.id}: the organizations API ({url}) gave no list")
            if not orgs:
                break
            for org in orgs:
                # ``name``; Gitea before 1.20 called it ``username`` only.
                name = (org.get("name") or org.get("username")) if isinstance(org, dict) else None
                if isinstance(name, str) and name:
                    names.append(name)
        return tuple(dict.fromkeys(names))


factory = OAuth2ProviderFactory("forgejo", ForgejoProvider)
"""The ``oauthgate.providers`` entry point: ``forgejo = oauthgate_forgejo:factory``."""
