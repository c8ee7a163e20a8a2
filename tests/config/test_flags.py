"""Tests for oauthgate.config.flags: the ``twistd oauthgate`` command line."""

from __future__ import annotations

import io
import sys
from pathlib import Path

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from oauthgate._version import __version__
from oauthgate.config.flags import (
    Options,
    format_default,
    options_markdown,
    parse_bool,
    parse_text,
)
from oauthgate.config.options import OptionSpec, option_specs

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


class GivenTests(SynchronousTestCase):
    def test_nothing_given_records_nothing(self) -> None:
        options = parse()
        self.assertEqual(options.given, {})
        self.assertIsNone(options.config_file)
        self.assertIsNone(options["config"])

    def test_values_are_recorded_by_cfg_key_and_parsed(self) -> None:
        options = parse(
            "--cookie-name=_gate",
            "--cookie-expire",
            "1h30m",
            "--upstream=http://127.0.0.1:8080/",
            "--skip-provider-button",
        )
        self.assertEqual(
            options.given,
            {
                "cookie_name": "_gate",
                "cookie_expire": 5400.0,
                "upstreams": ("http://127.0.0.1:8080/",),
                "skip_provider_button": True,
            },
        )

    def test_config_names_the_file(self) -> None:
        options = parse("--config", "/etc/oauthgate.cfg")
        self.assertEqual(options.config_file, "/etc/oauthgate.cfg")
        self.assertEqual(options["config"], "/etc/oauthgate.cfg")

    def test_every_option_in_the_table_has_a_flag(self) -> None:
        long_options = {name.rstrip("=") for name in Options().longOpt}
        for spec in option_specs():
            self.assertIn(spec.flag, long_options)


class BoolFlagTests(SynchronousTestCase):
    def test_a_bare_flag_turns_it_on(self) -> None:
        self.assertEqual(parse("--skip-provider-button").given, {"skip_provider_button": True})

    def test_go_style_value_turns_it_off_or_on(self) -> None:
        self.assertEqual(parse("--cookie-secure=false").given, {"cookie_secure": False})
        self.assertEqual(parse("--cookie-secure=true").given, {"cookie_secure": True})
        self.assertEqual(parse("--cookie-secure=0").given, {"cookie_secure": False})

    def test_the_last_of_repeated_flags_wins(self) -> None:
        self.assertEqual(
            parse("--cookie-secure=false", "--cookie-secure").given, {"cookie_secure": True}
        )
        self.assertEqual(
            parse("--cookie-secure", "--cookie-secure=false").given, {"cookie_secure": False}
        )

    def test_an_unambiguous_prefix_works_like_the_full_name(self) -> None:
        self.assertEqual(parse("--skip-provider=false").given, {"skip_provider_button": False})

    def test_a_bad_value_names_the_flag_and_what_is_right(self) -> None:
        e = self.assertRaises(usage.UsageError, parse, "--cookie-secure=maybe")
        self.assertEqual(str(e), "--cookie-secure: expected true or false, got 'maybe'")

    def test_a_value_that_looks_like_a_flag_stays_a_value(self) -> None:
        options = parse("--banner", "--cookie-secure=false")
        self.assertEqual(options.given, {"banner": "--cookie-secure=false"})


class ListFlagTests(SynchronousTestCase):
    def test_repeated_flags_and_comma_lists_add_up(self) -> None:
        options = parse(
            "--email-domain=a.com", "--email-domain=b.com,c.com", "--email-domain", "d.com"
        )
        self.assertEqual(options.given, {"email_domains": ("a.com", "b.com", "c.com", "d.com")})

    def test_an_empty_value_gives_an_empty_list(self) -> None:
        self.assertEqual(parse("--upstream=").given, {"upstreams": ()})


