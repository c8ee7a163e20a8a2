"""Tests for oauthgate.providers.pkce."""

from __future__ import annotations

import os
import string

from twisted.trial.unittest import SynchronousTestCase

from oauthgate.providers.pkce import challenge, make_verifier

# RFC 7636 appendix B.
RFC_OCTETS = bytes(
    [
        116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173,
        187, 186, 22, 212, 37, 77, 105, 214, 191, 240, 91, 88, 5, 88, 83,
        132, 141, 121,
    ]
)  # fmt: skip
RFC_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
RFC_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


class PKCETests(SynchronousTestCase):
    def test_s256_challenge_matches_rfc_7636_example(self) -> None:
        self.assertEqual(challenge(RFC_VERIFIER, "S256"), RFC_CHALLENGE)

    def test_verifier_is_base64url_of_the_random_bytes(self) -> None:
        requested = []

        def random(n: int) -> bytes:
            requested.append(n)
            return RFC_OCTETS

        self.assertEqual(make_verifier(random), RFC_VERIFIER)
        self.assertEqual(requested, [96])

    def test_verifier_is_128_unreserved_characters(self) -> None:
        verifier = make_verifier(os.urandom)
        self.assertEqual(len(verifier), 128)
        self.assertLessEqual(set(verifier), set(string.ascii_letters + string.digits + "-_"))

    def test_plain_challenge_is_the_verifier(self) -> None:
        self.assertEqual(challenge(RFC_VERIFIER, "plain"), RFC_VERIFIER)

    def test_unknown_method_is_refused(self) -> None:
        self.assertRaises(ValueError, challenge, RFC_VERIFIER, "S512")
