"""Identity headers: what is injected, and that client copies never survive."""

from __future__ import annotations

import base64
from typing import Any, ClassVar

import attrs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from oauthgate.config.headers import HeaderRule, HeaderValue
from oauthgate.config.options import Config
from oauthgate.session import Session
from oauthgate.testing import GateTestCase
from oauthgate.web.identity import IdentityHeaders
from tests.web.test_gate import make_world

ALICE = Session(
    user="alice-sub",
    email="alice@example.com",
    groups=("admins", "staff"),
    preferred_username="alice",
    access_token="AT",
    id_token="IDT",
    refresh_token="RT",
)


def headers_for(**changes: Any) -> IdentityHeaders:
    return IdentityHeaders.from_config(attrs.evolve(Config(), **changes))


class StripTests(SynchronousTestCase):
    def test_spoofed_identity_headers_are_removed_in_every_spelling(self) -> None:
        """GHSA-vjrc-mh2v-45x6: underscore and case variants are header smuggling."""
        incoming = Headers()
        for name in (
            b"X-Forwarded-User",
            b"x-forwarded-email",
            b"X_Forwarded_Groups",
            b"X-AUTH-REQUEST-USER",
            b"x_auth_request_email",
            b"Gap-Auth",
            b"X-Forwarded-Access-Token",
            b"X-Forwarded-Preferred-Username",
        ):
            incoming.addRawHeader(name, b"mallory")
        incoming.addRawHeader(b"X-Other", b"kept")
        headers_for().strip_from(incoming)
        self.assertEqual([n for n, _ in incoming.getAllRawHeaders()], [b"X-Other"])

    def test_client_authorization_is_kept_unless_oauthgate_sets_it(self) -> None:
        incoming = Headers({b"Authorization": [b"Bearer client"]})
        headers_for().strip_from(incoming)
        self.assertEqual(incoming.getRawHeaders(b"authorization"), [b"Bearer client"])
        headers_for(pass_authorization_header=True).strip_from(incoming)
        self.assertIsNone(incoming.getRawHeaders(b"authorization"))


class UpstreamHeaderTests(SynchronousTestCase):
    def test_default_user_headers(self) -> None:
        self.assertEqual(
            headers_for().upstream(ALICE),
            [
                (b"X-Forwarded-User", b"alice-sub"),
                (b"X-Forwarded-Email", b"alice@example.com"),
                (b"X-Forwarded-Groups", b"admins,staff"),
                (b"X-Forwarded-Preferred-Username", b"alice"),
            ],
        )

    def test_prefer_email_to_user_drops_the_email_header(self) -> None:
        out = dict(headers_for(prefer_email_to_user=True).upstream(ALICE))
        self.assertEqual(out[b"X-Forwarded-User"], b"alice@example.com")
        self.assertNotIn(b"X-Forwarded-Email", out)

    def test_tokens_only_when_asked(self) -> None:
        self.assertNotIn(b"X-Forwarded-Access-Token", dict(headers_for().upstream(ALICE)))
        out = dict(
            headers_for(pass_access_token=True, pass_authorization_header=True).upstream(ALICE)
        )
        self.assertEqual(out[b"X-Forwarded-Access-Token"], b"AT")
        self.assertEqual(out[b"Authorization"], b"Bearer IDT")

    def test_basic_auth_needs_a_password(self) -> None:
        self.assertNotIn(b"Authorization", dict(headers_for().upstream(ALICE)))
        out = dict(headers_for(basic_auth_password="pw").upstream(ALICE))
        self.assertEqual(out[b"Authorization"], b"Basic YWxpY2Utc3ViOnB3")

    def test_no_user_headers_when_both_switches_are_off(self) -> None:
        self.assertEqual(
            headers_for(pass_user_headers=False, pass_basic_auth=False).upstream(ALICE), []
        )

    def test_line_breaks_in_claims_cannot_split_headers(self) -> None:
        evil = attrs.evolve(ALICE, email="a@example.com\r\nX-Injected: 1")
        value = dict(headers_for().upstream(evil))[b"X-Forwarded-Email"]
        self.assertNotIn(b"\r", value)
        self.assertNotIn(b"\n", value)