class BadValueTests(SynchronousTestCase):
    def test_a_bad_duration_names_the_flag_and_gives_examples(self) -> None:
        e = self.assertRaises(usage.UsageError, parse, "--cookie-expire=7d")
        self.assertEqual(
            str(e),
            "--cookie-expire: expected a duration such as 168h, 1h30m, 90s or 500ms, got '7d'",
        )

    def test_unknown_flags_and_arguments_are_usage_errors(self) -> None:
        self.assertRaises(usage.UsageError, parse, "--cokie-name=x")
        self.assertRaises(usage.UsageError, parse, "stray")

    def test_under_twistd_a_bad_flag_is_one_line_not_the_whole_help(self) -> None:
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        for arg, line in [
            ("--workers=abc", "oauthgate: --workers: expected a whole number, got 'abc'\n"),
            (
                "--cokie-name=x",
                "oauthgate: option --cokie-name not recognized (see: twistd oauthgate --help)\n",
            ),
        ]:
            options = Options()
            options.parent = usage.Options()  # twistd's ServerOptions sets this
            e = self.assertRaises(SystemExit, options.parseOptions, [arg])
            self.assertEqual((e.code, err.getvalue()), (1, line))
            err.seek(0)
            err.truncate()


class ParseTextTests(SynchronousTestCase):
    def test_bool_spellings(self) -> None:
        for text in ("true", "TRUE", "1", "yes", "on", "t"):
            self.assertIs(parse_bool(text), True, text)
        for text in ("false", "False", "0", "no", "off", "f"):
            self.assertIs(parse_bool(text), False, text)

    def test_int_options_want_whole_numbers(self) -> None:
        spec = OptionSpec(key="limit", flag="limit", kind="int", default=0, help="a limit")
        self.assertEqual(parse_text(spec, "12"), 12)
        e = self.assertRaises(ValueError, parse_text, spec, "1.5")
        self.assertEqual(str(e), "expected a whole number, got '1.5'")

    def test_errors_about_secret_options_do_not_repeat_the_value(self) -> None:
        spec = OptionSpec(key="pin", flag="pin", kind="int", default=0, help="x", secret=True)
        e = self.assertRaises(ValueError, parse_text, spec, "hunter2")
        self.assertNotIn("hunter2", str(e))


class VersionAndHelpTests(SynchronousTestCase):
    def test_version_prints_oauthgate_version_and_exits_0(self) -> None:
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        e = self.assertRaises(SystemExit, parse, "--version")
        self.assertEqual(e.code, 0)
        self.assertEqual(out.getvalue(), f"oauthgate {__version__}\n")

    def test_help_lists_every_option_with_its_default(self) -> None:
        text = Options().getUsage(width=10000)
        for spec in option_specs():
            self.assertIn(f"--{spec.flag}", text)
            default = format_default(spec)
            if default:
                self.assertIn(f"[default: {default}]", text)
        self.assertIn("[default: 168h0m0s]", text)
        self.assertIn("--config=", text)
        self.assertIn("--version", text)

    def test_help_never_shows_a_secret_default(self) -> None:
        text = Options().getUsage(width=10000)
        for spec in option_specs():
            if spec.secret:
                line = next(line for line in text.splitlines() if f"--{spec.flag}=" in line)
                self.assertNotIn("[default:", line)

    def test_help_goes_to_stdout_and_exits_0(self) -> None:
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        e = self.assertRaises(SystemExit, parse, "--help")
        self.assertEqual(e.code, 0)
        self.assertIn("--cookie-secret-file=", out.getvalue())


class DocsTests(SynchronousTestCase):
    def test_markdown_table_has_a_row_per_option(self) -> None:
        rows = options_markdown().splitlines()[2:]
        self.assertEqual(len(rows), len(option_specs()))

    def test_configuration_page_documents_every_option(self) -> None:
        text = DOCS.read_text(encoding="utf-8")
        for spec in option_specs():
            self.assertIn(f"`--{spec.flag}`", text)
            self.assertIn(f"`{spec.key}`", text)

    def test_configuration_page_table_is_current(self) -> None:
        """docs/configuration.md carries the generated table; regenerate it with
        ``python -c 'from oauthgate.config import options_markdown; print(options_markdown())'``.
        """
        self.assertIn(options_markdown(), DOCS.read_text(encoding="utf-8"))
