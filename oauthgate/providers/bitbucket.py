"""Bitbucket Cloud (``--provider=bitbucket``).

Plain OAuth 2.0 against ``bitbucket.org`` (the client authenticates with HTTP Basic at
the token endpoint); the identity comes from Bitbucket's 2.0 API, whose host is that of
``validate_url`` (``https://api.bitbucket.org/2.0/user/emails`` by default):

- the email is the primary, confirmed address in ``GET /2.0/user/emails``;
- the user is ``username`` from ``GET /2.0/user`` (``nickname`` or ``account_id`` when
  it has none);
- the groups are the slugs of the workspaces the user is a member of
  (``GET /2.0/workspaces?role=member``). Bitbucket removed ``/2.0/teams``, which
  oauth2-proxy still asks; a team's name is its workspace's slug.

Access rules, checked on every request: ``bitbucket_team`` (membership of that
workspace, from the groups) and ``bitbucket_repository`` (``workspace/repo`` among the
user's repositories with the contributor role, ``GET /2.0/repositories/<workspace>?
role=contributor``, asked at most every :data:`~oauthgate.providers.oauth2.ACCESS_RECHECK`
seconds per session). Every listing is paged through its ``next`` link, on the API's
host only. The access token goes in the ``Authorization`` header, never in a URL, and is
never logged. No refresh: a session lasts until its access token expires.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote, urlencode, urlsplit

import attrs

from oauthgate.config.options import Config
from oauthgate.errors import ProviderError
from oauthgate.providers.oauth2 import MAX_PAGES, OAuth2Provider, OAuth2ProviderFactory
from oauthgate.session import Session

__all__ = ["DEFAULT_VALIDATE_URL", "MAX_PAGES", "BitbucketProvider", "factory"]

DEFAULT_VALIDATE_URL = "https://api.bitbucket.org/2.0/user/emails"


@attrs.define
class BitbucketProvider(OAuth2Provider):
    """Bitbucket Cloud (see the module docstring)."""

    id: ClassVar[str] = "bitbucket"
    default_display_name: ClassVar[str] = "Bitbucket"
    default_login_url: ClassVar[str] = "https://bitbucket.org/site/oauth2/authorize"
    default_redeem_url: ClassVar[str] = "https://bitbucket.org/site/oauth2/access_token"
    default_validate_url: ClassVar[str] = DEFAULT_VALIDATE_URL
    default_scope: ClassVar[str] = "email"
    client_auth: ClassVar[str] = "basic"
    supports_refresh: ClassVar[bool] = False

    @classmethod
    def check_config(cls, config: Config) -> list[str]:
        problems = super().check_config(config)
        repository = config.bitbucket_repository
        if repository and not re.fullmatch(r"[^/\s]+/[^/\s]+", repository):
            problems.append(
                f"bitbucket_repository: must be workspace/repository, got {repository!r}"
            )
        return problems

    @property
    def scope(self) -> str:
        """``email``, plus ``account`` for the team rule and ``repository`` for the repository
        rule (unless ``scope`` is set)."""
        if self._config.scope:
            return self._config.scope
        scope = self.default_scope
        if self._config.bitbucket_team:
            scope += " account"
        if self._config.bitbucket_repository:
            scope += " repository"
        return scope

    @property
    def validate_url(self) -> str:
        return self._config.validate_url or self.default_validate_url

    @property
    def api_url(self) -> str:
        """``scheme://host`` of the API."""
        parts = urlsplit(self.validate_url)
        return f"{parts.scheme}://{parts.netloc}"

    # --- identity -----------------------------------------------------------------------

    async def identity(self, session: Session) -> dict[str, Any]:
        """``email`` (primary, confirmed), ``user`` and ``groups`` (workspace slugs).

        Raises ProviderError when the emails or user request fails, or when the
        workspace listing fails while ``bitbucket_team`` depends on it.
        """
        email = ""
        for entry in await self._list(self.validate_url, session, "Bitbucket's /2.0/user/emails"):
            if (
                entry.get("is_primary") is True
                and entry.get("is_confirmed") is True
                and isinstance(entry.get("email"), str)
            ):
                email = entry["email"]
                break
        _, account = await self.api_get(
            self.api_url + "/2.0/user", session, what="Bitbucket's /2.0/user"
        )
        user = ""
        if isinstance(account, dict):
            for key in ("username", "nickname", "account_id"):
                value = account.get(key)
                if isinstance(value, str) and value:
                    user = value
                    break
        if not user:
            raise ProviderError(f"{self.id}: /2.0/user answered without a username")
        if not email:
            self.log.warn(
                "{provider}: {user} has no primary confirmed email address",
                provider=self.id,
                user=user,
            )
        try:
            groups = await self._workspaces(session)
        except ProviderError as e:
            if self._config.bitbucket_team:
                raise
            self.log.warn(
                "{provider}: not using the workspaces of {user}: {error}",
                provider=self.id,
                user=user,
                error=str(e),
            )
            groups = ()
        return {"user": user, "email": email, "groups": groups}

    async def _workspaces(self, session: Session) -> tuple[str, ...]:
        url = self.api_url + "/2.0/workspaces?" + urlencode({"role": "member", "pagelen": 100})
        slugs = []
        for workspace in await self._list(url, session, "Bitbucket's /2.0/workspaces"):
            slug = workspace.get("slug")
            if isinstance(slug, str) and slug:
                slugs.append(slug)
        return tuple(dict.fromkeys(slugs))

    # --- access rules -------------------------------------------------------------------

    async def check_access(self, session: Session) -> bool:
        config = self._config
        team = config.bitbucket_team.strip()
        if team and team.lower() not in {g.lower() for g in session.groups}:
            self._refused(session, f"not a member of {team}")
            return False
        if config.bitbucket_repository and not await self._repository_access(session):
            self._refused(session, f"not a contributor to {config.bitbucket_repository}")
            return False
        return True

    async def _repository_access(self, session: Session) -> bool:
        """Whether the user contributes to ``bitbucket_repository`` (fails closed)."""
        wanted = self._config.bitbucket_repository

        async def check() -> bool:
            owner = wanted.split("/", 1)[0]
            query = urlencode({"role": "contributor", "q": f'full_name="{wanted}"', "pagelen": 100})
            url = f"{self.api_url}/2.0/repositories/{quote(owner, safe='')}?{query}"
            repositories = await self._list(url, session, "Bitbucket's repositories")
            return any(
                isinstance(r.get("full_name"), str) and r["full_name"].lower() == wanted.lower()
                for r in repositories
            )

        return await self._remembered_access(session, wanted, check)

    # --- API helpers --------------------------------------------------------------------

    async def _list(self, url: str, session: Session, what: str) -> list[Mapping[str, Any]]:
        """Every ``values`` entry of a paged listing, following ``next`` on the API's host."""

        async def read_page(page_url: str) -> tuple[list[Any], str | None]:
            _, page = await self.api_get(page_url, session, what=what)
            if not isinstance(page, dict) or not isinstance(page.get("values"), list):
                raise ProviderError(f"{self.id}: {what} ({page_url}) did not answer a page")
            found = page.get("next")
            return page["values"], found if isinstance(found, str) and found else None

        return await self.paged(url, what, read_page, origin=self.api_url)


factory = OAuth2ProviderFactory("bitbucket", BitbucketProvider)