class ResponseHeaderTests(SynchronousTestCase):
    def test_gap_auth_always_and_x_auth_request_when_set(self) -> None:
        self.assertEqual(
            headers_for().response(ALICE, tokens=True), [(b"GAP-Auth", b"alice@example.com")]
        )
        out = dict(
            headers_for(set_xauthrequest=True, pass_access_token=True).response(ALICE, tokens=True)
        )
        self.assertEqual(out[b"X-Auth-Request-User"], b"alice-sub")
        self.assertEqual(out[b"X-Auth-Request-Email"], b"alice@example.com")
        self.assertEqual(out[b"X-Auth-Request-Groups"], b"admins,staff")
        self.assertEqual(out[b"X-Auth-Request-Preferred-Username"], b"alice")
        self.assertEqual(out[b"X-Auth-Request-Access-Token"], b"AT")


def rules_for(
    request: tuple[HeaderRule, ...] = (), response: tuple[HeaderRule, ...] = ()
) -> IdentityHeaders:
    """Headers as an alpha file with these rules sets them."""
    config = attrs.evolve(Config(), request_header_rules=request, response_header_rules=response)
    return IdentityHeaders.from_config(config)


def rule(name: str, *values: HeaderValue, preserve: bool = False) -> HeaderRule:
    return HeaderRule(name, preserve_request_value=preserve, values=values)


class RuleTests(SynchronousTestCase):
    def test_a_claim_with_a_prefix(self) -> None:
        headers = rules_for((rule("X-Token", HeaderValue("access_token", prefix="Token ")),))
        self.assertEqual(headers.upstream(ALICE), [(b"X-Token", b"Token AT")])

    def test_a_fixed_value(self) -> None:
        headers = rules_for((rule("X-Api-Key", HeaderValue(value="k3y")),))
        self.assertEqual(headers.upstream(ALICE), [(b"X-Api-Key", b"k3y")])

    def test_a_basic_auth_password_makes_basic_credentials_of_the_claim(self) -> None:
        headers = rules_for(
            (rule("Authorization", HeaderValue("email", prefix="x", basic_auth_password="pw")),)
        )
        credentials = base64.b64encode(b"alice@example.com:pw")
        self.assertEqual(headers.upstream(ALICE), [(b"Authorization", b"Basic " + credentials)])

    def test_groups_are_one_header_joined_with_commas(self) -> None:
        headers = rules_for((rule("X-Groups", HeaderValue("groups", prefix="g:")),))
        self.assertEqual(headers.upstream(ALICE), [(b"X-Groups", b"g:admins,g:staff")])

    def test_several_values_and_empty_claims(self) -> None:
        """Empty claim values are skipped; a header with no value at all is not sent."""
        headers = rules_for(
            (
                rule("X-Who", HeaderValue("preferred_username"), HeaderValue("user")),
                rule("X-Nothing", HeaderValue("expires_on")),
            )
        )
        self.assertEqual(headers.upstream(ALICE), [(b"X-Who", b"alice,alice-sub")])

    def test_times_are_written_as_oauth2_proxy_writes_them(self) -> None:
        session = attrs.evolve(ALICE, created_at=1700000000.25, expires_on=1700003600.0)
        headers = rules_for(
            (rule("X-Created", HeaderValue("created_at")), rule("X-Exp", HeaderValue("expires_on")))
        )
        self.assertEqual(
            headers.upstream(session),
            [
                (b"X-Created", b"2023-11-14 22:13:20.25 +0000 UTC"),
                (b"X-Exp", b"2023-11-14 23:13:20 +0000 UTC"),
            ],
        )
        self.assertEqual(headers.upstream(attrs.evolve(ALICE, created_at=0.0)), [])

    def test_injected_request_headers_are_stripped_from_clients_in_every_spelling(self) -> None:
        headers = rules_for((rule("X-Remote-User", HeaderValue("user")), rule("X-Strip-Only")))
        incoming = Headers()
        for name in (b"x-remote-user", b"X_Remote_User", b"X-STRIP-ONLY", b"X-Forwarded-User"):
            incoming.addRawHeader(name, b"mallory")
        incoming.addRawHeader(b"X-Other", b"kept")
        headers.strip_from(incoming)
        self.assertEqual([n for n, _ in incoming.getAllRawHeaders()], [b"X-Other"])

    def test_preserve_request_value_keeps_the_client_copy_first(self) -> None:
        headers = rules_for((rule("X-Tenant", HeaderValue(value="acme"), preserve=True),))
        incoming = Headers({b"X-Tenant": [b"client"]})
        headers.strip_from(incoming)
        self.assertEqual(incoming.getRawHeaders(b"X-Tenant"), [b"client"])
        self.assertEqual(headers.upstream(ALICE, incoming), [(b"X-Tenant", b"client,acme")])
        self.assertEqual(headers.upstream(ALICE), [(b"X-Tenant", b"acme")])

    def test_fixed_identity_headers_are_stripped_even_when_preserved(self) -> None:
        headers = rules_for((rule("X-Forwarded-User", HeaderValue("user"), preserve=True),))
        incoming = Headers({b"X-Forwarded-User": [b"mallory"]})
        headers.strip_from(incoming)
        self.assertFalse(incoming.hasHeader(b"X-Forwarded-User"))

    def test_alpha_rules_replace_the_legacy_flags(self) -> None:
        """An alpha file without injectRequestHeaders injects nothing (as in oauth2-proxy)."""
        self.assertEqual(rules_for().upstream(ALICE), [])
        self.assertEqual(
            rules_for().response(ALICE, tokens=True), [(b"GAP-Auth", b"alice@example.com")]
        )

    def test_line_breaks_in_claims_cannot_split_custom_headers(self) -> None:
        evil = attrs.evolve(ALICE, preferred_username="a\r\nX-Injected: 1")
        headers = rules_for((rule("X-Name", HeaderValue("preferred_username")),))
        self.assertEqual(headers.upstream(evil), [(b"X-Name", b"a  X-Injected: 1")])


