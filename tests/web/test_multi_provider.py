"""Several identity providers in one gate, in memory: the sign-in page offers each, a login
goes through the chosen one and its session stays with it (refresh, per-provider rules,
sign-out), and a session of a provider that is no longer configured is no session.

The gate is configured the way an operator does it: an alpha YAML file with a
``providers`` list, read by the loader, built by ``build_components``.
"""

from __future__ import annotations

import base64
import os
import tempfile
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import attrs
from treq.testing import RequestTraversalAgent
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from zope.interface.verify import verifyObject

from oauthgate.config.alpha import provider_configs
from oauthgate.config.loader import load_config
from oauthgate.config.options import Config
from oauthgate.errors import ConfigError, ProviderError
from oauthgate.interfaces import IProvider
from oauthgate.plugins import Plugins
from oauthgate.providers.oidc import OIDCProvider, OIDCProviderFactory
from oauthgate.service import Components, build_components
from oauthgate.session import Session
from oauthgate.testing import (
    Browser,
    BrowserResponse,
    ByHost,
    EchoResource,
    FakeIdP,
    GateTestCase,
    MemoryHTTPClient,
    default_users,
    memory_http_client,
)
from oauthgate.upstreams.http import HTTPUpstream
from oauthgate.web.gate import GateResource

EPOCH = 1_800_000_000
APP = "https://app.test"
IDP_A = "https://idp-a.test"
IDP_B = "https://idp-b.test"
COOKIE_SECRET = base64.urlsafe_b64encode(bytes(range(32))).decode("ascii")
SESSION = "_oauth2_proxy"
CSRF = "_oauth2_proxy_csrf"
JSON = {"Accept": "application/json"}

#: Two providers: corp (a confidential client, admins only) and partner (a public PKCE
#: client, example.org addresses only: the oauthgate extension emailDomains).
TWO_PROVIDERS = """\
upstreamConfig:
  upstreams:
  - {id: app, path: /, uri: "http://upstream.test/"}
injectRequestHeaders:
- name: X-Forwarded-Email
  values: [{claimSource: {claim: email}}]
providers:
- id: corp
  provider: oidc
  name: Corp SSO
  clientID: app-a
  clientSecret: secret-a
  code_challenge_method: S256
  allowedGroups: [admins]
  oidcConfig: {issuerURL: "https://idp-a.test"}
- id: partner
  provider: oidc
  name: Partner Login
  clientID: app-b
  code_challenge_method: S256
  emailDomains: [example.org]
  oidcConfig: {issuerURL: "https://idp-b.test"}
"""

#: Only the first of them.
CORP_ONLY = TWO_PROVIDERS.split("- id: partner")[0]


def partner_users() -> dict[str, dict[str, Any]]:
    """Provider B's users: other subjects than A's, and carol, whom A does not know."""
    users = default_users()
    users["alice"]["sub"] = "b-2001"
    users["bob"]["sub"] = "b-2002"
    users["carol"] = {
        "sub": "b-2003",
        "email": "carol@example.org",
        "email_verified": True,
        "groups": ["partners"],
    }
    return users


@attrs.define
class World:
    """A gate at https://app.test in front of an echo upstream, two fake IdPs, a browser."""

    clock: Clock
    idp_a: FakeIdP
    idp_b: FakeIdP
    hosts: ByHost
    http: MemoryHTTPClient
    components: Components
    browser: Browser

    async def get(
        self, path: str, *, follow: bool = True, headers: dict[str, str] | None = None
    ) -> BrowserResponse:
        url = path if path.startswith("https://") else APP + path
        return await self.browser.request("GET", url, headers=headers, follow_redirects=follow)

    async def login(self, provider: str, rd: str = "/x") -> BrowserResponse:
        return await self.get(
            f"/oauth2/start?provider={provider}&rd={quote(rd, safe='')}", headers=JSON
        )

    async def session(self) -> Session | None:
        value = self.browser.cookie(SESSION)
        return None if value is None else await self.components.store.load(value)

    def rebuild(self, alpha: str, **flags: Any) -> None:
        """Restart the gate with another configuration; the browser keeps its cookies."""
        self.components = build(alpha, self.clock, self.http, **flags)
        self.hosts.add_host("app.test", GateResource(self.components.gate))


