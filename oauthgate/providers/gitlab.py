"""GitLab (``--provider=gitlab``): OpenID Connect against gitlab.com or your own GitLab.

``oidc_issuer_url`` is the GitLab base URL (``https://gitlab.com`` when not set);
endpoints come from its discovery document. The login is verified as for any OpenID
Connect provider (the id_token's signature, issuer, audience, expiry and nonce); then
GitLab's userinfo endpoint (``<base>/oauth/userinfo``) gives the identity, as in
oauth2-proxy:

- the user is ``nickname`` (the GitLab username), the email ``email``, which must be
  ``email_verified`` (unless ``insecure_oidc_allow_unverified_email``), and the groups
  ``groups`` (full paths, ``group/subgroup``);
- for each ``gitlab_projects`` entry ``group/project[=level]`` the project is read with
  ``GET <base>/api/v4/projects/<url-encoded path>``; a user whose access level
  (``permissions.project_access`` or ``group_access``, the higher) is at least ``level``
  (default 20, reporter) on a project that is not archived gets the group
  ``project:group/project``.

``gitlab_groups`` and ``gitlab_projects`` are enforced on every request
(:meth:`GitLabProvider.authorize`): with either set, a user must have one of those
groups (GHSA-652x-m2gr-hppm: oauth2-proxy 7.0.0 silently did not). The scope is
``openid email``, plus ``read_api`` when projects are set. Sessions refresh with the
refresh_token grant, and each refresh reads the identity, groups and projects again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import attrs
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from oauthgate.config.options import Config
from oauthgate.errors import ConfigError, ProviderError, RefreshError, TokenError
from oauthgate.interfaces import IProviderFactory
from oauthgate.providers.claims import coerce_groups
from oauthgate.providers.jwks import bearer_headers, fetch
from oauthgate.providers.oidc import (
    OIDCProvider,
    _Discovered,
)
from oauthgate.session import Session

__all__ = [
    "ACCESS_LEVELS",
    "DEFAULT_BASE_URL",
    "DEFAULT_SCOPE",
    "PROJECT_PREFIX",
    "GitLabProject",
    "GitLabProvider",
    "GitLabProviderFactory",
    "factory",
    "gitlab_config",
    "parse_project",
]

DEFAULT_BASE_URL = "https://gitlab.com"
DEFAULT_SCOPE = "openid email"
PROJECT_PREFIX = "project:"
"""Groups that stand for access to a GitLab project start with this."""
ACCESS_LEVELS = (10, 20, 30, 40)
"""GitLab's access levels a project rule may ask for: guest, reporter, developer, maintainer."""
DEFAULT_ACCESS_LEVEL = 20


@attrs.frozen
class GitLabProject:
    """One ``gitlab_projects`` entry: the project's full path and the access level it needs."""

    path: str
    access_level: int = DEFAULT_ACCESS_LEVEL

    @property
    def group(self) -> str:
        """The session group a user with enough access to this project gets."""
        return PROJECT_PREFIX + self.path


def parse_project(entry: str) -> GitLabProject:
    """``group/project[=level]`` as a :class:`GitLabProject`. Raises ValueError if malformed."""
    path, sep, level_text = entry.strip().partition("=")
    path = path.strip().strip("/")
    if not path or "/" not in path:
        raise ValueError(f"must be group/project[=access level], got {entry!r}")
    if not sep:
        return GitLabProject(path)
    try:
        level = int(level_text.strip())
    except ValueError:
        raise ValueError(f"access level must be a number, got {entry!r}") from None
    if level not in ACCESS_LEVELS:
        allowed = ", ".join(map(str, ACCESS_LEVELS))
        raise ValueError(f"access level must be one of {allowed}, got {entry!r}")
    return GitLabProject(path, level)


def _scope(config: Config) -> str:
    scope = config.scope or DEFAULT_SCOPE
    if [p for p in config.gitlab_projects if p.strip()] and "read_api" not in scope.split():
        scope += " read_api"
    return scope


def gitlab_config(config: Config) -> Config:
    """``config`` with GitLab's defaults filled in: the issuer (gitlab.com) and the scope."""
    return attrs.evolve(
        config,
        oidc_issuer_url=config.oidc_issuer_url or DEFAULT_BASE_URL,
        scope=_scope(config),
    )


