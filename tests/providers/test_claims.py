"""Tests for oauthgate.providers.claims."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from oauthgate.providers.claims import coerce_groups, get_claim


class GetClaimTests(SynchronousTestCase):
    def test_top_level_claim(self) -> None:
        self.assertEqual(get_claim({"email": "a@example.com"}, "email"), "a@example.com")

    def test_dotted_path_walks_nested_objects(self) -> None:
        claims = {"ocs": {"data": {"email": "a@example.com"}}}
        self.assertEqual(get_claim(claims, "ocs.data.email"), "a@example.com")

    def test_literal_key_with_dots_wins(self) -> None:
        claims = {"https://example.com/groups": ["a"], "https://example": {"com/groups": ["b"]}}
        self.assertEqual(get_claim(claims, "https://example.com/groups"), ["a"])

    def test_missing_path_gives_none(self) -> None:
        self.assertIsNone(get_claim({"ocs": {"data": {}}}, "ocs.data.email"))
        self.assertIsNone(get_claim({"ocs": "text"}, "ocs.data"))
        self.assertIsNone(get_claim({}, "email"))


class CoerceGroupsTests(SynchronousTestCase):
    def test_list_of_strings_is_kept(self) -> None:
        self.assertEqual(coerce_groups(["a", "b"]), ("a", "b"))

    def test_scalar_becomes_one_group(self) -> None:
        self.assertEqual(coerce_groups("admins"), ("admins",))
        self.assertEqual(coerce_groups(42), ("42",))

    def test_non_string_entries_are_json_encoded(self) -> None:
        groups = coerce_groups(["a", 1, {"id": "g", "role": "r"}, None])
        self.assertEqual(groups, ("a", "1", '{"id":"g","role":"r"}', "null"))

    def test_absent_claim_gives_no_groups(self) -> None:
        self.assertEqual(coerce_groups(None), ())
