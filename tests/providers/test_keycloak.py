"""Tests for oauthgate.providers.keycloak: Keycloak roles from the access token as groups.

The provider is tested against the tiny in-memory IdP of the OIDC tests, with access
tokens signed here; ``--allowed-role`` through the whole gate, against the FakeIdP
behind a small wrapper that makes its access tokens Keycloak-style JWTs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request
from zope.interface.verify import verifyObject

from oauthgate.config.validate import validate
from oauthgate.errors import ConfigError
from oauthgate.interfaces import IProvider, IProviderFactory
from oauthgate.plugins import Plugins
from oauthgate.providers.keycloak import (
    KeycloakOIDCProvider,
    factory,
    role_groups,
    roles_from_claims,
)
from oauthgate.session import Session
from oauthgate.testing import BrowserResponse, FakeIdP, GateTestCase
from tests.providers.idp import (
    CLIENT_ID,
    ES256,
    ISSUER,
    NONCE,
    T0,
    Answer,
    SigningKey,
    TinyIdP,
    config,
    resolve,
    unsigned_token,
)
from tests.web.test_gate import APP, JSON, GateWorld, make_world

REDIRECT = "https://app.example/oauth2/callback"
ROGUE = SigningKey("ec-1", ec.generate_private_key(ec.SECP256R1()), "ES256")  # published kid

KEYCLOAK_ROLES: dict[str, Any] = {
    "realm_access": {"roles": ["admin", "offline_access"]},
    "resource_access": {
        "app": {"roles": ["editor"]},
        "account": {"roles": ["manage-account", "view-profile"]},
    },
}
KEYCLOAK_GROUPS = (
    "role:admin",
    "role:offline_access",
    "role:app:editor",
    "role:account:manage-account",
    "role:account:view-profile",
)


def access_token_claims(clock: Clock, **changes: Any) -> dict[str, Any]:
    """What Keycloak puts in an access token for user-1 (None removes a claim)."""
    now = int(clock.seconds())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-1",
        "aud": ["account"],
        "azp": CLIENT_ID,
        "typ": "Bearer",
        "iat": now,
        "exp": now + 300,
        **KEYCLOAK_ROLES,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def sign(claims: dict[str, Any], key: SigningKey = ES256) -> str:
    return jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid})


def roles(realm: Sequence[str] = (), **clients: Sequence[str]) -> dict[str, Any]:
    return {
        "realm_access": {"roles": list(realm)},
        "resource_access": {client: {"roles": list(r)} for client, r in clients.items()},
    }


class KeycloakTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.idp = TinyIdP(self.clock)
        self.stub = StubTreq(self.idp)
        self.access_token = sign(access_token_claims(self.clock))
        self.idp.token_answer = lambda: Answer.json(self.idp.tokens(access_token=self.access_token))

    def provider(self, **changes: Any) -> KeycloakOIDCProvider:
        built = factory.build(config(provider="keycloak-oidc", **changes), self.stub, self.clock)
        assert isinstance(built, KeycloakOIDCProvider)
        return built

    def get(self, coro: Any) -> Any:
        return self.successResultOf(resolve(self.stub, coro))

    async def login(self, provider: KeycloakOIDCProvider) -> Session:
        """What the gate's callback does: redeem the code, then enrich the session once."""
        session = await provider.redeem("code-xyz", "verifier-1", REDIRECT, NONCE)
        return await provider.enrich(session)

    def groups_with_access_token(self, token: str) -> tuple[str, ...]:
        self.access_token = token
        session: Session = self.get(self.login(self.provider()))
        return session.groups


class FactoryTests(KeycloakTestCase):
    def test_factory_and_provider_provide_their_interfaces(self) -> None:
        self.assertTrue(verifyObject(IProviderFactory, factory))
        self.assertTrue(verifyObject(IProvider, self.provider()))

    def test_the_provider_is_keycloak_oidc_named_keycloak(self) -> None:
        self.assertEqual(factory.name, "keycloak-oidc")
        self.assertEqual(self.provider().id, "keycloak-oidc")
        self.assertEqual(self.provider().display_name, "Keycloak")
        self.assertEqual(self.provider(provider_display_name="Corp").display_name, "Corp")

    def test_the_installed_entry_point_finds_the_factory(self) -> None:
        found = Plugins.from_entry_points().provider_factory("keycloak-oidc")
        self.assertIs(found, factory)

    def test_options_are_checked_as_for_oidc(self) -> None:
        with self.assertRaises(ConfigError) as e:
            factory.build(
                config(provider="keycloak-oidc", oidc_issuer_url=""), self.stub, self.clock
            )
        self.assertIn("--provider=keycloak-oidc", e.exception.problems[0])


