"""Access rules and non-browser credentials through the whole gate, in memory.

Skip-auth routes, API routes, trusted IPs and client addresses, bearer JWTs from the
fake provider, htpasswd users (Basic header and sign-in form), RFC 9728 challenges and
the auth log, all through :func:`tests.web.test_gate.make_world`. The in-memory client
connects from ``127.0.0.1`` (treq's ``RequestTraversalAgent``).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import bcrypt
from twisted.logger import LogEvent, capturedLogs, formatEvent

from oauthgate.authz.htpasswd import Htpasswd, run_inline
from oauthgate.testing import BrowserResponse, GateTestCase
from tests.authz.test_bearer import public_pem, tamper
from tests.providers.idp import hs256_token, unsigned_token
from tests.web.test_gate import APP, IDP, JSON, SESSION, GateWorld, make_world

PEER = "127.0.0.1"  # where the in-memory client connects from
RESOURCE = "https://app.test/api"
METADATA_URL = "https://app.test/.well-known/oauth-protected-resource/api"
BROWSER_ACCEPT = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
FORGED_IDENTITY = {
    "X-Forwarded-Email": "mallory@example.com",
    "X-Forwarded-User": "mallory",
    "X-Forwarded-Groups": "admins",
    "X_Forwarded_User": "mallory",
    "X-Auth-Request-Email": "mallory@example.com",
    "GAP-Auth": "mallory@example.com",
}
IDENTITY_HEADERS = (
    "x-forwarded-email",
    "x-forwarded-user",
    "x-forwarded-groups",
    "x_forwarded_user",
    "x-auth-request-email",
    "gap-auth",
)


def lowered(echo: dict[str, Any]) -> dict[str, list[str]]:
    """The echo upstream's headers, names lower-cased."""
    return {k.lower(): v for k, v in echo["headers"].items()}


def basic(user: str, password: str) -> dict[str, str]:
    value = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {value}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def auth_events(events: list[LogEvent]) -> list[str]:
    """The auth log lines, formatted."""
    return [formatEvent(e) for e in events if e.get("log_category") == "auth"]


class AccessTestCase(GateTestCase):
    def request(
        self,
        world: GateWorld,
        path: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        data: dict[str, str] | None = None,
        follow: bool = False,
    ) -> BrowserResponse:
        return self.get_success(
            world.browser.request(
                method, APP + path, headers=headers, data=data, follow_redirects=follow
            )
        )

    def assert_upstream_reached(
        self, world: GateWorld, response: BrowserResponse, path: str | None = None
    ) -> dict[str, list[str]]:
        """The response came from the echo upstream; returns the headers it received."""
        self.assertEqual(response.status, 200, response.text)
        self.assertTrue(world.upstream.seen, "the upstream saw nothing")
        echo = world.upstream.seen[-1]
        if path is not None:
            self.assertEqual(echo["path"], path)
        return lowered(echo)

    def assert_sign_in_page(self, world: GateWorld, response: BrowserResponse) -> None:
        self.assertEqual(response.status, 403, response.text)
        self.assertIn('action="/oauth2/start"', response.text)
        self.assertEqual(world.upstream.seen, [])

    def assert_json_401(self, world: GateWorld, response: BrowserResponse) -> None:
        self.assertEqual(response.status, 401, response.text)
        self.assertEqual(response.header("content-type"), "application/json")
        response.json()
        self.assertIsNone(response.header("location"))
        self.assertEqual(world.upstream.seen, [])


# -- skip-auth routes ---------------------------------------------------------------------


