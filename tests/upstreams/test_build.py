"""Tests for oauthgate.upstreams.build: config -> upstreams -> routing table."""

from __future__ import annotations

import os

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from oauthgate.config.options import Config
from oauthgate.errors import ConfigError
from oauthgate.upstreams.build import routing_table
from oauthgate.upstreams.files import FileUpstream
from oauthgate.upstreams.http import HTTPUpstream
from oauthgate.upstreams.spec import UpstreamSpec
from oauthgate.upstreams.static import StaticUpstream


class RoutingTableTests(SynchronousTestCase):
    def test_each_kind_of_upstream_is_built_and_sorted(self) -> None:
        docs = self.mktemp()
        os.mkdir(docs)
        config = Config(
            upstreams=(
                "http://127.0.0.1:3000/",
                "https://127.0.0.1:8081/api/",
                f"file://{os.path.abspath(docs)}#/docs/",
                "static://202/health",
                "unix:///run/app.sock",
            )
        )
        # "/" twice (http and unix) is refused; drop the first
        config = attrs.evolve(config, upstreams=config.upstreams[1:])
        table = routing_table(config, MemoryReactorClock())
        kinds = [(type(u).__name__, u.path) for u in table]
        self.assertEqual(
            kinds,
            [
                ("StaticUpstream", "/health"),
                ("FileUpstream", "/docs/"),
                ("HTTPUpstream", "/api/"),
                ("HTTPUpstream", "/"),
            ],
        )
        self.assertIsInstance(table[0], StaticUpstream)
        self.assertIsInstance(table[1], FileUpstream)
        for upstream in table:
            close = getattr(upstream, "close", None)
            if close is not None:
                self.successResultOf(Deferred.fromCoroutine(_wait(close())))

    def test_invalid_upstreams_are_a_config_error(self) -> None:
        with self.assertRaises(ConfigError) as raised:
            routing_table(Config(upstreams=("http://a/", "http://b/")), MemoryReactorClock())
        self.assertIn("two upstreams serve the path '/'", str(raised.exception))

    def test_alpha_specs_and_the_raw_path_flag_come_from_the_config(self) -> None:
        specs = (UpstreamSpec(id="api", path="^/api/(.*)", rewrite_target="/$1", uri="http://a"),)
        config = attrs.evolve(Config(), upstream_specs=specs, proxy_raw_path=True)
        table = routing_table(config, MemoryReactorClock())
        self.assertTrue(table.proxy_raw_path)
        self.assertEqual([u.id for u in table], ["api"])

    def test_a_factory_builds_the_http_upstreams(self) -> None:
        built: list[str] = []

        def factory(url: str) -> HTTPUpstream:
            built.append(url)
            return HTTPUpstream(url, None, Clock())  # type: ignore[arg-type]

        config = Config(upstreams=("http://a/", "static://202/ok"))
        table = routing_table(config, MemoryReactorClock(), factory=factory)
        self.assertEqual(built, ["http://a/"])
        self.assertEqual(len(table), 2)


async def _wait(awaitable: object) -> None:
    await awaitable  # type: ignore[misc]
