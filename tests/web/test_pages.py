"""The sign-in and error pages as a browser gets them from the gate."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from urllib.parse import quote

from oauthgate.errors import ConfigError
from oauthgate.testing import BrowserResponse, GateTestCase
from tests.web.test_gate import make_world

# The smallest valid PNG: 1x1, transparent.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


class SignInPageTests(GateTestCase):
    def sign_in(self, rd: str = "/", **changes: Any) -> BrowserResponse:
        world = make_world(**changes)
        page = self.get_success(world.get(f"/oauth2/sign_in?rd={quote(rd, safe='')}"))
        self.assertEqual(page.status, 200, page.text)
        return page

    def test_the_default_page_has_a_banner_naming_the_domains_and_a_footer(self) -> None:
        page = self.sign_in()
        self.assertIn("Authenticate using example.com", page.text)
        self.assertIn("Secured with oauthgate", page.text)
        self.assertIn('<meta name="robots" content="noindex, nofollow">', page.text)

    def test_a_custom_template_is_used(self) -> None:
        folder = Path(self.mktemp())
        folder.mkdir()
        (folder / "sign_in.html").write_text(
            "<p>Custom sign-in for $provider_name, back to $redirect</p>", "utf-8"
        )
        page = self.sign_in("/app", custom_templates_dir=str(folder))
        self.assertEqual(page.text, "<p>Custom sign-in for OpenID Connect, back to /app</p>")

    def test_a_custom_template_folder_without_the_page_keeps_the_builtin_one(self) -> None:
        folder = Path(self.mktemp())
        folder.mkdir()
        (folder / "error.html").write_text("<p>custom error $status</p>", "utf-8")
        page = self.sign_in(custom_templates_dir=str(folder))
        self.assertIn('action="/oauth2/start"', page.text)

    def test_a_custom_error_template_is_used_for_errors(self) -> None:
        folder = Path(self.mktemp())
        folder.mkdir()
        (folder / "error.html").write_text("<p>custom error $status: $message</p>", "utf-8")
        world = make_world(custom_templates_dir=str(folder))
        page = self.get_success(world.get("/oauth2/nonexistent"))
        self.assertEqual(page.status, 404)
        self.assertEqual(page.text, "<p>custom error 404: There is nothing here.</p>")

    def test_a_missing_template_folder_is_a_config_error(self) -> None:
        missing = self.mktemp()
        with self.assertRaises(ConfigError) as raised:
            make_world(custom_templates_dir=missing)
        self.assertIn("custom_templates_dir", str(raised.exception))

    def test_banner_dash_hides_the_banner(self) -> None:
        page = self.sign_in(banner="-")
        self.assertNotIn('class="banner"', page.text)
        self.assertNotIn("Authenticate using", page.text)

    def test_a_custom_banner_is_shown_as_given(self) -> None:
        page = self.sign_in(banner="<b>Staff only</b>")
        self.assertIn('<p class="banner"><b>Staff only</b></p>', page.text)

    def test_a_custom_footer_is_shown(self) -> None:
        page = self.sign_in(footer="Questions? <a href='mailto:it@example.com'>IT</a>")
        self.assertIn(
            "<footer>Questions? <a href='mailto:it@example.com'>IT</a></footer>", page.text
        )
        self.assertNotIn("Secured with oauthgate", page.text)

    def test_footer_dash_hides_the_footer_text(self) -> None:
        page = self.sign_in(footer="-")
        self.assertIn("<footer></footer>", page.text)

    def test_a_logo_file_is_embedded_as_a_data_uri(self) -> None:
        logo = Path(self.mktemp() + ".png")
        logo.write_bytes(PNG)
        page = self.sign_in(custom_sign_in_logo=str(logo))
        expected = "data:image/png;base64," + base64.b64encode(PNG).decode("ascii")
        self.assertIn(f'<img src="{expected}"', page.text)

    def test_a_logo_url_is_linked(self) -> None:
        page = self.sign_in(custom_sign_in_logo="https://cdn.example.com/logo.svg")
        self.assertIn('<img src="https://cdn.example.com/logo.svg"', page.text)

    def test_an_unreadable_logo_file_is_a_config_error(self) -> None:
        with self.assertRaises(ConfigError) as raised:
            make_world(custom_sign_in_logo=self.mktemp() + ".png")
        self.assertIn("custom_sign_in_logo", str(raised.exception))

    def test_the_redirect_from_the_request_is_html_escaped(self) -> None:
        page = self.sign_in('/x?q="><script>alert(1)</script>')
        self.assertNotIn("<script>", page.text)
        self.assertIn("&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;", page.text)

    def test_the_requested_url_on_the_403_sign_in_page_is_html_escaped(self) -> None:
        """The client percent-encodes ``"<>`` itself; quotes and ampersands arrive raw."""
        world = make_world()
        page = self.get_success(world.get("/x?q='a'&b=<c>"))
        self.assertEqual(page.status, 403)
        self.assertIn('name="rd" value="/x?q=&#x27;a&#x27;&amp;b=%3Cc%3E"', page.text)

    def test_the_provider_display_name_is_on_the_button(self) -> None:
        page = self.sign_in(provider_display_name="ACME <SSO>")
        self.assertIn("Sign in with ACME &lt;SSO&gt;</button>", page.text)

    def test_the_provider_default_name_is_on_the_button(self) -> None:
        self.assertIn("Sign in with OpenID Connect</button>", self.sign_in().text)


class ErrorPageTests(GateTestCase):
    def test_an_error_page_escapes_the_providers_error_code(self) -> None:
        world = make_world()
        world.idp.error_redirect = "<img src=x onerror=alert(1)>"
        page = self.get_success(world.login())
        self.assertEqual(page.status, 403)
        self.assertNotIn("<img src=x", page.text)
        self.assertIn("&lt;img src=x onerror=alert(1)&gt;", page.text)

    def test_an_error_page_links_back_to_sign_in(self) -> None:
        world = make_world()
        world.idp.error_redirect = "access_denied"
        page = self.get_success(world.login())
        self.assertIn('href="/oauth2/sign_in?rd=/"', page.text)
        self.assertIn("Request id:", page.text)
