"""Microsoft Entra ID (``--provider=entra-id``): OpenID Connect against the v2.0 endpoints.

Everything :class:`~oauthgate.providers.oidc.OIDCProvider` does, with what Microsoft
needs on top:

- **Multi-tenant issuers.** With the issuer ``https://login.microsoftonline.com/<tenant>/v2.0``
  of one tenant, the id_token's ``iss`` must be exactly that. With ``common``,
  ``organizations`` or ``consumers`` (a multi-tenant app), each tenant signs with its own
  issuer, so the ``iss`` must be ``https://login.microsoftonline.com/<tid>/v2.0`` where
  ``<tid>`` is the token's own ``tid`` claim (what Microsoft documents), never "any
  issuer". ``--entra-id-allowed-tenant`` then limits the tenants (from the ``iss``).
- **Group overage.** The id_token carries at most 200 groups; beyond that it carries
  ``_claim_names.groups`` instead, and the groups are read from Microsoft Graph
  (``/v1.0/me/transitiveMemberOf``, paged through ``@odata.nextLink``).
- **Workload identity** (``--entra-id-federated-token-auth``): the client authenticates
  with the Kubernetes-projected token in ``AZURE_FEDERATED_TOKEN_FILE`` as a
  ``client_assertion`` instead of a client secret.

Graph access tokens are sent only to ``https://graph.microsoft.com``: a ``nextLink``
pointing anywhere else is refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

import attrs
import jwt
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from oauthgate.config.options import Config
from oauthgate.errors import ConfigError, ProviderError, RefreshError, TokenError
from oauthgate.interfaces import IProviderFactory
from oauthgate.providers.jwks import HTTPClientLike, fetch
from oauthgate.providers.oidc import OIDCProvider, _printable, _same_issuer
from oauthgate.session import Session

__all__ = [
    "CLIENT_ASSERTION_TYPE",
    "FEDERATED_TOKEN_FILE_ENV",
    "GRAPH_URL",
    "LOGIN_URL",
    "MULTI_TENANTS",
    "EntraIDProvider",
    "EntraIDProviderFactory",
    "factory",
    "graph_groups",
]

LOGIN_URL = "https://login.microsoftonline.com"
GRAPH_URL = "https://graph.microsoft.com"
MULTI_TENANTS = frozenset({"common", "organizations", "consumers", "{tenantid}"})
"""Tenant path segments that stand for "whichever tenant the user signs in with"."""
FEDERATED_TOKEN_FILE_ENV = "AZURE_FEDERATED_TOKEN_FILE"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

V2_ISSUER = re.compile(r"^https://login\.microsoftonline\.com/([a-zA-Z0-9-]+)/v2\.0$")
_CONFIGURED_V2_ISSUER = re.compile(
    r"^https://login\.microsoftonline\.com/([^/]+)/v2\.0$", re.IGNORECASE
)
_DEFAULT_SCOPE = "openid email profile offline_access"
_MAX_GRAPH_PAGES = 100  # 100 pages of up to 100 groups: a loop guard, not a real limit
_ASSERTION_MARGIN = 300.0  # re-read the federated token this many seconds before it expires


async def graph_groups(
    http_client: HTTPClientLike,
    clock: IReactorTime,
    url: str,
    access_token: str,
    *,
    field: str = "id",
    headers: Mapping[bytes, list[bytes]] | None = None,
) -> tuple[str, ...]:
    """The groups Microsoft Graph lists at ``url`` (and its ``@odata.nextLink`` pages).

    Each group is named by its ``field`` (``id``, ``displayName``...); entries that are
    not groups (directory roles) or lack the field are skipped.

    Raises:
        ProviderError: Graph answered an error, something that is not a group list, a
            ``nextLink`` off ``https://graph.microsoft.com``, or too many pages.
    """
    sent = {
        b"Accept": [b"application/json"],
        **(headers or {}),
        b"Authorization": [b"Bearer " + access_token.encode("utf-8")],
    }
    groups: list[str] = []
    next_url: str | None = url
    for _ in range(_MAX_GRAPH_PAGES):
        if next_url is None:
            return tuple(dict.fromkeys(groups))
        if not _is_graph_url(next_url):
            raise ProviderError(
                "Microsoft Graph paged to a link outside https://graph.microsoft.com"
            )
        result = await fetch(
            http_client, clock, "GET", next_url, what="Microsoft Graph", headers=sent
        )
        if result.code != 200:
            raise ProviderError(
                f"Microsoft Graph ({urlsplit(next_url).path}) answered HTTP {result.code}"
            )
        page = result.json("Microsoft Graph", urlsplit(next_url).path)
        entries = page.get("value") if isinstance(page, dict) else None
        if not isinstance(entries, list):
            raise ProviderError("Microsoft Graph answered without a 'value' list")
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            kind = entry.get("@odata.type")
            if kind is not None and kind != "#microsoft.graph.group":
                continue
            value = entry.get(field)
            if isinstance(value, str) and value:
                groups.append(value)
        link = page.get("@odata.nextLink")
        next_url = link if isinstance(link, str) and link else None
    raise ProviderError(f"Microsoft Graph listed more than {_MAX_GRAPH_PAGES} pages of groups")


def _is_graph_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "https" and parts.netloc.lower() == urlsplit(GRAPH_URL).netloc


def _unverified_claims(token: str) -> dict[str, Any]:
    """The payload of a token that was verified before (or is our own credential)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return claims if isinstance(claims, dict) else {}


