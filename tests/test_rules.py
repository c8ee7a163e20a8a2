"""Tests for oauthgate.rules: skip-auth routes, API routes, trusted IPs and the client address."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from oauthgate.errors import ConfigError
from oauthgate.rules import (
    PREFLIGHT_RULE,
    ApiRoutes,
    RouteRule,
    RouteRules,
    TrustedIPs,
    client_address,
    compile_skip_rules,
    normalize_path,
)


class RouteRuleParseTests(SynchronousTestCase):
    def test_grammar(self) -> None:
        # entry -> (method, regex, negate)
        table: list[tuple[str, str | None, str, bool]] = [
            ("^/public", None, "^/public", False),
            ("GET=^/public", "GET", "^/public", False),
            ("get=^/public", "GET", "^/public", False),
            ("POST!=^/api", "POST", "^/api", True),
            ("!=^/admin", None, "^/admin", True),
            ("=^/a?b=c", None, "^/a?b=c", False),
            (
                "PATCH=/second/equals?are=handled&just=fine",
                "PATCH",
                "/second/equals?are=handled&just=fine",
                False,
            ),
            ("GET=/a!=b", "GET", "/a!=b", False),
            ("WEIRD=^/x", "WEIRD", "^/x", False),
            ("GET=", "GET", "", False),
        ]
        for entry, method, regex, negate in table:
            rule = RouteRule.parse(entry)
            self.assertEqual(
                (rule.method, rule.pattern.pattern, rule.negate, rule.text),
                (method, regex, negate, entry),
                entry,
            )

    def test_bad_regex_is_an_error_naming_it(self) -> None:
        for entry, regex in [("(", "("), ("GET=^/a[", "^/a["), ("!=*x", "*x")]:
            with self.assertRaises(ValueError) as caught:
                RouteRule.parse(entry)
            self.assertTrue(
                str(caught.exception).startswith(f"error compiling regex /{regex}/: "),
                str(caught.exception),
            )

    def test_regex_with_equals_and_no_method_is_refused_not_silently_dead(self) -> None:
        """oauth2-proxy reads ``^/a?b=c`` as method ``^/A?B``: a rule that never matches."""
        with self.assertRaises(ValueError) as caught:
            RouteRule.parse("^/a?b=c")
        self.assertIn("'=^/a?b=c'", str(caught.exception))

    def test_skip_auth_regex_entries_are_method_less_and_never_negated(self) -> None:
        rule = RouteRule.from_regex("^/x!=y=z")
        self.assertEqual(
            (rule.method, rule.pattern.pattern, rule.negate), (None, "^/x!=y=z", False)
        )
        with self.assertRaises(ValueError):
            RouteRule.from_regex("(")


class RouteRuleMatchTests(SynchronousTestCase):
    def test_matching(self) -> None:
        # (entry, method, path, matches)
        table = [
            ("^/public", "GET", "/public/a", True),
            ("^/public", "DELETE", "/public/a", True),
            ("^/public", "GET", "/private", False),
            ("/public", "GET", "/x/public", True),  # unanchored unless the user anchors
            ("GET=^/public", "GET", "/public", True),
            ("GET=^/public", "get", "/public", True),
            ("GET=^/public", "POST", "/public", False),
            ("POST!=^/api", "POST", "/other", True),
            ("POST!=^/api", "POST", "/api/x", False),
            ("POST!=^/api", "GET", "/other", False),
            ("!=^/admin", "GET", "/anything", True),
            ("!=^/admin", "PUT", "/admin/x", False),
            ("GET=", "GET", "/any/thing", True),
        ]
        for entry, method, path, expected in table:
            self.assertEqual(
                RouteRule.parse(entry).matches(method, path), expected, (entry, method, path)
            )


class NormalizePathTests(SynchronousTestCase):
    def test_normalisation(self) -> None:
        table: list[tuple[str | bytes, str | None]] = [
            ("/", "/"),
            ("", None),
            ("*", None),
            ("relative/path", None),
            ("/public?x=1", "/public"),
            ("/a?x=/../b", "/a"),
            ("/public#frag", "/public"),
            ("/public%23/../admin", "/public"),
            ("/public/%23", "/public/"),
            ("/a%2523b", "/a%23b"),  # decoded once only
            ("/a/../admin", "/admin"),
            ("/a/b/..", "/a/"),
            ("/a/./b/", "/a/b/"),
            ("/./", "/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/.%2E/admin", "/admin"),
            ("//admin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/caf%C3%A9", "/café"),
            ("/caf\u00e9", "/café"),
            (b"/caf\xc3\xa9", "/café"),
            ("/%ff", "/\ufffd"),
            ("/%zz", "/%zz"),
            ("http://app.example.com/x/../y?q=1", "/y"),
            ("https://app.example.com", "/"),
            # Ambiguous: the upstream may read these either way, so no rule applies.
            ("/public%2F..%2Fadmin", None),
            ("/public%2f..%2fadmin", None),
            ("/public%5C..%5Cadmin", None),
            ("/public\\..\\admin", None),
            ("/public/..;/admin", None),
            ("/public/.;x/admin", None),
            ("/public%00", None),
        ]
        for target, expected in table:
            self.assertEqual(normalize_path(target), expected, target)

    def test_path_parameters_on_ordinary_segments_are_kept(self) -> None:
        self.assertEqual(normalize_path("/public;jsessionid=1/x"), "/public;jsessionid=1/x")


class RouteRulesTests(SynchronousTestCase):
    def rules(self, *entries: str) -> RouteRules:
        return RouteRules([RouteRule.parse(e) for e in entries])

    def test_returns_the_first_rule_that_matches(self) -> None:
        rules = self.rules("GET=^/static/", "^/static/", "^/health$")
        self.assertEqual(rules.matches("GET", "/static/app.js"), rules.rules[0])
        self.assertEqual(rules.matches("POST", "/static/app.js"), rules.rules[1])
        self.assertEqual(rules.matches("GET", "/health"), rules.rules[2])
        self.assertIsNone(rules.matches("GET", "/private"))

    def test_no_rules_match_nothing(self) -> None:
        empty = RouteRules([])
        self.assertFalse(empty)
        self.assertIsNone(empty.matches("GET", "/"))

    def test_bypass_attempts_do_not_skip_auth(self) -> None:
        """Query (GHSA-7rh7-c77v-6434), fragment (GHSA-pxq7-h93f-9jrg), dot-segments, encodings."""
        positive = self.rules("^/public/", "GET=^/static$", "^/api/ping$")
        table = [
            ("GET", "/admin?x=/public/"),
            ("GET", "/admin?/public/"),
            ("GET", "/admin#/public/"),
            ("GET", "/admin%23/public/"),
            ("GET", "/public/../admin"),
            ("GET", "/public/%2e%2e/admin"),
            ("GET", "/public/%2E%2e/admin"),
            ("GET", "/public%2F..%2Fadmin"),
            ("GET", "/public/..%2Fadmin"),
            ("GET", "/public/..;/admin"),
            ("GET", "/public\\..\\admin"),
            ("GET", "/static/../admin"),
            ("GET", "/api/ping/../../admin"),
            ("GET", "/api/ping%00"),
        ]
        for method, target in table:
            self.assertIsNone(positive.matches(method, target), target)

    def test_bypass_attempts_against_negated_rules_do_not_skip_auth(self) -> None:
        """``!=^/admin`` skips everything but /admin: disguised /admin paths must not pass."""
        negated = self.rules("!=^/admin")
        table = [
            "/admin",
            "//admin",
            "/x/../admin",
            "/./admin",
            "/%61dmin",
            "/x/%2e%2e/admin",
            "/x%2F..%2Fadmin",
            "/x/..;/admin",
            "http://app/x/../admin",
        ]
        for target in table:
            self.assertIsNone(negated.matches("GET", target), target)
        self.assertIsNotNone(negated.matches("GET", "/dashboard"))

    def test_paths_are_decoded_before_matching(self) -> None:
        rules = self.rules("^/files/report 2024$")
        self.assertIsNotNone(rules.matches("GET", "/files/report%202024"))
        self.assertIsNotNone(rules.matches("GET", "/files/report%202024?download=1"))


class CompileSkipRulesTests(SynchronousTestCase):
    def test_preflight_routes_and_regexes_in_order(self) -> None:
        rules = compile_skip_rules(["GET=^/a"], ["^/b"], skip_auth_preflight=True)
        self.assertEqual([r.text for r in rules.rules], ["skip_auth_preflight", "GET=^/a", "^/b"])
        self.assertEqual(rules.matches("OPTIONS", "/anything"), PREFLIGHT_RULE)
        self.assertIsNone(rules.matches("GET", "/other"))

    def test_without_preflight_options_is_not_skipped(self) -> None:
        self.assertIsNone(compile_skip_rules([], []).matches("OPTIONS", "/x"))

    def test_every_bad_entry_is_reported_with_its_option(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            compile_skip_rules(["GET=(", "^/ok", "^/a?b=c"], ["[", "^/fine"])
        problems = caught.exception.problems
        self.assertEqual(len(problems), 3)
        self.assertTrue(
            problems[0].startswith("skip_auth_routes: GET=(: error compiling regex /(/")
        )
        self.assertTrue(problems[1].startswith("skip_auth_routes: ^/a?b=c: "))
        self.assertTrue(problems[2].startswith("skip_auth_regex: [: error compiling regex /[/"))


class ApiRoutesTests(SynchronousTestCase):
    def test_matches_the_uri_with_its_query(self) -> None:
        routes = ApiRoutes.parse(["^/api/", r"format=json"])
        table = [
            ("/api/v1/users", True),
            ("/app?format=json", True),
            ("/app", False),
            ("/v2/api/", False),
        ]
        for uri, expected in table:
            self.assertEqual(routes.matches(uri), expected, uri)

    def test_bad_regex_is_an_error(self) -> None:
        with self.assertRaises(ValueError) as caught:
            ApiRoutes.parse(["^/ok", "(unclosed"])
        self.assertTrue(str(caught.exception).startswith("error compiling regex /(unclosed/: "))

    def test_no_routes_match_nothing(self) -> None:
        routes = ApiRoutes.parse([])
        self.assertFalse(routes)
        self.assertFalse(routes.matches("/api/"))


class TrustedIPsTests(SynchronousTestCase):
    def test_contains(self) -> None:
        ips = TrustedIPs.parse(
            ["10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "::1", " 172.16.0.0/12 ", ""]
        )
        table: list[tuple[str | None, bool]] = [
            ("10.1.2.3", True),
            ("11.0.0.1", False),
            ("192.168.1.7", True),
            ("192.168.1.8", False),
            ("172.20.0.1", True),
            ("2001:db8::42", True),
            ("2001:db9::1", False),
            ("::1", True),
            ("::2", False),
            ("::ffff:10.0.0.1", True),  # IPv4 client on a dual-stack socket
            ("fe80::1%eth0", False),
            (" 10.0.0.1 ", True),
            (None, False),
            ("", False),
            ("garbage", False),
            ("10.0.0.1:80", False),
            ("[::1]", False),
            ("10.0.0.0/8", False),
        ]
        for ip, expected in table:
            self.assertEqual(ips.contains(ip), expected, ip)

    def test_bare_addresses_are_single_hosts(self) -> None:
        ips = TrustedIPs.parse(["10.0.0.1", "2001:db8::1"])
        self.assertEqual([n.prefixlen for n in ips.networks], [32, 128])

    def test_bad_entries_are_errors_naming_them(self) -> None:
        table = [
            "10.0.0.1/24",
            "10.0.0.0/33",
            "2001:db8::1/64",
            "[::1]",
            "not-an-ip",
            "10.0.0.0/8/8",
        ]
        for entry in table:
            with self.assertRaises(ValueError) as caught:
                TrustedIPs.parse(["127.0.0.1", entry])
            self.assertIn(repr(entry), str(caught.exception))

    def test_every_bad_entry_is_named(self) -> None:
        with self.assertRaises(ValueError) as caught:
            TrustedIPs.parse(["10.0.0.1/24", "x"])
        self.assertIn("'10.0.0.1/24'", str(caught.exception))
        self.assertIn("'x'", str(caught.exception))

    def test_empty_set_contains_nothing(self) -> None:
        ips = TrustedIPs.parse([])
        self.assertFalse(ips)
        self.assertFalse(ips.contains("127.0.0.1"))


PROXIES = TrustedIPs.parse(["10.0.0.0/8", "fd00::/8"])
XFF = "X-Forwarded-For"
XRI = "X-Real-IP"


class ClientAddressTests(SynchronousTestCase):
    def test_without_reverse_proxy_the_peer_is_the_client(self) -> None:
        for header_name in (XFF, XRI):
            for proxies in (None, PROXIES):
                self.assertEqual(
                    client_address(
                        "203.0.113.9",
                        "10.0.0.1",
                        reverse_proxy=False,
                        header_name=header_name,
                        trusted_proxies=proxies,
                    ),
                    "203.0.113.9",
                )
        self.assertIsNone(
            client_address(
                None, "10.0.0.1", reverse_proxy=False, header_name=XRI, trusted_proxies=None
            )
        )
        self.assertEqual(
            client_address(
                "::ffff:203.0.113.9",
                None,
                reverse_proxy=False,
                header_name=XRI,
                trusted_proxies=None,
            ),
            "203.0.113.9",
        )

    def test_client_address_table(self) -> None:
        # (peer, header name, header value, trusted proxies, expected)
        table: list[tuple[str | None, str, str | None, TrustedIPs | None, str | None]] = [
            # X-Forwarded-For, no trusted proxies configured: the right-most entry.
            ("10.0.0.2", XFF, "203.0.113.9", None, "203.0.113.9"),
            ("10.0.0.2", XFF, "198.51.100.1, 203.0.113.9", None, "203.0.113.9"),
            ("10.0.0.2", "x-forwarded-for", "198.51.100.1,203.0.113.9", None, "203.0.113.9"),
            # With trusted proxies: the right-most entry that is not one.
            ("10.0.0.2", XFF, "203.0.113.9, 10.0.0.3", PROXIES, "203.0.113.9"),
            (
                "10.0.0.2",
                XFF,
                "198.51.100.1, 203.0.113.9, 10.0.0.3, 10.0.0.4",
                PROXIES,
                "203.0.113.9",
            ),
            ("10.0.0.2", XFF, "10.0.0.5", PROXIES, "10.0.0.5"),  # all trusted: the left-most
            ("10.0.0.2", XFF, "10.0.0.7, 10.0.0.5", PROXIES, "10.0.0.7"),
            # Ports and IPv6 forms.
            ("10.0.0.2", XFF, "203.0.113.9:5555", None, "203.0.113.9"),
            ("10.0.0.2", XFF, "[2001:db8::1]:443", None, "2001:db8::1"),
            ("10.0.0.2", XFF, "2001:db8::1", None, "2001:db8::1"),
            ("10.0.0.2", XFF, "[2001:db8::1]", None, "2001:db8::1"),
            ("fd00::2", XFF, "2001:db8::1, fd00::3", PROXIES, "2001:db8::1"),
            ("10.0.0.2", XFF, "203.0.113.9, , ", None, "203.0.113.9"),
            # Single-value headers.
            ("10.0.0.2", XRI, "203.0.113.9", PROXIES, "203.0.113.9"),
            ("10.0.0.2", XRI, "  203.0.113.9  ", None, "203.0.113.9"),
            ("10.0.0.2", "CF-Connecting-IP", "2001:db8::7", None, "2001:db8::7"),
            ("10.0.0.2", XRI, "203.0.113.9:80", None, "203.0.113.9"),
            # Missing or garbage: unknown (never the proxy's own address).
            ("10.0.0.2", XRI, None, None, None),
            ("10.0.0.2", XRI, "", PROXIES, None),
            ("10.0.0.2", XFF, " , ", None, None),
            ("10.0.0.2", XRI, "unknown", None, None),
            ("10.0.0.2", XRI, "203.0.113.9, 198.51.100.1", None, None),
            ("10.0.0.2", XFF, "203.0.113.9, garbage, 10.0.0.3", PROXIES, None),
            ("10.0.0.2", XFF, "[2001:db8::1", None, None),
            ("10.0.0.2", XFF, "[2001:db8::1]x", None, None),
            # A UNIX socket peer is local: its header is believed.
            (None, XRI, "203.0.113.9", PROXIES, "203.0.113.9"),
        ]
        for peer, name, value, proxies, expected in table:
            self.assertEqual(
                client_address(
                    peer, value, reverse_proxy=True, header_name=name, trusted_proxies=proxies
                ),
                expected,
                (peer, name, value, proxies),
            )

    def test_spoofing_attempts(self) -> None:
        """A client that wants to pass as 10.0.0.1 (a trusted_ips address) never does."""
        # (peer, header name, header value, trusted proxies, reverse_proxy)
        table: list[tuple[str, str, str, TrustedIPs | None, bool]] = [
            # No reverse proxy: headers are ignored whatever they say.
            ("203.0.113.9", XRI, "10.0.0.1", None, False),
            ("203.0.113.9", XFF, "10.0.0.1", None, False),
            # Going around the proxy straight to oauthgate: the header is ignored.
            ("203.0.113.9", XRI, "10.0.0.1", PROXIES, True),
            ("203.0.113.9", XFF, "10.0.0.1", PROXIES, True),
            # Through the proxy, prepending the address it wants to X-Forwarded-For.
            ("10.0.0.2", XFF, "10.0.0.1, 203.0.113.9", PROXIES, True),
            ("10.0.0.2", XFF, "10.0.0.1, 203.0.113.9", None, True),
            ("10.0.0.2", XFF, "10.0.0.1,203.0.113.9, 10.0.0.3", PROXIES, True),
            # Disguises of the address.
            ("10.0.0.2", XFF, "::ffff:10.0.0.1 203.0.113.9", None, True),
            ("10.0.0.2", XRI, "10.0.0.1 , 203.0.113.9", PROXIES, True),
            ("10.0.0.2", XRI, "10.0.0.1\r\nX-Real-IP: 10.0.0.1", PROXIES, True),
        ]
        trusted_ips = TrustedIPs.parse(["10.0.0.1"])
        for peer, name, value, proxies, reverse_proxy in table:
            address = client_address(
                peer, value, reverse_proxy=reverse_proxy, header_name=name, trusted_proxies=proxies
            )
            self.assertFalse(trusted_ips.contains(address), (peer, name, value, address))

    def test_proxy_address_is_not_the_client_when_the_header_is_missing(self) -> None:
        """Else every request without the header would pass ``trusted_ips=10.0.0.0/8``."""
        for proxies in (None, PROXIES):
            self.assertIsNone(
                client_address(
                    "10.0.0.2", None, reverse_proxy=True, header_name=XRI, trusted_proxies=proxies
                )
            )

    def test_empty_trusted_proxies_trust_no_peer(self) -> None:
        self.assertEqual(
            client_address(
                "10.0.0.2",
                "10.0.0.1",
                reverse_proxy=True,
                header_name=XRI,
                trusted_proxies=TrustedIPs.parse([]),
            ),
            "10.0.0.2",
        )
