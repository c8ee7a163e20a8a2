"""The groups authorizer: ``allowed_groups`` (oauth2-proxy §6.6)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
from zope.interface import implementer

from oauthgate.interfaces import Decision, IAuthorizer, RequestInfo
from oauthgate.session import Session

__all__ = ["GroupsAuthorizer"]


def _clean(groups: Iterable[str]) -> frozenset[str]:
    return frozenset(g for g in groups if g.strip())


@implementer(IAuthorizer)
@attrs.frozen
class GroupsAuthorizer:
    """Allows sessions in at least one of ``allowed_groups`` (exact, case-sensitive match).

    An empty list (after dropping empty names) allows everyone.
    """

    allowed_groups: frozenset[str] = attrs.field(converter=_clean)

    @classmethod
    def from_config(cls, config: Any) -> GroupsAuthorizer:
        """Build from ``config.allowed_groups``."""
        return cls(config.allowed_groups)

    def check_groups(self, groups: Iterable[str]) -> Decision:
        """The decision for a member of ``groups``."""
        if not self.allowed_groups or not self.allowed_groups.isdisjoint(groups):
            return Decision.allow()
        return Decision.deny("you are not in any of the allowed groups")

    async def authorize(self, request: RequestInfo, session: Session) -> Decision:
        return self.check_groups(session.groups)
