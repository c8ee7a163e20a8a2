"""The request and auth log writer: templates, redaction, rotation, JSON, flushing."""

from __future__ import annotations

import io
import json
import os
import select
import time
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.task import Clock
from twisted.logger import PredicateResult
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel, DummyRequest

from oauthgate.config.options import Config
from oauthgate.errors import ConfigError
from oauthgate.logs import (
    AUTH_FIELDS,
    DEFAULT_AUTH_FORMAT,
    DEFAULT_REQUEST_FORMAT,
    REQUEST_FIELDS,
    AccessLog,
    LogFile,
    LogService,
    StandardLogFilter,
    access_log_from_config,
    compile_template,
    redact_uri,
)

NOON_UTC = 1_700_000_000.0  # 2023/11/14 22:13:20 UTC


def finished_request(uri: bytes = b"/app/page?x=1", **attrs_: Any) -> Any:
    request: Any = DummyRequest([b""])
    request.uri = uri
    request.method = b"GET"
    request.clientproto = b"HTTP/1.1"
    request.code = 200
    request.sentLength = 1234
    request.requestHeaders.setRawHeaders(b"host", [b"app.example.com"])
    request.requestHeaders.setRawHeaders(b"user-agent", [b'curl/8 "x"'])
    request.requestHeaders.setRawHeaders(b"x-request-id", [b"rid-1"])
    for name, value in attrs_.items():
        setattr(request, name, value)
    return request


def writer(clock: Clock | None = None, **kwargs: Any) -> tuple[AccessLog, io.BytesIO, Clock]:
    clock = clock or Clock()
    if clock.seconds() == 0:
        clock.advance(NOON_UTC)
    out = io.BytesIO()
    kwargs.setdefault("local_time", False)
    log = AccessLog(LogFile(stream=out), clock, client_ip=lambda r: "10.0.0.7", **kwargs)
    return log, out, clock


def lines(log: AccessLog, out: io.BytesIO) -> list[str]:
    log.flush()
    return out.getvalue().decode("utf-8").splitlines()