def write(text: str) -> str:
    fd, path = tempfile.mkstemp(suffix=".yaml")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def load(alpha: str, **flags: Any) -> Config:
    """The configuration the loader makes of ``alpha`` and ``flags``, as at start-up."""
    path = write(alpha)
    try:
        given = {"cookie_secret": COOKIE_SECRET, "email_domains": ("*",), **flags}
        config, _ = load_config(given, {}, None, alpha_file=path)
    finally:
        os.unlink(path)
    return config


def build(
    alpha: str,
    clock: Clock,
    http: MemoryHTTPClient,
    *,
    plugins: Plugins | None = None,
    **flags: Any,
) -> Components:
    upstream = EchoResource()
    agent = RequestTraversalAgent(upstream)
    return build_components(
        load(alpha, **flags),
        reactor=clock,
        plugins=plugins or Plugins.from_entry_points(),
        http_client=http,
        upstream_factory=lambda url: HTTPUpstream(url, agent, clock),
    )


def make_world(
    alpha: str = TWO_PROVIDERS,
    *,
    plugins: Plugins | None = None,
    idp_a_clients: Mapping[str, str] | None = None,
    idp_a_keys: Mapping[str, Any] | None = None,
    **flags: Any,
) -> World:
    clock = Clock()
    clock.advance(EPOCH)
    idp_a = FakeIdP(
        IDP_A,
        clock,
        clients=idp_a_clients or {"app-a": "secret-a"},
        client_keys=idp_a_keys,
        auto_login="alice",
    )
    idp_b = FakeIdP(IDP_B, clock, clients={"app-b": ""}, users=partner_users(), auto_login="bob")
    hosts = ByHost({"idp-a.test": idp_a.resource(), "idp-b.test": idp_b.resource()})
    http = memory_http_client(hosts, clock=clock)
    components = build(alpha, clock, http, plugins=plugins, **flags)
    hosts.add_host("app.test", GateResource(components.gate))
    return World(clock, idp_a, idp_b, hosts, http, components, Browser(http, clock))


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc + parts.path


class SignInPageTests(GateTestCase):
    def test_the_sign_in_page_has_one_button_per_provider(self) -> None:
        world = make_world()
        page = self.get_success(world.get("/oauth2/sign_in?rd=%2Fapp"))
        self.assertEqual(page.status, 200)
        self.assertIn("Sign in with Corp SSO</button>", page.text)
        self.assertIn("Sign in with Partner Login</button>", page.text)
        self.assertIn('name="provider" value="corp"', page.text)
        self.assertIn('name="provider" value="partner"', page.text)
        self.assertEqual(page.text.count('name="rd" value="/app"'), 2)
        self.assertLess(page.text.index("Corp SSO"), page.text.index("Partner Login"))

    def test_a_visitor_without_session_gets_both_buttons(self) -> None:
        world = make_world()
        page = self.get_success(world.get("/somewhere"))
        self.assertEqual(page.status, 403)
        self.assertIn('name="provider" value="corp"', page.text)
        self.assertIn('name="provider" value="partner"', page.text)

    def test_a_button_is_a_link_to_start_with_its_provider(self) -> None:
        """Pressing the partner button: GET /oauth2/start?provider=partner&rd=..."""
        world = make_world()
        landed = self.get_success(world.get("/oauth2/start?provider=partner&rd=%2Fapp"))
        self.assertEqual(landed.status, 200, landed.text)
        self.assertEqual(path_of(landed.urls[1]), "idp-b.test/authorize")
        self.assertEqual(landed.url, APP + "/app")

    def test_start_without_a_provider_shows_the_choice(self) -> None:
        world = make_world()
        page = self.get_success(world.get("/oauth2/start?rd=%2Fapp", follow=False))
        self.assertEqual(page.status, 200)
        self.assertIn('name="provider" value="partner"', page.text)
        self.assertIsNone(world.browser.cookie(CSRF))
        self.assertEqual(world.idp_a.authorize_requests + world.idp_b.authorize_requests, [])

    def test_an_unknown_provider_is_a_400(self) -> None:
        world = make_world()
        page = self.get_success(world.get("/oauth2/start?provider=nobody&rd=%2F", follow=False))
        self.assertEqual(page.status, 400)
        self.assertIn("no such identity provider", page.text)
        self.assertIsNone(world.browser.cookie(CSRF))

    def test_skip_provider_button_still_shows_the_choice_with_several_providers(self) -> None:
        world = make_world(skip_provider_button=True)
        page = self.get_success(world.get("/app", follow=False))
        self.assertEqual(page.status, 403)
        self.assertIn('name="provider" value="corp"', page.text)
        sign_in = self.get_success(world.get("/oauth2/sign_in?provider=corp", follow=False))
        self.assertEqual(sign_in.status, 302)
        self.assertTrue((sign_in.header("location") or "").startswith(IDP_A + "/authorize"))

    def test_one_provider_keeps_the_plain_button_and_start(self) -> None:
        world = make_world(CORP_ONLY)
        page = self.get_success(world.get("/oauth2/sign_in"))
        self.assertIn("Sign in with Corp SSO</button>", page.text)
        self.assertNotIn('name="provider"', page.text)
        start = self.get_success(world.get("/oauth2/start?rd=%2F", follow=False))
        self.assertTrue((start.header("location") or "").startswith(IDP_A + "/authorize"))
        named = self.get_success(world.get("/oauth2/start?provider=corp", follow=False))
        self.assertEqual(named.status, 302)
        other = self.get_success(world.get("/oauth2/start?provider=partner", follow=False))
        self.assertEqual(other.status, 400)


