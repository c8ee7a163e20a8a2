"""GitHub (``--provider=github``), GitHub Enterprise, and Gitea / Forgejo through its URLs.

Plain OAuth 2.0: the login and token endpoints are GitHub's (or ``login_url`` and
``redeem_url``), and the identity comes from GitHub's REST API, whose base is
``validate_url`` (``https://api.github.com/`` by default; ``https://ghe.example.com/api/v3``
for GitHub Enterprise; ``https://gitea.example.com/api/v1`` for Gitea and Forgejo):

- the user is ``login`` from ``GET /user``;
- the email is the address both primary and verified in ``GET /user/emails``;
- the groups are the user's organizations (``GET /user/orgs``: ``login``, or Gitea's
  ``name``) and teams as ``org:team-slug`` (``GET /user/teams``), every page followed
  through the ``Link: <...>; rel="next"`` header.

Access rules, checked on every request (``authorize``): ``github_users`` always pass;
otherwise each configured rule must hold: ``github_org`` (membership), ``github_team``
(one of the teams, of ``github_org`` or given as ``org:team``), ``github_repo`` (push
access, or pull access to a private repository; with ``github_token``, being a
collaborator). Organization and team rules read the session's groups; repository
rules ask the API, at most every :data:`ACCESS_RECHECK` seconds per session.

API requests carry ``Authorization: token <access token>`` and ``Accept:
application/vnd.github.v3+json``. Tokens are never logged, and never sent to a host
other than the API's (pagination links elsewhere are not followed). GitHub has no
refresh: a session lasts until its cookie expires.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import attrs
from twisted.internet.defer import Deferred

from oauthgate.config.options import Config
from oauthgate.errors import ProviderError
from oauthgate.providers.jwks import HTTPClientLike, HTTPResult, fetch
from oauthgate.providers.oauth2 import (
    ACCESS_RECHECK,
    MAX_PAGES,
    AccessMemo,
    OAuth2Provider,
    OAuth2ProviderFactory,
)
from oauthgate.session import Session

__all__ = [
    "ACCESS_RECHECK",
    "DEFAULT_API_URL",
    "MAX_PAGES",
    "AccessMemo",
    "GitHubProvider",
    "api_base",
    "factory",
    "next_link",
]

DEFAULT_API_URL = "https://api.github.com/"
_ACCEPT = b"application/vnd.github.v3+json"
_LINK_ENTRY = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]*)*)")
_REL = re.compile(r"""rel\s*=\s*"?([^";]*)"?""", re.IGNORECASE)