class TemplateTests(SynchronousTestCase):
    def test_the_default_request_line_has_every_field_in_oauth2_proxy_order(self) -> None:
        log, out, _ = writer()
        log.request(finished_request(oauthgate_user="alice@example.com"), 0.0123)
        self.assertEqual(
            lines(log, out),
            [
                "10.0.0.7 - rid-1 - alice@example.com [2023/11/14 22:13:20] app.example.com "
                'GET - "/app/page?x=1" HTTP/1.1 "curl/8 \\"x\\"" 200 1234 0.012'
            ],
        )

    def test_the_default_auth_line_names_client_user_status_and_message(self) -> None:
        log, out, _ = writer()
        log.auth(finished_request(), "bob@example.com", "AuthFailure", "invalid token")
        self.assertEqual(
            lines(log, out),
            [
                "10.0.0.7 - rid-1 - bob@example.com [2023/11/14 22:13:20] "
                "[AuthFailure] invalid token"
            ],
        )

    def test_each_request_placeholder_alone(self) -> None:
        expected = {
            "Client": "10.0.0.7",
            "RequestID": "rid-1",
            "Username": "-",
            "Timestamp": "2023/11/14 22:13:20",
            "Host": "app.example.com",
            "RequestMethod": "GET",
            "Upstream": "backend",
            "RequestURI": '"/app/page?x=1"',
            "Protocol": "HTTP/1.1",
            "UserAgent": '"curl/8 \\"x\\""',
            "StatusCode": "200",
            "ResponseSize": "1234",
            "RequestDuration": "1.500",
        }
        self.assertEqual(set(expected), set(REQUEST_FIELDS))
        for field, value in expected.items():
            log, out, _ = writer(request_format=f"<{{{{.{field}}}}}> 100%")
            log.request(finished_request(oauthgate_upstream="backend"), 1.5)
            self.assertEqual(lines(log, out), [f"<{value}> 100%"], field)

    def test_each_auth_placeholder_alone(self) -> None:
        expected = {
            "Client": "10.0.0.7",
            "RequestID": "rid-1",
            "Username": "carol",
            "Timestamp": "2023/11/14 22:13:20",
            "Status": "AuthSuccess",
            "Message": "authenticated via login",
        }
        self.assertEqual(set(expected), set(AUTH_FIELDS))
        for field, value in expected.items():
            log, out, _ = writer(auth_format=f"{{{{ .{field} }}}}")
            log.auth(finished_request(), "carol", "AuthSuccess", "authenticated via login")
            self.assertEqual(lines(log, out), [value], field)

    def test_a_template_is_compiled_once_into_a_format_and_field_list(self) -> None:
        template = compile_template("a {{.Client}} b {{.Status}} 5%", AUTH_FIELDS)
        self.assertEqual(template.fmt, "a %s b %s 5%%")
        self.assertEqual(template.fields, ("Client", "Status"))
        self.assertEqual(template.render(["c", "s"]), "a c b s 5%")

    def test_an_unknown_placeholder_is_a_start_up_error_naming_it(self) -> None:
        e = self.assertRaises(ValueError, writer, request_format="{{.Client}} {{.Bogus}} {{.Nope}}")
        self.assertIn("request_logging_format", str(e))
        self.assertIn("{{.Bogus}}", str(e))
        self.assertIn("{{.Nope}}", str(e))
        e = self.assertRaises(ValueError, writer, auth_format="{{.StatusCode}}")
        self.assertIn("auth_logging_format", str(e))
        self.assertIn("{{.StatusCode}}", str(e))

    def test_the_option_defaults_are_oauth2_proxys_templates(self) -> None:
        config = Config()
        self.assertEqual(config.request_logging_format, DEFAULT_REQUEST_FORMAT)
        self.assertEqual(config.auth_logging_format, DEFAULT_AUTH_FORMAT)

    def test_the_config_names_every_problem_at_once(self) -> None:
        config = Config(
            request_logging_format="{{.Nope}}",
            auth_logging_format="{{.Bad}}",
            logging_format="xml",
        )
        e = self.assertRaises(ConfigError, access_log_from_config, config, Clock(), lambda r: None)
        text = "\n".join(e.problems)
        for needle in ("{{.Nope}}", "{{.Bad}}", "logging_format: must be text or json"):
            self.assertIn(needle, text)

    def test_both_logs_off_means_no_writer(self) -> None:
        config = Config(request_logging=False, auth_logging=False)
        self.assertIsNone(access_log_from_config(config, Clock(), lambda r: None))


class RedactionTests(SynchronousTestCase):
    def test_login_and_token_parameters_are_redacted_and_the_rest_kept(self) -> None:
        uri = (
            "/oauth2/callback?code=SECRETCODE&state=S1%3A%2F&x=1"
            "&access_token=AT&ID_TOKEN=IT&token=T"
        )
        self.assertEqual(
            redact_uri(uri),
            "/oauth2/callback?code=REDACTED&state=REDACTED&x=1&access_token=REDACTED"
            "&ID_TOKEN=REDACTED&token=REDACTED",
        )

    def test_a_uri_without_sensitive_parameters_is_unchanged(self) -> None:
        for uri in ("/a", "/a?", "/a?x=1&codes=2&y", "/a?x=code=1"):
            self.assertEqual(redact_uri(uri), uri)

    def test_the_request_log_never_shows_a_code_or_state(self) -> None:
        for log_format in ("text", "json"):
            log, out, _ = writer(log_format=log_format)
            log.request(finished_request(b"/oauth2/callback?code=C0DE-123&state=ST4TE-9"), 0.0)
            text = "\n".join(lines(log, out))
            self.assertNotIn("C0DE-123", text)
            self.assertNotIn("ST4TE-9", text)
            self.assertIn("/oauth2/callback?code=REDACTED&state=REDACTED", text)