class LoginTests(GateTestCase):
    def test_a_login_through_each_provider_is_that_providers_session(self) -> None:
        world = make_world()
        landed = self.get_success(world.login("corp"))
        self.assertEqual(landed.status, 200, landed.text)
        self.assertEqual(
            [path_of(u) for u in landed.urls],
            [
                "app.test/oauth2/start",
                "idp-a.test/authorize",
                "app.test/oauth2/callback",
                "app.test/x",
            ],
        )
        session = self.get_success(world.session())
        assert session is not None
        self.assertEqual((session.provider, session.user), ("corp", "1001"))
        self.assertEqual(landed.json()["headers"]["X-Forwarded-Email"], ["alice@example.com"])
        self.assertEqual(world.idp_b.token_requests, [])

        world.browser = Browser(world.http, world.clock)
        landed = self.get_success(world.login("partner"))
        self.assertEqual(landed.status, 200, landed.text)
        session = self.get_success(world.session())
        assert session is not None
        self.assertEqual((session.provider, session.user), ("partner", "b-2002"))
        self.assertEqual(landed.json()["headers"]["X-Forwarded-Email"], ["bob@example.org"])
        self.assertEqual(len(world.idp_a.token_requests), 1)

    def test_each_provider_gets_its_own_client_and_pkce(self) -> None:
        world = make_world()
        self.get_success(world.login("corp"))
        self.get_success(world.login("partner"))
        self.assertEqual(world.idp_a.authorize_requests[0]["client_id"], "app-a")
        self.assertEqual(world.idp_b.authorize_requests[0]["client_id"], "app-b")
        self.assertEqual(world.idp_b.authorize_requests[0]["code_challenge_method"], "S256")
        corp, partner = world.idp_a.token_requests[0], world.idp_b.token_requests[0]
        self.assertEqual(corp.auth_method, "client_secret_basic")
        # The public client: no secret at all, the PKCE verifier instead.
        self.assertIsNone(partner.auth_method)
        self.assertIn("code_verifier", partner.form)

    def test_the_callback_redeems_with_the_provider_the_login_started_with(self) -> None:
        """The sealed CSRF cookie names the provider: a later login with the other one
        replaces it, and the first login's callback no longer matches."""
        world = make_world()
        start_a = self.get_success(world.get("/oauth2/start?provider=corp", follow=False))
        authorize_a = start_a.header("location") or ""
        callback_a = self.get_success(world.get(authorize_a, follow=False)).header("location")
        self.get_success(world.get("/oauth2/start?provider=partner", follow=False))
        assert callback_a is not None
        refused = self.get_success(world.get(callback_a, follow=False))
        self.assertEqual(refused.status, 403)
        self.assertIn("login state did not match", refused.text)
        self.assertEqual(world.idp_a.token_requests + world.idp_b.token_requests, [])

    def test_the_login_log_names_the_provider(self) -> None:
        world = make_world()
        with capturedLogs() as events:
            self.get_success(world.login("partner"))
        lines = [formatEvent(e) for e in events]
        self.assertTrue(any("authenticated via OAuth2 (partner)" in line for line in lines))


