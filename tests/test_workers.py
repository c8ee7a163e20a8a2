"""How ``--workers`` reads the listening address and paces restarts."""

from __future__ import annotations

import socket

from twisted.trial.unittest import SynchronousTestCase

from oauthgate.config.options import Config
from oauthgate.errors import ConfigError
from oauthgate.workers import Listener, parse_listener, restart_delay, supervisor_service


class ParseListenerTests(SynchronousTestCase):
    def test_host_port_and_tcp_descriptions_are_shared_tcp_listeners(self) -> None:
        self.assertEqual(
            parse_listener("127.0.0.1:4180"), Listener(socket.AF_INET, "127.0.0.1", 4180)
        )
        self.assertEqual(parse_listener(":4180"), Listener(socket.AF_INET, "0.0.0.0", 4180))
        self.assertEqual(
            parse_listener("tcp:4180:interface=10.0.0.1:backlog=100"),
            Listener(socket.AF_INET, "10.0.0.1", 4180, 100),
        )
        self.assertEqual(parse_listener("[::1]:4180"), Listener(socket.AF_INET6, "::1", 4180))

    def test_haproxy_tcp_keeps_the_proxy_protocol(self) -> None:
        self.assertEqual(
            parse_listener("haproxy:tcp:4180:interface=127.0.0.1"),
            Listener(socket.AF_INET, "127.0.0.1", 4180, haproxy=True),
        )

    def test_other_endpoints_are_refused_naming_the_limitation(self) -> None:
        for address in (
            "unix:///run/x.sock",
            "ssl:443:privateKey=k.pem",
            "systemd:domain=INET:index=0",
        ):
            with self.assertRaises(ValueError) as raised:
                parse_listener(address)
            self.assertIn("workers > 1 needs a TCP address", str(raised.exception))

    def test_a_unix_socket_with_workers_is_a_start_up_error(self) -> None:
        config = Config(http_address="unix:///run/x.sock", workers=2)
        with self.assertRaises(ConfigError) as raised:
            supervisor_service(config, reactor=None)
        self.assertIn("http_address:", raised.exception.problems[0])

    def test_https_or_metrics_with_workers_are_start_up_errors_not_silently_dropped(self) -> None:
        config = Config(
            https_address=":8443", metrics_address=":9090", logging_filename="/x.log", workers=2
        )
        with self.assertRaises(ConfigError) as raised:
            supervisor_service(config, reactor=None)
        problems = "\n".join(raised.exception.problems)
        self.assertIn("https_address: not supported with workers > 1", problems)
        self.assertIn("metrics_address: not supported with workers > 1", problems)
        self.assertIn("logging_filename: not supported with workers > 1", problems)


class RestartDelayTests(SynchronousTestCase):
    def test_delay_doubles_with_quick_failures_up_to_30_seconds(self) -> None:
        self.assertEqual([restart_delay(n) for n in (1, 2, 3, 4, 10)], [0.5, 1.0, 2.0, 4.0, 30.0])