class JSONTests(SynchronousTestCase):
    def test_json_is_one_object_per_line_with_the_fields_by_name(self) -> None:
        log, out, _ = writer(log_format="json")
        log.request(finished_request(oauthgate_user="alice"), 0.25)
        log.auth(finished_request(), "alice", "AuthSuccess", 'said "hi"\nbye')
        request, auth = (json.loads(line) for line in lines(log, out))
        self.assertEqual(
            request,
            {
                "log": "request",
                "Client": "10.0.0.7",
                "RequestID": "rid-1",
                "Username": "alice",
                "Timestamp": "2023/11/14 22:13:20",
                "Host": "app.example.com",
                "RequestMethod": "GET",
                "Upstream": "-",
                "RequestURI": "/app/page?x=1",
                "Protocol": "HTTP/1.1",
                "UserAgent": 'curl/8 "x"',
                "StatusCode": 200,
                "ResponseSize": 1234,
                "RequestDuration": 0.25,
            },
        )
        self.assertEqual(
            auth,
            {
                "log": "auth",
                "Client": "10.0.0.7",
                "RequestID": "rid-1",
                "Username": "alice",
                "Timestamp": "2023/11/14 22:13:20",
                "Status": "AuthSuccess",
                "Message": 'said "hi"\nbye',
            },
        )


class TimeTests(SynchronousTestCase):
    def test_utc_time_when_local_time_is_off(self) -> None:
        log, _, _ = writer(local_time=False)
        self.assertEqual(log.timestamp(), "2023/11/14 22:13:20")

    def test_local_time_by_default(self) -> None:
        log, _, _ = writer(local_time=True)
        expected = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(NOON_UTC))
        self.assertEqual(log.timestamp(), expected)

    def test_the_timestamp_follows_the_clock_second_by_second(self) -> None:
        log, _, clock = writer()
        clock.advance(0.9)
        self.assertEqual(log.timestamp(), "2023/11/14 22:13:20")
        clock.advance(0.1)
        self.assertEqual(log.timestamp(), "2023/11/14 22:13:21")


class FlushTests(SynchronousTestCase):
    def test_lines_are_buffered_until_the_half_second_flush(self) -> None:
        log, out, clock = writer()
        service = LogService(log, clock)
        service.startService()
        log.auth(finished_request(), "a", "AuthSuccess", "ok")
        self.assertEqual(out.getvalue(), b"")
        clock.advance(0.5)
        self.assertIn(b"[AuthSuccess] ok", out.getvalue())
        service.stopService()

    def test_stopping_writes_what_is_buffered_and_closes_the_file(self) -> None:
        path = self.mktemp()
        clock = Clock()
        log = AccessLog(LogFile(path), clock, client_ip=lambda r: "c")
        service = LogService(log, clock)
        service.startService()
        log.auth(finished_request(), "a", "AuthError", "last words")
        self.assertEqual(Path(path).read_bytes(), b"")
        service.stopService()
        self.assertIn(b"last words", Path(path).read_bytes())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_shared_stream_gets_whole_lines_of_at_most_pipe_buf_per_write(self) -> None:
        writes: list[bytes] = []

        class Recording(io.BytesIO):
            def write(self, data: Any) -> int:
                writes.append(bytes(data))
                return len(data)

        out = LogFile(stream=Recording(), shared=True)
        lines = [b"%05d %s\n" % (n, b"x" * (n % 300)) for n in range(200)]
        lines.append(b"long " + b"y" * 5000 + b"\n")
        for line in lines:
            out.write(line)
        out.flush()
        self.assertEqual(b"".join(writes), b"".join(lines))
        self.assertGreater(len(writes), 2)
        for data in writes:
            self.assertTrue(data.endswith(b"\n"))
            self.assertTrue(len(data) <= select.PIPE_BUF or data.count(b"\n") == 1)