class RolesTests(KeycloakTestCase):
    def test_realm_and_client_roles_join_the_groups_after_login(self) -> None:
        session = self.get(self.login(self.provider()))
        self.assertEqual(session.groups, ("admins", "staff", *KEYCLOAK_GROUPS))
        self.assertEqual(session.access_token, self.access_token)
        self.assertEqual(session.provider, "keycloak-oidc")

    def test_groups_from_userinfo_are_still_fetched_when_the_id_token_has_none(self) -> None:
        """Roles are added after enrich asked userinfo, so they do not hide missing groups."""
        self.idp.claims["groups"] = None
        self.idp.userinfo = {"sub": "user-1", "groups": ["from-userinfo"]}
        session = self.get(self.login(self.provider()))
        self.assertEqual(session.groups, ("from-userinfo", *KEYCLOAK_GROUPS))

    def test_enriching_twice_adds_each_role_once(self) -> None:
        provider = self.provider()
        session = self.get(self.login(provider))
        self.assertEqual(self.get(provider.enrich(session)).groups, session.groups)

    def test_a_forged_access_token_gives_no_roles(self) -> None:
        """Signed by a key the realm does not publish, under a published key id."""
        with capturedLogs() as events:
            groups = self.groups_with_access_token(sign(access_token_claims(self.clock), ROGUE))
        self.assertEqual(groups, ("admins", "staff"))
        refusals = [e for e in events if "roles" in e.get("log_format", "")]
        self.assertEqual(len(refusals), 1)
        self.assertEqual(refusals[0]["log_level"].name, "warn")
        self.assertIn("signature", str(refusals[0]["reason"]))

    def test_an_unsigned_access_token_gives_no_roles(self) -> None:
        token = unsigned_token({"alg": "none", "kid": "ec-1"}, access_token_claims(self.clock))
        self.assertEqual(self.groups_with_access_token(token), ("admins", "staff"))

    def test_an_expired_access_token_gives_no_roles(self) -> None:
        now = int(self.clock.seconds())
        claims = access_token_claims(self.clock, iat=now - 600, exp=now - 120)
        self.assertEqual(self.groups_with_access_token(sign(claims)), ("admins", "staff"))

    def test_an_access_token_without_expiry_gives_no_roles(self) -> None:
        claims = access_token_claims(self.clock, exp=None)
        self.assertEqual(self.groups_with_access_token(sign(claims)), ("admins", "staff"))

    def test_an_access_token_from_another_issuer_gives_no_roles(self) -> None:
        claims = access_token_claims(self.clock, iss="https://evil.example")
        self.assertEqual(self.groups_with_access_token(sign(claims)), ("admins", "staff"))

    def test_an_opaque_access_token_gives_no_roles_and_the_login_goes_on(self) -> None:
        with capturedLogs() as events:
            groups = self.groups_with_access_token("opaque-token")
        self.assertEqual(groups, ("admins", "staff"))
        self.assertNotIn("opaque-token", json.dumps([str(e) for e in events]))

    def test_a_token_is_never_logged(self) -> None:
        token = sign(access_token_claims(self.clock), ROGUE)
        with capturedLogs() as events:
            self.groups_with_access_token(token)
        self.assertNotIn(token.split(".")[2], " ".join(str(e) for e in events))


