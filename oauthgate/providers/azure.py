"""Azure AD (``--provider=azure``, deprecated: prefer ``entra-id``).

Two modes, as in oauth2-proxy:

- **v1** (no ``--oidc-issuer-url``): the fixed endpoints of ``--azure-tenant``
  (``https://login.microsoftonline.com/<tenant>/oauth2/authorize`` and ``/oauth2/token``,
  keys at ``/discovery/keys``), with the ``resource`` parameter (``--resource``, default
  ``https://graph.microsoft.com``). id_tokens come from ``https://sts.windows.net/<tid>/``.
- **v2** (``--oidc-issuer-url=https://login.microsoftonline.com/<tenant>/v2.0``):
  discovery, and the groups are always read from Microsoft Graph
  (``/v1.0/me/transitiveMemberOf``, security groups, ``ConsistencyLevel: eventual``),
  each named by ``--azure-graph-group-field`` (``id`` or ``displayName``); the scope
  asks for Graph (``https://graph.microsoft.com/.default``) and never for ``groups``.

Every id_token is verified against the tenant's keys; with a multi-tenant tenant
(``common``, ``organizations``) its issuer must be the one of its own ``tid``, as for
``entra-id``. The email is the ``email`` claim, else ``upn``, else Graph's
``/v1.0/me`` (``mail``, then ``userPrincipalName``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import attrs

from oauthgate.config.options import Config
from oauthgate.errors import ProviderError
from oauthgate.providers.claims import get_claim
from oauthgate.providers.entra import (
    GRAPH_URL,
    LOGIN_URL,
    MULTI_TENANTS,
    EntraIDProvider,
    EntraIDProviderFactory,
    graph_groups,
)
from oauthgate.providers.jwks import bearer_headers, fetch
from oauthgate.providers.oidc import Endpoints
from oauthgate.session import Session

__all__ = ["AzureProvider", "factory"]

V1_ISSUER = re.compile(r"^https://sts\.windows\.net/([a-zA-Z0-9-]+)/$")
_GRAPH_DEFAULT_SCOPE = GRAPH_URL + "/.default"
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


@attrs.define
class AzureProvider(EntraIDProvider):
    """Azure AD, v1 endpoints by default, v2 with an issuer URL (see the module docs)."""

    id: ClassVar[str] = "azure"
    default_display_name: ClassVar[str] = "Azure"

    @classmethod
    def check_config(cls, config: Config) -> list[str]:
        problems = []
        if not config.client_id:
            problems.append(f"client_id: required for --provider={cls.id}")
        if not config.azure_tenant.strip() or "/" in config.azure_tenant:
            problems.append(
                "azure_tenant: must be a tenant id or domain, common or organizations, "
                f"got {config.azure_tenant!r}"
            )
        if not config.azure_graph_group_field.strip():
            problems.append("azure_graph_group_field: must name a Graph group field, e.g. id")
        if config.code_challenge_method not in ("", "S256", "plain"):
            problems.append(
                f"code_challenge_method: must be S256, plain or empty, got "
                f"{config.code_challenge_method!r}"
            )
        if config.skip_oidc_discovery and config.oidc_issuer_url:
            for key in ("login_url", "redeem_url", "oidc_jwks_url"):
                if not getattr(config, key):
                    problems.append(f"{key}: required when skip_oidc_discovery is set")
        return problems

    # --- mode ---------------------------------------------------------------------------

    @property
    def v2(self) -> bool:
        """True when the v2.0 endpoints are used (an issuer URL or login URL says so)."""
        config = self._config
        return "/v2.0" in config.oidc_issuer_url or "/v2.0/" in config.login_url

    def _issuer_pattern(self) -> re.Pattern[str]:
        return super()._issuer_pattern() if self.v2 else V1_ISSUER

    def _tenant(self) -> str:
        return self._config.azure_tenant.strip() or "common"

    def _configured_tenant(self) -> str:
        config = self._config
        if config.oidc_issuer_url:
            if self.v2:
                return super()._configured_tenant()
            match = V1_ISSUER.match(config.oidc_issuer_url)
            return match.group(1).lower() if match else ""
        tenant = self._tenant().lower()
        # A tenant given by domain name cannot be compared to the id in tokens: its
        # tokens are checked as a multi-tenant's are, against their own tid.
        return tenant if _GUID.match(tenant) else "{tenantid}"

    def _multi_tenant(self) -> bool:
        return self._configured_tenant() in MULTI_TENANTS

    def _configured_issuer(self) -> str:
        if self._multi_tenant():
            return ""
        if self._config.oidc_issuer_url:
            return self._config.oidc_issuer_url
        return f"https://sts.windows.net/{self._configured_tenant()}/"

    def _issuer_for_tenant(self, tenant: str) -> str:
        if self.v2:
            return super()._issuer_for_tenant(tenant)
        return f"https://sts.windows.net/{tenant}/"

    async def _fetch_discovery(self) -> Endpoints:
        """Discovery with an issuer URL; otherwise the tenant's v1 endpoints."""
        config = self._config
        if config.oidc_issuer_url:
            return await super()._fetch_discovery()
        base = f"{LOGIN_URL}/{quote(self._tenant(), safe='')}"
        return Endpoints(
            login=config.login_url or f"{base}/oauth2/authorize",
            redeem=config.redeem_url or f"{base}/oauth2/token",
            jwks=config.oidc_jwks_url or f"{base}/discovery/keys",
            profile=config.profile_url or f"{GRAPH_URL}/v1.0/me",
        )

    # --- login --------------------------------------------------------------------------

    def _resource(self) -> str:
        return self._config.resource or GRAPH_URL

    def _scope(self) -> str:
        if not self.v2:
            return self._config.scope or "openid"
        given = self._config.scope or "openid email profile offline_access"
        scopes = [s for s in given.split() if s != "groups"]
        if not any(s.startswith(GRAPH_URL + "/") for s in scopes):
            scopes.append(_GRAPH_DEFAULT_SCOPE)
        return " ".join(scopes)

    def _extra_login_params(self) -> list[tuple[str, str]]:
        params = super()._extra_login_params()
        if not self.v2:
            params.append(("resource", self._resource()))
        return params

    async def _token_request(self, url: str, form: list[tuple[str, str]]) -> dict[str, Any]:
        if not self.v2:
            form = [*form, ("resource", self._resource())]
        return await super()._token_request(url, form)

    # --- identity -----------------------------------------------------------------------

    def _identity(self, claims: Mapping[str, Any]) -> dict[str, Any]:
        """As OIDC, with ``upn`` when there is no email; with v2 the groups are Graph's only."""
        identity = super()._identity(claims)
        if self.v2:
            identity["groups"] = ()
        if not identity["email"]:
            upn = claims.get("upn")
            identity["email"] = upn if isinstance(upn, str) else ""
        return identity

    async def enrich(self, session: Session) -> Session:
        """Graph groups (v2, or a v1 group overage), then the email from Graph's ``/me``
        if the id_token had none.

        Raises ProviderError when Graph fails or no email is found.
        """
        if not session.groups and self._needs_graph_groups(session):
            session = attrs.evolve(session, groups=await self._graph_groups(session))
        if not session.email and session.access_token:
            session = attrs.evolve(session, email=await self._graph_email(session))
        if not session.email:
            raise ProviderError("neither the id_token nor Microsoft Graph gave an email")
        return session

    def _needs_graph_groups(self, session: Session) -> bool:
        return self.v2 or super()._needs_graph_groups(session)

    async def _graph_groups(self, session: Session) -> tuple[str, ...]:
        if not self.v2:
            return await super()._graph_groups(session)
        if not session.access_token:
            raise ProviderError("no access token to read the groups from Microsoft Graph")
        field = self._config.azure_graph_group_field.strip()
        select = ",".join(dict.fromkeys(("displayName", "id", field)))
        url = (
            f"{GRAPH_URL}/v1.0/me/transitiveMemberOf?$count=true"
            f"&$filter=securityEnabled%20eq%20true&$select={quote(select, safe=',')}"
        )
        return await graph_groups(
            self._http_client,
            self._clock,
            url,
            session.access_token,
            field=field,
            headers={b"ConsistencyLevel": [b"eventual"]},
        )

    async def _graph_email(self, session: Session) -> str:
        discovered = await self._endpoints()
        url = discovered.endpoints.profile or f"{GRAPH_URL}/v1.0/me"
        result = await fetch(
            self._http_client,
            self._clock,
            "GET",
            url,
            what="Microsoft Graph /me",
            headers=bearer_headers(session.access_token),
        )
        if result.code != 200:
            raise ProviderError(f"Microsoft Graph /me ({url}) answered HTTP {result.code}")
        me = result.json("Microsoft Graph /me", url)
        if not isinstance(me, dict):
            return ""
        for key in ("mail", "userPrincipalName"):
            value = get_claim(me, key)
            if isinstance(value, str) and value:
                return value
        return ""


factory = EntraIDProviderFactory("azure", AzureProvider)