class RotationTests(SynchronousTestCase):
    def test_a_line_that_fits_exactly_does_not_rotate(self) -> None:
        path = self.mktemp()
        log = LogFile(path, max_size=20)
        log.write(b"x" * 9 + b"\n")
        log.write(b"y" * 9 + b"\n")  # exactly 20 bytes
        log.close()
        self.assertEqual(Path(path).read_bytes(), b"x" * 9 + b"\n" + b"y" * 9 + b"\n")
        self.assertEqual(LogFile(path).backups(), [])

    def test_one_byte_past_the_limit_rotates_to_dot_one(self) -> None:
        path = self.mktemp()
        log = LogFile(path, max_size=20)
        log.write(b"x" * 9 + b"\n")
        log.write(b"y" * 10 + b"\n")  # 21 bytes: this line starts a new file
        log.close()
        self.assertEqual(Path(path).read_bytes(), b"y" * 10 + b"\n")
        self.assertEqual(Path(path + ".1").read_bytes(), b"x" * 9 + b"\n")

    def test_older_backups_move_up_and_only_max_backups_are_kept(self) -> None:
        path = self.mktemp()
        log = LogFile(path, max_size=4, max_backups=2)
        for n in range(5):
            log.write(b"%d..\n" % n)  # 4 bytes + newline: each line its own file
        log.close()
        self.assertEqual(Path(path).read_bytes(), b"4..\n")
        self.assertEqual(LogFile(path).backups(), [path + ".1", path + ".2"])
        self.assertEqual(Path(path + ".1").read_bytes(), b"3..\n")
        self.assertEqual(Path(path + ".2").read_bytes(), b"2..\n")

    def test_zero_max_backups_keeps_them_all(self) -> None:
        path = self.mktemp()
        log = LogFile(path, max_size=4)
        for n in range(4):
            log.write(b"%d..\n" % n)
        log.close()
        self.assertEqual(len(LogFile(path).backups()), 3)

    def test_backups_older_than_max_age_are_removed(self) -> None:
        path = self.mktemp()
        Path(path + ".1").write_bytes(b"old\n")
        old = time.time() - 10 * 86400
        os.utime(path + ".1", (old, old))
        log = LogFile(path, max_size=4, max_age=7 * 86400)
        log.write(b"a..\n")
        log.write(b"b..\n")
        log.close()
        self.assertEqual(LogFile(path).backups(), [path + ".1"])
        self.assertEqual(Path(path + ".1").read_bytes(), b"a..\n")

    def test_an_existing_file_counts_towards_the_size(self) -> None:
        path = self.mktemp()
        Path(path).write_bytes(b"0123456789\n")
        log = LogFile(path, max_size=12)
        log.write(b"ab\n")
        log.close()
        self.assertEqual(Path(path).read_bytes(), b"ab\n")


class StandardLogFilterTests(SynchronousTestCase):
    def test_oauthgate_events_are_dropped_and_others_kept(self) -> None:
        keep = StandardLogFilter()
        self.assertEqual(keep({"log_namespace": "oauthgate.web.gate"}), PredicateResult.no)
        self.assertEqual(keep({"log_namespace": "oauthgate"}), PredicateResult.no)
        self.assertEqual(keep({"log_namespace": "twisted.web"}), PredicateResult.maybe)
        self.assertEqual(keep({"log_namespace": "oauthgatex"}), PredicateResult.maybe)


class WiringTests(SynchronousTestCase):
    def test_the_config_builds_a_writer_to_the_named_file(self) -> None:
        path = self.mktemp()
        config = attrs.evolve(Config(), logging_filename=path, logging_format="json")
        log = access_log_from_config(config, Clock(), lambda r: "1.2.3.4")
        assert log is not None
        log.auth(finished_request(), "u", "AuthSuccess", "ok")
        log.close()
        self.assertEqual(json.loads(Path(path).read_text())["Client"], "1.2.3.4")


class RedactionSpellingTests(SynchronousTestCase):
    """Every spelling a server decodes as a secret-bearing parameter is redacted."""

    def test_encoded_and_semicolon_spellings_are_redacted(self) -> None:
        from oauthgate.logs import redact_uri

        for uri, secret in (
            ("/cb?%63ode=abc123", "abc123"),
            ("/cb?a=1;code=abc123", "abc123"),
            ("/cb?+code=abc123", "abc123"),
            ("/cb?id%5Ftoken=abc123", "abc123"),
            ("/cb?refresh_token=abc123&keep=1", "abc123"),
            ("/cb?client_secret=abc123", "abc123"),
        ):
            self.assertNotIn(secret, redact_uri(uri), uri)
        self.assertEqual(redact_uri("/cb?codex=1&page=2"), "/cb?codex=1&page=2")


