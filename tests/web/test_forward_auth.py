"""``/oauth2/auth`` for Caddy ``forward_auth`` / Traefik ``forwardAuth``
(``--forward-auth-mode``): a browser without a session is sent to the sign-in for the
original URL, but only from a trusted proxy and only for a whitelisted host; nginx and API
clients keep getting 401. Envoy's ``ext_authz`` asks ``/oauth2/auth/<original path>``,
which answers the same, judged by the original path."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from oauthgate.config.options import Config
from oauthgate.config.validate import validate
from oauthgate.errors import ConfigError
from tests.web.test_access import PEER, AccessTestCase
from tests.web.test_gate import APP, GateWorld, make_world

CADDY = {
    "X-Forwarded-Method": "GET",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "app1.example.com",
    "X-Forwarded-Uri": "/page?x=1",
}
ORIGINAL = "https://app1.example.com/page?x=1"
# What Envoy's ext_authz sends with allowed_headers x-forwarded-proto/-host (and Host).
ENVOY = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "app1.example.com"}
BROWSER = {"Accept": "text/html,*/*;q=0.8"}


def start_for(url: str) -> str:
    return "/oauth2/start?rd=" + quote(url, safe="")


def behind_proxy(**changes: Any) -> GateWorld:
    """A gate behind a trusted front proxy (the in-memory client's address)."""
    options: dict[str, Any] = {
        "reverse_proxy": True,
        "trusted_proxy_ips": (PEER,),
        "whitelist_domains": (".example.com",),
        "redirect_url": APP + "/oauth2/callback",
    }
    options.update(changes)
    return make_world(**options)


class ForwardAuthModeTests(AccessTestCase):
    def gate(self, **changes: Any) -> GateWorld:
        return behind_proxy(**changes)

    def auth(self, world: GateWorld, headers: dict[str, str]) -> Any:
        return self.request(world, "/oauth2/auth", headers=headers)

    def test_caddy_gets_a_redirect_to_the_sign_in_for_the_original_url(self) -> None:
        for mode in ("auto", "redirect"):
            answer = self.auth(self.gate(forward_auth_mode=mode), CADDY)
            self.assertEqual(answer.status, 302, mode)
            self.assertEqual(
                answer.header("location"), "/oauth2/start?rd=" + quote(ORIGINAL, safe="")
            )

    def test_nginx_keeps_getting_401(self) -> None:
        nginx = {k: v for k, v in CADDY.items() if k != "X-Forwarded-Method"}
        self.assertEqual(self.auth(self.gate(), nginx).status, 401)
        self.assertEqual(self.auth(self.gate(forward_auth_mode="nginx"), CADDY).status, 401)
        self.assertEqual(self.auth(self.gate(forward_auth_mode="redirect"), nginx).status, 302)

    def test_api_clients_get_401(self) -> None:
        answer = self.auth(self.gate(), {**CADDY, "Accept": "application/json"})
        self.assertEqual(answer.status, 401)

    def test_a_host_outside_the_whitelist_is_never_a_redirect_target(self) -> None:
        for host in ("evil.example", "app1.example.com.evil.example", "a@evil.example"):
            answer = self.auth(self.gate(), {**CADDY, "X-Forwarded-Host": host})
            self.assertEqual(answer.status, 401, host)
            self.assertIsNone(answer.header("location"))

    def test_forwarded_headers_from_an_untrusted_peer_get_401(self) -> None:
        for changes in ({"trusted_proxy_ips": ("192.0.2.1",)}, {"reverse_proxy": False}):
            self.assertEqual(self.auth(self.gate(**changes), CADDY).status, 401)

    def test_an_unknown_mode_is_a_configuration_error(self) -> None:
        with self.assertRaises(ConfigError) as raised:
            validate(Config(forward_auth_mode="traefik"))
        self.assertIn(
            "forward_auth_mode: must be auto, nginx or redirect, got 'traefik'",
            raised.exception.problems,
        )


class EnvoyPathPrefixTests(AccessTestCase):
    """Envoy appends the original path to ``path_prefix: /oauth2/auth``."""

    def gate(self, **changes: Any) -> GateWorld:
        return behind_proxy(**changes)

    def test_a_logged_in_user_passes_with_the_identity_headers(self) -> None:
        world = self.gate()
        self.get_success(world.login())
        answer = self.request(world, "/oauth2/auth/page?x=1", headers=ENVOY)
        self.assertEqual(answer.status, 202, answer.text)
        self.assertEqual(answer.header("x-auth-request-email"), "alice@example.com")
        self.assertEqual(self.request(world, "/oauth2/authx/page").status, 404)

    def test_a_browser_without_session_is_sent_to_sign_in_for_the_original_url(self) -> None:
        for mode in ("auto", "redirect"):
            world = self.gate(forward_auth_mode=mode)
            answer = self.request(world, "/oauth2/auth/page?x=1", headers={**ENVOY, **BROWSER})
            self.assertEqual(answer.status, 302, mode)
            self.assertEqual(answer.header("location"), start_for(ORIGINAL))
        world = self.gate(forward_auth_mode="nginx")
        answer = self.request(world, "/oauth2/auth/page", headers={**ENVOY, **BROWSER})
        self.assertEqual(answer.status, 401)

    def test_without_x_forwarded_host_the_host_header_names_the_site(self) -> None:
        world = self.gate(whitelist_domains=("app.test",))
        headers = {"X-Forwarded-Proto": "https", **BROWSER}
        answer = self.request(world, "/oauth2/auth/page", headers=headers)
        self.assertEqual(answer.header("location"), start_for("https://app.test/page"))
        # ...which must pass --whitelist-domain like X-Forwarded-Host does.
        answer = self.request(self.gate(), "/oauth2/auth/page", headers=headers)
        self.assertEqual(answer.status, 401)

    def test_skip_auth_routes_match_the_original_path(self) -> None:
        world = self.gate(skip_auth_routes=("GET=^/public/",))
        self.assertEqual(self.request(world, "/oauth2/auth/public/logo.png").status, 202)
        self.assertEqual(self.request(world, "/oauth2/auth/private").status, 401)
        post = self.request(world, "/oauth2/auth/public/logo.png", method="POST")
        self.assertEqual(post.status, 401)

    def test_an_untrusted_peer_cannot_choose_the_path_it_is_judged_by(self) -> None:
        world = self.gate(skip_auth_routes=("^/public/",), trusted_proxy_ips=("192.0.2.1",))
        answer = self.request(world, "/oauth2/auth/public/x", headers={**ENVOY, **BROWSER})
        self.assertEqual(answer.status, 401)
        self.assertIsNone(answer.header("location"))

    def test_client_forwarded_headers_cannot_pick_another_path_or_method(self) -> None:
        """Envoy passes allowed client headers through: an X-Forwarded-Uri or
        X-Forwarded-Method from the client must not make /admin look like /public/."""
        world = self.gate(skip_auth_routes=("GET=^/public/",), skip_auth_preflight=True)
        forged = {"X-Forwarded-Uri": "/public/x"}
        self.assertEqual(self.request(world, "/oauth2/auth/admin", headers=forged).status, 401)
        preflight = {"X-Forwarded-Method": "OPTIONS"}
        self.assertEqual(self.request(world, "/oauth2/auth/admin", headers=preflight).status, 401)

    def test_the_original_query_imposes_no_group_restriction(self) -> None:
        world = self.gate()
        self.get_success(world.login())
        answer = self.request(world, "/oauth2/auth/page?allowed_groups=nope", headers=ENVOY)
        self.assertEqual(answer.status, 202)


class ForwardedApiRouteTests(AccessTestCase):
    """``--api-route`` is matched on the original request's path, not ``/oauth2/auth``."""

    def gate(self, **changes: Any) -> GateWorld:
        return behind_proxy(api_routes=("^/api/",), **changes)

    def test_a_browser_on_an_api_route_gets_401_not_a_redirect(self) -> None:
        world = self.gate()
        caddy = {**CADDY, **BROWSER, "X-Forwarded-Uri": "/api/items"}
        self.assertEqual(self.auth(world, caddy).status, 401)
        envoy = self.request(world, "/oauth2/auth/api/items", headers={**ENVOY, **BROWSER})
        self.assertEqual(envoy.status, 401)
        self.assertIsNone(envoy.header("location"))

    def test_other_paths_still_redirect(self) -> None:
        world = self.gate()
        self.assertEqual(self.auth(world, {**CADDY, **BROWSER}).status, 302)
        envoy = self.request(world, "/oauth2/auth/page", headers={**ENVOY, **BROWSER})
        self.assertEqual(envoy.header("location"), start_for("https://app1.example.com/page"))

    def auth(self, world: GateWorld, headers: dict[str, str]) -> Any:
        return self.request(world, "/oauth2/auth", headers=headers)
