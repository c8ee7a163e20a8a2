"""Access rules and non-browser credentials through the whole gate, in memory.

Skip-auth routes, API routes, trusted IPs and client addresses, bearer JWTs from the
fake provider, htpasswd users (Basic header and sign-in form), RFC 9728 challenges and
the auth log, all through :func:`tests.web.test_gate.make_world`. The in-memory client
connects from ``127.0.0.1`` (treq's ``RequestTraversalAgent``).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bcrypt
from twisted.logger import LogEvent, capturedLogs, formatEvent

from oauthgate.authz.htpasswd import Htpasswd, run_inline
from oauthgate.testing import BrowserResponse, FakeIdP, GateTestCase
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


def auth_events(events: Sequence[LogEvent]) -> list[str]:
    """The auth log lines, formatted.

    A legacy log observer (the test runner's) empties an event's ``message`` field after
    taking a copy into ``log_legacy``; that copy is formatted when present.
    """
    return [
        str(e["log_legacy"]) if "log_legacy" in e else formatEvent(e)
        for e in events
        if e.get("log_category") == "auth"
    ]


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
        world.upstream.seen.clear()
        self.assert_json_401(world, self.request(world, "/status", method="POST", headers=JSON))
        self.assert_json_401(world, self.request(world, "/other", headers=JSON))

    def test_method_names_are_matched_case_insensitively(self) -> None:
        world = make_world(skip_auth_routes=("get=^/status",))
        self.assert_upstream_reached(world, self.request(world, "/status"))

    def test_negated_rule_skips_that_method_on_every_path_but_the_regexs(self) -> None:
        """``POST!=^/admin``: POSTs skip auth except under /admin (oauth2-proxy's grammar:
        the method must match and the path must not)."""
        world = make_world(skip_auth_routes=("POST!=^/admin",))
        self.assert_upstream_reached(world, self.request(world, "/reports", method="POST"))
        world.upstream.seen.clear()
        for method, path in (("POST", "/admin/users"), ("GET", "/reports"), ("GET", "/admin")):
            answer = self.request(world, path, method=method, headers=JSON)
            self.assert_json_401(world, answer)

    def test_negated_rule_without_a_method_skips_every_path_but_the_regexs(self) -> None:
        world = make_world(skip_auth_routes=("!=^/admin",))
        self.assert_upstream_reached(world, self.request(world, "/reports", method="DELETE"))
        world.upstream.seen.clear()
        self.assert_json_401(world, self.request(world, "/admin/x", headers=JSON))
        self.assert_json_401(world, self.request(world, "/x/../admin/x", headers=JSON))

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

    def test_a_forwarded_uri_does_not_change_which_path_a_proxied_request_is_for(self) -> None:
        """Only ``/oauth2/auth`` asks about another request; a proxied request is for its
        own path, whatever ``X-Forwarded-Uri`` a client added (nginx passes it through)."""
        world = make_world(
            skip_auth_routes=("^/public/",),
            reverse_proxy=True,
            trusted_proxy_ips=(PEER,),
            redirect_url=APP + "/oauth2/callback",
        )
        forged = {**JSON, "X-Forwarded-Uri": "/public/x", "X-Forwarded-Method": "GET"}
        self.assert_json_401(world, self.request(world, "/admin", headers=forged))

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

    def test_an_api_route_with_a_session_is_proxied(self) -> None:
        world = make_world(api_routes=("^/api/",))
        self.get_success(world.login())
        self.assert_upstream_reached(world, self.request(world, "/api/orders"), "/api/orders")

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

    def test_the_peer_is_trusted_when_a_network_holds_it(self) -> None:
        table = [
            ("127.0.0.0/8", True),
            ("127.0.0.1/32", True),
            ("127.0.0.2", False),
            ("::1", False),
            ("10.0.0.0/8", False),
        ]
        for entry, trusted in table:
            world = make_world(trusted_ips=("192.0.2.0/24", entry))
            answer = self.request(world, "/x", headers=JSON)
            if trusted:
                self.assert_upstream_reached(world, answer)
            else:
                self.assert_json_401(world, answer)

    def test_without_reverse_proxy_headers_cannot_make_a_client_trusted(self) -> None:
        world = make_world(trusted_ips=("10.0.0.0/8",))
        for spoof in self.SPOOFS:
            answer = self.request(world, "/x", headers={**JSON, **spoof})
            self.assert_json_401(world, answer)

    def test_a_trusted_ip_with_a_session_still_gets_its_identity_and_constraints(self) -> None:
        world = make_world(trusted_ips=(PEER,))
        self.get_success(world.login())
        world.upstream.seen.clear()
        headers = self.assert_upstream_reached(world, self.request(world, "/x"))
        self.assertEqual(headers["x-forwarded-email"], ["alice@example.com"])
        self.assertEqual(self.request(world, "/oauth2/auth?allowed_groups=admins").status, 202)
        self.assertEqual(self.request(world, "/oauth2/auth?allowed_groups=nope").status, 403)

    def test_with_a_real_ip_header_from_a_trusted_proxy_the_header_decides(self) -> None:
        world = make_world(
            trusted_ips=("10.0.0.0/8",),
            reverse_proxy=True,
            trusted_proxy_ips=(PEER,),
            redirect_url=APP + "/oauth2/callback",
        )
        self.assert_upstream_reached(
            world, self.request(world, "/x", headers={"X-Real-IP": "10.9.9.9"})
        )
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

    def test_behind_a_proxy_a_missing_or_bad_client_header_is_not_the_proxys_address(
        self,
    ) -> None:
        """The front proxy may itself sit in a trusted network: when its header is missing
        or garbage, the client is unknown (not trusted), never the proxy's own address."""
        world = make_world(
            trusted_ips=("127.0.0.0/8",),
            reverse_proxy=True,
            trusted_proxy_ips=(PEER,),
            redirect_url=APP + "/oauth2/callback",
        )
        for spoof in ({}, {"X-Real-IP": "not-an-ip"}, {"X-Real-IP": "1.2.3.4, 5.6.7.8"}):
            answer = self.request(world, "/x", headers={**JSON, **spoof})
            self.assert_json_401(world, answer)
        self.assertEqual(self.request(world, "/oauth2/auth").status, 401)


# -- /oauth2/auth (nginx auth_request) ----------------------------------------------------


class AuthEndpointTests(AccessTestCase):
    def behind_nginx(self, **changes: Any) -> GateWorld:
        options: dict[str, Any] = {
            "skip_auth_routes": ("^/public/",),
            "reverse_proxy": True,
            "trusted_proxy_ips": (PEER,),
            "redirect_url": APP + "/oauth2/callback",
        }
        options.update(changes)
        return make_world(**options)

    def test_a_skipped_route_in_x_forwarded_uri_is_allowed_without_a_session(self) -> None:
        world = self.behind_nginx()
        answer = self.request(world, "/oauth2/auth", headers={"X-Forwarded-Uri": "/public/x"})
        self.assertEqual(answer.status, 202)
        self.assertIsNone(answer.header("x-auth-request-email"))
        answer = self.request(world, "/oauth2/auth", headers={"X-Forwarded-Uri": "/private"})
        self.assertEqual(answer.status, 401)

    def test_the_forwarded_method_is_the_one_the_rules_see(self) -> None:
        world = self.behind_nginx(skip_auth_routes=("GET=^/public/",))
        headers = {"X-Forwarded-Uri": "/public/x", "X-Forwarded-Method": "POST"}
        self.assertEqual(self.request(world, "/oauth2/auth", headers=headers).status, 401)
        headers["X-Forwarded-Method"] = "GET"
        self.assertEqual(self.request(world, "/oauth2/auth", headers=headers).status, 202)

    def test_x_forwarded_uri_from_an_untrusted_peer_is_ignored(self) -> None:
        for changes in ({"trusted_proxy_ips": ("192.0.2.1",)}, {"reverse_proxy": False}):
            world = self.behind_nginx(**changes)
            headers = {"X-Forwarded-Uri": "/public/x"}
            self.assertEqual(self.request(world, "/oauth2/auth", headers=headers).status, 401)

    def test_a_trusted_ip_is_allowed_without_a_session(self) -> None:
        world = make_world(trusted_ips=(PEER,))
        self.assertEqual(self.request(world, "/oauth2/auth").status, 202)


# -- bearer JWTs --------------------------------------------------------------------------


class BearerTests(AccessTestCase):
    def world(self, **changes: Any) -> GateWorld:
        return make_world(skip_jwt_bearer_tokens=True, **changes)

    def token(self, world: GateWorld, user: str = "alice", **claims: Any) -> str:
        return world.idp.issue_id_token(user, audience="app", **claims)

    def refused_tokens(self, world: GateWorld) -> dict[str, str]:
        """A token per rejection reason, each otherwise fine for alice."""
        now = int(world.clock.seconds())
        kid = world.idp.signing_kid
        claims = {"iss": IDP, "aud": "app", "sub": "1001", "exp": now + 600}
        signed = self.token(world)
        return {
            "expired": self.token(world, iat=now - 7200, exp=now - 3600),
            "not yet valid": self.token(world, nbf=now + 3600),
            "wrong audience": world.idp.issue_id_token("alice", audience="another-app"),
            "wrong issuer": self.token(world, iss="https://evil.test"),
            "alg none": unsigned_token({"alg": "none", "kid": kid}, claims, b"sig"),
            "HS256 with the public key": hs256_token(
                public_pem(world.idp), {"alg": "HS256", "typ": "JWT", "kid": kid}, claims
            ),
            "tampered": tamper(signed, email="bob@example.com", sub="1002"),
            "unknown key": unsigned_token({"alg": "ES256", "kid": "nope"}, claims, b"sig"),
            "unverified email": self.token(world, "mallory"),
        }

    def test_a_token_from_the_provider_reaches_the_upstream_as_its_user(self) -> None:
        world = self.world()
        answer = self.request(world, "/api/orders", headers=bearer(self.token(world)))
        headers = self.assert_upstream_reached(world, answer, "/api/orders")
        self.assertEqual(headers["x-forwarded-email"], ["alice@example.com"])
        self.assertEqual(headers["x-forwarded-user"], ["1001"])
        self.assertEqual(headers["x-forwarded-groups"], ["admins,staff"])
        self.assertEqual(headers["x-forwarded-preferred-username"], ["alice"])
        self.assertIsNone(world.browser.cookie(SESSION))

    def test_forged_identity_headers_do_not_survive_next_to_a_token(self) -> None:
        world = self.world()
        headers = {**FORGED_IDENTITY, **bearer(self.token(world))}
        seen = self.assert_upstream_reached(world, self.request(world, "/x", headers=headers))
        self.assertEqual(seen["x-forwarded-email"], ["alice@example.com"])
        self.assertNotIn("mallory", json.dumps(seen))

    def test_a_token_as_basic_auth_password_is_accepted(self) -> None:
        world = self.world()
        answer = self.request(world, "/x", headers=basic("x-oauth-basic", self.token(world)))
        self.assertEqual(self.assert_upstream_reached(world, answer)["x-forwarded-user"], ["1001"])

    def test_tokens_are_ignored_unless_skip_jwt_bearer_tokens(self) -> None:
        world = make_world(protected_resource_metadata=RESOURCE)
        answer = self.request(world, "/x", headers={**JSON, **bearer(self.token(world))})
        self.assert_json_401(world, answer)

    def test_a_token_for_a_user_outside_the_email_domains_is_refused_with_403(self) -> None:
        world = self.world()
        answer = self.request(world, "/x", headers={**JSON, **bearer(self.token(world, "bob"))})
        self.assertEqual(answer.status, 403, answer.text)
        self.assertEqual(answer.json()["error"], "access_denied")
        self.assertIn("bob@example.org", answer.json()["message"])
        self.assertEqual(world.upstream.seen, [])

    def test_a_token_from_an_extra_issuer_for_its_audience_is_accepted(self) -> None:
        world = self.world(extra_jwt_issuers=("https://other.test=api://orders",))
        other = FakeIdP("https://other.test", world.clock)
        world.hosts.add_host("other.test", other.resource())
        token = other.issue_id_token("alice", audience="api://orders")
        self.assert_upstream_reached(world, self.request(world, "/x", headers=bearer(token)))
        world.upstream.seen.clear()
        wrong = other.issue_id_token("alice", audience="app")  # the provider's audience
        self.assert_json_401(world, self.request(world, "/x", headers={**JSON, **bearer(wrong)}))

    def test_every_refused_token_gets_401_with_invalid_token(self) -> None:
        world = self.world(protected_resource_metadata=RESOURCE)
        for reason, token in self.refused_tokens(world).items():
            answer = self.request(world, "/x", headers={**JSON, **bearer(token)})
            self.assertEqual(answer.status, 401, reason)
            challenge = answer.header("www-authenticate") or ""
            self.assertTrue(challenge.startswith("Bearer "), (reason, challenge))
            self.assertIn(f'resource_metadata="{METADATA_URL}"', challenge, reason)
            self.assertIn('error="invalid_token"', challenge, reason)
            self.assertIn("error_description=", challenge, reason)
            self.assertNotIn(token, challenge)
            self.assertEqual(world.upstream.seen, [], reason)

    def test_every_refused_token_gets_403_without_login_fallback(self) -> None:
        world = self.world(bearer_token_login_fallback=False)
        for reason, token in self.refused_tokens(world).items():
            answer = self.request(world, "/x", headers={**JSON, **bearer(token)})
            self.assertEqual(answer.status, 403, reason)
            self.assertEqual(answer.json()["error"], "invalid_token", reason)
            self.assertNotIn(token, answer.text)
            self.assertEqual(world.upstream.seen, [], reason)

    def test_a_refused_token_falls_back_to_the_cookie_session(self) -> None:
        world = self.world()
        self.get_success(world.login())
        world.upstream.seen.clear()
        expired = self.refused_tokens(world)["expired"]
        answer = self.request(world, "/x", headers=bearer(expired))
        self.assertEqual(self.assert_upstream_reached(world, answer)["x-forwarded-user"], ["1001"])

    def test_no_token_gets_401_with_a_challenge_without_error(self) -> None:
        world = self.world(protected_resource_metadata=RESOURCE)
        answer = self.request(world, "/x", headers=JSON)
        self.assert_json_401(world, answer)
        self.assertEqual(
            answer.header("www-authenticate"), f'Bearer resource_metadata="{METADATA_URL}"'
        )

    def test_no_challenge_without_protected_resource_metadata(self) -> None:
        world = self.world()
        answer = self.request(world, "/x", headers={**JSON, **bearer("ey.ey.not-a-token")})
        self.assert_json_401(world, answer)
        self.assertIsNone(answer.header("www-authenticate"))

    def test_the_auth_endpoint_answers_202_with_the_tokens_identity(self) -> None:
        world = self.world()
        answer = self.request(world, "/oauth2/auth", headers=bearer(self.token(world)))
        self.assertEqual(answer.status, 202)
        self.assertEqual(answer.header("x-auth-request-email"), "alice@example.com")
        self.assertEqual(answer.header("x-auth-request-user"), "1001")

    def test_the_auth_endpoint_challenges_a_refused_token(self) -> None:
        world = self.world(protected_resource_metadata=RESOURCE)
        expired = self.refused_tokens(world)["expired"]
        answer = self.request(world, "/oauth2/auth", headers=bearer(expired))
        self.assertEqual(answer.status, 401)
        self.assertIn('error="invalid_token"', answer.header("www-authenticate") or "")

    def test_per_location_constraints_apply_to_token_sessions(self) -> None:
        world = self.world()
        headers = bearer(self.token(world))
        table = [
            ("allowed_groups=admins", 202),
            ("allowed_groups=nope,staff", 202),
            ("allowed_groups=nope", 403),
            ("allowed_emails=alice@example.com", 202),
            ("allowed_emails=bob@example.org", 403),
            ("allowed_email_domains=example.com", 202),
            ("allowed_email_domains=example.org", 403),
        ]
        for query, status in table:
            answer = self.request(world, "/oauth2/auth?" + query, headers=headers)
            self.assertEqual(answer.status, status, query)

    def test_allowed_groups_apply_to_token_sessions(self) -> None:
        world = self.world(allowed_groups=("admins",), email_domains=("*",))
        alice = self.request(world, "/x", headers=bearer(self.token(world)))
        self.assert_upstream_reached(world, alice)
        world.upstream.seen.clear()
        bob = self.request(world, "/x", headers={**JSON, **bearer(self.token(world, "bob"))})
        self.assertEqual(bob.status, 403)
        self.assertEqual(world.upstream.seen, [])
        auth = self.request(world, "/oauth2/auth", headers=bearer(self.token(world, "bob")))
        self.assertEqual(auth.status, 401)


# -- RFC 9728 protected resource metadata -----------------------------------------------


class ResourceMetadataTests(AccessTestCase):
    def test_the_metadata_document_names_the_resource_and_the_issuer(self) -> None:
        world = make_world(protected_resource_metadata=RESOURCE, scope="openid email")
        answer = self.request(world, "/.well-known/oauth-protected-resource/api")
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.header("content-type"), "application/json")
        self.assertEqual(
            answer.json(),
            {
                "resource": RESOURCE,
                "authorization_servers": [IDP],
                "scopes_supported": ["openid", "email"],
                "bearer_methods_supported": ["header"],
            },
        )

    def test_the_metadata_of_a_root_resource_is_at_the_well_known_path(self) -> None:
        world = make_world(protected_resource_metadata=APP)
        answer = self.request(world, "/.well-known/oauth-protected-resource")
        self.assertEqual(answer.json()["resource"], APP)
        self.assertEqual(
            self.request(world, "/x", headers=JSON).header("www-authenticate"),
            f'Bearer resource_metadata="{APP}/.well-known/oauth-protected-resource"',
        )

    def test_the_metadata_lists_the_scopes_oauthgate_asks_for_by_default(self) -> None:
        """Without --scope the provider asks for "openid email profile" (plus groups with
        --allowed-group); the metadata says so too."""
        world = make_world(protected_resource_metadata=RESOURCE)
        answer = self.request(world, "/.well-known/oauth-protected-resource/api")
        self.assertEqual(answer.json().get("scopes_supported"), ["openid", "email", "profile"])

    def test_no_metadata_unless_configured(self) -> None:
        world = make_world()
        answer = self.request(world, "/.well-known/oauth-protected-resource", headers=JSON)
        self.assert_json_401(world, answer)


