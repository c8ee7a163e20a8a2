"""Identity headers: what is injected, and that client copies never survive."""

from __future__ import annotations

import attrs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from oauthgate.config.options import Config
from oauthgate.session import Session
from oauthgate.web.identity import IdentityHeaders

ALICE = Session(
    user="alice-sub",
    email="alice@example.com",
    groups=("admins", "staff"),
    preferred_username="alice",
    access_token="AT",
    id_token="IDT",
)


def headers_for(**changes: object) -> IdentityHeaders:
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
