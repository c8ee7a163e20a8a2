"""Tests for oauthgate.config.loader: flags > environment > TOML file > defaults."""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from collections.abc import Mapping

from twisted.trial.unittest import SynchronousTestCase

from oauthgate.config.loader import (
    DEMO_IDP_PORT,
    DEMO_UPSTREAM_PORT,
    UNSUPPORTED_OAUTH2_PROXY_KEYS,
    load_config,
)
from oauthgate.config.options import Config, option_specs
from oauthgate.errors import ConfigError
from oauthgate.sessions.crypto import decode_secret

COOKIE_SECRET = base64.urlsafe_b64encode(b"k" * 32).decode()
CLIENT_SECRET = "client-secret-value"

#: The least a working configuration needs, as flags.
REQUIRED: dict[str, object] = {
    "provider": "oidc",
    "oidc_issuer_url": "https://idp.example.com",
    "client_id": "app",
    "client_secret": CLIENT_SECRET,
    "cookie_secret": COOKIE_SECRET,
    "email_domains": ("example.com",),
}


class LoaderTestCase(SynchronousTestCase):
    def write(self, text: str, name: str = "oauthgate.cfg") -> str:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def load(
        self,
        flags: Mapping[str, object] | None = None,
        environ: Mapping[str, str] | None = None,
        config_file: str | None = None,
    ) -> tuple[Config, list[str]]:
        return load_config({**REQUIRED, **(flags or {})}, environ or {}, config_file)

    def problems(
        self,
        flags: Mapping[str, object] | None = None,
        environ: Mapping[str, str] | None = None,
        config_file: str | None = None,
        *,
        base: Mapping[str, object] = REQUIRED,
    ) -> tuple[str, ...]:
        e = self.assertRaises(
            ConfigError, load_config, {**base, **(flags or {})}, environ or {}, config_file
        )
        problems: tuple[str, ...] = e.problems
        return problems


class PrecedenceTests(LoaderTestCase):
    def test_defaults_apply_when_nothing_is_given(self) -> None:
        config, warnings = self.load()
        self.assertEqual(config.cookie_name, "_oauth2_proxy")
        self.assertEqual(config.cookie_expire, 604800.0)
        self.assertEqual(warnings, [])

    def test_flag_beats_env_beats_file_beats_default(self) -> None:
        path = self.write('cookie_name = "from_file"\n')
        env = {"OAUTHGATE_COOKIE_NAME": "from_env"}
        self.assertEqual(self.load(config_file=path)[0].cookie_name, "from_file")
        self.assertEqual(self.load(environ=env, config_file=path)[0].cookie_name, "from_env")
        config, _ = self.load({"cookie_name": "from_flag"}, env, path)
        self.assertEqual(config.cookie_name, "from_flag")

    def test_a_list_from_a_flag_replaces_the_file_list(self) -> None:
        path = self.write('email_domains = ["file.com", "other.com"]\n')
        config, _ = self.load({"email_domains": ("flag.com",)}, config_file=path)
        self.assertEqual(config.email_domains, ("flag.com",))

    def test_flags_given_as_strings_are_parsed(self) -> None:
        config, _ = self.load({"cookie_expire": "1h", "cookie_secure": "false"})
        self.assertEqual((config.cookie_expire, config.cookie_secure), (3600.0, False))