# -- htpasswd users -----------------------------------------------------------------------


def bcrypt_line(user: str, password: str) -> str:
    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"


def sha_line(user: str, password: str) -> str:
    digest = base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()
    return f"{user}:{{SHA}}{digest}\n"


class HtpasswdTests(AccessTestCase):
    def world(self, *, lines: str | None = None, **changes: Any) -> GateWorld:
        """A gate with a htpasswd file (carol: bcrypt, dave: SHA-1), checked inline.

        The service runs bcrypt in a thread pool that fires on the reactor; the memory
        world's reactor is a ``Clock``, so the checks run inline here instead.
        """
        path = Path(self.mktemp())
        path.write_text(
            lines if lines is not None else bcrypt_line("carol", "s3cret") + sha_line("dave", "pw"),
            "utf-8",
        )
        world = make_world(htpasswd_file=str(path), **changes)
        world.gate.credentials.htpasswd = Htpasswd(
            str(path),
            world.clock,
            run_blocking=run_inline,
            user_groups=world.gate.config.htpasswd_user_groups,
        )
        self.path = path
        return world

    def test_basic_auth_reaches_the_upstream_as_the_user_with_the_configured_groups(self) -> None:
        world = self.world(htpasswd_user_groups=("ops", "staff"))
        answer = self.request(world, "/x", headers=basic("carol", "s3cret"))
        headers = self.assert_upstream_reached(world, answer)
        self.assertEqual(headers["x-forwarded-user"], ["carol"])
        self.assertEqual(headers["x-forwarded-groups"], ["ops,staff"])
        self.assertNotIn("x-forwarded-email", headers)

    def test_sha1_entries_work_through_the_gate_as_built(self) -> None:
        """{SHA} checks need no thread: this goes through service.py's own Htpasswd."""
        path = Path(self.mktemp())
        path.write_text(sha_line("dave", "pw"), "utf-8")
        world = make_world(htpasswd_file=str(path))
        headers = self.assert_upstream_reached(
            world, self.request(world, "/x", headers=basic("dave", "pw"))
        )
        self.assertEqual(headers["x-forwarded-user"], ["dave"])

    def test_a_wrong_password_gets_401(self) -> None:
        world = self.world()
        for credentials in (basic("carol", "wrong"), basic("dave", "wrong"), basic("eve", "x")):
            answer = self.request(world, "/x", headers={**JSON, **credentials})
            self.assert_json_401(world, answer)

    def test_the_auth_endpoint_accepts_basic_auth(self) -> None:
        world = self.world()
        answer = self.request(world, "/oauth2/auth", headers=basic("carol", "s3cret"))
        self.assertEqual(answer.status, 202)
        self.assertEqual(answer.header("x-auth-request-user"), "carol")
        self.assertEqual(
            self.request(world, "/oauth2/auth", headers=basic("carol", "nope")).status, 401
        )

    def test_allowed_groups_apply_to_htpasswd_users(self) -> None:
        world = self.world(allowed_groups=("admins",), htpasswd_user_groups=("admins",))
        self.assert_upstream_reached(
            world, self.request(world, "/x", headers=basic("carol", "s3cret"))
        )
        world = self.world(allowed_groups=("admins",), htpasswd_user_groups=("staff",))
        answer = self.request(world, "/x", headers={**JSON, **basic("carol", "s3cret")})
        self.assertEqual(answer.status, 403, answer.text)
        self.assertEqual(world.upstream.seen, [])
        auth = self.request(world, "/oauth2/auth", headers=basic("carol", "s3cret"))
        self.assertEqual(auth.status, 401)

    def test_the_file_is_reloaded_when_it_changes(self) -> None:
        world = self.world()
        htpasswd = world.gate.credentials.htpasswd
        assert htpasswd is not None
        htpasswd.start()
        self.addCleanup(htpasswd.stop)
        self.path.write_text(bcrypt_line("carol", "new password, longer"), "utf-8")
        world.clock.advance(5)
        self.assert_json_401(
            world, self.request(world, "/x", headers={**JSON, **basic("carol", "s3cret")})
        )
        self.assert_upstream_reached(
            world, self.request(world, "/x", headers=basic("carol", "new password, longer"))
        )

    def test_the_sign_in_page_shows_the_password_form(self) -> None:
        world = self.world()
        page = self.request(world, "/oauth2/sign_in?rd=/inside")
        self.assertEqual(page.status, 200)
        self.assertIn('name="username"', page.text)
        self.assertIn('name="password"', page.text)
        self.assertIn('method="POST" action="/oauth2/sign_in"', page.text)
        self.assertIn('name="rd" value="/inside"', page.text)
        protected = self.request(world, "/inside")
        self.assertIn('name="password"', protected.text)

    def test_no_password_form_when_display_htpasswd_form_is_off(self) -> None:
        world = self.world(display_htpasswd_form=False)
        self.assertNotIn('name="password"', self.request(world, "/oauth2/sign_in").text)

    def test_no_password_form_without_a_htpasswd_file(self) -> None:
        world = make_world()
        self.assertNotIn('name="password"', self.request(world, "/oauth2/sign_in").text)

    def test_the_password_form_logs_in_and_redirects_to_rd(self) -> None:
        world = self.world(htpasswd_user_groups=("ops",))
        form = {"username": "carol", "password": "s3cret", "rd": "/inside?x=1"}
        answer = self.request(world, "/oauth2/sign_in", method="POST", data=form)
        self.assertEqual(answer.status, 302, answer.text)
        self.assertEqual(answer.header("location"), "/inside?x=1")
        self.assertIsNotNone(world.browser.cookie(SESSION))
        session = self.get_success(world.session())
        assert session is not None
        self.assertEqual((session.user, session.groups), ("carol", ("ops",)))
        headers = self.assert_upstream_reached(world, self.request(world, "/inside?x=1"))
        self.assertEqual(headers["x-forwarded-user"], ["carol"])

    def test_the_password_form_refuses_an_unsafe_rd(self) -> None:
        world = self.world()
        form = {"username": "carol", "password": "s3cret", "rd": "https://evil.example/"}
        answer = self.request(world, "/oauth2/sign_in", method="POST", data=form)
        self.assertEqual(answer.status, 302)
        self.assertEqual(answer.header("location"), "/")

    def test_a_wrong_password_in_the_form_gets_the_page_again_with_401(self) -> None:
        world = self.world()
        form = {"username": "carol", "password": "wrong", "rd": "/inside"}
        answer = self.request(world, "/oauth2/sign_in", method="POST", data=form)
        self.assertEqual(answer.status, 401)
        self.assertIn("Wrong user name or password", answer.text)
        self.assertIn('name="rd" value="/inside"', answer.text)
        self.assertIsNone(world.browser.cookie(SESSION))

    def test_an_empty_user_name_in_the_form_gets_400(self) -> None:
        world = self.world()
        form = {"username": "", "password": "s3cret"}
        answer = self.request(world, "/oauth2/sign_in", method="POST", data=form)
        self.assertEqual(answer.status, 400)
        self.assertIsNone(world.browser.cookie(SESSION))

    def test_the_form_refuses_a_user_outside_allowed_groups(self) -> None:
        world = self.world(allowed_groups=("admins",))
        form = {"username": "carol", "password": "s3cret"}
        answer = self.request(world, "/oauth2/sign_in", method="POST", data=form)
        self.assertEqual(answer.status, 403)
        self.assertIsNone(world.browser.cookie(SESSION))