class SkipRouteTests(AccessTestCase):
    def test_a_skipped_route_reaches_the_upstream_without_a_session(self) -> None:
        world = make_world(skip_auth_routes=("^/public/",))
        response = self.request(world, "/public/logo.png", headers=BROWSER_ACCEPT)
        headers = self.assert_upstream_reached(world, response, "/public/logo.png")
        self.assertIsNone(world.browser.cookie(SESSION))
        for name in IDENTITY_HEADERS:
            self.assertNotIn(name, headers)

    def test_spoofed_identity_headers_are_removed_on_a_skipped_route(self) -> None:
        world = make_world(skip_auth_routes=("^/public/",))
        response = self.request(world, "/public/x", headers=FORGED_IDENTITY)
        headers = self.assert_upstream_reached(world, response)
        for name in IDENTITY_HEADERS:
            self.assertNotIn(name, headers)
        self.assertNotIn("mallory", json.dumps(headers))

    def test_a_route_that_does_not_match_still_needs_a_login(self) -> None:
        world = make_world(skip_auth_routes=("^/public/",))
        self.assert_sign_in_page(world, self.request(world, "/private/x"))

    def test_method_rule_skips_only_that_method(self) -> None:
        world = make_world(skip_auth_routes=("GET=^/status",))
        self.assert_upstream_reached(world, self.request(world, "/status"))
        self.assert_json_401(world, self.request(world, "/status", method="POST", headers=JSON))
        self.assert_json_401(world, self.request(world, "/other", headers=JSON))

    def test_method_names_are_matched_case_insensitively(self) -> None:
        world = make_world(skip_auth_routes=("get=^/status",))
        self.assert_upstream_reached(world, self.request(world, "/status"))

    def test_negated_method_rule_skips_every_other_method(self) -> None:
        """``POST!=^/admin``: every method but POST on paths that do not match ^/admin.

        oauth2-proxy's grammar: the method must match and the path must not.
        """
        world = make_world(skip_auth_routes=("POST!=^/admin",))
        self.assert_upstream_reached(world, self.request(world, "/reports"))
        self.assert_json_401(world, self.request(world, "/admin/users", headers=JSON))

    def test_legacy_skip_auth_regex_skips_every_method(self) -> None:
        world = make_world(skip_auth_regex=("^/health$",))
        self.assert_upstream_reached(world, self.request(world, "/health"))
        world.upstream.seen.clear()
        self.assert_upstream_reached(world, self.request(world, "/health", method="POST"))
        world.upstream.seen.clear()
        self.assert_json_401(world, self.request(world, "/healthy", headers=JSON))

    def test_a_query_string_cannot_make_a_path_match(self) -> None:
        world = make_world(skip_auth_routes=("/public", r"\.png$"))
        for path in ("/admin?/public", "/admin?x=/public", "/admin?logo.png", "/admin?a=b.png"):
            self.assert_json_401(world, self.request(world, path, headers=JSON))

    def test_an_encoded_hash_cannot_make_a_path_match(self) -> None:
        """``%23`` ends the path for the rules (GHSA-pxq7-h93f-9jrg)."""
        world = make_world(skip_auth_routes=("/public", r"\.png$"))
        for path in ("/admin%23/public", "/admin%23.png", "/admin%23x/../public"):
            self.assert_json_401(world, self.request(world, path, headers=JSON))

    def test_dot_segments_are_resolved_before_matching(self) -> None:
        world = make_world(skip_auth_routes=("^/public/",))
        self.assert_json_401(world, self.request(world, "/public/../admin", headers=JSON))
        self.assert_json_401(world, self.request(world, "/public/%2e%2e/admin", headers=JSON))
        self.assert_json_401(world, self.request(world, "/public%2f..%2fadmin", headers=JSON))

    def test_a_skipped_route_with_a_valid_session_passes_the_identity_on(self) -> None:
        world = make_world(skip_auth_routes=("^/public/",))
        self.get_success(world.login())
        world.upstream.seen.clear()
        headers = self.assert_upstream_reached(
            world, self.request(world, "/public/x", headers=FORGED_IDENTITY)
        )
        self.assertEqual(headers["x-forwarded-email"], ["alice@example.com"])

    def test_preflight_requests_skip_auth_when_asked(self) -> None:
        world = make_world(skip_auth_preflight=True)
        cors = {"Origin": "https://other.test", "Access-Control-Request-Method": "PUT"}
        self.assert_upstream_reached(
            world, self.request(world, "/api/orders", method="OPTIONS", headers=cors)
        )
        world.upstream.seen.clear()
        self.assert_json_401(world, self.request(world, "/api/orders", headers=JSON))

    def test_preflight_requests_need_a_login_by_default(self) -> None:
        world = make_world()
        answer = self.request(world, "/api/orders", method="OPTIONS", headers=JSON)
        self.assert_json_401(world, answer)


# -- API routes and what unauthenticated clients get ------------------------------------


class ApiRouteTests(AccessTestCase):
    def test_an_api_route_gets_401_json_even_from_a_browser(self) -> None:
        world = make_world(api_routes=("^/api/",))
        answer = self.request(world, "/api/orders", headers=BROWSER_ACCEPT)
        self.assert_json_401(world, answer)
        self.assertNotIn("Sign in", answer.text)

    def test_an_api_route_is_matched_on_the_uri_with_its_query(self) -> None:
        world = make_world(api_routes=(r"format=json",))
        self.assert_json_401(
            world, self.request(world, "/orders?format=json", headers=BROWSER_ACCEPT)
        )

    def test_other_routes_still_get_the_sign_in_page_in_a_browser(self) -> None:
        world = make_world(api_routes=("^/api/",))
        self.assert_sign_in_page(world, self.request(world, "/app", headers=BROWSER_ACCEPT))

    def test_a_client_accepting_anything_gets_401_json(self) -> None:
        world = make_world()
        self.assert_json_401(world, self.request(world, "/data", headers={"Accept": "*/*"}))

    def test_a_client_without_accept_gets_401_json(self) -> None:
        world = make_world()
        world.browser.default_headers.pop("Accept")
        self.assert_json_401(world, self.request(world, "/data"))

    def test_a_browser_gets_the_sign_in_page(self) -> None:
        world = make_world()
        self.assert_sign_in_page(world, self.request(world, "/data", headers=BROWSER_ACCEPT))


# -- trusted IPs and the client address --------------------------------------------------