class ResponseRuleTests(SynchronousTestCase):
    RULES = (
        rule("X-Email", HeaderValue("email")),
        rule("X-Access", HeaderValue("access_token")),
        rule("X-Id", HeaderValue("id_token", prefix="Bearer ")),
        rule("X-Refresh", HeaderValue("refresh_token")),
        rule("X-Basic", HeaderValue("user", basic_auth_password="pw")),
        rule("X-Mixed", HeaderValue("email"), HeaderValue("access_token")),
    )

    def test_auth_answers_carry_every_value(self) -> None:
        out = dict(rules_for(response=self.RULES).response(ALICE, tokens=True))
        self.assertEqual(out[b"X-Access"], b"AT")
        self.assertEqual(out[b"X-Id"], b"Bearer IDT")
        self.assertEqual(out[b"X-Refresh"], b"RT")
        self.assertEqual(out[b"X-Basic"], b"Basic " + base64.b64encode(b"alice-sub:pw"))
        self.assertEqual(out[b"X-Mixed"], b"alice@example.com,AT")

    def test_tokens_and_credentials_never_reach_the_browser(self) -> None:
        out = rules_for(response=self.RULES).response(ALICE, tokens=False)
        self.assertEqual(
            out,
            [
                (b"GAP-Auth", b"alice@example.com"),
                (b"X-Email", b"alice@example.com"),
                (b"X-Mixed", b"alice@example.com"),
            ],
        )

    def test_the_legacy_access_token_header_is_only_on_auth_answers(self) -> None:
        headers = headers_for(set_xauthrequest=True, pass_access_token=True, set_basic_auth=True)
        self.assertIn(b"X-Auth-Request-Access-Token", dict(headers.response(ALICE, tokens=True)))
        proxied = dict(headers.response(ALICE, tokens=False))
        self.assertNotIn(b"X-Auth-Request-Access-Token", proxied)
        self.assertNotIn(b"Authorization", proxied)
        self.assertEqual(proxied[b"X-Auth-Request-User"], b"alice-sub")


class LegacyConversionTests(SynchronousTestCase):
    def test_basic_and_bearer_authorization_are_one_header_as_in_oauth2_proxy(self) -> None:
        headers = headers_for(basic_auth_password="pw", pass_authorization_header=True)
        basic = b"Basic " + base64.b64encode(b"alice-sub:pw")
        self.assertEqual(dict(headers.upstream(ALICE))[b"Authorization"], basic + b",Bearer IDT")

    def test_prefer_email_to_user_also_names_the_basic_user(self) -> None:
        headers = headers_for(basic_auth_password="pw", prefer_email_to_user=True)
        basic = b"Basic " + base64.b64encode(b"alice@example.com:pw")
        self.assertEqual(dict(headers.upstream(ALICE))[b"Authorization"], basic)

    def test_set_authorization_header_answers_the_id_token(self) -> None:
        out = dict(headers_for(set_authorization_header=True).response(ALICE, tokens=True))
        self.assertEqual(out[b"Authorization"], b"Bearer IDT")


