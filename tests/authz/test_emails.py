"""Tests for oauthgate.authz.emails: who may pass by email address."""

from __future__ import annotations

import os
import shutil

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from oauthgate.authz.emails import EmailAuthorizer, read_emails_file
from oauthgate.errors import ConfigError
from oauthgate.interfaces import Decision, IAuthorizer, RequestInfo
from oauthgate.session import Session

REQUEST = RequestInfo(method="GET", path="/", host="app.example.com")


class EmailDomainTests(SynchronousTestCase):
    def allowed(self, domains: list[str], email: str) -> bool:
        return EmailAuthorizer(domains, Clock()).check_email(email).allowed

    def test_provides_iauthorizer(self) -> None:
        self.assertTrue(verifyObject(IAuthorizer, EmailAuthorizer(["example.com"], Clock())))

    def test_authorize_decides_on_the_session_email(self) -> None:
        authorizer = EmailAuthorizer(["example.com"], Clock())
        allowed = self.successResultOf(
            Deferred.fromCoroutine(authorizer.authorize(REQUEST, Session(email="a@example.com")))
        )
        denied = self.successResultOf(
            Deferred.fromCoroutine(authorizer.authorize(REQUEST, Session(email="a@other.com")))
        )
        self.assertEqual(allowed, Decision.allow())
        self.assertEqual(denied, Decision.deny("the email address a@other.com is not allowed"))

    def test_apex_domain_matches_only_that_domain(self) -> None:
        self.assertTrue(self.allowed(["example.com"], "user@example.com"))
        self.assertFalse(self.allowed(["example.com"], "user@sub.example.com"))
        self.assertFalse(self.allowed(["example.com"], "user@evilexample.com"))
        self.assertFalse(self.allowed(["example.com"], "user@example.com.evil.org"))

    def test_dot_and_star_domains_match_subdomains_only(self) -> None:
        for entry in (".example.com", "*.example.com"):
            self.assertTrue(self.allowed([entry], "user@sub.example.com"), entry)
            self.assertTrue(self.allowed([entry], "user@a.b.example.com"), entry)
            self.assertFalse(self.allowed([entry], "user@example.com"), entry)
            self.assertFalse(self.allowed([entry], "user@evilexample.com"), entry)
            self.assertFalse(self.allowed([entry], "user@sub.evilexample.com"), entry)

    def test_matching_is_case_insensitive(self) -> None:
        self.assertTrue(self.allowed(["Example.COM"], "User@EXAMPLE.com"))
        self.assertTrue(self.allowed([".EXAMPLE.com"], "user@Sub.Example.Com"))

    def test_star_allows_any_address(self) -> None:
        self.assertTrue(self.allowed(["*"], "anyone@anywhere.org"))

    def test_multiple_at_signs_are_denied(self) -> None:
        """GHSA-c5c4-8r6x-56w3: ``a@b@example.com`` must not pass as an example.com address."""
        self.assertFalse(self.allowed(["example.com"], "a@b@example.com"))
        self.assertFalse(self.allowed([".example.com"], "a@evil.org@sub.example.com"))
        self.assertFalse(self.allowed(["*"], "a@b@example.com"))
        decision = EmailAuthorizer(["example.com"], Clock()).check_email("a@b@example.com")
        self.assertEqual(decision.reason, "the email address a@b@example.com is not valid")

    def test_addresses_without_local_part_or_domain_are_denied(self) -> None:
        self.assertFalse(self.allowed(["*"], "@example.com"))
        self.assertFalse(self.allowed(["*"], "user@"))
        self.assertFalse(self.allowed(["*"], "example.com"))

    def test_empty_email_is_denied(self) -> None:
        decision = EmailAuthorizer(["*"], Clock()).check_email("")
        self.assertEqual(decision, Decision.deny("no email"))

    def test_no_domains_and_no_file_denies(self) -> None:
        self.assertFalse(self.allowed([], "user@example.com"))

    def test_remembered_decisions_are_bounded_and_stay_right(self) -> None:
        authorizer = EmailAuthorizer(["example.com"], Clock())
        for i in range(12_000):
            email = f"user{i}@example.{'com' if i % 2 else 'org'}"
            self.assertEqual(authorizer.check_email(email).allowed, bool(i % 2))
        self.assertLessEqual(len(authorizer._decisions), 10_000)
        self.assertFalse(authorizer.check_email("user0@example.org").allowed)
        self.assertTrue(authorizer.check_email("user1@example.com").allowed)

    def test_from_config(self) -> None:
        class Config:
            email_domains = ("example.com",)
            authenticated_emails_file = ""

        authorizer = EmailAuthorizer.from_config(Config(), Clock())
        self.assertTrue(authorizer.check_email("a@example.com").allowed)