class EnvironmentTests(LoaderTestCase):
    def test_both_prefixes_work_and_oauthgate_wins(self) -> None:
        self.assertEqual(
            self.load(environ={"OAUTH2_PROXY_COOKIE_NAME": "o2p"})[0].cookie_name, "o2p"
        )
        env = {"OAUTH2_PROXY_COOKIE_NAME": "o2p", "OAUTHGATE_COOKIE_NAME": "gate"}
        self.assertEqual(self.load(environ=env)[0].cookie_name, "gate")

    def test_values_are_parsed_by_kind(self) -> None:
        env = {
            "OAUTH2_PROXY_UPSTREAMS": "http://127.0.0.1:8080/, http://127.0.0.1:9090/api/",
            "OAUTHGATE_COOKIE_SECURE": "no",
            "OAUTHGATE_SKIP_PROVIDER_BUTTON": "1",
            "OAUTHGATE_COOKIE_REFRESH": "1h",
        }
        config, _ = self.load(environ=env)
        self.assertEqual(config.upstreams, ("http://127.0.0.1:8080/", "http://127.0.0.1:9090/api/"))
        self.assertIs(config.cookie_secure, False)
        self.assertIs(config.skip_provider_button, True)
        self.assertEqual(config.cookie_refresh, 3600.0)

    def test_the_whole_config_can_come_from_oauth2_proxy_variables(self) -> None:
        env = {
            "OAUTH2_PROXY_PROVIDER": "oidc",
            "OAUTH2_PROXY_OIDC_ISSUER_URL": "https://idp.example.com",
            "OAUTH2_PROXY_CLIENT_ID": "app",
            "OAUTH2_PROXY_CLIENT_SECRET": CLIENT_SECRET,
            "OAUTH2_PROXY_COOKIE_SECRET": COOKIE_SECRET,
            "OAUTH2_PROXY_EMAIL_DOMAINS": "example.com,example.org",
        }
        config, _ = load_config({}, env, None)
        self.assertEqual(config.email_domains, ("example.com", "example.org"))
        self.assertEqual(config.client_secret, CLIENT_SECRET)

    def test_a_bad_value_names_the_variable(self) -> None:
        problems = self.problems(environ={"OAUTHGATE_COOKIE_EXPIRE": "7d"})
        self.assertEqual(
            problems,
            (
                "OAUTHGATE_COOKIE_EXPIRE: expected a duration such as 168h, 1h30m, 90s or 500ms, "
                "got '7d'",
            ),
        )

    def test_unknown_oauthgate_variables_are_errors(self) -> None:
        self.assertEqual(
            self.problems(environ={"OAUTHGATE_COOKIE_NAM": "x", "OAUTHGATE_BOGUS": "y"}),
            (
                "OAUTHGATE_BOGUS: unknown option",
                "OAUTHGATE_COOKIE_NAM: unknown option (did you mean 'OAUTHGATE_COOKIE_NAME'?)",
            ),
        )

    def test_a_restriction_spelt_like_its_flag_does_not_vanish(self) -> None:
        """OAUTH2_PROXY_ALLOWED_GROUP (the flag --allowed-group) must not start unrestricted."""
        for prefix in ("OAUTH2_PROXY_", "OAUTHGATE_"):
            self.assertEqual(
                self.problems(environ={f"{prefix}ALLOWED_GROUP": "admins"}),
                (
                    f"{prefix}ALLOWED_GROUP: unknown option; variables are named after the "
                    "config key, not the flag --allowed-group (did you mean "
                    f"'{prefix}ALLOWED_GROUPS'?)",
                ),
            )

    def test_oauth2_proxy_options_not_supported_yet_are_errors_in_either_prefix(self) -> None:
        self.assertEqual(
            self.problems(
                environ={
                    "OAUTH2_PROXY_GCP_HEALTHCHECKS": "true",
                    "OAUTHGATE_LOGGING_COMPRESS": "true",
                }
            ),
            (
                "OAUTH2_PROXY_GCP_HEALTHCHECKS: option 'gcp_healthchecks' (oauth2-proxy) is "
                "not supported by this version of oauthgate",
                "OAUTHGATE_LOGGING_COMPRESS: option 'logging_compress' (oauth2-proxy) is not "
                "supported by this version of oauthgate",
            ),
        )

    def test_other_unknown_oauth2_proxy_variables_only_warn(self) -> None:
        """Other tools (a Helm chart, say) may use the OAUTH2_PROXY_ prefix too."""
        env = {
            "OAUTH2_PROXY_CHART_RELEASE": "7.1.0",
            "OAUTH2_PROXY_COOKIE_NAM": "x",
            "HOME": "/root",
        }
        config, warnings = self.load(environ=env)
        self.assertEqual(config.cookie_name, "_oauth2_proxy")
        self.assertEqual(
            warnings,
            [
                "OAUTH2_PROXY_CHART_RELEASE: no such option, ignored",
                "OAUTH2_PROXY_COOKIE_NAM: no such option, ignored "
                "(did you mean 'OAUTH2_PROXY_COOKIE_NAME'?)",
            ],
        )

    def test_kubernetes_service_links_are_ignored_quietly(self) -> None:
        """A Service named oauthgate or oauth2-proxy must not stop the pod from starting."""
        env = {
            "OAUTHGATE_SERVICE_HOST": "10.0.0.7",
            "OAUTHGATE_SERVICE_PORT": "4180",
            "OAUTHGATE_SERVICE_PORT_HTTP": "4180",
            "OAUTHGATE_PORT": "tcp://10.0.0.7:4180",
            "OAUTHGATE_PORT_4180_TCP": "tcp://10.0.0.7:4180",
            "OAUTHGATE_PORT_4180_TCP_ADDR": "10.0.0.7",
            "OAUTH2_PROXY_REDIS_MASTER_SERVICE_HOST": "10.0.0.8",
            "OAUTH2_PROXY_PORT_4180_TCP_PROTO": "tcp",
        }
        self.assertEqual(self.load(environ=env)[1], [])