def api_base(validate_url: str) -> str:
    """The REST API base for ``validate_url``, without a trailing slash.

    oauth2-proxy's documented values all work: ``https://api.github.com/``,
    ``https://ghe.example.com/api/v3`` and Gitea's ``.../api/v1/user/emails``.
    """
    base = (validate_url or DEFAULT_API_URL).rstrip("/")
    for suffix in ("/user/emails", "/user"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def next_link(header: str | None) -> str | None:
    """The ``rel="next"`` URL of an RFC 8288 ``Link`` header, if any."""
    if not header:
        return None
    for match in _LINK_ENTRY.finditer(header):
        for rel in _REL.findall(match.group(2)):
            if "next" in rel.lower().split():
                return match.group(1).strip()
    return None


@attrs.define
class _HeaderKeeper:
    """Passes requests to ``client`` and keeps the last response's headers (for ``Link``)."""

    _client: HTTPClientLike
    headers: Any = None

    def get(self, url: str, **kwargs: Any) -> Deferred[Any]:
        return self._client.get(url, **kwargs).addCallback(self._keep)

    def post(self, url: str, data: Any = None, **kwargs: Any) -> Deferred[Any]:
        return self._client.post(url, data, **kwargs).addCallback(self._keep)

    def _keep(self, response: Any) -> Any:
        self.headers = response.headers
        return response


def _csv(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


@attrs.define
class GitHubProvider(OAuth2Provider):
    """GitHub, GitHub Enterprise, Gitea and Forgejo (see the module docstring)."""

    id: ClassVar[str] = "github"
    default_display_name: ClassVar[str] = "GitHub"
    default_login_url: ClassVar[str] = "https://github.com/login/oauth/authorize"
    default_redeem_url: ClassVar[str] = "https://github.com/login/oauth/access_token"
    default_validate_url: ClassVar[str] = DEFAULT_API_URL
    default_scope: ClassVar[str] = "user:email read:org"
    client_auth: ClassVar[str] = "post"
    supports_refresh: ClassVar[bool] = False

    @classmethod
    def check_config(cls, config: Config) -> list[str]:
        problems = super().check_config(config)
        if config.github_team and not config.github_org:
            bare = [t for t in _csv(config.github_team) if ":" not in t]
            if bare:
                problems.append(
                    "github_team: without github_org each team must be given as org:team, "
                    f"got {', '.join(bare)}"
                )
        if config.github_repo and not re.fullmatch(r"[^/\s]+/[^/\s]+", config.github_repo):
            problems.append(f"github_repo: must be owner/repo, got {config.github_repo!r}")
        if config.github_token and not config.github_repo:
            problems.append("github_token: is only used with github_repo; set github_repo")
        return problems

    @property
    def api_url(self) -> str:
        """The REST API base, without a trailing slash."""
        return api_base(self._config.validate_url or self.default_validate_url)

    # --- identity -----------------------------------------------------------------------

    async def identity(self, session: Session) -> dict[str, Any]:
        """``user`` (login), ``email`` (primary and verified) and ``groups`` (orgs, teams).

        Raises ProviderError when ``/user`` or ``/user/emails`` fails, or when the org or
        team listing fails while an org or team rule depends on it.
        """
        token = session.access_token
        user = await self._get_json(self.api_url + "/user", token, what="GitHub's /user")
        login = user.get("login") if isinstance(user, dict) else None
        if not isinstance(login, str) or not login:
            raise ProviderError(f"{self.id}: /user answered without a login")
        emails = await self._get_json(
            self.api_url + "/user/emails", token, what="GitHub's /user/emails"
        )
        email = ""
        for entry in emails if isinstance(emails, list) else []:
            if (
                isinstance(entry, dict)
                and entry.get("primary") is True
                and entry.get("verified") is True
                and isinstance(entry.get("email"), str)
            ):
                email = entry["email"]
                break
        if not email:
            self.log.warn(
                "{provider}: {login} has no primary verified email address",
                provider=self.id,
                login=login,
            )
        try:
            groups = await self._groups(token)
        except ProviderError as e:
            if self._config.github_org or self._config.github_team:
                raise
            self.log.warn(
                "{provider}: not using the organizations and teams of {login}: {error}",
                provider=self.id,
                login=login,
                error=str(e),
            )
            groups = ()
        return {"user": login, "email": email, "groups": groups}

    async def _groups(self, token: str) -> tuple[str, ...]:
        groups: list[str] = []
        for org in await self._list(self.api_url + "/user/orgs", token, "GitHub's /user/orgs"):
            name = org.get("login") or org.get("name")
            if isinstance(name, str) and name:
                groups.append(name)
        for team in await self._list(self.api_url + "/user/teams", token, "GitHub's /user/teams"):
            owner = team.get("organization")
            org_name = (
                (owner.get("login") or owner.get("name")) if isinstance(owner, dict) else None
            )
            slug = team.get("slug") or team.get("name")
            if isinstance(org_name, str) and org_name and isinstance(slug, str) and slug:
                groups.append(f"{org_name}:{slug}")
        return tuple(dict.fromkeys(groups))

    # --- access rules -------------------------------------------------------------------

    async def check_access(self, session: Session) -> bool:
        """The org, team, repository and user rules (see the module docstring)."""
        config = self._config
        users = {u.strip().lower() for u in config.github_users if u.strip()}
        if session.user and session.user.lower() in users:
            return True
        rules = bool(config.github_org or config.github_team or config.github_repo)
        if not rules:
            if users:
                self._refused(session, "not one of github_users")
            return not users
        groups = {g.lower() for g in session.groups}
        if config.github_org or config.github_team:
            wanted = self._wanted_groups()
            if groups.isdisjoint(wanted):
                self._refused(session, "not in " + ", ".join(sorted(wanted)))
                return False
        if config.github_repo and not await self._repo_access(session):
            self._refused(session, f"no access to {config.github_repo}")
            return False
        return True

    def _wanted_groups(self) -> frozenset[str]:
        """The groups (lower case) of which one admits: the org, or one of the teams."""
        org = self._config.github_org.strip()
        teams = _csv(self._config.github_team)
        if not teams:
            return frozenset({org.lower()})
        return frozenset((t if ":" in t else f"{org}:{t}").lower() for t in teams)

    async def _repo_access(self, session: Session) -> bool:
        """Whether ``session``'s user may use ``github_repo`` (fails closed on API errors)."""

        async def check() -> bool:
            if self._config.github_token:
                return await self._is_collaborator(session.user)
            return await self._has_repo_permission(session.access_token)

        return await self._remembered_access(session, self._config.github_repo, check)

    async def _has_repo_permission(self, token: str) -> bool:
        repo = self._config.github_repo
        url = f"{self.api_url}/repos/{quote(repo, safe='/')}"
        result = await self._get(url, token, what="GitHub's /repos")
        if result.code == 404:  # private and invisible to this user, or no such repository
            return False
        info = self._json(result, url, "GitHub's /repos")
        permissions = info.get("permissions") if isinstance(info, dict) else None
        if not isinstance(permissions, dict):
            return False
        if permissions.get("push") is True:
            return True
        return info.get("private") is True and permissions.get("pull") is True

    async def _is_collaborator(self, login: str) -> bool:
        repo = self._config.github_repo
        url = f"{self.api_url}/repos/{quote(repo, safe='/')}/collaborators/{quote(login, safe='')}"
        result = await self._get(
            url, self._config.github_token, what="GitHub's /repos/.../collaborators"
        )
        if result.code == 204:
            return True
        if result.code == 404:
            return False
        raise ProviderError(f"{self.id}: {url} answered HTTP {result.code}")

    # --- API helpers --------------------------------------------------------------------

    async def _get(
        self, url: str, token: str, *, what: str, keeper: _HeaderKeeper | None = None
    ) -> HTTPResult:
        """GET ``url`` with ``token``; the HTTPResult whatever its status."""
        headers = {
            b"Accept": [_ACCEPT],
            b"Authorization": [b"token " + token.encode("utf-8")],
        }
        client: HTTPClientLike = keeper if keeper is not None else self._http_client
        return await fetch(client, self._clock, "GET", url, what=what, headers=headers)

    def _json(self, result: HTTPResult, url: str, what: str) -> Any:
        if result.code != 200:
            raise ProviderError(f"{self.id}: {what} ({url}) answered HTTP {result.code}")
        return result.json(what, url)

    async def _get_json(self, url: str, token: str, *, what: str) -> Any:
        return self._json(await self._get(url, token, what=what), url, what)

    async def _list(self, url: str, token: str, what: str) -> list[Mapping[str, Any]]:
        """Every entry of a paged listing, following ``Link: rel="next"`` on the API's host."""

        async def read_page(page_url: str) -> tuple[list[Any], str | None]:
            keeper = _HeaderKeeper(self._http_client)
            result = await self._get(page_url, token, what=what, keeper=keeper)
            page = self._json(result, page_url, what)
            if not isinstance(page, list):
                raise ProviderError(f"{self.id}: {what} ({page_url}) did not answer a list")
            link = keeper.headers.getRawHeaders(b"link", [b""])[0] if keeper.headers else b""
            return page, next_link(link.decode("latin-1"))

        return await self.paged(url + "?per_page=100", what, read_page, origin=self.api_url)


factory = OAuth2ProviderFactory("github", GitHubProvider)
