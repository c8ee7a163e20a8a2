"""Keycloak (``--provider=keycloak-oidc``): OpenID Connect, plus Keycloak's roles as groups.

Everything :class:`~oauthgate.providers.oidc.OIDCProvider` does, and then the roles
Keycloak puts in the *access token* (a JWT signed by the realm) become groups, as in
oauth2-proxy: each realm role ``r`` (``realm_access.roles``) the group ``role:r``, each
role ``r`` of client ``c`` (``resource_access.c.roles``, every client) ``role:c:r``.
``--allowed-role=admin`` or ``--allowed-role=app:editor`` then admits those groups.

The access token is trusted only once its signature checks out against the realm's
JWKS and it is neither expired nor from another issuer; one that does not check out
gives no roles (logged at warn), never an error: the login goes on with fewer groups,
which can only deny access, never grant it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import attrs

from oauthgate.errors import ProviderError, TokenError
from oauthgate.providers.oidc import LEEWAY, OIDCProvider, OIDCProviderFactory
from oauthgate.session import Session

__all__ = [
    "ROLE_PREFIX",
    "KeycloakOIDCProvider",
    "factory",
    "role_groups",
    "roles_from_claims",
]

ROLE_PREFIX = "role:"
"""Groups that stand for a Keycloak role start with this; it keeps roles apart from groups."""


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str) and v]


def roles_from_claims(claims: Mapping[str, Any]) -> tuple[str, ...]:
    """The groups Keycloak's roles in (verified) access-token ``claims`` stand for.

    ``role:<r>`` for each realm role, then ``role:<client>:<r>`` for each role of each
    client in ``resource_access``, in the token's order, without duplicates. Entries
    of the wrong shape are skipped.
    """
    groups: list[str] = []
    realm = claims.get("realm_access")
    if isinstance(realm, Mapping):
        groups.extend(ROLE_PREFIX + role for role in _strings(realm.get("roles")))
    clients = claims.get("resource_access")
    if isinstance(clients, Mapping):
        for client, access in clients.items():
            if isinstance(client, str) and client and isinstance(access, Mapping):
                groups.extend(
                    f"{ROLE_PREFIX}{client}:{role}" for role in _strings(access.get("roles"))
                )
    return tuple(dict.fromkeys(groups))


def role_groups(roles: Iterable[str]) -> tuple[str, ...]:
    """``allowed_roles`` as the groups to allow: ``admin`` -> ``role:admin``,
    ``app:editor`` -> ``role:app:editor``. Blank entries are dropped."""
    return tuple(ROLE_PREFIX + role.strip() for role in roles if role.strip())


def _without_roles(groups: Iterable[str]) -> tuple[str, ...]:
    return tuple(g for g in groups if not g.startswith(ROLE_PREFIX))


def _same_issuer(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


class KeycloakOIDCProvider(OIDCProvider):
    """OpenID Connect against a Keycloak realm; roles from the access token join the groups.

    Roles are read after the login (in :meth:`enrich`, called once after ``redeem``) and
    again after every refresh, which first drops the previous ``role:`` groups: a role
    taken away in Keycloak is gone at the next refresh.
    """

    id: ClassVar[str] = "keycloak-oidc"
    default_display_name: ClassVar[str] = "Keycloak"

    async def enrich(self, session: Session) -> Session:
        """As :meth:`OIDCProvider.enrich`, then the access token's roles are added.

        Idempotent: roles already in the groups are not added twice.
        """
        session = await super().enrich(session)
        return await self._with_roles(session)

    async def refresh(self, session: Session) -> Session | None:
        """As :meth:`OIDCProvider.refresh`, with the roles of the new access token only.

        A group starting with ``role:`` is taken to be a role: it is dropped before the
        refresh, so it survives only if the new access token (or a refreshed groups
        claim) still carries it.
        """
        refreshed = await super().refresh(
            attrs.evolve(session, groups=_without_roles(session.groups))
        )
        if refreshed is None:
            return None
        return await self._with_roles(refreshed)

    def bearer_groups(self, claims: Mapping[str, Any]) -> tuple[str, ...]:
        """The groups a bearer JWT from this provider's issuer adds: its roles.

        Called by the bearer verifier (``skip_jwt_bearer_tokens``) with claims it has
        verified (signature, issuer, audience, times); a bearer token from Keycloak is
        an access token.
        """
        return roles_from_claims(claims)

    async def _with_roles(self, session: Session) -> Session:
        roles = await self._access_token_roles(session.access_token)
        if not roles:
            return session
        return attrs.evolve(session, groups=tuple(dict.fromkeys((*session.groups, *roles))))

    async def _access_token_roles(self, access_token: str) -> tuple[str, ...]:
        """The roles in ``access_token`` once it checks out; none when it does not."""
        if not access_token:
            return ()
        try:
            discovered = await self._endpoints()
            claims = await discovered.jwks.verify(access_token)
            self._check_access_claims(claims)
        except TokenError as e:
            self.log.warn("Not using roles from the access token: {reason}", reason=str(e))
            return ()
        except ProviderError as e:
            self.log.error(
                "Cannot check the access token, so no roles are used: {reason}", reason=str(e)
            )
            return ()
        return roles_from_claims(claims)

    def _check_access_claims(self, claims: Mapping[str, Any]) -> None:
        """Raises TokenError unless the (signature-checked) access token is current and
        from the configured issuer. Its audience is not checked: it came straight from
        the token endpoint, for this client."""
        config = self._config
        if not config.insecure_oidc_skip_issuer_verification:
            iss = claims.get("iss")
            if not isinstance(iss, str) or not _same_issuer(iss, config.oidc_issuer_url):
                raise TokenError("the access token is from another issuer")
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise TokenError("the access token has no expiry (exp)")
        if self._clock.seconds() > exp + LEEWAY:
            raise TokenError("the access token has expired")


factory = OIDCProviderFactory("keycloak-oidc", KeycloakOIDCProvider)