class FileTests(LoaderTestCase):
    def test_an_oauth2_proxy_cfg_file_loads_unchanged(self) -> None:
        path = self.write(
            "# oauth2-proxy.cfg\n"
            'provider = "oidc"\n'
            'oidc_issuer_url = "https://idp.example.com/realms/main"\n'
            'client_id = "grafana"\n'
            f'client_secret = "{CLIENT_SECRET}"\n'
            f'cookie_secret = "{COOKIE_SECRET}"\n'
            'email_domains = ["example.com"]\n'
            'upstreams = ["http://127.0.0.1:8080/"]\n'
            "cookie_secure = false\n"
            'cookie_expire = "168h0m0s"\n'
            'http_address = "0.0.0.0:4180"\n'
        )
        config, warnings = load_config({}, {}, path)
        self.assertEqual(config.provider, "oidc")
        self.assertEqual(config.client_id, "grafana")
        self.assertEqual(config.email_domains, ("example.com",))
        self.assertEqual(config.upstreams, ("http://127.0.0.1:8080/",))
        self.assertIs(config.cookie_secure, False)
        self.assertEqual(config.cookie_expire, 604800.0)
        self.assertEqual(warnings, [])

    def test_list_forms(self) -> None:
        path = self.write(
            'email_domains = "a.com"\n'
            'whitelist_domains = "a.com, b.com"\n'
            'cookie_domains = [".a.com", ".b.com"]\n'
        )
        base = {k: v for k, v in REQUIRED.items() if k != "email_domains"}
        config, _ = load_config(base, {}, path)
        self.assertEqual(config.email_domains, ("a.com",))
        self.assertEqual(config.whitelist_domains, ("a.com", "b.com"))
        self.assertEqual(config.cookie_domains, (".a.com", ".b.com"))

    def test_durations_may_be_strings_or_seconds(self) -> None:
        path = self.write('cookie_expire = "12h"\ncookie_refresh = 3600\nupstream_timeout = 2.5\n')
        config, _ = self.load(config_file=path)
        self.assertEqual(
            (config.cookie_expire, config.cookie_refresh, config.upstream_timeout),
            (43200.0, 3600.0, 2.5),
        )

    def test_a_quoted_bool_loads_as_oauth2_proxy_reads_it(self) -> None:
        path = self.write('client_id = "app"\ncookie_secure = "false"\ncookie_httponly = "true"\n')
        config, _ = self.load(config_file=path)
        self.assertEqual((config.cookie_secure, config.cookie_httponly), (False, True))

    def test_a_string_that_is_no_bool_names_key_and_line(self) -> None:
        path = self.write('client_id = "app"\ncookie_secure = "sometimes"\n')
        self.assertEqual(
            self.problems(config_file=path),
            (f"{path}:2: cookie_secure: expected true or false, got a string",),
        )

    def test_wrong_types_name_what_is_right(self) -> None:
        path = self.write(
            "cookie_name = 5\nupstreams = [1, 2]\ncookie_expire = true\ncookie_refresh = -5\n"
            'cookie_csrf_expire = "soon"\n'
        )
        self.assertEqual(
            self.problems(config_file=path),
            (
                f"{path}:1: cookie_name: expected a string (in quotes), got an integer",
                f'{path}:2: upstreams: expected an array of strings such as ["a", "b"], '
                "got an array of non-strings",
                f"{path}:3: cookie_expire: expected a duration such as 168h, 1h30m, 90s or "
                "500ms (a string), got a boolean",
                f"{path}:4: cookie_refresh: must not be negative, got -5",
                f"{path}:5: cookie_csrf_expire: expected a duration such as 168h, 1h30m, 90s "
                "or 500ms, got 'soon'",
            ),
        )

    def test_unknown_keys_are_errors_with_line_numbers(self) -> None:
        path = self.write('client_id = "app"\n\n  cokie_name = "x"\n[cookie]\nname = "y"\n')
        self.assertEqual(
            self.problems(config_file=path),
            (
                f"{path}:3: unknown option 'cokie_name' (did you mean 'cookie_name'?)",
                f"{path}:4: unknown option 'cookie'",
            ),
        )

    def test_oauth2_proxy_keys_not_supported_yet_say_so(self) -> None:
        path = self.write('client_id = "app"\nsignature_key = "sha1:x"\ngcp_healthchecks = true\n')
        self.assertEqual(
            self.problems(config_file=path),
            (
                f"{path}:2: option 'signature_key' (oauth2-proxy) is not supported by "
                "this version of oauthgate",
                f"{path}:3: option 'gcp_healthchecks' (oauth2-proxy) is not supported by "
                "this version of oauthgate",
            ),
        )

    def test_unsupported_keys_are_not_options_of_ours(self) -> None:
        keys = {spec.key for spec in option_specs()}
        self.assertEqual(UNSUPPORTED_OAUTH2_PROXY_KEYS & keys, set())
        for key in (
            "gcp_healthchecks",
            "signature_key",
            "use_system_trust_store",
        ):
            self.assertIn(key, UNSUPPORTED_OAUTH2_PROXY_KEYS)

    def test_invalid_toml_is_one_readable_problem(self) -> None:
        path = self.write('client_id = "app\n')
        problems = self.problems(config_file=path)
        self.assertEqual(len(problems), 1)
        self.assertTrue(problems[0].startswith(f"{path}: not valid TOML: "), problems[0])
        self.assertIn("line 1", problems[0])

    def test_a_missing_file_is_a_problem(self) -> None:
        path = os.path.join(tempfile.gettempdir(), "oauthgate-no-such-dir", "x.cfg")
        self.assertEqual(
            self.problems(config_file=path),
            (f"{path}: cannot read the config file: No such file or directory",),
        )


