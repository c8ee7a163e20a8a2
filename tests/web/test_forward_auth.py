"""``/oauth2/auth`` for Caddy ``forward_auth`` / Traefik ``forwardAuth``
(``--forward-auth-mode``): a browser without a session is sent to the sign-in for the
original URL, but only from a trusted proxy and only for a whitelisted host; nginx and API
clients keep getting 401."""

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


class ForwardAuthModeTests(AccessTestCase):
    def gate(self, **changes: Any) -> GateWorld:
        options: dict[str, Any] = {
            "reverse_proxy": True,
            "trusted_proxy_ips": (PEER,),
            "whitelist_domains": (".example.com",),
            "redirect_url": APP + "/oauth2/callback",
        }
        options.update(changes)
        return make_world(**options)

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