class PerProviderRuleTests(GateTestCase):
    def test_allowed_groups_of_a_provider_apply_to_its_sessions_only(self) -> None:
        world = make_world()
        world.idp_a.auto_login = "bob"  # staff, not admins
        refused = self.get_success(world.login("corp"))
        self.assertEqual(refused.status, 403)
        self.assertIn("not in any of the allowed groups", refused.text)
        self.assertIsNone(world.browser.cookie(SESSION))
        # bob through the partner provider: corp's group rule is not partner's.
        allowed = self.get_success(world.login("partner"))
        self.assertEqual(allowed.status, 200, allowed.text)

    def test_email_domains_of_a_provider_apply_to_its_sessions_only(self) -> None:
        world = make_world()
        world.idp_b.auto_login = "alice"  # alice@example.com, not example.org
        refused = self.get_success(world.login("partner"))
        self.assertEqual(refused.status, 403)
        self.assertIn("alice@example.com", refused.text)
        allowed = self.get_success(world.login("corp"))
        self.assertEqual(allowed.status, 200, allowed.text)

    def test_a_user_only_one_provider_knows_signs_in_through_it(self) -> None:
        world = make_world()
        world.idp_b.auto_login = "carol"
        landed = self.get_success(world.login("partner"))
        self.assertEqual(landed.json()["headers"]["X-Forwarded-Email"], ["carol@example.org"])

    def test_global_email_domains_still_apply_to_every_provider(self) -> None:
        world = make_world(email_domains=("example.com",))
        self.assertEqual(self.get_success(world.login("corp")).status, 200)
        world.browser = Browser(world.http, world.clock)
        self.assertEqual(self.get_success(world.login("partner")).status, 403)


class SessionLifeTests(GateTestCase):
    def test_refresh_goes_to_the_sessions_provider(self) -> None:
        world = make_world(cookie_refresh=60.0)
        self.get_success(world.login("partner"))
        world.clock.advance(61)
        answer = self.get_success(world.get("/y", headers=JSON))
        self.assertEqual(answer.status, 200)
        grants = [r.form.get("grant_type") for r in world.idp_b.token_requests]
        self.assertEqual(grants, ["authorization_code", "refresh_token"])
        self.assertEqual([r.form.get("grant_type") for r in world.idp_a.token_requests], [])
        session = self.get_success(world.session())
        assert session is not None
        self.assertEqual(session.provider, "partner")
        self.assertEqual(session.created_at, EPOCH + 61)

    def test_sign_out_ends_the_session_at_its_provider(self) -> None:
        world = make_world()
        self.get_success(world.login("partner"))
        session = self.get_success(world.session())
        assert session is not None
        out = self.get_success(world.get("/oauth2/sign_out?rd=%2Fbye", follow=False))
        location = out.header("location") or ""
        self.assertTrue(location.startswith(IDP_B + "/end_session?"), location)
        query = parse_qs(urlsplit(location).query)
        self.assertEqual(query["id_token_hint"], [session.id_token])
        self.assertEqual(query["post_logout_redirect_uri"], [APP + "/bye"])
        self.assertEqual(query["client_id"], ["app-b"])
        back = self.get_success(world.get(location))
        self.assertEqual(back.urls[-1], APP + "/bye")
        self.assertEqual(len(world.idp_b.end_session_requests), 1)
        self.assertEqual(world.idp_a.end_session_requests, [])

    def test_a_session_of_a_provider_no_longer_configured_is_no_session(self) -> None:
        world = make_world()
        self.get_success(world.login("partner"))
        self.assertIsNotNone(world.browser.cookie(SESSION))
        world.rebuild(CORP_ONLY)
        page = self.get_success(world.get("/x", follow=False))
        self.assertEqual(page.status, 403)
        self.assertIn("Sign in with Corp SSO", page.text)
        self.assertIsNone(world.browser.cookie(SESSION))

    def test_a_session_of_a_provider_still_configured_survives_a_restart(self) -> None:
        world = make_world()
        self.get_success(world.login("corp"))
        world.rebuild(CORP_ONLY)
        self.assertEqual(self.get_success(world.get("/x", headers=JSON)).status, 200)

    def test_with_one_provider_a_session_from_before_provider_ids_is_its_session(self) -> None:
        world = make_world(CORP_ONLY)
        store = world.components.store
        for provider, expected in (("", 202), ("oidc", 202), ("corp", 202), ("partner", 401)):
            session = Session(
                user="1001",
                email="alice@example.com",
                groups=("admins",),
                created_at=EPOCH,
                provider=provider,
            )
            value = self.get_success(store.save(session, None))
            world.browser = Browser(world.http, world.clock)
            world.browser.set_cookie(APP + "/", f"{SESSION}={value}; Path=/")
            answer = self.get_success(world.get("/oauth2/auth"))
            self.assertEqual(answer.status, expected, provider)


