"""Tests for oauthgate.resource_metadata: RFC 9728 metadata and its WWW-Authenticate challenge."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from oauthgate.resource_metadata import (
    metadata_url,
    protected_resource_metadata,
    quoted_string,
    www_authenticate,
)

META = "https://api.example.com/.well-known/oauth-protected-resource"
TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


class MetadataTests(SynchronousTestCase):
    def test_document(self) -> None:
        self.assertEqual(
            protected_resource_metadata(
                "https://api.example.com",
                ["https://idp.example.com", "https://idp.example.com", ""],
                ["openid", "email", "openid"],
            ),
            {
                "resource": "https://api.example.com",
                "authorization_servers": ["https://idp.example.com"],
                "scopes_supported": ["openid", "email"],
                "bearer_methods_supported": ["header"],
            },
        )

    def test_empty_lists_are_left_out(self) -> None:
        self.assertEqual(
            protected_resource_metadata("https://api.example.com", [], []),
            {"resource": "https://api.example.com", "bearer_methods_supported": ["header"]},
        )

    def test_metadata_url_puts_the_well_known_path_before_the_resource_path(self) -> None:
        table = [
            ("https://api.example.com", META),
            ("https://api.example.com/", META),
            ("https://api.example.com/v1", META + "/v1"),
            (
                "https://api.example.com:8443/a/b/",
                "https://api.example.com:8443/.well-known/oauth-protected-resource/a/b",
            ),
            ("https://api.example.com/v1?tenant=x", META + "/v1?tenant=x"),
        ]
        for resource, expected in table:
            self.assertEqual(metadata_url(resource), expected, resource)


class WWWAuthenticateTests(SynchronousTestCase):
    def test_without_credentials_there_is_no_error(self) -> None:
        self.assertEqual(
            www_authenticate(META, error=None, description="ignored"),
            b'Bearer resource_metadata="' + META.encode() + b'"',
        )

    def test_refused_token(self) -> None:
        self.assertEqual(
            www_authenticate(META, error="invalid_token", description="the token expired"),
            b'Bearer resource_metadata="'
            + META.encode()
            + b'", error="invalid_token", error_description="the token expired"',
        )

    def test_error_without_description(self) -> None:
        self.assertEqual(
            www_authenticate(META, error="invalid_token", description=None),
            b'Bearer resource_metadata="' + META.encode() + b'", error="invalid_token"',
        )

    def test_values_cannot_break_out_of_their_quotes_or_the_header(self) -> None:
        table = [
            ('say "hi"', "say 'hi'"),
            ("back\\slash", "back/slash"),
            ("line\r\nSet-Cookie: x=1", "line??Set-Cookie: x=1"),
            ("nul\x00tab\t", "nul?tab?"),
            ("café", "caf?"),
            ("x" * 300, "x" * 200),
        ]
        for description, expected in table:
            value = www_authenticate(META, error="invalid_token", description=description)
            self.assertTrue(
                value.endswith(b'error_description="' + expected.encode() + b'"'), value
            )
            self.assertNotIn(b"\r", value)
            self.assertNotIn(b"\n", value)

    def test_error_code_is_sanitised_too(self) -> None:
        value = www_authenticate(META, error='bad"\r\ncode', description=None)
        self.assertTrue(value.endswith(b'error="bad\'??code"'), value)

    def test_a_token_is_never_echoed(self) -> None:
        value = www_authenticate(
            META, error="invalid_token", description=f"refused {TOKEN} because"
        )
        self.assertNotIn(TOKEN.encode(), value)
        self.assertIn(b'error_description="refused [token] because"', value)

    def test_metadata_url_is_a_proper_quoted_string(self) -> None:
        value = www_authenticate('https://x.test/"a\\b', error=None, description=None)
        self.assertEqual(value, b'Bearer resource_metadata="https://x.test/\\"a\\\\b"')

    def test_quoted_string(self) -> None:
        table = [
            ("plain", '"plain"'),
            ('a"b', '"a\\"b"'),
            ("a\\b", '"a\\\\b"'),
            ("tab\there", '"tab\there"'),
            ("cr\rlf\n", '"cr?lf?"'),
            ("\x7f\u00e9", '"??"'),
            ("", '""'),
        ]
        for value, expected in table:
            self.assertEqual(quoted_string(value), expected, value)