class SecretFileTests(LoaderTestCase):
    def test_secrets_are_read_from_files_without_the_trailing_newline(self) -> None:
        cookie = self.write(COOKIE_SECRET + "\n", "cookie")
        client = self.write(CLIENT_SECRET + "\r\n", "client")
        base = {k: v for k, v in REQUIRED.items() if k not in ("cookie_secret", "client_secret")}
        config, _ = load_config(
            {**base, "cookie_secret_file": cookie},
            {"OAUTHGATE_CLIENT_SECRET_FILE": client},
            None,
        )
        self.assertEqual(config.cookie_secret, COOKIE_SECRET)
        self.assertEqual(config.client_secret, CLIENT_SECRET)

    def test_value_and_file_together_are_an_error(self) -> None:
        path = self.write(COOKIE_SECRET, "cookie")
        self.assertEqual(
            self.problems({"cookie_secret_file": path}),
            (
                "cookie_secret: both cookie_secret and cookie_secret_file are set; "
                "give only one of them",
            ),
        )

    def test_an_unreadable_file_is_reported_once(self) -> None:
        path = os.path.join(tempfile.gettempdir(), "oauthgate-no-such-dir", "secret")
        base = {k: v for k, v in REQUIRED.items() if k != "client_secret"}
        self.assertEqual(
            self.problems({"client_secret_file": path}, base=base),
            (f"client_secret_file: cannot read {path}: No such file or directory",),
        )


