"""Tests for oauthgate.config.durations: Go duration syntax in and out."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from oauthgate.config.durations import format_duration, parse_duration


class ParseDurationTests(SynchronousTestCase):
    def test_go_durations_are_read_as_seconds(self) -> None:
        table = {
            "168h": 604800.0,
            "168h0m0s": 604800.0,
            "60m": 3600.0,
            "1h30m": 5400.0,
            "90s": 90.0,
            "1.5h": 5400.0,
            "500ms": 0.5,
            "1m0.5s": 60.5,
            "250us": 0.00025,
            "250\u00b5s": 0.00025,
            "10ns": 1e-8,
            ".5s": 0.5,
            "0": 0.0,
            "0s": 0.0,
            "+2m": 120.0,
            "-0": 0.0,
        }
        for text, seconds in table.items():
            self.assertAlmostEqual(parse_duration(text), seconds, msg=text)

    def test_a_bare_number_is_seconds(self) -> None:
        self.assertEqual(parse_duration("30"), 30.0)
        self.assertEqual(parse_duration("2.5"), 2.5)

    def test_negative_durations_are_refused(self) -> None:
        e = self.assertRaises(ValueError, parse_duration, "-1s")
        self.assertIn("must not be negative", str(e))

    def test_junk_is_refused_with_examples_of_what_is_right(self) -> None:
        for text in ("", "h", "1x", "1h-30m", "1 h", "abc", "1d", "1.2.3s", "-"):
            e = self.assertRaises(ValueError, parse_duration, text)
            self.assertIn("168h, 1h30m, 90s or 500ms", str(e), text)


class FormatDurationTests(SynchronousTestCase):
    def test_formats_like_go(self) -> None:
        table = {
            604800: "168h0m0s",
            900: "15m0s",
            30: "30s",
            0: "0s",
            5400: "1h30m0s",
            60.5: "1m0.5s",
            1.5: "1.5s",
            0.5: "500ms",
            0.0015: "1.5ms",
            0.000001: "1\u00b5s",
            1e-9: "1ns",
            3661: "1h1m1s",
        }
        for seconds, text in table.items():
            self.assertEqual(format_duration(seconds), text, seconds)

    def test_formatted_durations_parse_back(self) -> None:
        for seconds in (604800.0, 900.0, 0.0, 60.5, 0.25, 3661.0):
            self.assertAlmostEqual(parse_duration(format_duration(seconds)), seconds)
