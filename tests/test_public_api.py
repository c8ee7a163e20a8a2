"""The surface plugin authors build on. Changing it breaks their packages, so it is pinned:
a change here must be deliberate (and get a changelog line)."""

from __future__ import annotations

import configparser
from pathlib import Path

import attrs
from twisted.trial.unittest import SynchronousTestCase

import oauthgate.errors
import oauthgate.interfaces
import oauthgate.providers.oauth2
import oauthgate.session
import oauthgate.testing
import oauthgate.testing.conformance

ROOT = Path(__file__).resolve().parents[1]


class PublicAPITests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        self.assertEqual(
            sorted(oauthgate.interfaces.__all__),
            [
                "Decision",
                "IAuthorizer",
                "IProvider",
                "IProviderFactory",
                "ISessionStore",
                "IUpstream",
                "RequestInfo",
            ],
        )

    def test_errors(self) -> None:
        self.assertEqual(
            sorted(oauthgate.errors.__all__),
            [
                "AuthError",
                "ConfigError",
                "PluginError",
                "ProviderError",
                "RefreshError",
                "StoreUnavailable",
                "TokenError",
                "UpstreamError",
            ],
        )

    def test_session(self) -> None:
        self.assertEqual(oauthgate.session.__all__, ["Session"])

    def test_testing(self) -> None:
        self.assertEqual(
            sorted(oauthgate.testing.__all__),
            [
                "Browser",
                "BrowserResponse",
                "ByHost",
                "CODE_LIFETIME",
                "EchoResource",
                "FakeIdP",
                "GateTestCase",
                "MemoryHTTPClient",
                "ProviderConformance",
                "ProviderSubject",
                "StoredCookie",
                "TokenRequest",
                "TooManyRedirects",
                "default_clients",
                "default_users",
                "memory_http_client",
                "provider_config",
            ],
        )
        for name in oauthgate.testing.__all__:
            self.assertTrue(hasattr(oauthgate.testing, name), name)

    def test_conformance(self) -> None:
        self.assertEqual(
            sorted(oauthgate.testing.conformance.__all__),
            [
                "CODE_CHALLENGE",
                "NONCE",
                "ProviderConformance",
                "ProviderSubject",
                "START",
                "STATE",
                "provider_config",
            ],
        )
        self.assertEqual(
            [f.name for f in attrs.fields(oauthgate.testing.ProviderSubject)],
            [
                "provider",
                "http",
                "code",
                "redirect_uri",
                "email",
                "break_api",
                "refreshes",
                "nonce",
                "code_verifier",
            ],
        )

    def test_oauth2_base(self) -> None:
        """Plugins subclass OAuth2Provider (the forgejo example does): its hooks are public."""
        module = oauthgate.providers.oauth2
        self.assertEqual(sorted(module.__all__), ["OAuth2Provider", "OAuth2ProviderFactory"])
        for name in (
            "id",
            "default_display_name",
            "default_login_url",
            "default_redeem_url",
            "default_profile_url",
            "default_scope",
            "client_auth",
            "supports_refresh",
            "check_config",
            "identity",
            "check_access",
            "api_get",
            "token_request",
            "login_url",
            "redeem_url",
            "profile_url",
            "scope",
        ):
            self.assertTrue(hasattr(module.OAuth2Provider, name), name)


class PackagingTests(SynchronousTestCase):
    """A wheel must carry the twistd dropin, and must not shadow Twisted's own packages."""

    def setUp(self) -> None:
        self.cfg = configparser.ConfigParser()
        self.cfg.read(ROOT / "setup.cfg")

    def test_the_dropin_is_packaged_without_an_init(self) -> None:
        include = self.cfg["options.packages.find"]["include"].split()
        self.assertIn("twisted.plugins", include)
        self.assertEqual(self.cfg["options"]["packages"], "find_namespace:")
        self.assertTrue((ROOT / "twisted/plugins/oauthgate_plugin.py").is_file())
        self.assertFalse((ROOT / "twisted/__init__.py").exists())
        self.assertFalse((ROOT / "twisted/plugins/__init__.py").exists())

    def test_the_builtin_provider_is_an_entry_point(self) -> None:
        providers = self.cfg["options.entry_points"]["oauthgate.providers"]
        self.assertIn("oidc = oauthgate.providers.oidc:factory", providers)

    def test_templates_are_package_data(self) -> None:
        self.assertIn("templates/*.html", self.cfg["options.package_data"]["oauthgate.web"])

    def test_the_dropin_names_the_service_maker(self) -> None:
        from twisted.application.service import IServiceMaker
        from twisted.plugin import getPlugins

        from twisted import plugins

        makers = {m.tapname: m for m in getPlugins(IServiceMaker, plugins)}
        self.assertIn("oauthgate", makers)
        self.assertEqual(makers["oauthgate"].module, "oauthgate.tap")
