"""Tests for oauthgate.upstreams.legacy: --upstream values as specs, as oauth2-proxy has them."""

from __future__ import annotations

import attrs
from twisted.trial.unittest import SynchronousTestCase

from oauthgate.config.options import Config
from oauthgate.upstreams.legacy import specs_from_config, specs_from_flags
from oauthgate.upstreams.spec import UpstreamSpec


class LegacyTests(SynchronousTestCase):
    def test_each_kind_gets_oauth2_proxys_route_and_id(self) -> None:
        config = Config(
            upstreams=(
                "http://127.0.0.1:3000",
                "http://127.0.0.1:8081/api/",
                "file:///srv/docs#/docs/",
                "file:///srv/all",
                "static://202",
                "static://204/empty",
                "unix:///run/app.sock",
            )
        )
        got = [(s.id, s.path, s.uri, s.static, s.static_code) for s in specs_from_flags(config)]
        self.assertEqual(
            got,
            [
                ("/", "/", "http://127.0.0.1:3000", False, 200),
                ("/api/", "/api/", "http://127.0.0.1:8081/api/", False, 200),
                ("/docs/", "/docs/", "file:///srv/docs", False, 200),
                ("/srv/all", "/srv/all", "file:///srv/all", False, 200),
                ("/", "/", "static://202", True, 202),
                ("/empty", "/empty", "static://204/empty", True, 204),
                ("/", "/", "unix:///run/app.sock", False, 200),
            ],
        )

    def test_the_global_flags_apply_to_every_upstream(self) -> None:
        config = Config(
            upstreams=("https://a/",),
            flush_interval=0.0,
            pass_host_header=False,
            proxy_websockets=False,
            upstream_timeout=5.0,
            ssl_upstream_insecure_skip_verify=True,
            disable_keep_alives=True,
        )
        (spec,) = specs_from_flags(config)
        self.assertEqual(
            spec,
            UpstreamSpec(
                id="/",
                path="/",
                uri="https://a/",
                flush_interval=0.0,
                pass_host_header=False,
                proxy_websockets=False,
                timeout=5.0,
                insecure_skip_tls_verify=True,
                disable_keep_alives=True,
            ),
        )

    def test_a_static_upstream_without_a_number_gets_an_invalid_code(self) -> None:
        (spec,) = specs_from_flags(Config(upstreams=("static://ok",)))
        self.assertEqual(spec.static_code, 0)  # refused by validation

    def test_alpha_specs_win_over_the_flags(self) -> None:
        alpha = (UpstreamSpec(id="app", path="/", uri="http://a/"),)
        config = attrs.evolve(Config(upstreams=("http://b/",)), upstream_specs=alpha)
        self.assertEqual(specs_from_config(config), alpha)
        self.assertEqual(specs_from_config(Config(upstreams=("http://b/",)))[0].uri, "http://b/")