class DemoTests(LoaderTestCase):
    def test_demo_alone_is_a_complete_configuration(self) -> None:
        config, warnings = load_config({"demo": True}, {}, None, random=lambda n: b"r" * n)
        self.assertEqual(config.provider, "oidc")
        self.assertEqual(config.oidc_issuer_url, f"http://127.0.0.1:{DEMO_IDP_PORT}")
        self.assertEqual(
            (config.client_id, config.client_secret), ("oauthgate-demo", "oauthgate-demo-secret")
        )
        self.assertEqual(decode_secret(config.cookie_secret), b"r" * 32)
        self.assertIs(config.cookie_secure, False)
        self.assertEqual(config.email_domains, ("*",))
        self.assertEqual(config.upstreams, (f"http://127.0.0.1:{DEMO_UPSTREAM_PORT}/",))
        self.assertEqual(config.code_challenge_method, "S256")
        self.assertIs(config.set_xauthrequest, True)
        self.assertIs(config.pass_access_token, False)
        self.assertEqual(warnings, [])

    def test_demo_cookie_secret_is_fresh_each_time(self) -> None:
        first, _ = load_config({"demo": True}, {}, None)
        second, _ = load_config({"demo": True}, {}, None)
        self.assertNotEqual(first.cookie_secret, second.cookie_secret)
        self.assertEqual(len(decode_secret(first.cookie_secret)), 32)

    def test_what_is_given_anywhere_beats_the_demo_defaults(self) -> None:
        path = self.write('upstreams = ["http://127.0.0.1:3000/"]\n')
        config, _ = load_config(
            {"demo": True, "cookie_secure": True},
            {"OAUTHGATE_CLIENT_ID": "mine", "OAUTHGATE_EMAIL_DOMAINS": "example.com"},
            path,
        )
        self.assertEqual(config.upstreams, ("http://127.0.0.1:3000/",))
        self.assertEqual(config.client_id, "mine")
        self.assertEqual(config.email_domains, ("example.com",))
        self.assertIs(config.cookie_secure, True)
        self.assertEqual(config.client_secret, "oauthgate-demo-secret")

    def test_demo_respects_a_secret_file(self) -> None:
        path = self.write(COOKIE_SECRET, "cookie")
        config, _ = load_config({"demo": True, "cookie_secret_file": path}, {}, None)
        self.assertEqual(config.cookie_secret, COOKIE_SECRET)

    def test_demo_can_come_from_the_environment(self) -> None:
        config, _ = load_config({}, {"OAUTHGATE_DEMO": "true"}, None)
        self.assertEqual(config.client_id, "oauthgate-demo")