# -- the auth log explains every decision -----------------------------------------------


class AuthLogTests(AccessTestCase):
    def logged(self, world: GateWorld, path: str, headers: dict[str, str]) -> list[str]:
        """The auth log lines one request writes."""
        with capturedLogs() as events:
            self.request(world, path, headers={**JSON, **headers})
        return auth_events(events)

    def assert_logged(self, lines: list[str], *fragments: str) -> None:
        self.assertTrue(
            any(all(f in line for f in fragments) for line in lines),
            f"no auth log line with {fragments}: {lines}",
        )

    def test_a_skip_route_names_the_rule_that_allowed_it(self) -> None:
        world = make_world(skip_auth_routes=("GET=^/public/",))
        self.assert_logged(self.logged(world, "/public/x", {}), "GET=^/public/")

    def test_a_trusted_ip_is_named(self) -> None:
        world = make_world(trusted_ips=("127.0.0.0/8",))
        self.assert_logged(self.logged(world, "/x", {}), f"trusted IP {PEER}")

    def test_a_bearer_token_that_allowed_the_request_is_named(self) -> None:
        world = make_world(skip_jwt_bearer_tokens=True)
        token = world.idp.issue_id_token("alice", audience="app")
        lines = self.logged(world, "/x", bearer(token))
        self.assert_logged(lines, "alice@example.com", "bearer token")

    def test_a_htpasswd_user_that_was_allowed_is_named(self) -> None:
        path = Path(self.mktemp())
        path.write_text(sha_line("dave", "pw"), "utf-8")
        world = make_world(htpasswd_file=str(path))
        self.assert_logged(self.logged(world, "/x", basic("dave", "pw")), "htpasswd user 'dave'")

    def test_a_refused_token_is_logged_with_the_reason_and_never_the_token(self) -> None:
        world = make_world(skip_jwt_bearer_tokens=True)
        now = int(world.clock.seconds())
        token = world.idp.issue_id_token("alice", audience="app", iat=now - 7200, exp=now - 3600)
        with capturedLogs() as events:
            self.request(world, "/x", headers={**JSON, **bearer(token)})
        lines = auth_events(events)
        self.assert_logged(lines, "AuthFailure", "token expired")
        self.assertNotIn(token.split(".")[2], "".join(formatEvent(e) for e in events))
        self.assertNotIn(token.split(".")[2], repr(events))

    def test_a_token_refused_by_the_email_rule_names_the_rule_and_the_credential(self) -> None:
        world = make_world(skip_jwt_bearer_tokens=True)
        token = world.idp.issue_id_token("bob", audience="app")
        lines = self.logged(world, "/x", bearer(token))
        self.assert_logged(lines, "AuthFailure", "bob@example.org", "bearer token")

    def test_a_wrong_password_is_logged_with_the_user_and_never_the_password(self) -> None:
        path = Path(self.mktemp())
        path.write_text(sha_line("dave", "pw"), "utf-8")
        world = make_world(htpasswd_file=str(path))
        with capturedLogs() as events:
            self.request(world, "/x", headers={**JSON, **basic("dave", "Tr0ub4dor&3")})
        self.assert_logged(auth_events(events), "AuthFailure", "'dave'")
        self.assertNotIn("Tr0ub4dor&3", repr(events))
        self.assertNotIn(basic("dave", "Tr0ub4dor&3")["Authorization"][6:], repr(events))

    def test_a_user_outside_allowed_groups_is_logged_with_the_credential(self) -> None:
        path = Path(self.mktemp())
        path.write_text(sha_line("dave", "pw"), "utf-8")
        world = make_world(htpasswd_file=str(path), allowed_groups=("admins",))
        lines = self.logged(world, "/x", basic("dave", "pw"))
        self.assert_logged(lines, "AuthFailure", "htpasswd user 'dave'")