class TrustedIPTests(AccessTestCase):
    SPOOFS = (
        {"X-Real-IP": "10.1.2.3"},
        {"X-Forwarded-For": "10.1.2.3"},
        {"X-Forwarded-For": "10.1.2.3, 10.1.2.4"},
        {"Forwarded": "for=10.1.2.3"},
        {"X-Real-IP": "10.1.2.3", "X-Forwarded-For": "10.1.2.3"},
    )

    def test_a_trusted_peer_address_needs_no_login(self) -> None:
        world = make_world(trusted_ips=(PEER,))
        headers = self.assert_upstream_reached(
            world, self.request(world, "/x", headers=FORGED_IDENTITY)
        )
        for name in IDENTITY_HEADERS:
            self.assertNotIn(name, headers)

    def test_trusted_networks_hold_the_peer(self) -> None:
        for entry in ("127.0.0.0/8", "::ffff:127.0.0.0/104", "127.0.0.1/32"):
            world = make_world(trusted_ips=("192.0.2.0/24", entry))
            if entry.startswith("::ffff:"):
                # An IPv4 peer is compared as IPv4: a mapped network does not hold it.
                self.assert_json_401(world, self.request(world, "/x", headers=JSON))
            else:
                self.assert_upstream_reached(world, self.request(world, "/x"))

    def test_without_reverse_proxy_headers_cannot_make_a_client_trusted(self) -> None:
        world = make_world(trusted_ips=("10.0.0.0/8",))
        for spoof in self.SPOOFS:
            answer = self.request(world, "/x", headers={**JSON, **spoof})
            self.assert_json_401(world, answer)

    def test_with_a_real_ip_header_from_a_trusted_proxy_the_header_decides(self) -> None:
        world = make_world(
            trusted_ips=("10.0.0.0/8",),
            reverse_proxy=True,
            trusted_proxy_ips=(PEER,),
            redirect_url=APP + "/oauth2/callback",
        )
        self.assert_upstream_reached(world, self.request(world, "/x", headers={"X-Real-IP": "10.9.9.9"}))
        world.upstream.seen.clear()
        self.assert_json_401(
            world, self.request(world, "/x", headers={**JSON, "X-Real-IP": "192.0.2.1"})
        )
        # X-Real-IP is the header: an X-Forwarded-For naming a trusted IP is not read.
        self.assert_json_401(
            world, self.request(world, "/x", headers={**JSON, "X-Forwarded-For": "10.9.9.9"})
        )

    def test_a_peer_that_is_not_a_trusted_proxy_cannot_name_the_client(self) -> None:
        world = make_world(
            trusted_ips=("10.0.0.0/8",),
            reverse_proxy=True,
            trusted_proxy_ips=("192.0.2.10",),
            redirect_url=APP + "/oauth2/callback",
        )
        for spoof in self.SPOOFS:
            self.assert_json_401(world, self.request(world, "/x", headers={**JSON, **spoof}))

    def test_x_forwarded_for_takes_the_right_most_untrusted_hop(self) -> None:
        world = make_world(
            trusted_ips=("203.0.113.7",),
            reverse_proxy=True,
            trusted_proxy_ips=(PEER, "10.0.0.0/8"),
            real_client_ip_header="X-Forwarded-For",
            redirect_url=APP + "/oauth2/callback",
        )
        table = [
            # (X-Forwarded-For, trusted?)
            ("203.0.113.7", True),
            ("198.51.100.9, 203.0.113.7", True),
            ("198.51.100.9, 203.0.113.7, 10.0.0.2", True),
            ("203.0.113.7, 10.0.0.2, 10.0.0.3", True),
            # The client prepends the trusted address: the proxy appended the real one.
            ("203.0.113.7, 198.51.100.9", False),
            ("203.0.113.7, 198.51.100.9, 10.0.0.2", False),
            ("203.0.113.7,198.51.100.9", False),
            ("203.0.113.7, not-an-ip", False),
            ("", False),
        ]
        for value, trusted in table:
            world.upstream.seen.clear()
            headers = {**JSON, "X-Forwarded-For": value} if value else JSON
            answer = self.request(world, "/x", headers=headers)
            if trusted:
                self.assert_upstream_reached(world, answer)
            else:
                self.assert_json_401(world, answer)

    def test_x_forwarded_for_lines_are_read_as_one_list(self) -> None:
        world = make_world(
            trusted_ips=("203.0.113.7",),
            reverse_proxy=True,
            trusted_proxy_ips=(PEER,),
            real_client_ip_header="X-Forwarded-For",
            redirect_url=APP + "/oauth2/callback",
        )
        d = world.http.request(
            "GET",
            APP + "/x",
            headers={
                "Accept": ["application/json"],
                "X-Forwarded-For": ["203.0.113.7", "198.51.100.9"],
            },
        )
        self.assertEqual(self.successResultOf(d).code, 401)

    def test_the_auth_log_names_the_trusted_ip(self) -> None:
        world = make_world(trusted_ips=(PEER,))
        with capturedLogs() as events:
            self.assert_upstream_reached(world, self.request(world, "/x"))
        self.assertTrue(
            any(f"trusted IP {PEER}" in line for line in auth_events(events)),
            auth_events(events),
        )

