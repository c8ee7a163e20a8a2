"""Tests for oauthgate.sessions.cookies: attributes, Domain choice, splitting, clearing."""

from __future__ import annotations

import attrs
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from oauthgate.config.options import Config
from oauthgate.sessions.cookies import (
    MAX_SET_COOKIE,
    CookieSettings,
    _family_pattern,
    choose_domain,
    clear,
    read_value,
    write_value,
)

NAME = "_oauth2_proxy"
SETTINGS = CookieSettings(
    name=NAME,
    domains=(),
    path="/",
    expire=3600.0,
    secure=True,
    httponly=True,
    samesite="lax",
)


def make_request(
    host: bytes = b"app.example.com", cookies: dict[str, str] | None = None
) -> Request:
    """A real twisted.web request with a Host header and the given cookies."""
    request = Request(DummyChannel())
    request.requestHeaders.setRawHeaders(b"host", [host])
    if cookies:
        header = "; ".join(f"{k}={v}" for k, v in cookies.items())
        request.requestHeaders.setRawHeaders(b"cookie", [header.encode()])
    request.parseCookies()
    return request


def set_cookies(request: Request) -> list[str]:
    return [cookie.decode("ascii") for cookie in request.cookies]


def parse(header: str) -> tuple[str, str, dict[str, str]]:
    """(name, value, attributes) of one Set-Cookie header; flags map to ""."""
    pair, *attributes = header.split("; ")
    name, _, value = pair.partition("=")
    parsed = {}
    for attribute in attributes:
        key, _, attribute_value = attribute.partition("=")
        parsed[key] = attribute_value
    return name, value, parsed


def browser_jar(request: Request) -> dict[str, str]:
    """The cookies a browser keeps after applying the response's Set-Cookie headers."""
    jar = {k.decode(): v.decode() for k, v in request.received_cookies.items()}
    for header in set_cookies(request):
        name, value, attributes = parse(header)
        if attributes.get("Max-Age") == "0":
            jar.pop(name, None)
        else:
            jar[name] = value
    return jar


class CookieSettingsTests(SynchronousTestCase):
    def test_settings_come_from_the_cookie_options(self) -> None:
        config = Config(
            cookie_name="_gate",
            cookie_domains=(".example.com",),
            cookie_path="/app",
            cookie_expire=600.0,
            cookie_secure=False,
            cookie_httponly=False,
            cookie_samesite="Strict",
        )
        self.assertEqual(
            CookieSettings.from_config(config),
            CookieSettings(
                name="_gate",
                domains=(".example.com",),
                path="/app",
                expire=600.0,
                secure=False,
                httponly=False,
                samesite="strict",
            ),
        )

    def test_unknown_samesite_is_refused(self) -> None:
        self.assertRaises(ValueError, attrs.evolve, SETTINGS, samesite="sometimes")

    def test_name_that_is_not_a_cookie_token_is_refused(self) -> None:
        self.assertRaises(ValueError, attrs.evolve, SETTINGS, name="bad name;")


class ChooseDomainTests(SynchronousTestCase):
    def test_domain_table(self) -> None:
        domains = (".example.com", "example.com", "app.example.com", "other.org")
        table = [
            ("app.example.com", "app.example.com"),  # the longest match wins
            ("x.app.example.com", "app.example.com"),
            ("APP.Example.COM", "app.example.com"),  # case does not matter
            ("app.example.com:8443", "app.example.com"),  # the port is ignored
            ("www.example.com", ".example.com"),  # first of equally long matches
            ("example.com", ".example.com"),
            ("evilexample.com", None),  # not a label boundary
            ("example.com.evil.net", None),
            ("other.org.", "other.org"),
            ("unrelated.net", None),
            ("[::1]:8080", None),
        ]
        for host, expected in table:
            self.assertEqual(choose_domain(domains, host), expected, host)

    def test_dotted_and_bare_domains_both_match_sub_domains(self) -> None:
        self.assertEqual(choose_domain(("example.com",), "app.example.com"), "example.com")
        self.assertEqual(choose_domain((".example.com",), "app.example.com"), ".example.com")

    def test_longest_domain_wins_whatever_the_configured_order(self) -> None:
        domains = ("example.com", "b.a.example.com", "a.example.com")
        self.assertEqual(choose_domain(domains, "c.b.a.example.com"), "b.a.example.com")

    def test_no_match_is_logged_at_debug(self) -> None:
        with capturedLogs() as events:
            self.assertIsNone(choose_domain(("example.com",), "evilexample.com"))
        self.assertEqual([e["log_level"] for e in events], [LogLevel.debug])


