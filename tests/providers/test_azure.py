"""Tests for oauthgate.providers.azure: the deprecated Azure AD provider, v1 endpoints
by default and v2 with an issuer URL, over fakes of Microsoft's login and Graph."""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from oauthgate.config.options import Config
from oauthgate.errors import ConfigError, ProviderError, RefreshError, TokenError
from oauthgate.interfaces import IProvider
from oauthgate.plugins import Plugins
from oauthgate.providers.azure import AzureProvider, factory
from oauthgate.testing import (
    ProviderConformance,
    ProviderSubject,
    provider_config,
)
from tests.providers.fakes import (
    OIDC_NONCE,
    REDIRECT,
    FakeTokenServer,
    FlushingTestCase,
    started_clock,
)
from tests.providers.test_entra import (
    CLIENT_ID,
    CLIENT_SECRET,
    LOGIN,
    OTHER_TENANT,
    TENANT,
    FakeGraph,
    graph_group,
    microsoft_http,
    microsoft_server,
    microsoft_subject,
)

T = TypeVar("T")


def v1_server(clock: Clock, tenant: str = TENANT) -> FakeTokenServer:
    """login.microsoftonline.com's v1 endpoints for ``tenant``; tokens of TENANT."""
    server = FakeTokenServer(
        clock,
        issuer=f"https://sts.windows.net/{TENANT}/",
        client_id=CLIENT_ID,
        routes={
            f"/{tenant}/discovery/keys": "jwks",
            f"/{tenant}/oauth2/token": "token",
        },
    )
    server.claims = {
        "sub": "v1-sub-alice",
        "oid": "00000000-0000-0000-0000-00000000a11c",
        "tid": TENANT,
        "upn": "alice@contoso.com",
        "unique_name": "alice@contoso.com",
        "groups": ["g-admins"],
    }
    return server


def azure_config(**changes: Any) -> Config:
    options: dict[str, Any] = {
        "provider": "azure",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "azure_tenant": TENANT,
    }
    return provider_config(**{**options, **changes})


class AzureTestCase(FlushingTestCase):
    tenant = TENANT
    v2 = False

    def setUp(self) -> None:
        self.clock = started_clock()
        self.server = (
            microsoft_server(self.clock, self.tenant)
            if self.v2
            else v1_server(self.clock, self.tenant)
        )
        self.graph = FakeGraph(
            self.server, me={"mail": None, "userPrincipalName": "alice@contoso.com"}
        )
        self.http = microsoft_http(self.clock, self.server, self.graph)

    def provider(self, **changes: Any) -> AzureProvider:
        if self.v2:
            changes.setdefault("oidc_issuer_url", f"{LOGIN}/{self.tenant}/v2.0")
        built = factory.build(
            azure_config(azure_tenant=self.tenant, **changes), self.http, self.clock
        )
        assert isinstance(built, AzureProvider)
        self.assertTrue(verifyObject(IProvider, built))
        return built

    def login_url(self, provider: AzureProvider) -> tuple[str, dict[str, list[str]]]:
        url = self.get(provider.authorize_url("st", OIDC_NONCE, None, None, REDIRECT, []))
        return url, parse_qs(urlsplit(url).query)


