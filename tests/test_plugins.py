"""Provider discovery through entry points, and the errors that name a broken plugin."""

from __future__ import annotations

from importlib.metadata import EntryPoint

from twisted.trial.unittest import SynchronousTestCase

from oauthgate.errors import PluginError
from oauthgate.interfaces import IProviderFactory
from oauthgate.plugins import PROVIDERS_GROUP, Plugins
from oauthgate.providers import oidc


def ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=PROVIDERS_GROUP)


class PluginsTests(SynchronousTestCase):
    def test_the_builtin_oidc_provider_is_registered_like_a_third_party_one(self) -> None:
        plugins = Plugins.from_entry_points()
        self.assertIn("oidc", plugins.names())
        factory = plugins.provider_factory("oidc")
        self.assertTrue(IProviderFactory.providedBy(factory))

    def test_unknown_provider_lists_the_installed_ones(self) -> None:
        plugins = Plugins.from_entry_points([ep("oidc", "oauthgate.providers.oidc:factory")])
        e = self.assertRaises(PluginError, plugins.provider_factory, "okta")
        self.assertEqual(str(e), "provider: unknown provider 'okta'; installed providers: oidc")

    def test_a_plugin_that_fails_to_import_is_named(self) -> None:
        plugins = Plugins.from_entry_points([ep("broken", "no_such_module_xyz:factory")])
        e = self.assertRaises(PluginError, plugins.provider_factory, "broken")
        self.assertIn("'broken'", str(e))
        self.assertIn("no_such_module_xyz:factory", str(e))
        self.assertIn("failed to load", str(e))

    def test_a_plugin_that_is_not_a_factory_is_refused(self) -> None:
        plugins = Plugins.from_dict({"odd": object()})
        e = self.assertRaises(PluginError, plugins.provider_factory, "odd")
        self.assertIn("does not provide IProviderFactory", str(e))

    def test_two_distributions_claiming_one_name_is_an_error(self) -> None:
        e = self.assertRaises(
            PluginError,
            Plugins.from_entry_points,
            [ep("oidc", "oauthgate.providers.oidc:factory"), ep("oidc", "other_pkg:factory")],
        )
        self.assertIn("registered twice", str(e))

    def test_a_broken_plugin_that_is_not_used_does_not_matter(self) -> None:
        plugins = Plugins.from_entry_points(
            [ep("oidc", "oauthgate.providers.oidc:factory"), ep("broken", "nope_xyz:f")]
        )
        self.assertIs(plugins.provider_factory("oidc"), oidc.factory)