class WriteValueTests(SynchronousTestCase):
    def test_attributes_are_exactly_as_configured_for_each_samesite(self) -> None:
        for samesite, spelled in (("lax", "Lax"), ("strict", "Strict"), ("none", "None")):
            request = make_request()
            write_value(request, attrs.evolve(SETTINGS, samesite=samesite), "v1")
            self.assertEqual(
                set_cookies(request),
                [f"{NAME}=v1; Path=/; Max-Age=3600; Secure; HttpOnly; SameSite={spelled}"],
            )

    def test_empty_samesite_secure_and_httponly_off_leave_attributes_out(self) -> None:
        request = make_request()
        settings = attrs.evolve(SETTINGS, samesite="", secure=False, httponly=False)
        write_value(request, settings, "v1")
        self.assertEqual(set_cookies(request), [f"{NAME}=v1; Path=/; Max-Age=3600"])

    def test_samesite_none_without_secure_is_sent_as_configured(self) -> None:
        request = make_request()
        write_value(request, attrs.evolve(SETTINGS, samesite="none", secure=False), "v")
        self.assertEqual(
            set_cookies(request), [f"{NAME}=v; Path=/; Max-Age=3600; HttpOnly; SameSite=None"]
        )

    def test_domain_is_the_one_matching_the_request_host(self) -> None:
        request = make_request(b"app.example.com:8443")
        settings = attrs.evolve(SETTINGS, domains=("other.org", ".example.com"), path="/app")
        write_value(request, settings, "v")
        _, _, attributes = parse(set_cookies(request)[0])
        self.assertEqual(attributes["Domain"], ".example.com")
        self.assertEqual(attributes["Path"], "/app")

    def test_no_domain_attribute_when_no_domain_matches(self) -> None:
        request = make_request(b"evilexample.com")
        write_value(request, attrs.evolve(SETTINGS, domains=("example.com",)), "v")
        self.assertNotIn("Domain", parse(set_cookies(request)[0])[2])

    def test_zero_expire_makes_a_browser_session_cookie(self) -> None:
        request = make_request()
        write_value(request, attrs.evolve(SETTINGS, expire=0.0), "v")
        self.assertNotIn("Max-Age", parse(set_cookies(request)[0])[2])

    def test_expire_and_name_can_be_overridden_per_call(self) -> None:
        request = make_request()
        write_value(request, SETTINGS, "v", expire=900.0, name=f"{NAME}_csrf")
        name, _, attributes = parse(set_cookies(request)[0])
        self.assertEqual((name, attributes["Max-Age"]), (f"{NAME}_csrf", "900"))

    def test_set_cookie_reaches_the_response_headers(self) -> None:
        request = make_request()
        write_value(request, SETTINGS, "v")
        request.write(b"")
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"set-cookie"),
            [f"{NAME}=v; Path=/; Max-Age=3600; Secure; HttpOnly; SameSite=Lax".encode()],
        )

    def test_value_a_cookie_cannot_carry_is_refused(self) -> None:
        for value in ("a;b", "a b", "a\r\nSet-Cookie: x=y", 'a"', "é"):
            self.assertRaises(ValueError, write_value, make_request(), SETTINGS, value)

    def test_value_at_the_limit_is_one_cookie(self) -> None:
        request = make_request()
        overhead = len(f"{NAME}=; Path=/; Max-Age=3600; Secure; HttpOnly; SameSite=Lax")
        write_value(request, SETTINGS, "a" * (MAX_SET_COOKIE - overhead))
        self.assertEqual([parse(c)[0] for c in set_cookies(request)], [NAME])
        self.assertEqual(len(set_cookies(request)[0]), MAX_SET_COOKIE)

    def test_large_value_is_split_and_joined_on_read(self) -> None:
        value = "".join(chr(ord("a") + i % 26) for i in range(9000))
        request = make_request()
        write_value(request, attrs.evolve(SETTINGS, domains=("example.com",)), value)
        headers = set_cookies(request)
        self.assertEqual([parse(c)[0] for c in headers], [f"{NAME}_0", f"{NAME}_1", f"{NAME}_2"])
        for header in headers:
            self.assertLessEqual(len(header.encode()), MAX_SET_COOKIE)
            self.assertEqual(
                parse(header)[2],
                {
                    "Path": "/",
                    "Domain": "example.com",
                    "Max-Age": "3600",
                    "Secure": "",
                    "HttpOnly": "",
                    "SameSite": "Lax",
                },
            )
        self.assertEqual(read_value(make_request(cookies=browser_jar(request)), NAME), value)

    def test_splitting_expires_the_whole_cookie_the_request_carried(self) -> None:
        request = make_request(cookies={NAME: "old"})
        write_value(request, SETTINGS, "x" * 5000)
        jar = browser_jar(request)
        self.assertEqual(sorted(jar), [f"{NAME}_0", f"{NAME}_1"])
        self.assertIn(
            f"{NAME}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Lax", set_cookies(request)
        )

    def test_stale_parts_are_expired_when_a_session_shrinks(self) -> None:
        old = {f"{NAME}_{i}": "old" for i in range(4)}
        request = make_request(cookies={**old, "other": "keep", f"{NAME}_csrf": "keep"})
        write_value(request, SETTINGS, "y" * 5000)
        jar = browser_jar(request)
        self.assertEqual(sorted(jar), sorted([f"{NAME}_0", f"{NAME}_1", "other", f"{NAME}_csrf"]))
        expired = [parse(c)[0] for c in set_cookies(request) if parse(c)[2]["Max-Age"] == "0"]
        self.assertEqual(expired, [f"{NAME}_2", f"{NAME}_3"])
        self.assertEqual(read_value(make_request(cookies=jar), NAME), "y" * 5000)

    def test_all_parts_are_expired_when_a_session_fits_one_cookie_again(self) -> None:
        request = make_request(cookies={f"{NAME}_0": "old", f"{NAME}_1": "old"})
        write_value(request, SETTINGS, "small")
        self.assertEqual(browser_jar(request), {NAME: "small"})