class RefreshTests(KeycloakTestCase):
    def test_refresh_reads_the_roles_again_and_a_removed_role_disappears(self) -> None:
        provider = self.provider()
        session = self.get(self.login(provider))
        self.assertIn("role:admin", session.groups)
        self.clock.advance(600)
        self.access_token = sign(access_token_claims(self.clock, **roles(["viewer"], app=[])))
        refreshed = self.get(provider.refresh(session))
        self.assertEqual(refreshed.groups, ("admins", "staff", "role:viewer"))
        self.assertEqual(refreshed.access_token, self.access_token)

    def test_a_removed_role_disappears_when_the_refresh_has_no_id_token(self) -> None:
        """Then the groups come from userinfo; the old roles must not be kept with them."""
        provider = self.provider()
        session = self.get(self.login(provider))
        self.access_token = sign(access_token_claims(self.clock, **roles(app=["editor"])))
        self.idp.token_answer = lambda: Answer.json(
            self.idp.tokens(access_token=self.access_token, id_token=None)
        )
        self.idp.userinfo_answer = Answer(503, b"down", b"text/plain")  # groups kept as they were
        refreshed = self.get(provider.refresh(session))
        self.assertEqual(refreshed.groups, ("admins", "staff", "role:app:editor"))

    def test_a_refreshed_access_token_that_does_not_verify_drops_every_role(self) -> None:
        provider = self.provider()
        session = self.get(self.login(provider))
        self.access_token = sign(access_token_claims(self.clock), ROGUE)
        refreshed = self.get(provider.refresh(session))
        self.assertEqual(refreshed.groups, ("admins", "staff"))

    def test_a_session_without_refresh_token_is_not_refreshed(self) -> None:
        session = Session(user="user-1", email="a@example.com", groups=("role:admin",))
        self.assertIsNone(self.get(self.provider().refresh(session)))


class ClaimsTests(SynchronousTestCase):
    def test_realm_roles_then_every_clients_roles(self) -> None:
        self.assertEqual(roles_from_claims(KEYCLOAK_ROLES), KEYCLOAK_GROUPS)

    def test_no_roles_claims_give_no_groups(self) -> None:
        self.assertEqual(roles_from_claims({"sub": "x"}), ())

    def test_roles_of_the_wrong_shape_are_skipped(self) -> None:
        claims = {
            "realm_access": {"roles": ["ok", 3, "", None, "ok"]},
            "resource_access": {"app": {"roles": "admin"}, "web": ["x"], "api": {"roles": ["r"]}},
        }
        self.assertEqual(roles_from_claims(claims), ("role:ok", "role:api:r"))
        self.assertEqual(roles_from_claims({"realm_access": ["admin"]}), ())

    def test_allowed_roles_become_role_groups(self) -> None:
        self.assertEqual(
            role_groups(["admin", "app:editor", " ", ""]), ("role:admin", "role:app:editor")
        )


class ValidationTests(SynchronousTestCase):
    def valid(self, **changes: Any) -> Any:
        return attrs.evolve(
            config(
                cookie_secret="k" * 32,
                email_domains=("example.com",),
                upstreams=("http://127.0.0.1:3000/",),
            ),
            **changes,
        )

    def test_allowed_roles_with_another_provider_is_an_error_saying_so(self) -> None:
        with self.assertRaises(ConfigError) as e:
            validate(self.valid(provider="oidc", allowed_roles=("admin",)))
        self.assertEqual(
            e.exception.problems,
            (
                "allowed_roles: only provider keycloak-oidc has roles, the provider is "
                "'oidc'; use allowed_groups instead",
            ),
        )

    def test_allowed_roles_with_keycloak_oidc_is_valid(self) -> None:
        validate(self.valid(provider="keycloak-oidc", allowed_roles=("admin", "app:editor")))


# -- through the gate --------------------------------------------------------------------


class KeycloakRealm(Resource):
    """The FakeIdP, made to hand out Keycloak-style access tokens.

    Its token endpoint's opaque access token is swapped for a JWT the FakeIdP signs,
    with the roles ``roles`` gives the user; userinfo gets the opaque token back.
    """

    isLeaf = True

    def __init__(self, idp: FakeIdP, roles: dict[str, dict[str, Any]]) -> None:
        Resource.__init__(self)
        self._idp = idp
        self._inner: IResource = idp.resource()
        self.roles = roles  # FakeIdP user name -> roles claims
        self._opaque: dict[str, str] = {}

    def access_token(self, user: str) -> str:
        """A Keycloak access token for ``user`` with the client as audience (a mapper)."""
        return self._idp.issue_id_token(user, audience="app", typ="Bearer", **self.roles[user])

    def render(self, request: Request) -> bytes:
        path = request.path
        if path == b"/userinfo":
            _, _, token = (request.getHeader(b"authorization") or b"").partition(b" ")
            opaque = self._opaque.get(token.decode("latin-1"))
            if opaque is not None:
                request.requestHeaders.setRawHeaders(
                    b"authorization", [b"Bearer " + opaque.encode()]
                )
        body: bytes = self._inner.render(request)
        if path == b"/token" and request.code == 200:
            tokens = json.loads(body)
            claims = jwt.decode(tokens["id_token"], options={"verify_signature": False})
            user = next(n for n, u in self._idp.users.items() if u["sub"] == claims["sub"])
            signed = self.access_token(user)
            self._opaque[signed] = tokens["access_token"]
            tokens["access_token"] = signed
            body = json.dumps(tokens).encode()
        return body


