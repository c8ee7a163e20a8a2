"""Tests for oauthgate.web.redirects: oauthgate must never be an open redirect."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, unquote_plus

from twisted.trial.unittest import SynchronousTestCase

from oauthgate.errors import ConfigError
from oauthgate.web.redirects import RedirectValidator

CORPUS = Path(__file__).parent / "data" / "openredirects.txt"

# The whitelist /work/shared/testdata/README.md prescribes for the corpus.
CORPUS_WHITELIST = (
    "foo.bar",
    ".bar.foo",
    "port.bar:8080",
    ".sub.port.bar:8080",
    "anyport.bar:*",
    ".sub.anyport.bar:*",
    "www.whitelisteddomain.tld",
    "*.wildcard.sub.port.bar:8080",
    "*.wildcard.sub.anyport.bar:*",
    "*.wildcard.bar",
    "*.wildcard.proxy.foo.bar",
)

VALID = [
    # paths on this host
    "/",
    "/foo",
    "/foo/bar?baz=1#frag",
    "/foo?next=%2Fbar",
    "/caf\u00e9",
    "/files/my%20report.pdf",
    "/a.b/c..d/.e",
    # whitelisted hosts, exact
    "http://foo.bar",
    "https://foo.bar/",
    "https://foo.bar/path?q=1",
    "https://FOO.Bar/path",
    "HTTPS://foo.bar/",
    "https://foo.bar./path",
    "https://foo.bar?q=1",
    "https://foo.bar#frag",
    # .host: apex and sub-domains
    "https://bar.foo/",
    "https://baz.bar.foo/",
    "https://a.b.bar.foo/",
    # *.host: apex and sub-domains
    "https://wildcard.bar/",
    "https://x.wildcard.bar/",
    # ports
    "http://port.bar:8080/",
    "http://port.bar:08080/",
    "http://a.sub.port.bar:8080/",
    "http://anyport.bar/",
    "http://anyport.bar:1/",
    "http://anyport.bar:65535/",
    "https://a.sub.anyport.bar:9999/",
    "https://x.wildcard.sub.port.bar:8080/",
]

INVALID = [
    "",
    # protocol-relative and slash tricks
    "//evil.com",
    "///evil.com",
    "/\\evil.com",
    "\\\\evil.com",
    "/\t/evil.com",
    "/ /evil.com",
    "/\x0b/evil.com",
    "/./evil.com",
    "/../evil.com",
    "/foo//evil.com",
    "/foo/..\\evil.com",
    "/\uff0fevil.com",
    # encoded tricks that another decoding turns into another host
    "/%2F/evil.com",
    "/%2f%2fevil.com",
    "/%5Cevil.com",
    "/%09/evil.com",
    "/%0a/evil.com",
    "/%252f%252fevil.com",
    "/foo/%2e%2e/%2f/evil.com",
    # whitespace and control characters anywhere
    "/foo bar",
    "/foo\tbar",
    "/foo\nbar",
    "/foo\rbar",
    "/foo\x0cbar",
    "/foo\x00bar",
    "/foo\x7fbar",
    "/foo\u2028bar",
    "/foo\u00a0bar",
    "/foo\u200bbar",
    "https://foo.bar/\r\nSet-Cookie:x=1",
    " https://foo.bar/",
    # other schemes and malformed ones
    "javascript:alert(1)",
    "JavaScript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "ftp://foo.bar/",
    "http:/evil.com",
    "http:evil.com",
    "http:///evil.com",
    "https:foo.bar",
    "evil.com",
    "foo.bar",
    # hosts not in the whitelist, look-alikes
    "https://evil.com/",
    "https://evilfoo.bar/",
    "https://foo.bar.evil.com/",
    "https://www.foo.bar/",
    "https://evilbar.foo/",
    "https://bar.foo.evil.com/",
    "https://foo.bar../",
    "https://.foo.bar/",
    # userinfo and backslashes in the authority
    "https://foo.bar@evil.com",
    "https://user:pass@foo.bar/",
    "https://evil.com@foo.bar/",
    "https://evil.com\\@foo.bar",
    "https://foo.bar\\@evil.com",
    "https://foo.bar\\evil.com",
    # ports
    "https://foo.bar:443/",
    "https://foo.bar:/",
    "http://port.bar/",
    "http://port.bar:8081/",
    "http://anyport.bar:0/",
    "http://anyport.bar:70000/",
    "http://anyport.bar:80a/",
    "http://sub.port.bar/",
    "http://x.wildcard.sub.port.bar:9090/",
    # percent-encoded and IDN hosts
    "https://foo%2ebar/",
    "https://%66oo.bar/",
    "https://foo.bar%2f@evil.com/",
    "https://f\u00f6o.bar/",
    "https://a.b\u0430r.foo/",
    "https://foo\u3002bar/",
]


class RedirectValidatorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.validator = RedirectValidator.from_domains(CORPUS_WHITELIST)

    def test_safe_targets_are_valid(self) -> None:
        bad = [url for url in VALID if not self.validator.is_valid(url)]
        self.assertEqual(bad, [])

    def test_open_redirect_targets_are_invalid(self) -> None:
        bad = [url for url in INVALID if self.validator.is_valid(url)]
        self.assertEqual(bad, [])

    def test_table_is_large_enough(self) -> None:
        self.assertGreaterEqual(len(VALID) + len(INVALID), 40)

    def test_no_line_of_the_open_redirect_corpus_is_valid(self) -> None:
        """Each corpus line, unescaped as a query value would be, must be refused."""
        lines = CORPUS.read_text(encoding="utf-8").split("\n")
        self.assertGreater(len(lines), 500)
        accepted = [
            line
            for line in lines
            for target in {unquote_plus(line), unquote(line)}
            if self.validator.is_valid(target)
        ]
        self.assertEqual(accepted, [])

    def test_sanitize_keeps_valid_and_replaces_invalid_with_root(self) -> None:
        self.assertEqual(self.validator.sanitize("/app?x=1"), "/app?x=1")
        self.assertEqual(self.validator.sanitize("https://foo.bar/x"), "https://foo.bar/x")
        self.assertEqual(self.validator.sanitize("//evil.com"), "/")
        self.assertEqual(self.validator.sanitize(""), "/")

    def test_without_whitelist_only_paths_are_valid(self) -> None:
        validator = RedirectValidator.from_domains([])
        self.assertTrue(validator.is_valid("/foo"))
        self.assertFalse(validator.is_valid("https://foo.bar/"))

    def test_subdomain_entry_requires_a_dot_boundary(self) -> None:
        """GHSA-4mf2-f3wh-gvf2: ``.example.com`` must not match ``badexample.com``."""
        validator = RedirectValidator.from_domains([".example.com"])
        self.assertTrue(validator.is_valid("https://example.com/"))
        self.assertTrue(validator.is_valid("https://a.example.com/"))
        self.assertFalse(validator.is_valid("https://badexample.com/"))
        self.assertFalse(validator.is_valid("https://example.com.bad.org/"))

    def test_exact_entry_does_not_match_subdomains(self) -> None:
        validator = RedirectValidator.from_domains(["example.com"])
        self.assertTrue(validator.is_valid("https://example.com/"))
        self.assertFalse(validator.is_valid("https://a.example.com/"))

    def test_idn_host_matches_only_when_whitelisted_exactly(self) -> None:
        validator = RedirectValidator.from_domains(["b\u00fccher.example", ".example"])
        self.assertTrue(validator.is_valid("https://b\u00fccher.example/"))
        self.assertFalse(validator.is_valid("https://x.b\u00fccher.example/"))
        self.assertFalse(validator.is_valid("https://\u00e9vil.example/"))

    def test_ipv6_hosts_with_ports(self) -> None:
        validator = RedirectValidator.from_domains(["[::1]:8080"])
        self.assertTrue(validator.is_valid("http://[::1]:8080/"))
        self.assertFalse(validator.is_valid("http://[::1]/"))
        self.assertFalse(validator.is_valid("http://[::2]:8080/"))

    def test_whitelist_entries_are_normalized(self) -> None:
        validator = RedirectValidator.from_domains(["  Foo.Bar.  ", ""])
        self.assertTrue(validator.is_valid("https://foo.bar/"))

    def test_malformed_whitelist_entries_are_config_errors(self) -> None:
        e = self.assertRaises(
            ConfigError,
            RedirectValidator.from_domains,
            ["good.example", "bad.example:http", "evil@host", "a..b", ".", "[::1"],
        )
        self.assertEqual(len(e.problems), 5)
        self.assertTrue(all(p.startswith("whitelist_domains: ") for p in e.problems))
        self.assertIn("'bad.example:http'", e.problems[0])