class ProviderLogoutFailureTests(GateTestCase):
    def test_a_provider_that_cannot_say_where_to_log_out_sends_the_browser_to_rd(self) -> None:
        @attrs.define
        class NoLogout(OIDCProvider):
            async def logout_url(self, session: Session, redirect: str) -> str | None:
                raise ProviderError("discovery is down")

        plugins = Plugins.from_dict({"oidc": OIDCProviderFactory("oidc", NoLogout)})
        world = make_world(plugins=plugins)
        self.get_success(world.login("corp"))
        with capturedLogs() as events:
            out = self.get_success(world.get("/oauth2/sign_out?rd=%2Fbye", follow=False))
        self.assertEqual((out.status, out.header("location")), (302, "/bye"))
        self.assertIsNone(world.browser.cookie(SESSION))
        self.assertTrue(any("No logout at corp" in formatEvent(e) for e in events))


class AssemblyTests(GateTestCase):
    def test_every_provider_is_built_and_checked(self) -> None:
        world = make_world()
        providers = world.components.providers
        self.assertEqual(list(providers), ["corp", "partner"])
        for provider in providers.values():
            self.assertTrue(verifyObject(IProvider, provider))
        self.assertIs(world.components.provider, providers["corp"])
        self.assertEqual(
            [str(p.display_name) for p in providers.values()], ["Corp SSO", "Partner Login"]
        )

    def test_the_second_provider_does_not_inherit_the_firsts_options(self) -> None:
        config = load(TWO_PROVIDERS)
        corp, partner = provider_configs(config)
        self.assertEqual((corp.id, corp.config.client_secret), ("corp", "secret-a"))
        self.assertEqual(partner.config.client_secret, "")
        self.assertEqual(partner.config.allowed_groups, ())
        self.assertEqual(partner.config.oidc_issuer_url, IDP_B)
        self.assertEqual(partner.email_domains, ("example.org",))
        # Shared options are shared.
        self.assertEqual(partner.config.cookie_secret, config.cookie_secret)

    def test_a_provider_problem_names_the_entry(self) -> None:
        broken = TWO_PROVIDERS.replace("  clientID: app-b\n", "")
        with self.assertRaises(ConfigError) as raised:
            make_world(broken)
        self.assertIn(
            "providers[1] (partner): client_id: required; set --client-id, "
            "OAUTHGATE_CLIENT_ID or client_id",
            raised.exception.problems,
        )

    def test_bearer_tokens_with_several_providers_need_extra_jwt_issuers(self) -> None:
        with self.assertRaises(ConfigError) as raised:
            make_world(skip_jwt_bearer_tokens=True)
        self.assertIn("extra_jwt_issuers", str(raised.exception))

    def test_bearer_tokens_of_the_providers_are_not_trusted_with_several(self) -> None:
        """A bearer token skips the per-provider rules, so only extra_jwt_issuers count."""
        world = make_world(
            skip_jwt_bearer_tokens=True, extra_jwt_issuers=("https://other.test=api",)
        )
        token = world.idp_b.issue_id_token("alice", audience="app-b")
        answer = self.get_success(
            world.get("/oauth2/auth", headers={"Authorization": f"Bearer {token}"})
        )
        self.assertEqual(answer.status, 401)
        bearer = world.components.gate.credentials.bearer
        assert bearer is not None
        self.assertEqual(set(bearer.issuers), {"https://other.test"})


class DocumentationTests(GateTestCase):
    def test_the_documented_example_loads(self) -> None:
        """docs/providers/multiple.md's example is a valid file (secret paths swapped)."""
        docs = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "providers")
        with open(os.path.join(docs, "multiple.md"), encoding="utf-8") as f:
            text = f.read()
        example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
        secret = write("s3cret\n")
        self.addCleanup(os.unlink, secret)
        for path in ("/etc/oauthgate/staff-secret", "/etc/oauthgate/partner-secret"):
            example = example.replace(path, secret)
        staff, partners = provider_configs(load(example))
        self.assertEqual((staff.id, staff.type), ("staff", "oidc"))
        self.assertEqual((partners.id, partners.type), ("partners", "keycloak-oidc"))
        self.assertEqual(partners.config.client_secret, "s3cret")
        self.assertEqual(partners.email_domains, ("partner.example",))
