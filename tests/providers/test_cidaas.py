"""Tests for oauthgate.providers.cidaas: OpenID Connect with Cidaas's group roles as groups.

Cidaas-shaped tokens come from the tiny in-memory IdP of the OIDC tests (its claims are
set per test); the conformance suite runs over the FakeIdP.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from oauthgate.errors import ProviderError, RefreshError
from oauthgate.interfaces import IProvider, IProviderFactory
from oauthgate.plugins import Plugins
from oauthgate.providers.cidaas import DEFAULT_SCOPE, CidaasProvider, cidaas_groups, factory
from oauthgate.session import Session
from oauthgate.testing import (
    ByHost,
    FakeIdP,
    GateTestCase,
    ProviderConformance,
    ProviderSubject,
    memory_http_client,
    provider_config,
)
from oauthgate.testing.conformance import NONCE as CONFORMANCE_NONCE
from tests.providers.idp import NONCE, T0, Answer, TinyIdP, config, resolve

REDIRECT = "https://app.example/oauth2/callback"

CIDAAS_GROUPS = [
    {"groupId": "devs", "groupType": "Team", "roles": ["member", "admin"]},
    {"groupId": "ops", "roles": ["viewer"]},
]
CIDAAS_ROLES = ["USER", "ADMIN"]
FLAT = ("devs:member", "devs:admin", "ops:viewer", "cidaas:USER", "cidaas:ADMIN")


class CidaasGroupsTests(GateTestCase):
    def test_group_objects_become_group_role_pairs_and_roles_get_the_cidaas_prefix(self) -> None:
        self.assertEqual(cidaas_groups(CIDAAS_GROUPS, CIDAAS_ROLES), FLAT)

    def test_a_group_without_roles_gives_nothing(self) -> None:
        self.assertEqual(cidaas_groups([{"groupId": "empty", "roles": []}], None), ())

    def test_malformed_entries_are_skipped_and_plain_strings_kept(self) -> None:
        groups = ["legacy", 7, {"roles": ["x"]}, {"groupId": "g", "roles": ["r", 3, ""]}, None]
        self.assertEqual(cidaas_groups(groups, "not-a-list"), ("legacy", "g:r"))

    def test_duplicates_are_dropped(self) -> None:
        self.assertEqual(
            cidaas_groups([{"groupId": "g", "roles": ["r", "r"]}], ["A", "A"]), ("g:r", "cidaas:A")
        )


class CidaasTests(GateTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.idp = TinyIdP(self.clock)
        self.idp.claims = {"groups": CIDAAS_GROUPS, "roles": CIDAAS_ROLES}
        self.stub = StubTreq(self.idp)

    def provider(self, **changes: Any) -> CidaasProvider:
        built = factory.build(config(provider="cidaas", **changes), self.stub, self.clock)
        assert isinstance(built, CidaasProvider)
        return built

    def get(self, coro: Any) -> Any:
        return self.successResultOf(resolve(self.stub, coro))

    async def login(self, provider: CidaasProvider) -> Session:
        session = await provider.redeem("code-1", "verifier-1", REDIRECT, NONCE)
        return await provider.enrich(session)

    def test_factory_and_provider_provide_their_interfaces(self) -> None:
        self.assert_provides(IProviderFactory, factory)
        self.assert_provides(IProvider, self.provider())
        self.assertEqual((self.provider().id, self.provider().display_name), ("cidaas", "Cidaas"))
        self.assertIs(Plugins.from_entry_points().provider_factory("cidaas"), factory)

    def test_the_login_url_asks_for_roles_and_groups_by_default(self) -> None:
        url = self.get(self.provider().authorize_url("st", NONCE, None, None, REDIRECT, []))
        query = parse_qs(urlsplit(url).query)
        self.assertEqual(query["scope"], [DEFAULT_SCOPE])
        self.assertEqual(query["nonce"], [NONCE])
        self.assertTrue(url.startswith("https://idp.example/authorize?"))

    def test_a_configured_scope_or_login_parameter_replaces_the_default(self) -> None:
        url = self.get(
            self.provider(scope="openid email").authorize_url("st", NONCE, None, None, REDIRECT, [])
        )
        self.assertEqual(parse_qs(urlsplit(url).query)["scope"], ["openid email"])
        url = self.get(
            self.provider().authorize_url("st", NONCE, None, None, REDIRECT, [("scope", "openid")])
        )
        self.assertEqual(parse_qs(urlsplit(url).query)["scope"], ["openid"])

    def test_groups_and_roles_of_the_id_token_become_flat_groups(self) -> None:
        session = self.get(self.login(self.provider()))
        self.assertEqual(session.groups, FLAT)
        self.assertEqual(session.email, "alice@example.com")
        self.assertEqual(session.provider, "cidaas")
        self.assertEqual(self.idp.count(b"/userinfo"), 0)

    def test_a_named_groups_claim_is_read(self) -> None:
        self.idp.claims = {"groups": None, "cidaas_groups": [{"groupId": "g", "roles": ["r"]}]}
        session = self.get(self.login(self.provider(oidc_groups_claim="cidaas_groups")))
        self.assertEqual(session.groups, ("g:r",))

    def test_groups_missing_from_the_id_token_come_from_userinfo(self) -> None:
        self.idp.claims = {"groups": None}
        self.idp.userinfo = {"sub": "user-1", "groups": CIDAAS_GROUPS, "roles": ["USER"]}
        session = self.get(self.login(self.provider()))
        self.assertEqual(session.groups, ("devs:member", "devs:admin", "ops:viewer", "cidaas:USER"))
        self.assertEqual(self.idp.count(b"/userinfo"), 1)

    def test_a_refresh_with_an_id_token_reads_the_groups_again(self) -> None:
        session = self.get(self.login(self.provider()))
        self.idp.claims = {"groups": [{"groupId": "ops", "roles": ["viewer"]}], "roles": []}
        self.clock.advance(60)
        refreshed = self.get(self.provider().refresh(session))
        self.assertEqual(refreshed.groups, ("ops:viewer",))

    def test_a_refresh_without_an_id_token_reads_the_groups_from_userinfo(self) -> None:
        session = self.get(self.login(self.provider()))
        self.idp.token_answer = lambda: Answer.json(self.idp.tokens(id_token=None))
        self.idp.userinfo = {"sub": "user-1", "groups": [{"groupId": "ops", "roles": ["viewer"]}]}
        refreshed = self.get(self.provider().refresh(session))
        self.assertEqual(refreshed.groups, ("ops:viewer",))

    def test_a_refresh_keeps_the_groups_when_userinfo_fails(self) -> None:
        session = self.get(self.login(self.provider()))
        self.idp.token_answer = lambda: Answer.json(self.idp.tokens(id_token=None))
        self.idp.userinfo_answer = Answer(503, b"down", b"text/plain")
        refreshed = self.get(self.provider().refresh(session))
        self.assertEqual(refreshed.groups, FLAT)

    def test_a_refresh_without_id_token_skips_userinfo_when_told_to(self) -> None:
        provider = self.provider(skip_claims_from_profile_url=True)
        session = self.get(self.login(provider))
        self.idp.token_answer = lambda: Answer.json(self.idp.tokens(id_token=None))
        refreshed = self.get(provider.refresh(session))
        self.assertEqual(refreshed.groups, FLAT)
        self.assertEqual(self.idp.count(b"/userinfo"), 0)

    def test_a_revoked_refresh_token_ends_the_session(self) -> None:
        session = self.get(self.login(self.provider()))
        self.idp.token_answer = lambda: Answer.json({"error": "invalid_grant"}, status=400)
        failure = self.failureResultOf(
            resolve(self.stub, self.provider().refresh(session)), RefreshError
        )
        self.assertTrue(failure.value.fatal)

    def test_bearer_tokens_get_the_flat_groups_too(self) -> None:
        claims = {"sub": "u", "groups": CIDAAS_GROUPS, "roles": CIDAAS_ROLES}
        self.assertEqual(self.provider().bearer_groups(claims), FLAT)

    def test_a_failing_token_endpoint_is_a_provider_error(self) -> None:
        self.idp.token_answer = lambda: Answer(500, b"oops", b"text/plain")
        self.failureResultOf(resolve(self.stub, self.login(self.provider())), ProviderError)


class CidaasConformanceTests(ProviderConformance, SynchronousTestCase):
    def make_subject(self, clock: Clock) -> ProviderSubject:
        issuer = "https://tenant.cidaas.test"
        users = {
            "alice": {
                "sub": "a1",
                "email": "alice@example.com",
                "email_verified": True,
                "groups": CIDAAS_GROUPS,
            }
        }
        idp = FakeIdP(issuer, clock, clients={"gate": "gate-secret"}, users=users)
        http = memory_http_client(ByHost({"tenant.cidaas.test": idp.resource()}), clock=clock)
        config = provider_config(
            provider="cidaas", client_id="gate", client_secret="gate-secret", oidc_issuer_url=issuer
        )

        def break_api() -> None:
            idp.fail_token_endpoint = 503

        return ProviderSubject(
            provider=factory.build(config, http, clock),
            http=http,
            code=idp.issue_code(
                "alice", client_id="gate", redirect_uri=REDIRECT, nonce=CONFORMANCE_NONCE
            ),
            redirect_uri=REDIRECT,
            email="alice@example.com",
            break_api=break_api,
            refreshes=True,
        )
