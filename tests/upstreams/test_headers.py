"""Tests for oauthgate.upstreams.headers: what crosses the proxy and what does not."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from oauthgate.upstreams.headers import (
    HOP_BY_HOP,
    add_forwarded_headers,
    connection_tokens,
    forwarded_for,
    replace_headers,
    strip_hop_by_hop,
)


class StripHopByHopTests(SynchronousTestCase):
    def test_removes_every_hop_by_hop_header_and_keeps_the_rest(self) -> None:
        headers = Headers({name: [b"x"] for name in HOP_BY_HOP})
        headers.setRawHeaders(b"Accept", [b"text/html"])
        self.assertEqual(
            list(strip_hop_by_hop(headers).getAllRawHeaders()), [(b"Accept", [b"text/html"])]
        )

    def test_removes_headers_named_by_connection_in_any_case(self) -> None:
        headers = Headers(
            {
                b"Connection": [b"X-Private, x-other"],
                b"X-Private": [b"1"],
                b"X-Other": [b"2"],
                b"X-Kept": [b"3"],
            }
        )
        self.assertEqual(list(strip_hop_by_hop(headers).getAllRawHeaders()), [(b"X-Kept", [b"3"])])

    def test_leaves_its_argument_alone(self) -> None:
        headers = Headers({b"Upgrade": [b"websocket"]})
        strip_hop_by_hop(headers)
        self.assertTrue(headers.hasHeader(b"Upgrade"))

    def test_also_removes_extra_names(self) -> None:
        headers = Headers({b"Host": [b"a"], b"Accept": [b"*/*"]})
        self.assertFalse(strip_hop_by_hop(headers, also=[b"host"]).hasHeader(b"Host"))

    def test_connection_tokens_are_lower_case_and_trimmed(self) -> None:
        headers = Headers({b"Connection": [b" Keep-Alive ,Upgrade", b"X-A,,"]})
        self.assertEqual(connection_tokens(headers), {b"keep-alive", b"upgrade", b"x-a"})


class ForwardedHeadersTests(SynchronousTestCase):
    def test_forwarded_for_appends_the_client_to_every_earlier_hop(self) -> None:
        self.assertEqual(
            forwarded_for([b"1.1.1.1", b"2.2.2.2, 3.3.3.3"], "4.4.4.4"),
            b"1.1.1.1, 2.2.2.2, 3.3.3.3, 4.4.4.4",
        )

    def test_forwarded_for_is_absent_without_any_address(self) -> None:
        self.assertIsNone(forwarded_for(None, None))

    def test_proto_and_host_are_set_from_the_connection(self) -> None:
        headers = Headers()
        add_forwarded_headers(headers, client_ip="10.0.0.9", secure=True, host=b"app.example")
        self.assertEqual(headers.getRawHeaders(b"X-Forwarded-For"), [b"10.0.0.9"])
        self.assertEqual(headers.getRawHeaders(b"X-Forwarded-Proto"), [b"https"])
        self.assertEqual(headers.getRawHeaders(b"X-Forwarded-Host"), [b"app.example"])

    def test_proto_and_host_set_by_a_proxy_in_front_are_kept(self) -> None:
        headers = Headers({b"X-Forwarded-Proto": [b"https"], b"X-Forwarded-Host": [b"front"]})
        add_forwarded_headers(headers, client_ip=None, secure=False, host=b"back")
        self.assertEqual(headers.getRawHeaders(b"X-Forwarded-Proto"), [b"https"])
        self.assertEqual(headers.getRawHeaders(b"X-Forwarded-Host"), [b"front"])


class ReplaceHeadersTests(SynchronousTestCase):
    def test_replacements_drop_every_client_copy(self) -> None:
        headers = Headers({b"X-Forwarded-User": [b"mallory", b"eve"]})
        replace_headers(headers, [(b"x-forwarded-user", b"alice")])
        self.assertEqual(headers.getRawHeaders(b"X-Forwarded-User"), [b"alice"])

    def test_a_name_given_twice_keeps_both_values(self) -> None:
        headers = Headers()
        replace_headers(headers, [(b"X-A", b"1"), (b"X-A", b"2")])
        self.assertEqual(headers.getRawHeaders(b"X-A"), [b"1", b"2"])
