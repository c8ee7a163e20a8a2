"""Tests for oauthgate.sessions.crypto: sealing and the cookie secret."""

from __future__ import annotations

import base64
import random

from twisted.trial.unittest import SynchronousTestCase

from oauthgate.sessions.crypto import MAX_CLOCK_SKEW, Sealer, decode_secret, is_fresh

SECRET = bytes(range(32))
NOW = 1_700_000_000.0
PAYLOAD = b'{"u":"alice","e":"alice@example.com"}' * 3


def counting_random(n: int) -> bytes:
    """Deterministic stand-in for os.urandom."""
    return bytes(range(n))


class DecodeSecretTests(SynchronousTestCase):
    def test_base64_url_secret_of_32_bytes_is_decoded(self) -> None:
        text = base64.urlsafe_b64encode(SECRET).decode().rstrip("=")
        self.assertEqual(decode_secret(text), SECRET)

    def test_raw_string_that_does_not_decode_to_a_key_size_is_used_as_bytes(self) -> None:
        self.assertEqual(decode_secret("0123456789abcdef"), b"0123456789abcdef")


class SealerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sealer = Sealer(SECRET)

    def test_sealed_value_opens_for_its_purpose(self) -> None:
        token = self.sealer.seal(PAYLOAD, "_oauth2_proxy", NOW)
        self.assertEqual(self.sealer.open(token, "_oauth2_proxy", 60, NOW), PAYLOAD)

    def test_every_key_size_works(self) -> None:
        for size in (16, 24, 32):
            sealer = Sealer(bytes(size))
            token = sealer.seal(b"x", "p", NOW)
            self.assertEqual(sealer.open(token, "p", 0, NOW), b"x")

    def test_secret_of_wrong_size_is_refused(self) -> None:
        for size in (0, 10, 31, 33):
            self.assertRaises(ValueError, Sealer, bytes(size))

    def test_token_is_cookie_safe_and_versioned(self) -> None:
        token = self.sealer.seal(bytes(range(256)), "p", NOW)
        self.assertTrue(token.startswith("1."))
        allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
        self.assertLessEqual(set(token), allowed)
        self.assertNotIn("=", token)

    def test_token_hides_the_payload(self) -> None:
        token = self.sealer.seal(b"alice@example.com", "p", NOW)
        raw = base64.urlsafe_b64decode(token[2:] + "==")
        self.assertNotIn(b"alice", raw)

    def test_each_seal_uses_a_fresh_nonce(self) -> None:
        self.assertNotEqual(
            self.sealer.seal(PAYLOAD, "p", NOW), self.sealer.seal(PAYLOAD, "p", NOW)
        )

    def test_injected_randomness_is_used_for_the_nonce(self) -> None:
        sealer = Sealer(SECRET, random=counting_random)
        self.assertEqual(sealer.seal(PAYLOAD, "p", NOW), sealer.seal(PAYLOAD, "p", NOW))

    def test_value_sealed_for_one_purpose_does_not_open_for_another(self) -> None:
        token = self.sealer.seal(PAYLOAD, "_oauth2_proxy", NOW)
        self.assertIsNone(self.sealer.open(token, "_oauth2_proxy_csrf", 0, NOW))
        self.assertIsNone(self.sealer.open(token, "csrf:_oauth2_proxy", 0, NOW))

    def test_value_sealed_under_another_secret_does_not_open(self) -> None:
        token = Sealer(bytes(32)).seal(PAYLOAD, "p", NOW)
        self.assertIsNone(self.sealer.open(token, "p", 0, NOW))

    def test_value_opens_until_max_age_and_not_after(self) -> None:
        token = self.sealer.seal(PAYLOAD, "p", NOW)
        self.assertEqual(self.sealer.open(token, "p", 60, NOW + 60), PAYLOAD)
        self.assertIsNone(self.sealer.open(token, "p", 60, NOW + 60.5))

    def test_max_age_zero_means_no_age_limit(self) -> None:
        token = self.sealer.seal(PAYLOAD, "p", NOW)
        self.assertEqual(self.sealer.open(token, "p", 0, NOW + 10 * 365 * 86400), PAYLOAD)

    def test_value_from_up_to_five_minutes_in_the_future_opens(self) -> None:
        token = self.sealer.seal(PAYLOAD, "p", NOW + 300)
        self.assertEqual(self.sealer.open(token, "p", 60, NOW), PAYLOAD)

    def test_value_from_further_in_the_future_does_not_open(self) -> None:
        token = self.sealer.seal(PAYLOAD, "p", NOW + 301)
        self.assertIsNone(self.sealer.open(token, "p", 0, NOW))

    def test_issue_time_cannot_be_changed(self) -> None:
        token = self.sealer.seal(PAYLOAD, "p", NOW)
        raw = bytearray(base64.urlsafe_b64decode(token[2:] + "=="))
        raw[12:20] = int(NOW + 1000).to_bytes(8, "big")  # make it look fresher
        forged = "1." + base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
        self.assertIsNone(self.sealer.open(forged, "p", 60, NOW + 1000))

    def test_every_single_character_change_is_refused(self) -> None:
        token = self.sealer.seal(b"short payload", "p", NOW)
        for i in range(len(token)):
            for replacement in "A_-.0":
                if token[i] == replacement:
                    continue
                mutated = token[:i] + replacement + token[i + 1 :]
                self.assertIsNone(self.sealer.open(mutated, "p", 0, NOW), (i, replacement))

    def test_truncated_and_extended_values_are_refused(self) -> None:
        token = self.sealer.seal(PAYLOAD, "p", NOW)
        for cut in range(len(token)):
            self.assertIsNone(self.sealer.open(token[:cut], "p", 0, NOW))
        for suffix in ("A", "AA", "=", "==", " ", ".", "\x00"):
            self.assertIsNone(self.sealer.open(token + suffix, "p", 0, NOW))

    def test_garbage_never_raises(self) -> None:
        rng = random.Random(1234)
        token = self.sealer.seal(PAYLOAD, "p", NOW)
        alphabet = "ABCxyz019-_.+/=!%é\x00\n 1."
        candidates: list[str] = ["", "1", "1.", "2." + token[2:], token.replace("1.", "1:", 1)]
        for _ in range(300):
            kind = rng.randrange(4)
            if kind == 0:
                length = rng.randrange(0, 200)
                candidates.append("".join(rng.choice(alphabet) for _ in range(length)))
            elif kind == 1:
                chars = list(token)
                for _ in range(rng.randrange(1, 5)):
                    chars[rng.randrange(len(chars))] = rng.choice(alphabet)
                candidates.append("".join(chars))
            elif kind == 2:
                start = rng.randrange(len(token))
                candidates.append(token[:start] + token[start + rng.randrange(1, 10) :])
            else:
                raw = rng.randbytes(rng.randrange(0, 120))
                candidates.append("1." + base64.urlsafe_b64encode(raw).decode().rstrip("="))
        candidates.append("1." + "A" * 200_000)
        for candidate in candidates:
            if candidate == token:
                continue
            self.assertIsNone(self.sealer.open(candidate, "p", 60, NOW), repr(candidate))

    def test_secret_is_not_in_repr(self) -> None:
        self.assertNotIn(repr(SECRET), repr(self.sealer))

    def test_open_dated_gives_the_authenticated_issue_time_with_the_data(self) -> None:
        token = self.sealer.seal(PAYLOAD, "p", NOW + 0.9)
        self.assertEqual(self.sealer.open_dated(token, "p", 60, NOW + 30), (int(NOW), PAYLOAD))
        self.assertIsNone(self.sealer.open_dated(token, "other", 60, NOW))
        self.assertIsNone(self.sealer.open_dated(token, "p", 60, NOW + 61))