class ProblemReportingTests(LoaderTestCase):
    def test_the_result_is_validated(self) -> None:
        self.assertEqual(
            self.problems({"cookie_samesite": "sometimes"}),
            ("cookie_samesite: must be lax, strict, none or empty, got 'sometimes'",),
        )

    def test_validation_warnings_are_returned(self) -> None:
        _, warnings = self.load({"insecure_oidc_skip_nonce": True})
        self.assertEqual(len(warnings), 1)
        self.assertIn("insecure_oidc_skip_nonce is on", warnings[0])

    def test_every_problem_from_every_source_is_reported_at_once(self) -> None:
        path = self.write('cokie_name = "x"\n')
        problems = self.problems(
            {"cookie_samesite": "bad", "cookie_secure": "perhaps"},
            {"OAUTHGATE_COOKIE_REFRESH": "soon"},
            path,
        )
        self.assertEqual(len(problems), 4, problems)
        self.assertTrue(any(p.startswith(f"{path}:1: unknown option") for p in problems))
        self.assertTrue(any(p.startswith("OAUTHGATE_COOKIE_REFRESH:") for p in problems))
        self.assertTrue(any(p.startswith("--cookie-secure:") for p in problems))
        self.assertTrue(any(p.startswith("cookie_samesite:") for p in problems))

    def test_problem_lines_never_contain_a_secret(self) -> None:
        cookie_secret = "tooshort-cookie-secret-value!"
        client_secret = "the-client-secret-4711"
        password = "basic-auth-password-0815"
        path = self.write(
            f'client_secret = "{client_secret}"\n'
            f'cookie_secret = "{cookie_secret}"\n'
            f'basic_auth_password = "{password}"\n'
            'cookie_secure = "yes"\n'
            'unknown_thing = "x"\n'
        )
        secret_file = self.write(client_secret, "secret")
        problems = self.problems(
            {"client_secret_file": secret_file, "redirect_url": f"https://u:{password}@x"},
            {"OAUTHGATE_COOKIE_SECRET": cookie_secret, "OAUTHGATE_BOGUS": client_secret},
            path,
            base={"client_id": "app", "provider": "oidc"},
        )
        self.assertTrue(problems)
        for line in problems:
            for secret in (cookie_secret, client_secret, password):
                self.assertNotIn(secret, line)


class LegacyKeyTests(SynchronousTestCase):
    """oauth2-proxy still honours its old singular google_group key; so do we, warning."""

    def test_the_old_google_group_key_in_a_file_and_env_still_works(self) -> None:
        import os
        import tempfile

        from oauthgate.config.loader import _read_environ, _read_file
        from oauthgate.config.options import option_specs

        specs = {spec.key: spec for spec in option_specs()}
        problems: list[str] = []
        warnings: list[str] = []
        fd, path = tempfile.mkstemp(suffix=".cfg")
        with os.fdopen(fd, "w") as f:
            f.write('google_group = ["admins@example.com"]\n')
        self.addCleanup(os.unlink, path)
        values = _read_file(path, specs, problems, set(), warnings)
        self.assertEqual(values, {"google_groups": ("admins@example.com",)})
        self.assertEqual(problems, [])
        self.assertIn("deprecated", warnings[0])
        env = _read_environ(
            {"OAUTH2_PROXY_GOOGLE_GROUP": "a@x.com,b@x.com"}, specs, problems, warnings, set()
        )
        self.assertEqual(env, {"google_groups": ("a@x.com", "b@x.com")})
        self.assertEqual(problems, [])


class DisplayConfigTests(SynchronousTestCase):
    """``--display-config`` prints what oauthgate will run with, for debugging."""

    def test_it_masks_secrets_and_reads_back_as_the_same_configuration(self) -> None:
        import attrs

        from oauthgate.config.loader import display_config, load_config
        from oauthgate.config.options import Config

        config = attrs.evolve(
            Config(),
            provider="oidc",
            oidc_issuer_url="https://idp.example.com",
            client_id="app",
            client_secret="very-secret-value",
            cookie_secret="0123456789abcdef0123456789abcdef",
            email_domains=("example.com",),
            upstreams=("http://127.0.0.1:8080/",),
            cookie_refresh=3600.0,
        )
        text = display_config(config)
        self.assertNotIn("very-secret-value", text)
        self.assertNotIn("0123456789abcdef", text)
        self.assertIn('client_secret = "***"', text)
        self.assertIn('cookie_refresh = "1h0m0s"', text)
        # Everything but the masked secrets reads back as it was.
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace('"***"', '"0123456789abcdef"'))
        loaded, _ = load_config({}, {}, path, check=False)
        for name in (
            "provider",
            "oidc_issuer_url",
            "email_domains",
            "upstreams",
            "cookie_refresh",
            "cookie_expire",
            "cookie_secure",
            "approval_prompt",
        ):
            self.assertEqual(getattr(loaded, name), getattr(config, name), name)
