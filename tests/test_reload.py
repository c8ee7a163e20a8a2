"""SIGHUP reloads (oauthgate/reload.py): the emails file, the htpasswd file and the page
templates are read again at once, and a broken file keeps what was loaded before."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.testing import MemoryReactorClock
from twisted.web.test.requesthelper import DummyRequest

from oauthgate.config.options import Config
from oauthgate.plugins import Plugins
from oauthgate.reload import ReloadOnHangup, reload_actions
from oauthgate.service import build_components
from oauthgate.session import Session
from oauthgate.testing import GateTestCase
from oauthgate.web.gate import Gate

COOKIE_SECRET = base64.urlsafe_b64encode(bytes(range(32))).decode("ascii")


def sha_line(user: str, password: str) -> str:
    digest = base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()
    return f"{user}:{{SHA}}{digest}\n"


class ReloadTests(GateTestCase):
    def setUp(self) -> None:
        folder = Path(self.mktemp())
        folder.mkdir(parents=True)
        self.emails = folder / "emails.txt"
        self.emails.write_text("alice@example.org\n")
        self.htpasswd = folder / "htpasswd"
        self.htpasswd.write_text(sha_line("alice", "alice-pw"))
        self.templates = folder / "templates"
        self.templates.mkdir()
        self.sign_in = self.templates / "sign_in.html"
        self.sign_in.write_text("<p>first sign-in page $provider_buttons</p>")
        options: dict[str, Any] = {
            "provider": "oidc",
            "oidc_issuer_url": "https://idp.test",
            "client_id": "app",
            "client_secret": "app-secret",
            "cookie_secret": COOKIE_SECRET,
            "email_domains": ("example.com",),
            "upstreams": ("http://upstream.test/",),
            "authenticated_emails_file": str(self.emails),
            "htpasswd_file": str(self.htpasswd),
            "custom_templates_dir": str(self.templates),
        }
        config = attrs.evolve(Config(), **options)
        reactor = MemoryReactorClock()
        components = build_components(config, reactor=reactor, plugins=Plugins.from_entry_points())
        self.gate: Gate = components.gate
        self.reloader = ReloadOnHangup(reactor, reload_actions(self.gate))

    def allowed(self, email: str) -> bool:
        request: Any = DummyRequest([b""])
        request.path = b"/"
        session = Session(user=email, email=email, created_at=0.0)
        return self.get_success(self.gate.authorize(request, session)) is None

    def sign_in_page(self) -> str:
        return self.gate.pages.render_sign_in("/").decode()

    def test_reload_lets_a_newly_listed_email_in_at_once(self) -> None:
        self.assertTrue(self.allowed("alice@example.org"))
        self.assertFalse(self.allowed("bob@example.org"))
        self.emails.write_text("alice@example.org\nbob@example.org\n")
        self.reloader.reload_now()
        self.assertTrue(self.allowed("bob@example.org"))
        self.assertTrue(self.allowed("alice@example.com"))  # the domain still counts

    def test_reload_reads_the_htpasswd_file_again(self) -> None:
        htpasswd = self.gate.credentials.htpasswd
        assert htpasswd is not None
        self.htpasswd.write_text(sha_line("alice", "alice-pw") + sha_line("bob", "bob-pw"))
        self.reloader.reload_now()
        self.assertTrue(self.get_success(htpasswd.check("bob", "bob-pw")))
        self.assertFalse(self.get_success(htpasswd.check("bob", "wrong")))

    def test_reload_renders_the_new_template(self) -> None:
        self.assertIn("first sign-in page", self.sign_in_page())
        self.sign_in.write_text("<p>second sign-in page $provider_buttons</p>")
        self.reloader.reload_now()
        page = self.sign_in_page()
        self.assertIn("second sign-in page", page)
        self.assertIn("Sign in with", page)

    def test_a_broken_template_keeps_the_pages_and_the_other_reloads_happen(self) -> None:
        self.sign_in.write_bytes(b"<p>\xff\xfe not UTF-8</p>")
        self.emails.write_text("bob@example.org\n")
        self.reloader.reload_now()
        self.assertIn("first sign-in page", self.sign_in_page())
        self.assertTrue(self.allowed("bob@example.org"))
        errors = self.flushLoggedErrors()
        self.assertEqual(errors, [])  # logged as an error line, not a traceback

    def test_the_reloads_cover_the_files_and_the_templates(self) -> None:
        htpasswd = self.gate.credentials.htpasswd
        names = [name for name, _ in reload_actions(self.gate, [htpasswd, object()])]
        self.assertEqual(names, [type(htpasswd).__name__, "the page templates"])
