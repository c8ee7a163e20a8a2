"""Prometheus metrics: what a scrape shows after requests through a gate in memory."""

from __future__ import annotations

from typing import Any

import attrs
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from oauthgate._version import __version__
from oauthgate.config.options import Config
from oauthgate.errors import ConfigError, StoreUnavailable
from oauthgate.metrics import MAX_HOSTS, MeteredStore, Metrics, MetricsResource
from oauthgate.service import _metrics_listeners
from oauthgate.session import Session
from oauthgate.testing import GateTestCase
from oauthgate.web.site import GateSite
from tests.config.test_validate import make_directory, self_signed_pem
from tests.web.test_gate import RefusingAgent, make_world


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


class GateMetricsTests(GateTestCase):
    def world(self, **changes: Any) -> tuple[Any, Metrics]:
        world = make_world(**changes)
        metrics = Metrics()
        world.gate.metrics = metrics
        return world, metrics

    def test_a_login_then_a_proxied_request_are_counted(self) -> None:
        world, metrics = self.world()
        landed = self.get_success(world.login("/page"))
        self.assertEqual(landed.status, 200)
        self.assertEqual(value(metrics, "oauthgate_logins_total", provider="oidc", result="ok"), 1)
        self.assertEqual(value(metrics, "oauthgate_auth_total", method="cookie", result="ok"), 1)
        self.assertEqual(
            value(metrics, "oauthgate_upstream_requests_total", upstream="/"),
            1,
            metrics.exposition(),
        )
        self.get_success(world.get("/oauth2/auth"))
        self.assertEqual(value(metrics, "oauthgate_auth_total", method="cookie", result="ok"), 2)

    def test_every_request_leaves_the_in_flight_gauge_where_it_was(self) -> None:
        world, metrics = self.world()
        self.get_success(world.login("/page"))
        self.get_success(world.get("/ping"))
        self.assertEqual(value(metrics, "oauthgate_requests_in_flight"), 0)
        self.assertEqual(value(metrics, "oauth2_proxy_requests_in_flight"), 0)

    def test_a_sign_out_is_counted(self) -> None:
        world, metrics = self.world()
        self.get_success(world.login("/page"))
        self.get_success(world.get("/oauth2/sign_out"))
        self.assertEqual(value(metrics, "oauthgate_sign_outs_total"), 1)

    def test_a_login_outside_the_email_domains_is_counted_as_denied(self) -> None:
        world, metrics = self.world(email_domains=("elsewhere.org",))
        self.assertEqual(self.get_success(world.login("/page")).status, 403)
        self.assertEqual(
            value(metrics, "oauthgate_logins_total", provider="oidc", result="denied"), 1
        )
        self.assertEqual(value(metrics, "oauthgate_logins_total", provider="oidc", result="ok"), 0)

    def test_a_refresh_is_counted(self) -> None:
        world, metrics = self.world(cookie_refresh=60.0)
        self.get_success(world.login("/page"))
        world.clock.advance(61)
        self.assertEqual(self.get_success(world.get("/oauth2/auth")).status, 202)
        self.assertEqual(value(metrics, "oauthgate_refreshes_total", result="ok"), 1)

    def test_a_skip_auth_route_is_counted_as_skip(self) -> None:
        world, metrics = self.world(skip_auth_routes=("^/public",))
        self.get_success(world.get("/public/x"))
        self.assertEqual(value(metrics, "oauthgate_auth_total", method="skip", result="ok"), 1)

    def test_an_unreachable_upstream_is_counted_as_an_error(self) -> None:
        world, metrics = self.world(upstream_agent=RefusingAgent())
        self.assertEqual(self.get_success(world.login("/page")).status, 502)
        self.assertEqual(
            value(metrics, "oauthgate_upstream_errors_total", upstream="/", code="502"), 1
        )


class SiteMetricsTests(SynchronousTestCase):
    def finish(self, site: GateSite, path: bytes, code: int, host: bytes = b"app.test") -> None:
        request: Any = DummyRequest([path])
        request.path = path
        request.method = b"GET"
        request.code = code
        request.sentLength = 0
        request.requestHeaders.setRawHeaders(b"host", [host])
        request.oauthgate_started = 99.5
        site.log(request)

    def test_finished_requests_are_counted_by_code_method_and_host_and_timed(self) -> None:
        metrics = Metrics()
        clock = Clock()
        clock.advance(100)
        site = GateSite(MetricsResource(metrics), clock, metrics=metrics, exclude_paths=["/ping"])
        self.finish(site, b"/x", 200)
        self.finish(site, b"/ping", 200, host=b"APP.test")  # excluded from the log only
        self.finish(site, b"/y", 401)
        self.assertEqual(
            value(metrics, "oauthgate_requests_total", code="200", method="GET", host="app.test"),
            2,
        )
        self.assertEqual(value(metrics, "oauth2_proxy_requests_total", code="401"), 1)
        self.assertEqual(
            value(metrics, "oauth2_proxy_response_duration_seconds_count", method="GET"), 3
        )
        self.assertEqual(
            value(metrics, "oauthgate_response_duration_seconds_sum", method="GET"), 1.5
        )

    def test_hosts_beyond_the_limit_are_counted_as_other(self) -> None:
        metrics = Metrics()
        for n in range(MAX_HOSTS + 5):
            metrics.request_finished(b"GET", b"h%d.test" % n, 200, 0.0)
        metrics.request_finished(b"BREW", b"h0.test", 200, 0.0)
        self.assertEqual(
            value(metrics, "oauthgate_requests_total", code="200", method="GET", host="other"), 5
        )
        self.assertEqual(
            value(metrics, "oauthgate_requests_total", code="200", method="other", host="h0.test"),
            1,
        )