class SpecialisedRendererTests(SynchronousTestCase):
    """The text request line is rendered by a function generated once per template; its
    lines are byte for byte those of the field-by-field rendering."""

    TEMPLATES = (
        DEFAULT_REQUEST_FORMAT,
        "{{ .Client }}{{.Client}} 100%s %d {{.RequestDuration}}%",
        "no fields at all, 50%",
        "[{{.UserAgent}}|{{.RequestURI}}|{{.Host}}|{{.RequestID}}|{{.Upstream}}]",
    )

    def request(self, uri: bytes = b"/app/page", **attrs_: Any) -> Request:
        """A real twisted.web request (DummyRequest reads the first of repeated headers,
        Twisted's Request the last)."""
        request = Request(DummyChannel())
        request.uri, request.method, request.clientproto = uri, b"GET", b"HTTP/1.1"
        request.code, request.sentLength = 200, 1234
        for name, value in (
            (b"host", b"app.example.com"),
            (b"user-agent", b'curl/8 "x"'),
            (b"x-request-id", b"rid-1"),
        ):
            request.requestHeaders.setRawHeaders(name, [value])
        for name, value in attrs_.items():
            setattr(request, name, value)
        return request

    def requests(self) -> list[Request]:
        bare = Request(DummyChannel())
        bare.uri = bare.method = bare.clientproto = b""
        bare.code, bare.sentLength = 502, 0
        empty = self.request(b"/x")
        empty.requestHeaders.setRawHeaders(b"host", [b""])
        empty.requestHeaders.setRawHeaders(b"user-agent", [b"first", b""])
        repeated = self.request()
        repeated.requestHeaders.setRawHeaders(b"host", [b"first.example", b"last.example"])
        repeated.requestHeaders.setRawHeaders(b"x-request-id", [b"r1", b"r" * 100])
        odd_agent = self.request()
        odd_agent.requestHeaders.setRawHeaders(b"user-agent", ['Mozilla "é"\t\x7f'.encode()])
        return [
            self.request(),
            odd_agent,
            self.request(oauthgate_user="alice@example.com", oauthgate_upstream="app"),
            self.request(b"/oauth2/callback?code=SECRET&state=S", oauthgate_request_id=42),
            self.request("/é/\u2028?q=\u00ff".encode() + b"\xff"),
            self.request(b'/a"b\\c\x01'),
            bare,
            empty,
            repeated,
        ]

    def test_lines_are_those_of_the_field_by_field_rendering(self) -> None:
        for template in self.TEMPLATES:
            log, out, _ = writer(request_format=template)
            for request in self.requests():
                for duration in (0.0, 0.0005, 1.23456, 12345.6789):
                    expected = log.request_template.render(
                        [g(request, duration) for g in log._request_getters]
                    )
                    out.seek(0)
                    out.truncate()
                    log.request(request, duration)
                    log.flush()
                    self.assertEqual(out.getvalue(), expected.encode("utf-8", "replace") + b"\n")

    def test_the_client_the_gate_worked_out_is_reused(self) -> None:
        log, out, _ = writer(request_format="{{.Client}}")
        log.request(finished_request(), 0.0)
        log.request(finished_request(oauthgate_client_ip="192.0.2.1"), 0.0)
        log.request(finished_request(oauthgate_client_ip=None), 0.0)
        self.assertEqual(lines(log, out), ["10.0.0.7", "192.0.2.1", "-"])

    def test_quoted_paths_and_agents_are_remembered_within_bounds(self) -> None:
        log, out, _ = writer(request_format="{{.RequestURI}} {{.UserAgent}}")
        for i in range(1000):
            request = finished_request(f"/page/{i}".encode())
            request.requestHeaders.setRawHeaders(b"user-agent", [f"agent {i}".encode()])
            log.request(request, 0.0)
            self.assertLessEqual(len(log._quoted_uris), 256)
            self.assertLessEqual(len(log._quoted_agents), 256)
        self.assertEqual(lines(log, out)[-1], '"/page/999" "agent 999"')

    def test_a_path_with_a_query_is_never_remembered(self) -> None:
        """A query may carry a code: not even its redacted text stays in memory."""
        log, out, _ = writer(request_format="{{.RequestURI}}")
        log.request(finished_request(b"/oauth2/callback?code=C0DE&state=S"), 0.0)
        log.request(finished_request(b"/plain"), 0.0)
        self.assertEqual(list(log._quoted_uris), [b"/plain"])
        self.assertEqual(
            lines(log, out), ['"/oauth2/callback?code=REDACTED&state=REDACTED"', '"/plain"']
        )
