"""Tests for oauthgate.providers.entra: Microsoft Entra ID over fakes of its login
endpoints and of Microsoft Graph, on the memory client.

``FakeTokenServer`` (a small OAuth/OIDC server with configurable paths) and ``FakeGraph``
are also used by the azure, adfs and google tests.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import attrs
import jwt
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request
from zope.interface.verify import verifyObject

from oauthgate.config.options import Config
from oauthgate.errors import ConfigError, ProviderError, RefreshError, TokenError
from oauthgate.interfaces import IProvider, IProviderFactory
from oauthgate.plugins import Plugins
from oauthgate.providers.entra import (
    CLIENT_ASSERTION_TYPE,
    EntraIDProvider,
    EntraIDProviderFactory,
    factory,
)
from oauthgate.testing import (
    ByHost,
    MemoryHTTPClient,
    ProviderConformance,
    ProviderSubject,
    memory_http_client,
    provider_config,
)
from oauthgate.testing.conformance import NONCE as CONFORMANCE_NONCE
from tests.providers.fakes import (
    OIDC_NONCE,
    REDIRECT,
    T0,
    FakeTokenServer,
    FlushingTestCase,
    started_clock,
    subject,
)

T = TypeVar("T")

CLIENT_ID = "11111111-2222-3333-4444-555555555555"
CLIENT_SECRET = "entra-secret"
NONCE = OIDC_NONCE
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
OTHER_TENANT = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
LOGIN = "https://login.microsoftonline.com"


def graph_group(gid: str, name: str) -> dict[str, Any]:
    return {"@odata.type": "#microsoft.graph.group", "id": gid, "displayName": name}


@attrs.define(eq=False)
class FakeGraph(Resource):
    """Microsoft Graph: ``/v1.0/me``, ``/v1.0/me/transitiveMemberOf`` (pages of
    ``page_size`` linked by ``@odata.nextLink``) and ``/oidc/userinfo``. Only the
    access tokens ``issuer`` issued are accepted."""

    isLeaf = True

    issuer: FakeTokenServer
    groups: list[dict[str, Any]] = attrs.Factory(list)
    me: dict[str, Any] = attrs.Factory(dict)
    page_size: int = 2
    broken: bool = False
    next_link_host: str = "graph.microsoft.com"
    requests: list[tuple[str, dict[str, list[str]], dict[bytes, Sequence[bytes]]]] = attrs.Factory(
        list
    )

    def __attrs_post_init__(self) -> None:
        Resource.__init__(self)

    def render(self, request: Request) -> bytes:
        path = request.path.decode()
        query = parse_qs(urlsplit(request.uri.decode()).query)
        headers = {k.lower(): v for k, v in request.requestHeaders.getAllRawHeaders()}
        self.requests.append((path, query, headers))
        request.setHeader(b"content-type", b"application/json")
        auth = (request.getHeader(b"authorization") or b"").decode()
        if self.broken:
            request.setResponseCode(503)
            return b'{"error": {"code": "serviceUnavailable"}}'
        if not auth.startswith("Bearer ") or auth[7:] not in self.issuer.access_tokens:
            request.setResponseCode(401)
            return b'{"error": {"code": "InvalidAuthenticationToken"}}'
        if path == "/v1.0/me/transitiveMemberOf":
            start = int(query.get("$skiptoken", ["0"])[0])
            page: dict[str, Any] = {"value": self.groups[start : start + self.page_size]}
            if start + self.page_size < len(self.groups):
                page["@odata.nextLink"] = (
                    f"https://{self.next_link_host}/v1.0/me/transitiveMemberOf"
                    f"?$skiptoken={start + self.page_size}"
                )
            return json.dumps(page).encode()
        if path == "/v1.0/me":
            return json.dumps(self.me).encode()
        if path == "/oidc/userinfo":
            return json.dumps({"sub": self.issuer.claims.get("sub")}).encode()
        request.setResponseCode(404)
        return b"{}"


def microsoft_server(clock: Clock, tenant: str = TENANT, **claims: Any) -> FakeTokenServer:
    """login.microsoftonline.com for ``tenant`` (v2.0 endpoints), issuing tokens of TENANT."""
    discovery_issuer = (
        f"{LOGIN}/{{tenantid}}/v2.0"
        if tenant in ("common", "organizations")
        else f"{LOGIN}/{tenant}/v2.0"
    )
    server = FakeTokenServer(
        clock,
        issuer=f"{LOGIN}/{TENANT}/v2.0",
        client_id=CLIENT_ID,
        routes={
            f"/{tenant}/v2.0/.well-known/openid-configuration": "discovery",
            f"/{tenant}/discovery/v2.0/keys": "jwks",
            f"/{tenant}/oauth2/v2.0/token": "token",
        },
        discovery={
            "issuer": discovery_issuer,
            "authorization_endpoint": f"{LOGIN}/{tenant}/oauth2/v2.0/authorize",
            "token_endpoint": f"{LOGIN}/{tenant}/oauth2/v2.0/token",
            "jwks_uri": f"{LOGIN}/{tenant}/discovery/v2.0/keys",
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "end_session_endpoint": f"{LOGIN}/{tenant}/oauth2/v2.0/logout",
        },
    )
    server.claims = {
        "sub": "pairwise-sub-alice",
        "oid": "00000000-0000-0000-0000-00000000a11c",
        "tid": TENANT,
        "email": "alice@contoso.com",
        "preferred_username": "alice@contoso.com",
        "groups": ["g-admins", "g-staff"],
        **claims,
    }
    return server


def microsoft_http(clock: Clock, server: Resource, graph: Resource) -> MemoryHTTPClient:
    """The memory client: login.microsoftonline.com is ``server``, graph.microsoft.com ``graph``."""
    return memory_http_client(
        ByHost({"login.microsoftonline.com": server, "graph.microsoft.com": graph}), clock=clock
    )


def microsoft_subject(
    clock: Clock, server: FakeTokenServer, factory: IProviderFactory, config: Config
) -> ProviderSubject:
    """The conformance suite's subject: ``factory``'s provider over ``server`` and a Graph."""
    graph = FakeGraph(server)
    http = microsoft_http(clock, server, graph)
    return subject(
        factory.build(config, http, clock),
        http,
        [server, graph],
        "alice@contoso.com",
        code=server.issue_code(CONFORMANCE_NONCE),
        refreshes=True,
    )


def entra_config(tenant: str = TENANT, **changes: Any) -> Config:
    options: dict[str, Any] = {
        "provider": "entra-id",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "oidc_issuer_url": f"{LOGIN}/{tenant}/v2.0",
    }
    return provider_config(**{**options, **changes})


class EntraTestCase(FlushingTestCase):
    tenant = TENANT

    def setUp(self) -> None:
        self.clock = started_clock()
        self.server = microsoft_server(self.clock, self.tenant)
        self.graph = FakeGraph(self.server)
        self.http = microsoft_http(self.clock, self.server, self.graph)

    def provider(self, **changes: Any) -> EntraIDProvider:
        built = factory.build(entra_config(self.tenant, **changes), self.http, self.clock)
        self.assertTrue(verifyObject(IProvider, built))
        return built

    def login_url(self, provider: EntraIDProvider, **extra: str) -> dict[str, list[str]]:
        url = self.get(
            provider.authorize_url("st", NONCE, None, None, REDIRECT, list(extra.items()))
        )
        self.assertTrue(url.startswith(f"{LOGIN}/{self.tenant}/oauth2/v2.0/authorize?"), url)
        return parse_qs(urlsplit(url).query)


class FactoryTests(EntraTestCase):
    def test_the_entry_point_finds_the_factory(self) -> None:
        self.assertIs(Plugins.from_entry_points().provider_factory("entra-id"), factory)
        self.assertTrue(verifyObject(IProviderFactory, factory))

    def test_names(self) -> None:
        provider = self.provider()
        self.assertEqual(provider.id, "entra-id")
        self.assertEqual(provider.display_name, "Microsoft Entra ID")

    def test_an_issuer_that_is_not_microsofts_v2_endpoint_is_refused(self) -> None:
        config = attrs.evolve(entra_config(), oidc_issuer_url="https://sts.windows.net/x/")
        error = self.assertRaises(ConfigError, factory.build, config, self.http, self.clock)
        self.assertIn("oidc_issuer_url", str(error))

    def test_a_malformed_allowed_tenant_is_refused(self) -> None:
        config = entra_config(entra_id_allowed_tenants=("ok-tenant", "bad/tenant"))
        error = self.assertRaises(ConfigError, factory.build, config, self.http, self.clock)
        self.assertIn("'bad/tenant'", str(error))

    def test_federated_auth_needs_the_token_file_variable(self) -> None:
        config = entra_config(entra_id_federated_token_auth=True, client_secret="")
        build = EntraIDProviderFactory(environ={}).build
        error = self.assertRaises(ConfigError, build, config, self.http, self.clock)
        self.assertIn("AZURE_FEDERATED_TOKEN_FILE", str(error))

    def test_federated_auth_and_a_client_secret_are_exclusive(self) -> None:
        config = entra_config(entra_id_federated_token_auth=True)
        build = EntraIDProviderFactory(environ={"AZURE_FEDERATED_TOKEN_FILE": "/x"}).build
        error = self.assertRaises(ConfigError, build, config, self.http, self.clock)
        self.assertIn("client_secret", str(error))


class LoginTests(EntraTestCase):
    def test_login_url_asks_for_a_refresh_token_and_the_openid_scopes(self) -> None:
        params = self.login_url(self.provider())
        self.assertEqual(params["scope"], ["openid email profile offline_access"])
        self.assertEqual(params["client_id"], [CLIENT_ID])
        self.assertEqual(params["nonce"], [NONCE])

    def test_a_configured_or_requested_scope_wins(self) -> None:
        self.assertEqual(
            self.login_url(self.provider(scope="openid email"))["scope"], ["openid email"]
        )
        self.assertEqual(self.login_url(self.provider(), scope="openid")["scope"], ["openid"])

    def test_login_gives_the_identity_and_groups_of_the_id_token(self) -> None:
        session = self.get(self.login(self.provider()))
        self.assertEqual(session.user, "pairwise-sub-alice")
        self.assertEqual(session.email, "alice@contoso.com")
        self.assertEqual(session.groups, ("g-admins", "g-staff"))
        self.assertEqual(session.provider, "entra-id")
        self.assertEqual(session.expires_on, T0 + 3599)
        self.assertEqual(self.graph.requests, [])

    def test_the_code_is_redeemed_with_the_client_secret(self) -> None:
        self.get(self.login(self.provider()))
        self.assertEqual(self.server.token_forms[0]["code"][:5], "code-")
        self.assertIn(b"authorization", self.server.token_headers[0])

    def test_a_token_from_another_issuer_is_refused(self) -> None:
        self.server.claims["iss"] = f"{LOGIN}/{OTHER_TENANT}/v2.0"
        self.server.claims["tid"] = OTHER_TENANT
        error = self.fail_with(self.login(self.provider()), TokenError)
        self.assertIn("not the configured one", str(error))

    def test_a_token_for_another_client_is_refused(self) -> None:
        self.server.claims["aud"] = "another-app"
        self.fail_with(self.login(self.provider()), TokenError)

    def test_the_token_endpoint_down_is_a_provider_error(self) -> None:
        provider = self.provider()
        self.get(provider.start())
        self.server.broken = True
        self.fail_with(self.login(provider), ProviderError)


class MultiTenantTests(EntraTestCase):
    tenant = "organizations"

    def test_a_token_from_its_own_tenant_is_accepted(self) -> None:
        session = self.get(self.login(self.provider()))
        self.assertEqual(session.email, "alice@contoso.com")

    def test_the_issuer_must_be_the_one_of_the_tokens_tenant(self) -> None:
        self.server.claims["tid"] = OTHER_TENANT  # iss says TENANT
        error = self.fail_with(self.login(self.provider()), TokenError)
        self.assertIn("tid", str(error))

    def test_an_issuer_of_another_host_is_refused(self) -> None:
        self.server.claims["iss"] = f"https://evil.test/{TENANT}/v2.0"
        self.fail_with(self.login(self.provider()), TokenError)

    def test_allowed_tenants_admit_their_users(self) -> None:
        provider = self.provider(entra_id_allowed_tenants=(OTHER_TENANT, TENANT.upper()))
        self.assertEqual(self.get(self.login(provider)).email, "alice@contoso.com")

    def test_users_of_other_tenants_are_refused(self) -> None:
        provider = self.provider(entra_id_allowed_tenants=(OTHER_TENANT,))
        error = self.fail_with(self.login(provider), TokenError)
        self.assertIn("not an allowed tenant", str(error))

    def test_discovery_naming_another_issuer_is_refused(self) -> None:
        self.server.discovery["issuer"] = "https://evil.test/{tenantid}/v2.0"
        self.fail_with(self.provider().start(), ProviderError)


class GroupOverageTests(EntraTestCase):
    def setUp(self) -> None:
        super().setUp()
        del self.server.claims["groups"]
        self.server.claims["_claim_names"] = {"groups": "src1"}
        self.server.claims["_claim_sources"] = {
            "src1": {"endpoint": "https://graph.windows.net/x/users/y/getMemberObjects"}
        }
        self.graph.groups = [
            graph_group("g-1", "One"),
            {"@odata.type": "#microsoft.graph.directoryRole", "id": "role-1"},
            graph_group("g-2", "Two"),
            graph_group("g-3", "Three"),
            graph_group("g-4", "Four"),
        ]

    def test_groups_come_from_graph_across_pages(self) -> None:
        session = self.get(self.login(self.provider()))
        self.assertEqual(session.groups, ("g-1", "g-2", "g-3", "g-4"))
        pages = [r for r in self.graph.requests if r[0] == "/v1.0/me/transitiveMemberOf"]
        self.assertEqual(len(pages), 3)
        self.assertEqual(pages[0][1], {"$select": ["id"], "$top": ["100"]})

    def test_a_next_link_off_graph_is_not_followed(self) -> None:
        self.graph.next_link_host = "evil.test"
        error = self.fail_with(self.login(self.provider()), ProviderError)
        self.assertIn("outside https://graph.microsoft.com", str(error))

    def test_graph_down_fails_the_login(self) -> None:
        self.graph.broken = True
        self.fail_with(self.login(self.provider()), ProviderError)

    def test_refresh_reads_the_groups_again(self) -> None:
        provider = self.provider()
        session = self.get(self.login(provider))
        self.graph.groups = [graph_group("g-9", "Nine")]
        refreshed = self.get(provider.refresh(session))
        assert refreshed is not None
        self.assertEqual(refreshed.groups, ("g-9",))

    def test_graph_down_on_refresh_is_not_fatal(self) -> None:
        provider = self.provider()
        session = self.get(self.login(provider))
        self.graph.broken = True
        error = self.fail_with(provider.refresh(session), RefreshError)
        assert isinstance(error, RefreshError)
        self.assertFalse(error.fatal)


class RefreshTests(EntraTestCase):
    def test_refresh_takes_the_new_id_tokens_groups(self) -> None:
        provider = self.provider()
        session = self.get(self.login(provider))
        self.server.claims["groups"] = ["g-staff"]
        self.clock.advance(100)
        refreshed = self.get(provider.refresh(session))
        assert refreshed is not None
        self.assertEqual(refreshed.groups, ("g-staff",))
        self.assertEqual(refreshed.created_at, T0 + 100)
        self.assertEqual(self.server.token_forms[-1]["grant_type"], "refresh_token")

    def test_a_revoked_grant_ends_the_session(self) -> None:
        provider = self.provider()
        session = self.get(self.login(provider))
        self.server.refresh_error = "invalid_grant"
        error = self.fail_with(provider.refresh(session), RefreshError)
        assert isinstance(error, RefreshError)
        self.assertTrue(error.fatal)


class FederatedTokenTests(EntraTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.token_file = self.mktemp()
        self.write_assertion(exp=T0 + 3600, marker="first")

    def write_assertion(self, exp: float, marker: str) -> None:
        token = jwt.encode({"exp": int(exp), "m": marker}, "k" * 32, algorithm="HS256")
        with open(self.token_file, "w") as f:
            f.write(token + "\n")

    def federated(self) -> EntraIDProvider:
        config = entra_config(entra_id_federated_token_auth=True, client_secret="")
        environ = {"AZURE_FEDERATED_TOKEN_FILE": self.token_file}
        return EntraIDProviderFactory(environ=environ).build(config, self.http, self.clock)

    def marker(self, form: dict[str, str]) -> str:
        claims = jwt.decode(form["client_assertion"], options={"verify_signature": False})
        marker: str = claims["m"]
        return marker

    def test_the_code_is_redeemed_with_the_federated_token_as_client_assertion(self) -> None:
        self.get(self.login(self.federated()))
        form = self.server.token_forms[0]
        self.assertEqual(form["client_assertion_type"], CLIENT_ASSERTION_TYPE)
        self.assertEqual(self.marker(form), "first")
        self.assertNotIn("client_secret", form)
        self.assertNotIn(b"authorization", self.server.token_headers[0])

    def test_the_token_is_read_again_only_when_near_its_expiry(self) -> None:
        provider = self.federated()
        session = self.get(self.login(provider))
        self.write_assertion(exp=T0 + 7200, marker="second")
        self.clock.advance(3000)  # 600 s left: still used
        self.get(provider.refresh(session))
        self.assertEqual(self.marker(self.server.token_forms[-1]), "first")
        self.clock.advance(301)  # inside the margin: read again
        self.get(provider.refresh(session))
        self.assertEqual(self.marker(self.server.token_forms[-1]), "second")

    def test_a_missing_token_file_is_a_provider_error_naming_the_file(self) -> None:
        provider = self.federated()
        os.remove(self.token_file)
        error = self.fail_with(self.login(provider), ProviderError)
        self.assertIn(self.token_file, str(error))


class EntraConformanceTests(ProviderConformance, SynchronousTestCase):
    def make_subject(self, clock: Clock) -> ProviderSubject:
        return microsoft_subject(clock, microsoft_server(clock), factory, entra_config())