class ExpositionTests(SynchronousTestCase):
    def test_the_exposition_parses_and_names_the_version(self) -> None:
        metrics = Metrics()
        metrics.auth("bearer", "refused")
        families = {
            f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())
        }
        info = families["oauthgate_build_info"].samples[0]
        self.assertEqual(info.labels, {"version": __version__})
        self.assertIn("oauth2_proxy_requests", families)
        self.assertIn("oauthgate_auth", families)

    def test_each_metrics_object_has_a_registry_of_its_own(self) -> None:
        registry = CollectorRegistry()
        Metrics(registry)
        Metrics()  # no clash: not the global REGISTRY
        self.assertEqual(
            registry.get_sample_value("oauthgate_build_info", {"version": __version__}), 1
        )

    def test_the_resource_serves_the_exposition_on_any_path(self) -> None:
        metrics = Metrics()
        request = DummyRequest([b"anything"])
        body = MetricsResource(metrics).render(request)
        self.assertIn(b"oauthgate_build_info", body)
        self.assertTrue(
            (request.responseHeaders.getRawHeaders(b"content-type") or [b""])[0].startswith(
                b"text/plain"
            )
        )


@attrs.define
class FlakyStore:
    fail: bool = False

    async def save(self, session: Session, previous: str | None = None) -> str:
        return "v"

    async def load(self, value: str) -> Session | None:
        if self.fail:
            raise StoreUnavailable("down")
        return None

    async def clear(self, value: str) -> None:
        pass

    def lock(self, value: str) -> Any:
        raise NotImplementedError

    async def check(self) -> None:
        pass


class MeteredStoreTests(GateTestCase):
    def test_operations_and_failures_are_counted(self) -> None:
        metrics = Metrics()
        inner = FlakyStore()
        store = MeteredStore(inner, metrics)  # type: ignore[arg-type]
        self.get_success(store.load("v"))
        inner.fail = True
        self.get_failure(store.load("v"), StoreUnavailable)
        self.get_success(store.save(Session(user="u"), None))
        self.assertEqual(
            value(metrics, "oauthgate_session_store_operations_total", operation="load"), 2
        )
        self.assertEqual(
            value(metrics, "oauthgate_session_store_errors_total", operation="load"), 1
        )
        self.assertEqual(
            value(metrics, "oauthgate_session_store_operations_total", operation="save"), 1
        )


class ListenerTests(SynchronousTestCase):
    def test_no_address_means_no_metrics(self) -> None:
        self.assertEqual(_metrics_listeners(Config()), [])

    def test_the_secure_address_becomes_an_ssl_endpoint(self) -> None:
        pem = self_signed_pem()
        directory = make_directory(self, {"c:ert.pem": pem, "key.pem": pem})
        config = attrs.evolve(
            Config(),
            metrics_address="127.0.0.1:9100",
            metrics_secure_address=":9443",
            metrics_tls_cert_file=f"{directory}/c:ert.pem",
            metrics_tls_key_file=f"{directory}/key.pem",
        )
        self.assertEqual(
            _metrics_listeners(config),
            [
                "tcp:9100:interface=127.0.0.1",
                f"ssl:9443:privateKey={directory}/key.pem:certKey={directory}/c\\:ert.pem",
            ],
        )

    def test_a_missing_certificate_file_is_one_line_naming_the_option(self) -> None:
        config = attrs.evolve(
            Config(),
            metrics_secure_address=":9443",
            metrics_tls_cert_file="/nonexistent/cert.pem",
            metrics_tls_key_file="/nonexistent/key.pem",
        )
        e = self.assertRaises(ConfigError, _metrics_listeners, config)
        self.assertEqual(
            e.problems,
            (
                "metrics_secure_address: cannot read /nonexistent/cert.pem: "
                "No such file or directory",
            ),
        )

    def test_a_secure_address_without_certificate_is_refused(self) -> None:
        config = attrs.evolve(Config(), metrics_secure_address=":9443")
        with self.assertRaises(ConfigError):
            _metrics_listeners(config)