class ThroughTheGateTests(GateTestCase):
    """The rules as the gate applies them, after a real (in-memory) login."""

    RULES: ClassVar[dict[str, Any]] = {
        "request_header_rules": (
            rule("X-User-Mail", HeaderValue("email", prefix="mail:")),
            rule("X-Token", HeaderValue("access_token")),
        ),
        "response_header_rules": (
            rule("X-Who", HeaderValue("preferred_username")),
            rule("X-Id-Token", HeaderValue("id_token")),
        ),
    }

    def test_request_rules_reach_the_upstream_and_client_copies_do_not(self) -> None:
        world = make_world(**self.RULES)
        self.assertEqual(self.get_success(world.login()).status, 200)
        echoed = self.get_success(world.echo(headers={"X_User_Mail": "mallory"}))["headers"]
        self.assertEqual(echoed["x-user-mail"], ["mail:alice@example.com"])
        self.assertEqual(len(echoed["x-token"]), 1)
        self.assertNotIn("x-forwarded-user", echoed)

    def test_token_response_headers_go_to_auth_answers_only(self) -> None:
        world = make_world(**self.RULES)
        self.assertEqual(self.get_success(world.login()).status, 200)
        auth = self.get_success(world.get("/oauth2/auth"))
        self.assertEqual(auth.status, 202)
        self.assertEqual(auth.header("x-who"), "alice")
        self.assertIsNotNone(auth.header("x-id-token"))
        proxied = self.get_success(world.get("/echo"))
        self.assertEqual(proxied.status, 200)
        self.assertEqual(proxied.header("x-who"), "alice")
        self.assertIsNone(proxied.header("x-id-token"))


class RememberedHeadersTests(SynchronousTestCase):
    """The headers of a session are worked out once; what comes back is never shared."""

    def test_the_same_session_gets_the_same_headers_in_a_fresh_list(self) -> None:
        headers = headers_for(set_xauthrequest=True, pass_access_token=True)
        first = headers.response(ALICE, tokens=True)
        first.append((b"X-Mutated", b"by the caller"))
        again = headers.response(attrs.evolve(ALICE), tokens=True)
        self.assertNotIn((b"X-Mutated", b"by the caller"), again)
        self.assertEqual(again, first[:-1])
        self.assertIn((b"X-Auth-Request-Access-Token", b"AT"), again)
        self.assertNotIn(
            (b"X-Auth-Request-Access-Token", b"AT"), headers.response(ALICE, tokens=False)
        )
        upstream = headers.upstream(ALICE)
        upstream.clear()
        self.assertNotEqual(headers.upstream(ALICE), [])

    def test_another_session_gets_its_own_headers(self) -> None:
        headers = headers_for(set_xauthrequest=True)
        headers.response(ALICE, tokens=True)
        bob = attrs.evolve(ALICE, email="bob@example.com")
        self.assertIn(
            (b"X-Auth-Request-Email", b"bob@example.com"), headers.response(bob, tokens=True)
        )
        self.assertIn((b"X-Forwarded-Email", b"bob@example.com"), headers.upstream(bob))

    def test_preserved_client_values_are_taken_from_each_request(self) -> None:
        headers = IdentityHeaders.from_rules(
            [
                HeaderRule(
                    name="X-Tenant",
                    values=(HeaderValue(value="acme"),),
                    preserve_request_value=True,
                )
            ],
            [],
        )
        for client in (b"one", b"two"):
            incoming = Headers({b"X-Tenant": [client]})
            self.assertEqual(headers.upstream(ALICE, incoming), [(b"X-Tenant", client + b",acme")])

    def test_the_memos_stay_bounded(self) -> None:
        headers = headers_for(set_xauthrequest=True)
        for i in range(12_000):
            session = attrs.evolve(ALICE, email=f"user{i}@example.com")
            headers.response(session, tokens=True)
            headers.upstream(session)
        self.assertLessEqual(len(headers._responses), 10_000)
        self.assertLessEqual(len(headers._upstreams), 10_000)
        incoming = Headers()
        for i in range(3000):
            incoming.addRawHeader(f"X-Custom-{i}".encode(), b"v")
        incoming.addRawHeader(b"X_Forwarded_User", b"mallory")
        headers.strip_from(incoming)
        self.assertLessEqual(len(headers._stripped), 1024)
        names = [name for name, _ in incoming.getAllRawHeaders()]
        self.assertEqual(len(names), 3000)
        self.assertTrue(all(name.startswith(b"X-Custom-") for name in names))