class V1Tests(AzureTestCase):
    def test_the_entry_point_finds_the_factory(self) -> None:
        self.assertIs(Plugins.from_entry_points().provider_factory("azure"), factory)
        self.assertEqual(self.provider().display_name, "Azure")

    def test_login_url_is_the_tenants_v1_endpoint_with_the_graph_resource(self) -> None:
        url, params = self.login_url(self.provider())
        self.assertTrue(url.startswith(f"{LOGIN}/{TENANT}/oauth2/authorize?"), url)
        self.assertEqual(params["resource"], ["https://graph.microsoft.com"])
        self.assertEqual(params["scope"], ["openid"])

    def test_a_configured_resource_is_sent_to_login_and_token_endpoints(self) -> None:
        provider = self.provider(resource="api://my-api")
        _, params = self.login_url(provider)
        self.assertEqual(params["resource"], ["api://my-api"])
        self.get(self.login(provider))
        self.assertEqual(self.server.token_forms[0]["resource"], "api://my-api")

    def test_login_takes_email_from_upn_and_groups_from_the_id_token(self) -> None:
        session = self.get(self.login(self.provider()))
        self.assertEqual(session.user, "v1-sub-alice")
        self.assertEqual(session.email, "alice@contoso.com")
        self.assertEqual(session.groups, ("g-admins",))
        self.assertEqual(session.provider, "azure")
        self.assertEqual(self.graph.requests, [])

    def test_without_email_or_upn_the_email_comes_from_graph_me(self) -> None:
        del self.server.claims["upn"]
        self.graph.me = {"mail": "alice.mail@contoso.com", "userPrincipalName": "x@contoso.com"}
        session = self.get(self.login(self.provider()))
        self.assertEqual(session.email, "alice.mail@contoso.com")

    def test_graph_me_down_without_an_email_claim_fails_the_login(self) -> None:
        del self.server.claims["upn"]
        self.graph.broken = True
        self.fail_with(self.login(self.provider()), ProviderError)

    def test_a_token_from_another_tenant_is_refused(self) -> None:
        self.server.claims["iss"] = f"https://sts.windows.net/{OTHER_TENANT}/"
        self.server.claims["tid"] = OTHER_TENANT
        self.fail_with(self.login(self.provider()), TokenError)

    def test_refresh_keeps_the_user_and_sends_the_resource(self) -> None:
        provider = self.provider()
        session = self.get(self.login(provider))
        self.clock.advance(60)
        refreshed = self.get(provider.refresh(session))
        assert refreshed is not None
        self.assertEqual(refreshed.email, "alice@contoso.com")
        self.assertEqual(self.server.token_forms[-1]["grant_type"], "refresh_token")
        self.assertEqual(self.server.token_forms[-1]["resource"], "https://graph.microsoft.com")

    def test_a_revoked_grant_ends_the_session(self) -> None:
        provider = self.provider()
        session = self.get(self.login(provider))
        self.server.refresh_error = "invalid_grant"
        error = self.fail_with(provider.refresh(session), RefreshError)
        assert isinstance(error, RefreshError)
        self.assertTrue(error.fatal)

    def test_an_empty_graph_group_field_is_a_config_error(self) -> None:
        config = azure_config(azure_graph_group_field=" ")
        self.assertRaises(ConfigError, factory.build, config, self.http, self.clock)


class V1CommonTenantTests(AzureTestCase):
    tenant = "common"

    def test_a_token_from_any_tenant_is_checked_against_its_own_tid(self) -> None:
        session = self.get(self.login(self.provider()))
        self.assertEqual(session.email, "alice@contoso.com")
        self.server.claims["tid"] = OTHER_TENANT
        self.fail_with(self.login(self.provider()), TokenError)


class V2Tests(AzureTestCase):
    v2 = True

    def setUp(self) -> None:
        super().setUp()
        self.graph.groups = [
            graph_group("g-1", "Admins"),
            graph_group("g-2", "Staff"),
            graph_group("g-3", "Ops"),
        ]

    def test_login_url_asks_for_graph_and_never_for_groups(self) -> None:
        url, params = self.login_url(self.provider(scope="openid email groups"))
        self.assertTrue(url.startswith(f"{LOGIN}/{TENANT}/oauth2/v2.0/authorize?"), url)
        self.assertEqual(params["scope"], ["openid email https://graph.microsoft.com/.default"])
        self.assertNotIn("resource", params)

    def test_groups_come_from_graph_security_groups_across_pages(self) -> None:
        session = self.get(self.login(self.provider()))
        self.assertEqual(session.groups, ("g-1", "g-2", "g-3"))
        path, query, headers = self.graph.requests[0]
        self.assertEqual(path, "/v1.0/me/transitiveMemberOf")
        self.assertEqual(query["$filter"], ["securityEnabled eq true"])
        self.assertEqual(query["$count"], ["true"])
        self.assertEqual(query["$select"], ["displayName,id"])
        self.assertEqual(headers[b"consistencylevel"], [b"eventual"])
        self.assertEqual(len(self.graph.requests), 2)

    def test_the_graph_group_field_names_the_groups(self) -> None:
        session = self.get(self.login(self.provider(azure_graph_group_field="displayName")))
        self.assertEqual(session.groups, ("Admins", "Staff", "Ops"))

    def test_graph_down_fails_the_login(self) -> None:
        self.graph.broken = True
        self.fail_with(self.login(self.provider()), ProviderError)

    def test_refresh_reads_the_groups_again(self) -> None:
        provider = self.provider()
        session = self.get(self.login(provider))
        self.graph.groups = [graph_group("g-2", "Staff")]
        refreshed = self.get(provider.refresh(session))
        assert refreshed is not None
        self.assertEqual(refreshed.groups, ("g-2",))


class AzureConformanceTests(ProviderConformance, SynchronousTestCase):
    def make_subject(self, clock: Clock) -> ProviderSubject:
        return microsoft_subject(clock, v1_server(clock), factory, azure_config())