class ReadValueTests(SynchronousTestCase):
    def test_whole_cookie_wins_over_parts(self) -> None:
        request = make_request(cookies={NAME: "whole", f"{NAME}_0": "part"})
        self.assertEqual(read_value(request, NAME), "whole")

    def test_parts_are_joined_until_the_first_gap(self) -> None:
        cookies = {f"{NAME}_0": "a", f"{NAME}_1": "b", f"{NAME}_3": "d"}
        self.assertEqual(read_value(make_request(cookies=cookies), NAME), "ab")

    def test_missing_cookie_reads_as_none(self) -> None:
        self.assertIsNone(read_value(make_request(cookies={f"{NAME}_1": "b"}), NAME))
        self.assertIsNone(read_value(make_request(), NAME))
        self.assertIsNone(read_value(make_request(cookies={NAME: ""}), NAME))


class ClearTests(SynchronousTestCase):
    def test_clear_expires_the_cookie_and_every_part_with_the_same_path_and_domain(self) -> None:
        cookies = {NAME: "a", f"{NAME}_0": "b", f"{NAME}_1": "c", f"{NAME}_csrf": "keep"}
        request = make_request(b"app.example.com", cookies)
        settings = attrs.evolve(SETTINGS, domains=(".example.com",), path="/app")
        clear(request, settings)
        attributes = "; Path=/app; Domain=.example.com; Max-Age=0; Secure; HttpOnly; SameSite=Lax"
        self.assertEqual(
            set_cookies(request),
            [f"{NAME}={attributes}", f"{NAME}_0={attributes}", f"{NAME}_1={attributes}"],
        )
        self.assertEqual(browser_jar(request), {f"{NAME}_csrf": "keep"})

    def test_clear_always_expires_the_named_cookie(self) -> None:
        request = make_request()
        clear(request, SETTINGS, name=f"{NAME}_csrf")
        self.assertEqual(
            set_cookies(request),
            [f"{NAME}_csrf=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Lax"],
        )


class FamilyPatternTests(SynchronousTestCase):
    def test_the_family_pattern_is_compiled_once_per_cookie_name(self) -> None:
        """Writing and clearing cookies does not compile a regex on every request."""
        _family_pattern.cache_clear()
        for _ in range(3):
            request = make_request(cookies={f"{NAME}_0": "old", f"{NAME}_csrf": "keep"})
            write_value(request, SETTINGS, "new")
            clear(request, SETTINGS)
            self.assertNotIn(f"{NAME}_csrf", {parse(c)[0] for c in set_cookies(request)})
        self.assertEqual(_family_pattern.cache_info().misses, 1)
        self.assertEqual(_family_pattern.cache_info().hits, 5)
