"""The example third-party plugin (plugins/oauthgate-forgejo), installed into the test
environment by the test command, is found through its entry point like any other."""

from __future__ import annotations

from importlib.metadata import distribution

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from oauthgate.interfaces import IProvider, IProviderFactory
from oauthgate.plugins import Plugins
from oauthgate.testing import EchoResource, memory_http_client, provider_config


class ExamplePluginTests(SynchronousTestCase):
    def test_the_installed_distribution_registers_forgejo(self) -> None:
        dist = distribution("oauthgate-forgejo")
        names = {ep.name: ep.value for ep in dist.entry_points if ep.group == "oauthgate.providers"}
        self.assertEqual(names, {"forgejo": "oauthgate_forgejo:factory"})

    def test_entry_points_find_forgejo_next_to_the_builtin_providers(self) -> None:
        names = Plugins.from_entry_points().names()
        self.assertIn("forgejo", names)
        self.assertIn("oidc", names)

    def test_the_forgejo_factory_loads_and_provides_IProviderFactory(self) -> None:
        factory = Plugins.from_entry_points().provider_factory("forgejo")
        self.assertTrue(verifyObject(IProviderFactory, factory))
        self.assertEqual(factory.name, "forgejo")

    def test_the_forgejo_factory_builds_a_provider_from_a_config(self) -> None:
        factory = Plugins.from_entry_points().provider_factory("forgejo")
        config = provider_config(
            provider="forgejo",
            client_id="app",
            client_secret="secret",
            login_url="https://git.example.com/login/oauth/authorize",
        )
        provider = factory.build(config, memory_http_client(EchoResource()), Clock())
        self.assertTrue(verifyObject(IProvider, provider))
        self.assertEqual((provider.id, provider.display_name), ("forgejo", "Forgejo"))