class AllowedRoleTests(GateTestCase):
    def world(self, realm_roles: dict[str, dict[str, Any]], **changes: Any) -> GateWorld:
        world = make_world(
            provider="keycloak-oidc",
            email_domains=("example.com", "example.org"),
            **changes,
        )
        self.realm = KeycloakRealm(world.idp, realm_roles)
        world.hosts.add_host("idp.test", self.realm)
        return world

    def login_as(self, world: GateWorld, user: str) -> BrowserResponse:
        world.idp.auto_login = user
        return self.get_success(world.login("/page", headers=JSON))

    def test_allowed_role_admits_a_user_with_that_realm_role_and_refuses_one_without(
        self,
    ) -> None:
        users = {"alice": roles(["admin"]), "bob": roles(["user"], app=["admin"])}
        world = self.world(users, allowed_roles=("admin",))
        alice = self.login_as(world, "alice")
        self.assertEqual(alice.status, 200, alice.text)
        groups = alice.json()["headers"]["X-Forwarded-Groups"][0].split(",")
        self.assertEqual(groups, ["admins", "staff", "role:admin"])
        world.browser = world.new_browser()
        bob = self.login_as(world, "bob")
        self.assertEqual(bob.status, 403, bob.text)
        self.assertEqual(world.upstream.seen[1:], [])

    def test_a_client_role_is_allowed_as_client_colon_role(self) -> None:
        users = {"alice": roles(["editor"]), "bob": roles(app=["editor"])}
        world = self.world(users, allowed_roles=("app:editor",))
        self.assertEqual(self.login_as(world, "alice").status, 403)
        world.browser = world.new_browser()
        self.assertEqual(self.login_as(world, "bob").status, 200)

    def test_allowed_roles_and_groups_each_admit(self) -> None:
        users = {"alice": roles(), "bob": roles(["admin"])}
        world = self.world(users, allowed_roles=("admin",), allowed_groups=("admins",))
        self.assertEqual(self.login_as(world, "alice").status, 200)  # in group admins
        world.browser = world.new_browser()
        self.assertEqual(self.login_as(world, "bob").status, 200)  # has role admin

    def test_a_role_taken_away_ends_access_at_the_next_refresh(self) -> None:
        world = self.world(
            {"alice": roles(["admin"])}, allowed_roles=("admin",), cookie_refresh=60.0
        )
        self.assertEqual(self.login_as(world, "alice").status, 200)
        self.realm.roles["alice"] = roles(["user"])
        world.clock.advance(30)
        self.assertEqual(self.get_success(world.get("/page")).status, 200)
        world.clock.advance(31)
        self.assertEqual(self.get_success(world.get("/page")).status, 403)

    def test_a_bearer_access_token_carries_its_roles(self) -> None:
        users = {"alice": roles(["admin"]), "bob": roles(["user"])}
        world = self.world(users, allowed_roles=("admin",), skip_jwt_bearer_tokens=True)
        headers = {**JSON, "Authorization": "Bearer " + self.realm.access_token("alice")}
        answer = self.get_success(world.get(APP + "/api", headers=headers, follow=False))
        self.assertEqual(answer.status, 200, answer.text)
        seen = {k.lower(): v for k, v in world.upstream.seen[-1]["headers"].items()}
        self.assertEqual(seen["x-forwarded-groups"], ["admins,staff,role:admin"])
        headers = {**JSON, "Authorization": "Bearer " + self.realm.access_token("bob")}
        answer = self.get_success(world.get(APP + "/api", headers=headers, follow=False))
        self.assertEqual(answer.status, 403, answer.text)

    def test_bearer_tokens_of_plain_oidc_get_no_roles(self) -> None:
        world = make_world(skip_jwt_bearer_tokens=True)
        token = world.idp.issue_id_token("alice", audience="app", **roles(["admin"]))
        answer = self.get_success(
            world.get("/api", headers={**JSON, "Authorization": f"Bearer {token}"})
        )
        self.assertEqual(answer.status, 200, answer.text)
        seen = {k.lower(): v for k, v in world.upstream.seen[-1]["headers"].items()}
        self.assertEqual(seen["x-forwarded-groups"], ["admins,staff"])
