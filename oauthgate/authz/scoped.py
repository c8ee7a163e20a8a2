"""Authorizers that apply to the sessions of one identity provider only.

With several providers in one instance, a rule such as "members of the admins group" is
usually meant for one of them (GitHub users of org X, Google users of domain Y): the
alpha ``providers[].allowedGroups`` and ``providers[].emailDomains`` become an authorizer
wrapped in :class:`ProviderAuthorizer`, which passes every session of another provider.
"""

from __future__ import annotations

import attrs
from zope.interface import implementer

from oauthgate.interfaces import Decision, IAuthorizer, RequestInfo
from oauthgate.session import Session

__all__ = ["ProviderAuthorizer"]


@implementer(IAuthorizer)
@attrs.frozen
class ProviderAuthorizer:
    """``inner``'s decision for sessions whose ``provider`` is ``provider_id``; allows others.

    Only as strict as the session's provider id is trustworthy: the gate sets it from the
    provider that redeemed the login (never from anything the user sends) and refuses a
    session whose provider is no longer configured.
    """

    provider_id: str
    inner: IAuthorizer

    async def authorize(self, request: RequestInfo, session: Session) -> Decision:
        if session.provider != self.provider_id:
            return Decision.allow()
        decision: Decision = await self.inner.authorize(request, session)
        return decision
