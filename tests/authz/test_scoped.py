"""Tests for oauthgate.authz.scoped: a rule for one provider's sessions only."""

from __future__ import annotations

from oauthgate.authz.groups import GroupsAuthorizer
from oauthgate.authz.scoped import ProviderAuthorizer
from oauthgate.interfaces import Decision, IAuthorizer, RequestInfo
from oauthgate.session import Session
from oauthgate.testing import GateTestCase

REQUEST = RequestInfo(method="GET", path="/", host="app.test")
ADMINS_OF_CORP = ProviderAuthorizer("corp", GroupsAuthorizer(("admins",)))


class ProviderAuthorizerTests(GateTestCase):
    def decide(self, session: Session) -> Decision:
        return self.get_success(ADMINS_OF_CORP.authorize(REQUEST, session))

    def test_it_provides_the_authorizer_interface(self) -> None:
        self.assert_provides(IAuthorizer, ADMINS_OF_CORP)

    def test_the_rule_decides_for_sessions_of_its_provider(self) -> None:
        self.assertTrue(self.decide(Session(provider="corp", groups=("admins",))).allowed)
        denied = self.decide(Session(provider="corp", groups=("staff",)))
        self.assertEqual(denied, Decision.deny("you are not in any of the allowed groups"))

    def test_sessions_of_other_providers_pass(self) -> None:
        for provider in ("partner", "htpasswd", "bearer", ""):
            self.assertTrue(self.decide(Session(provider=provider, groups=())).allowed, provider)
