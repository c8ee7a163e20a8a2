"""Cidaas (``--provider=cidaas``): OpenID Connect, with Cidaas's group roles as groups.

Everything :class:`~oauthgate.providers.oidc.OIDCProvider` does (discovery, verified
id_tokens, userinfo for missing claims, refresh), but Cidaas gives groups as objects
with roles, which become flat groups as in oauth2-proxy::

    "groups": [{"groupId": "devs", "roles": ["member", "admin"]}]  ->  devs:member, devs:admin
    "roles": ["USER"]                                              ->  cidaas:USER

The default scope is ``openid email profile roles groups``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from oauthgate.providers.claims import get_claim
from oauthgate.providers.oidc import OIDCProvider, OIDCProviderFactory

__all__ = ["DEFAULT_SCOPE", "ROLE_PREFIX", "CidaasProvider", "cidaas_groups", "factory"]

DEFAULT_SCOPE = "openid email profile roles groups"
"""The scope asked for when ``--scope`` is not set."""
ROLE_PREFIX = "cidaas:"
"""Groups that stand for one of the user's (top-level) Cidaas roles start with this."""


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str) and v]


def cidaas_groups(groups: Any, roles: Any) -> tuple[str, ...]:
    """Cidaas's ``groups`` and ``roles`` claims as flat groups, without duplicates.

    ``<groupId>:<role>`` for each role of each group object, then ``cidaas:<role>`` for
    each top-level role. A plain string in ``groups`` is kept as it is; entries of
    another shape are skipped.
    """
    out: list[str] = []
    for entry in groups if isinstance(groups, list) else []:
        if isinstance(entry, str) and entry:
            out.append(entry)
        elif isinstance(entry, Mapping):
            group_id = entry.get("groupId")
            if isinstance(group_id, str) and group_id:
                out.extend(f"{group_id}:{role}" for role in _strings(entry.get("roles")))
    out.extend(ROLE_PREFIX + role for role in _strings(roles))
    return tuple(dict.fromkeys(out))


class CidaasProvider(OIDCProvider):
    """OpenID Connect against Cidaas; group objects and roles become flat groups."""

    id: ClassVar[str] = "cidaas"
    default_display_name: ClassVar[str] = "Cidaas"

    def _groups_from(self, claims: Mapping[str, Any]) -> tuple[str, ...]:
        return cidaas_groups(get_claim(claims, self._config.oidc_groups_claim), claims.get("roles"))

    async def authorize_url(
        self,
        state: str,
        nonce: str,
        code_challenge: str | None,
        code_challenge_method: str | None,
        redirect_uri: str,
        extra_params: Sequence[tuple[str, str]],
    ) -> str:
        """As OpenID Connect's, with Cidaas's default scope when ``--scope`` is not set."""
        extra = list(extra_params)
        if not self._config.scope and all(name != "scope" for name, _ in extra):
            extra.insert(0, ("scope", DEFAULT_SCOPE))
        return await super().authorize_url(
            state, nonce, code_challenge, code_challenge_method, redirect_uri, extra
        )

    def bearer_groups(self, claims: Mapping[str, Any]) -> tuple[str, ...]:
        """The flat groups a bearer JWT of this provider's issuer adds (already verified by
        the bearer verifier), so ``--allowed-group=devs:admin`` applies to API clients too."""
        return self._groups_from(claims)

    def _identity(self, claims: Mapping[str, Any]) -> dict[str, Any]:
        identity = super()._identity(claims)
        identity["groups"] = self._groups_from(claims)
        return identity

    def _from_userinfo(self, claims: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
        updates = super()._from_userinfo(claims, [f for f in fields if f != "groups"])
        if "groups" in fields:
            groups = self._groups_from(claims)
            if groups:
                updates["groups"] = groups
        return updates

    def _userinfo_groups(self, claims: Mapping[str, Any]) -> tuple[str, ...]:
        """As OpenID Connect's (userinfo after a refresh without an id_token), Cidaas-shaped."""
        return self._groups_from(claims)


factory = OIDCProviderFactory("cidaas", CidaasProvider)
