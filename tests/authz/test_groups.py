"""Tests for oauthgate.authz.groups: who may pass by group membership."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from oauthgate.authz.groups import GroupsAuthorizer
from oauthgate.interfaces import Decision, IAuthorizer, RequestInfo
from oauthgate.session import Session

REQUEST = RequestInfo(method="GET", path="/", host="app.example.com")


class GroupsAuthorizerTests(SynchronousTestCase):
    def decide(self, allowed: list[str], groups: list[str]) -> Decision:
        authorizer = GroupsAuthorizer(allowed)
        return self.successResultOf(
            Deferred.fromCoroutine(authorizer.authorize(REQUEST, Session(groups=groups)))
        )

    def test_provides_iauthorizer(self) -> None:
        self.assertTrue(verifyObject(IAuthorizer, GroupsAuthorizer(["admins"])))

    def test_member_of_one_allowed_group_passes(self) -> None:
        self.assertEqual(self.decide(["admins", "ops"], ["users", "ops"]), Decision.allow())

    def test_member_of_no_allowed_group_is_denied(self) -> None:
        self.assertEqual(
            self.decide(["admins"], ["users"]),
            Decision.deny("you are not in any of the allowed groups"),
        )
        self.assertFalse(self.decide(["admins"], []).allowed)

    def test_group_names_match_exactly(self) -> None:
        self.assertFalse(self.decide(["admins"], ["Admins"]).allowed)
        self.assertFalse(self.decide(["admins"], ["admins2"]).allowed)

    def test_no_allowed_groups_allows_everyone(self) -> None:
        self.assertTrue(self.decide([], []).allowed)

    def test_empty_group_names_are_ignored(self) -> None:
        """An empty entry (``--allowed-group=``) neither restricts nor lets anyone in."""
        self.assertTrue(self.decide(["", " "], []).allowed)
        self.assertFalse(self.decide(["", "admins"], [""]).allowed)

    def test_from_config(self) -> None:
        class Config:
            allowed_groups = ("admins",)

        authorizer = GroupsAuthorizer.from_config(Config())
        self.assertTrue(authorizer.check_groups(["admins"]).allowed)
        self.assertFalse(authorizer.check_groups(["users"]).allowed)