class GitLabProvider(OIDCProvider):
    """OpenID Connect against GitLab; identity, groups and project access from its APIs.

    Build it with :data:`factory` (or pass a configuration through :func:`gitlab_config`).
    """

    id: ClassVar[str] = "gitlab"
    default_display_name: ClassVar[str] = "GitLab"

    @classmethod
    def check_config(cls, config: Config) -> list[str]:
        problems = super().check_config(config)
        for entry in config.gitlab_projects:
            if entry.strip():
                try:
                    parse_project(entry)
                except ValueError as e:
                    problems.append(f"gitlab_projects: {e}")
        return problems

    @property
    def base_url(self) -> str:
        return self._config.oidc_issuer_url.rstrip("/")

    @property
    def projects(self) -> tuple[GitLabProject, ...]:
        return tuple(parse_project(p) for p in self._config.gitlab_projects if p.strip())

    def allowed_groups(self) -> frozenset[str]:
        """The groups of which a user needs one: ``gitlab_groups`` and the projects' groups."""
        groups = {g.strip() for g in self._config.gitlab_groups if g.strip()}
        groups.update(p.group for p in self.projects)
        return frozenset(groups)

    # --- the id_token says who; userinfo says the rest -----------------------------------

    def _identity(self, claims: Mapping[str, Any]) -> dict[str, Any]:
        """Only the subject: the identity comes from userinfo in :meth:`enrich`."""
        return {"user": claims["sub"], "email": "", "groups": (), "preferred_username": ""}

    async def enrich(self, session: Session) -> Session:
        """The user, email, groups and project groups from GitLab's APIs (once).

        A session that has an email was enriched already and is returned as it is.

        Raises:
            TokenError: GitLab says the email is not verified.
            ProviderError: userinfo failed, answered for another user, or gave no email.
        """
        if session.email:
            return session
        discovered = await self._endpoints()
        identity = await self._read_identity(discovered, session.access_token, session.user)
        return await self._with_identity(session, identity)

    async def _refreshed_session(
        self,
        discovered: _Discovered,
        session: Session,
        tokens: Mapping[str, Any],
        access_token: str,
    ) -> Session:
        """The identity read again after the refresh_token grant (see :meth:`refresh`).

        Groups and project access follow GitLab: one taken away is gone after the
        refresh. If userinfo cannot be read after a successful token refresh, the new
        tokens are kept with the previous identity (logged).

        Raises:
            RefreshError: ``fatal`` when the refreshed identity is another user's or has
                an unverified email; not fatal when the new id_token is rejected.
        """
        now = self._clock.seconds()
        refresh_token = tokens.get("refresh_token")
        id_token = tokens.get("id_token")
        claims: dict[str, Any] | None = None
        if isinstance(id_token, str) and id_token:
            try:
                claims = await self._verify_id_token(discovered, id_token, None)
            except ProviderError as e:
                raise RefreshError(
                    f"the refreshed id_token was rejected: {e}", fatal=False
                ) from None
        refreshed = attrs.evolve(
            session,
            access_token=access_token,
            refresh_token=refresh_token
            if isinstance(refresh_token, str) and refresh_token
            else session.refresh_token,
            id_token=id_token if isinstance(id_token, str) and id_token else session.id_token,
            created_at=now,
            expires_on=self._expires_on(tokens, claims, now),
        )
        try:
            identity = await self._read_identity(
                discovered, access_token, claims["sub"] if claims is not None else None
            )
        except TokenError as e:
            raise RefreshError(str(e), fatal=True) from None
        except ProviderError as e:
            self.log.warn(
                "{provider}: keeping the previous identity of {user} after a refresh: {reason}",
                provider=self.id,
                user=session.user,
                reason=str(e),
            )
            return refreshed
        if identity["user"] != session.user:
            raise RefreshError("the refreshed tokens are for another user", fatal=True)
        return await self._with_identity(refreshed, identity)

    async def authorize(self, session: Session) -> bool:
        """With ``gitlab_groups`` or ``gitlab_projects`` set, the user needs one of them."""
        allowed = self.allowed_groups()
        if not allowed or not allowed.isdisjoint(session.groups):
            return True
        self.log.info(
            "{provider}: refused {user}: in none of the groups and projects {allowed}",
            provider=self.id,
            user=session.user,
            allowed=", ".join(sorted(allowed)),
        )
        return False

    # --- helpers ------------------------------------------------------------------------

    async def _with_identity(self, session: Session, identity: dict[str, Any]) -> Session:
        projects = await self._project_groups(session.access_token)
        groups = tuple(dict.fromkeys((*identity["groups"], *projects)))
        return attrs.evolve(session, **{**identity, "groups": groups})

    async def _read_identity(
        self, discovered: _Discovered, access_token: str, subject: str | None
    ) -> dict[str, Any]:
        """``user``, ``email``, ``groups``, ``preferred_username`` from GitLab's userinfo.

        ``subject``, when known, must be the answer's ``sub``.

        Raises:
            TokenError: the email is not verified (and that is not allowed).
            ProviderError: the request failed, the answer is for another user, or
                it has no email.
        """
        url = discovered.endpoints.profile or self.base_url + "/oauth/userinfo"
        result = await fetch(
            self._http_client,
            self._clock,
            "GET",
            url,
            what="GitLab's userinfo endpoint",
            headers=bearer_headers(access_token),
        )
        if result.code != 200:
            raise ProviderError(f"GitLab's userinfo endpoint ({url}) answered HTTP {result.code}")
        claims = result.json("GitLab's userinfo endpoint", url)
        if not isinstance(claims, dict):
            raise ProviderError(f"GitLab's userinfo endpoint ({url}) did not answer an object")
        sub = claims.get("sub")
        if not isinstance(sub, str | int) or isinstance(sub, bool) or not str(sub):
            raise ProviderError(f"GitLab's userinfo endpoint ({url}) answered without a sub")
        if subject is not None and str(sub) != subject:
            raise ProviderError(f"GitLab's userinfo endpoint ({url}) answered for another user")
        email = claims.get("email")
        if not isinstance(email, str) or not email:
            raise ProviderError("GitLab gave no email address for this user")
        if (
            claims.get("email_verified") is not True
            and not self._config.insecure_oidc_allow_unverified_email
        ):
            raise TokenError("the GitLab email address is not verified")
        nickname = claims.get("nickname")
        user = nickname if isinstance(nickname, str) and nickname else str(sub)
        preferred = claims.get("preferred_username")
        return {
            "user": user,
            "email": email,
            "groups": coerce_groups(claims.get("groups")),
            "preferred_username": preferred if isinstance(preferred, str) and preferred else user,
        }

    async def _project_groups(self, access_token: str) -> tuple[str, ...]:
        """``project:<path>`` for each configured project the user has enough access to.

        A project that cannot be read (not found, no access, GitLab failing) gives no
        group: it can only deny, never admit.
        """
        groups = []
        for project in self.projects:
            url = f"{self.base_url}/api/v4/projects/{quote(project.path, safe='')}"
            try:
                result = await fetch(
                    self._http_client,
                    self._clock,
                    "GET",
                    url,
                    what="GitLab's projects API",
                    headers=bearer_headers(access_token),
                )
                info = result.json("GitLab's projects API", url) if result.code == 200 else None
            except ProviderError as e:
                self.log.error(
                    "{provider}: cannot read project {project}: {reason}",
                    provider=self.id,
                    project=project.path,
                    reason=str(e),
                )
                continue
            if not isinstance(info, dict):
                self.log.warn(
                    "{provider}: project {project} answered HTTP {status}; no access",
                    provider=self.id,
                    project=project.path,
                    status=result.code,
                )
                continue
            if info.get("archived") is True:
                self.log.warn(
                    "{provider}: project {project} is archived; no access",
                    provider=self.id,
                    project=project.path,
                )
                continue
            level = _access_level(info.get("permissions"))
            if level >= project.access_level:
                groups.append(project.group)
            else:
                self.log.info(
                    "{provider}: access level {access} to {project} is below {required}",
                    provider=self.id,
                    access=level,
                    project=project.path,
                    required=project.access_level,
                )
        return tuple(groups)


def _access_level(permissions: Any) -> int:
    """The higher of a project's ``project_access`` and ``group_access`` levels (0: none)."""
    if not isinstance(permissions, dict):
        return 0
    return max(_levels(permissions.get(k) for k in ("project_access", "group_access")), default=0)


def _levels(entries: Iterable[Any]) -> list[int]:
    levels = []
    for entry in entries:
        if isinstance(entry, dict):
            level = entry.get("access_level")
            if isinstance(level, int) and not isinstance(level, bool):
                levels.append(level)
    return levels


@implementer(IProviderFactory)
@attrs.frozen
class GitLabProviderFactory:
    """Builds a :class:`GitLabProvider` with GitLab's defaults, after checking its options."""

    name: str = "gitlab"
    provider_class: type[GitLabProvider] = GitLabProvider

    def build(self, config: Any, http_client: Any, clock: IReactorTime) -> GitLabProvider:
        config = gitlab_config(config)
        problems = self.provider_class.check_config(config)
        if problems:
            raise ConfigError(problems)
        return self.provider_class(config, http_client, clock)


factory = GitLabProviderFactory()