class FreshnessTests(SynchronousTestCase):
    """is_fresh is the age rule of Sealer.open, also applied to remembered tokens."""

    def test_fresh_up_to_max_age_and_not_after(self) -> None:
        self.assertTrue(is_fresh(NOW, 60, NOW + 60))
        self.assertFalse(is_fresh(NOW, 60, NOW + 60.5))

    def test_max_age_zero_is_no_limit(self) -> None:
        self.assertTrue(is_fresh(NOW, 0, NOW + 10 * 365 * 86400))

    def test_not_fresh_from_further_in_the_future_than_the_skew(self) -> None:
        self.assertTrue(is_fresh(NOW + MAX_CLOCK_SKEW, 60, NOW))
        self.assertFalse(is_fresh(NOW + MAX_CLOCK_SKEW + 1, 0, NOW))

    def test_it_agrees_with_open_on_both_sides_of_every_boundary(self) -> None:
        token = Sealer(SECRET).seal(PAYLOAD, "p", NOW)
        for max_age in (0, 60):
            for now in (NOW - 301, NOW - 300, NOW, NOW + 59.5, NOW + 60, NOW + 60.5, NOW + 1e9):
                opened = Sealer(SECRET).open(token, "p", max_age, now) is not None
                self.assertEqual(is_fresh(int(NOW), max_age, now), opened, (max_age, now))
