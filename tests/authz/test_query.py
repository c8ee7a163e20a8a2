"""Tests for oauthgate.authz.query: the allowed_* query constraints of /oauth2/auth."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from oauthgate.authz.query import DomainPattern, _parsed_email_domain, check_query_constraints
from oauthgate.interfaces import Decision
from oauthgate.session import Session

ALICE = Session(user="alice", email="alice@example.com", groups=("dev", "ops"))


def args(**params: list[str]) -> dict[bytes, list[bytes]]:
    return {k.encode(): [v.encode() for v in values] for k, values in params.items()}


class CheckQueryConstraintsTests(SynchronousTestCase):
    def test_no_parameters_impose_nothing(self) -> None:
        self.assertEqual(check_query_constraints({}, ALICE), Decision.allow())
        self.assertEqual(check_query_constraints({}, Session()), Decision.allow())

    def test_empty_parameters_impose_nothing(self) -> None:
        empty = args(allowed_groups=[""], allowed_emails=[",", " "], allowed_email_domains=[""])
        self.assertTrue(check_query_constraints(empty, Session()).allowed)

    def test_allowed_groups_needs_one_shared_group(self) -> None:
        self.assertTrue(check_query_constraints(args(allowed_groups=["admins,ops"]), ALICE).allowed)
        self.assertEqual(
            check_query_constraints(args(allowed_groups=["admins,sre"]), ALICE),
            Decision.deny("you are not in any of the allowed groups"),
        )

    def test_allowed_groups_may_be_repeated(self) -> None:
        query = args(allowed_groups=["admins", "sre, dev"])
        self.assertTrue(check_query_constraints(query, ALICE).allowed)

    def test_allowed_emails_is_an_exact_match(self) -> None:
        ok = args(allowed_emails=["bob@example.com,alice@example.com"])
        self.assertTrue(check_query_constraints(ok, ALICE).allowed)
        for other in ("Alice@example.com", "alice@example.co", "lice@example.com"):
            decision = check_query_constraints(args(allowed_emails=[other]), ALICE)
            self.assertEqual(
                decision, Decision.deny("the email address alice@example.com is not allowed")
            )

    def test_email_constraints_deny_sessions_without_email(self) -> None:
        no_email = Session(user="htpasswd-user")
        for query in (
            args(allowed_emails=["alice@example.com"]),
            args(allowed_email_domains=["example.com"]),
        ):
            self.assertEqual(check_query_constraints(query, no_email), Decision.deny("no email"))

    def test_plain_email_domain_matches_only_the_apex(self) -> None:
        query = args(allowed_email_domains=["example.com"])
        self.assertTrue(check_query_constraints(query, ALICE).allowed)
        for email in ("a@sub.example.com", "a@evilexample.com", "a@example.com.evil.org"):
            self.assertFalse(check_query_constraints(query, Session(email=email)).allowed, email)

    def test_dot_and_star_email_domains_match_apex_and_subdomains(self) -> None:
        for entry in (".example.com", "*.example.com"):
            query = args(allowed_email_domains=[entry])
            for email in ("a@example.com", "a@sub.example.com", "a@x.y.example.com"):
                self.assertTrue(check_query_constraints(query, Session(email=email)).allowed)
            for email in ("a@evilexample.com", "a@example.org"):
                self.assertFalse(check_query_constraints(query, Session(email=email)).allowed)

    def test_email_domain_matching_is_case_insensitive(self) -> None:
        query = args(allowed_email_domains=["Example.COM"])
        self.assertTrue(check_query_constraints(query, Session(email="a@EXAMPLE.com")).allowed)

    def test_email_domain_constraint_refuses_multiple_at_signs(self) -> None:
        """GHSA-c5c4-8r6x-56w3 applies to the query constraint too."""
        query = args(allowed_email_domains=["example.com"])
        decision = check_query_constraints(query, Session(email="a@evil.org@example.com"))
        self.assertFalse(decision.allowed)

    def test_malformed_email_domains_match_nothing_but_still_restrict(self) -> None:
        query = args(allowed_email_domains=["exa mple.com,:bad"])
        self.assertFalse(check_query_constraints(query, ALICE).allowed)

    def test_email_domain_entries_are_parsed_once_across_requests(self) -> None:
        _parsed_email_domain.cache_clear()
        query = args(allowed_email_domains=[".example.com, exa mple.com"])
        for _ in range(4):
            self.assertTrue(check_query_constraints(query, ALICE).allowed)
        info = _parsed_email_domain.cache_info()
        self.assertEqual((info.misses, info.hits), (2, 6))  # the malformed entry is cached too
        self.assertEqual(info.maxsize, 256)

    def test_every_present_constraint_must_hold(self) -> None:
        query = args(allowed_groups=["dev"], allowed_emails=["bob@example.com"])
        self.assertFalse(check_query_constraints(query, ALICE).allowed)
        query = args(allowed_groups=["dev"], allowed_email_domains=["example.com"])
        self.assertTrue(check_query_constraints(query, ALICE).allowed)

    def test_undecodable_values_do_not_match(self) -> None:
        query = {b"allowed_emails": [b"alice@example.com\xff"]}
        self.assertFalse(check_query_constraints(query, ALICE).allowed)


class DomainPatternTests(SynchronousTestCase):
    def test_parse_forms(self) -> None:
        self.assertEqual(DomainPattern.parse("Foo.Bar"), DomainPattern("foo.bar"))
        self.assertEqual(DomainPattern.parse(".foo.bar"), DomainPattern("foo.bar", True))
        self.assertEqual(DomainPattern.parse("*.foo.bar"), DomainPattern("foo.bar", True))
        self.assertEqual(
            DomainPattern.parse("foo.bar:08080"), DomainPattern("foo.bar", False, "8080")
        )
        self.assertEqual(DomainPattern.parse("foo.bar:*"), DomainPattern("foo.bar", False, "*"))

    def test_port_rules(self) -> None:
        self.assertTrue(DomainPattern("foo.bar").matches("foo.bar"))
        self.assertFalse(DomainPattern("foo.bar").matches("foo.bar", "443"))
        self.assertTrue(DomainPattern("foo.bar", port="8080").matches("foo.bar", "8080"))
        self.assertFalse(DomainPattern("foo.bar", port="8080").matches("foo.bar"))
        self.assertTrue(DomainPattern("foo.bar", port="*").matches("foo.bar"))
        self.assertTrue(DomainPattern("foo.bar", port="*").matches("foo.bar", "1"))

    def test_malformed_entries_raise_value_error(self) -> None:
        for entry in (
            "",
            "*",
            ".",
            "a..b",
            "foo.bar:0",
            "foo.bar:x",
            "a:b:c",
            "a/b",
            "u@h",
            "%66oo",
        ):
            self.assertRaises(ValueError, DomainPattern.parse, entry)