def has_group_overage(claims: Mapping[str, Any]) -> bool:
    """True when an id_token says its groups did not fit (``_claim_names.groups``)."""
    names = claims.get("_claim_names")
    return isinstance(names, Mapping) and "groups" in names


@attrs.define
class EntraIDProvider(OIDCProvider):
    """OpenID Connect against Microsoft Entra ID, multi-tenant aware.

    ``federated_token_file`` is the path in ``AZURE_FEDERATED_TOKEN_FILE`` (read by the
    factory at start-up), used only with ``--entra-id-federated-token-auth``.
    """

    id: ClassVar[str] = "entra-id"
    default_display_name: ClassVar[str] = "Microsoft Entra ID"

    _federated_token_file: str = attrs.field(default="", kw_only=True)
    _assertion: tuple[str, float | None] | None = attrs.field(default=None, init=False)

    @classmethod
    def check_config(cls, config: Config) -> list[str]:
        problems = super().check_config(config)
        issuer = config.oidc_issuer_url.rstrip("/")
        if issuer and not _CONFIGURED_V2_ISSUER.match(issuer):
            problems.append(
                f"oidc_issuer_url: for --provider={cls.id} use "
                f"https://login.microsoftonline.com/<tenant>/v2.0, got {issuer!r}"
            )
        for tenant in config.entra_id_allowed_tenants:
            if tenant.strip() and not re.fullmatch(r"[a-zA-Z0-9-]+", tenant.strip()):
                problems.append(
                    f"entra_id_allowed_tenants: {tenant!r} is not a tenant id "
                    "(letters, digits and dashes)"
                )
        if config.entra_id_federated_token_auth and config.client_secret:
            problems.append(
                "entra_id_federated_token_auth: the client authenticates with the federated "
                "token; do not set client_secret as well"
            )
        return problems

    # --- tenants and issuers ------------------------------------------------------------

    def _issuer_pattern(self) -> re.Pattern[str]:
        """Tokens' issuers: the tenant is its first group."""
        return V2_ISSUER

    def _configured_tenant(self) -> str:
        """The tenant segment of the configured issuer, lower-cased ('' if none)."""
        match = _CONFIGURED_V2_ISSUER.match(self._config.oidc_issuer_url.rstrip("/"))
        return match.group(1).lower() if match else ""

    def _multi_tenant(self) -> bool:
        return self._configured_tenant() in MULTI_TENANTS

    def _issuer_for_tenant(self, tenant: str) -> str:
        return f"{LOGIN_URL}/{tenant}/v2.0"

    def _configured_issuer(self) -> str:
        """The one issuer tokens must have, or '' for a multi-tenant configuration."""
        return "" if self._multi_tenant() else self._config.oidc_issuer_url

    def _token_tenant(self, claims: Mapping[str, Any]) -> str:
        """The tenant a signature-checked token is from, once its issuer is acceptable.

        Raises TokenError for another issuer, a multi-tenant issuer that is not the
        token's own ``tid``, or a tenant outside ``entra_id_allowed_tenants``.
        """
        config = self._config
        iss = claims.get("iss")
        iss = iss if isinstance(iss, str) else ""
        match = self._issuer_pattern().match(iss)
        tenant = match.group(1).lower() if match else ""
        if not config.insecure_oidc_skip_issuer_verification:
            expected = self._configured_issuer()
            if expected:
                if not _same_issuer(iss, expected):
                    raise TokenError(f"issuer {_printable(iss, 100)!r} is not the configured one")
            else:
                tid = claims.get("tid")
                if not tenant or not isinstance(tid, str) or tid.lower() != tenant:
                    raise TokenError(
                        f"issuer {_printable(iss, 100)!r} is not the issuer of the token's "
                        "tenant (tid)"
                    )
        allowed = {t.strip().lower() for t in config.entra_id_allowed_tenants if t.strip()}
        if allowed and tenant not in allowed:
            raise TokenError(f"tenant {_printable(tenant, 40)!r} is not an allowed tenant")
        return tenant

    def _check_claims(self, claims: Mapping[str, Any], nonce: str | None) -> None:
        """The issuer (and tenant) as :meth:`_token_tenant` says, then the rest as OIDC."""
        self._token_tenant(claims)
        super()._check_claims({**claims, "iss": self._config.oidc_issuer_url}, nonce)

    def _check_discovered_issuer(self, issuer: object, url: str) -> None:
        """A multi-tenant issuer's discovery document names
        ``https://login.microsoftonline.com/{tenantid}/v2.0`` as its issuer."""
        expected = (
            self._issuer_for_tenant("{tenantid}")
            if self._multi_tenant()
            else self._config.oidc_issuer_url
        )
        if not (isinstance(issuer, str) and _same_issuer(issuer, expected)):
            raise ProviderError(
                f"OIDC discovery ({url}) names the issuer {_printable(issuer)!r}, "
                f"expected {expected!r}"
            )

    # --- IProvider ----------------------------------------------------------------------

    def _scope(self) -> str:
        return self._config.scope or _DEFAULT_SCOPE

    def _extra_login_params(self) -> list[tuple[str, str]]:
        """Parameters this provider adds to the login URL (callers' extra_params win)."""
        return [("scope", self._scope())]

    async def authorize_url(
        self,
        state: str,
        nonce: str,
        code_challenge: str | None,
        code_challenge_method: str | None,
        redirect_uri: str,
        extra_params: Sequence[tuple[str, str]],
    ) -> str:
        given = {name for name, _ in extra_params}
        ours = [(n, v) for n, v in self._extra_login_params() if n not in given]
        return await super().authorize_url(
            state,
            nonce,
            code_challenge,
            code_challenge_method,
            redirect_uri,
            [*ours, *extra_params],
        )

    async def enrich(self, session: Session) -> Session:
        """Groups from Graph when the id_token had too many, then as OIDC (userinfo
        for what is missing; an email is required).

        Raises ProviderError when Graph fails: a login never goes on with groups missing.
        """
        if not session.groups and self._needs_graph_groups(session):
            session = attrs.evolve(session, groups=await self._graph_groups(session))
        return await super().enrich(session)

    async def refresh(self, session: Session) -> Session | None:
        """As OIDC, then the groups are read again from Graph when the (new) id_token
        has a group overage. A Graph failure is a non-fatal RefreshError."""
        refreshed = await super().refresh(session)
        if refreshed is None or not self._needs_graph_groups(refreshed):
            return refreshed
        try:
            groups = await self._graph_groups(refreshed)
        except ProviderError as e:
            raise RefreshError(f"groups not read again after a refresh: {e}", fatal=False) from None
        return attrs.evolve(refreshed, groups=groups)

    # --- groups -------------------------------------------------------------------------

    def _needs_graph_groups(self, session: Session) -> bool:
        return bool(session.id_token) and has_group_overage(_unverified_claims(session.id_token))

    async def _graph_groups(self, session: Session) -> tuple[str, ...]:
        if not session.access_token:
            raise ProviderError(
                "the groups did not fit in the id_token and there is no access token"
            )
        return await graph_groups(
            self._http_client,
            self._clock,
            f"{GRAPH_URL}/v1.0/me/transitiveMemberOf?$select=id&$top=100",
            session.access_token,
        )

    # --- client authentication ----------------------------------------------------------

    async def _token_request(self, url: str, form: list[tuple[str, str]]) -> dict[str, Any]:
        if self._config.entra_id_federated_token_auth:
            form = [
                *form,
                ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                ("client_assertion", self._client_assertion()),
            ]
        return await super()._token_request(url, form)

    def _client_assertion(self) -> str:
        """The federated token, re-read from its file once it is near its expiry.

        The kubelet rotates the file well before the token expires, so a token kept
        until ``_ASSERTION_MARGIN`` seconds before its ``exp`` is always a valid one.
        """
        now = self._clock.seconds()
        if self._assertion is not None:
            token, exp = self._assertion
            if exp is not None and now < exp - _ASSERTION_MARGIN:
                return token
        path = self._federated_token_file
        try:
            with open(path, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise ProviderError(
                f"the federated token file {path} cannot be read: {e.strerror}"
            ) from None
        if not token:
            raise ProviderError(f"the federated token file {path} is empty")
        exp = _unverified_claims(token).get("exp")
        self._assertion = (
            token,
            float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None,
        )
        return token


@implementer(IProviderFactory)
@attrs.frozen
class EntraIDProviderFactory:
    """Builds an :class:`EntraIDProvider` (or ``provider_class``) after checking its options.

    ``environ`` is where ``AZURE_FEDERATED_TOKEN_FILE`` is looked up, once, when the
    provider is built (``os.environ`` unless given).
    """

    name: str = "entra-id"
    provider_class: type[EntraIDProvider] = EntraIDProvider
    environ: Mapping[str, str] | None = None

    def build(self, config: Any, http_client: Any, clock: IReactorTime) -> EntraIDProvider:
        problems = self.provider_class.check_config(config)
        token_file = ""
        if getattr(config, "entra_id_federated_token_auth", False):
            environ = self.environ if self.environ is not None else os.environ
            token_file = environ.get(FEDERATED_TOKEN_FILE_ENV, "")
            if not token_file:
                problems.append(
                    f"entra_id_federated_token_auth: {FEDERATED_TOKEN_FILE_ENV} is not set "
                    "(is the workload identity webhook enabled for this pod?)"
                )
        if problems:
            raise ConfigError(problems)
        return self.provider_class(config, http_client, clock, federated_token_file=token_file)


factory = EntraIDProviderFactory()