class EmailsFileTests(SynchronousTestCase):
    def write(self, path: str, text: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)

    def temp_path(self) -> str:
        path: str = self.mktemp()
        # mktemp() is relative to the working directory, which under pytest is the checkout.
        self.addCleanup(shutil.rmtree, path.split(os.sep)[0], True)
        return path

    def make_file(self, text: str) -> str:
        path = self.temp_path()
        self.write(path, text)
        return path

    def test_file_lists_first_csv_column_trimmed_and_lower_cased(self) -> None:
        path = self.make_file(
            "# allowed people\n"
            "\n"
            "Alice@Example.org, Alice Liddell\n"
            "  bob@example.org  \n"
            '"carol@example.org",admin\n'
            "   # indented comment@example.org\n"
        )
        self.assertEqual(
            read_emails_file(path),
            {"alice@example.org", "bob@example.org", "carol@example.org"},
        )
        authorizer = EmailAuthorizer([], Clock(), path)
        self.assertTrue(authorizer.check_email("ALICE@example.org").allowed)
        self.assertTrue(authorizer.check_email("bob@example.org").allowed)
        self.assertFalse(authorizer.check_email("dave@example.org").allowed)
        self.assertFalse(authorizer.check_email("# indented comment@example.org").allowed)

    def test_file_and_domains_both_allow(self) -> None:
        path = self.make_file("guest@other.org\n")
        authorizer = EmailAuthorizer(["example.com"], Clock(), path)
        self.assertTrue(authorizer.check_email("guest@other.org").allowed)
        self.assertTrue(authorizer.check_email("staff@example.com").allowed)
        self.assertFalse(authorizer.check_email("stranger@other.org").allowed)

    def test_unreadable_file_at_startup_is_a_config_error(self) -> None:
        path = self.temp_path()
        e = self.assertRaises(ConfigError, EmailAuthorizer, [], Clock(), path)
        self.assertTrue(e.problems[0].startswith("authenticated_emails_file: cannot read"))

    def test_changed_file_is_reloaded_once_the_poll_interval_passes(self) -> None:
        clock = Clock()
        path = self.make_file("old@example.org\n")
        authorizer = EmailAuthorizer([], clock, path)
        authorizer.start()
        self.addCleanup(authorizer.stop)
        self.write(path, "new.person@example.org\n")

        clock.advance(4)
        self.assertTrue(authorizer.check_email("old@example.org").allowed)
        self.assertFalse(authorizer.check_email("new.person@example.org").allowed)

        clock.advance(1)
        self.assertFalse(authorizer.check_email("old@example.org").allowed)
        self.assertTrue(authorizer.check_email("new.person@example.org").allowed)

    def test_decisions_are_made_again_after_a_reload_on_sighup(self) -> None:
        path = self.make_file("old@example.org\n")
        authorizer = EmailAuthorizer([], Clock(), path)
        for _ in range(2):
            self.assertTrue(authorizer.check_email("old@example.org").allowed)
            self.assertFalse(authorizer.check_email("new@example.org").allowed)
        self.write(path, "new@example.org\n")
        authorizer.check_now()
        self.assertFalse(authorizer.check_email("old@example.org").allowed)
        self.assertTrue(authorizer.check_email("new@example.org").allowed)

    def test_reload_happens_on_every_change(self) -> None:
        clock = Clock()
        path = self.make_file("a@example.org\n")
        authorizer = EmailAuthorizer([], clock, path)
        authorizer.start()
        self.addCleanup(authorizer.stop)
        self.write(path, "bb@example.org\n")
        clock.advance(5)
        self.write(path, "ccc@example.org\n")
        clock.advance(5)
        self.assertTrue(authorizer.check_email("ccc@example.org").allowed)
        self.assertFalse(authorizer.check_email("bb@example.org").allowed)

    def test_nothing_is_reloaded_before_start_or_after_stop(self) -> None:
        clock = Clock()
        path = self.make_file("old@example.org\n")
        authorizer = EmailAuthorizer([], clock, path)
        self.write(path, "new.person@example.org\n")
        clock.advance(60)
        self.assertTrue(authorizer.check_email("old@example.org").allowed)

        authorizer.start()
        authorizer.stop()
        clock.advance(60)
        self.assertTrue(authorizer.check_email("old@example.org").allowed)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_missing_file_after_start_keeps_the_last_list_and_logs_an_error(self) -> None:
        clock = Clock()
        path = self.make_file("kept@example.org\n")
        authorizer = EmailAuthorizer([], clock, path)
        authorizer.start()
        self.addCleanup(authorizer.stop)
        os.remove(path)
        with capturedLogs() as events:
            clock.advance(5)
            clock.advance(5)
        self.assertTrue(authorizer.check_email("kept@example.org").allowed)
        errors = [e for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1, "logged once, not on every poll")
        self.assertEqual(errors[0]["path"], path)
        self.assertEqual(errors[0]["count"], 1)

        self.write(path, "back@example.org\n")
        clock.advance(5)
        self.assertTrue(authorizer.check_email("back@example.org").allowed)
        self.assertFalse(authorizer.check_email("kept@example.org").allowed)

    def test_file_that_is_no_longer_text_keeps_the_last_list(self) -> None:
        clock = Clock()
        path = self.make_file("kept@example.org\n")
        authorizer = EmailAuthorizer([], clock, path)
        authorizer.start()
        self.addCleanup(authorizer.stop)
        with open(path, "wb") as f:
            f.write(b"\xff\xfe\x00garbage\n")
        with capturedLogs() as events:
            clock.advance(5)
        self.assertTrue(authorizer.check_email("kept@example.org").allowed)
        self.assertTrue(any(e["log_level"] == LogLevel.error for e in events))


class HtpasswdSessionTests(SynchronousTestCase):
    def test_htpasswd_users_without_email_are_not_refused_for_it(self) -> None:
        from twisted.internet.defer import Deferred
        from twisted.internet.task import Clock

        from oauthgate.interfaces import RequestInfo
        from oauthgate.session import Session

        authorizer = EmailAuthorizer(("example.com",), Clock())
        info = RequestInfo("GET", "/", "app.test")
        local = Session(user="ops", provider="htpasswd")
        other = Session(user="ops", provider="oidc")
        allowed = self.successResultOf(Deferred.fromCoroutine(authorizer.authorize(info, local)))
        refused = self.successResultOf(Deferred.fromCoroutine(authorizer.authorize(info, other)))
        self.assertTrue(allowed.allowed)
        self.assertFalse(refused.allowed)
