"""Tests for oauthgate.config.validate: every rule, with the message a user sees."""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase

from oauthgate.config.options import Config
from oauthgate.config.validate import MAKE_SECRET_COMMAND, listen_description, validate
from oauthgate.errors import ConfigError

VALID = Config(
    provider="oidc",
    oidc_issuer_url="https://idp.example.com",
    client_id="app",
    client_secret="client-secret-value",
    cookie_secret=base64.urlsafe_b64encode(b"k" * 32).decode(),
    email_domains=("example.com",),
)


class ValidateTestCase(SynchronousTestCase):
    def problems(self, **changes: Any) -> tuple[str, ...]:
        e = self.assertRaises(ConfigError, validate, attrs.evolve(VALID, **changes))
        problems: tuple[str, ...] = e.problems
        return problems

    def assertProblem(self, expected: str, **changes: Any) -> None:
        self.assertEqual(self.problems(**changes), (expected,))

    def assertValid(self, **changes: Any) -> list[str]:
        return validate(attrs.evolve(VALID, **changes))


class ValidConfigTests(ValidateTestCase):
    def test_a_complete_config_is_valid_without_warnings(self) -> None:
        self.assertEqual(self.assertValid(), [])

    def test_every_problem_is_reported_at_once(self) -> None:
        problems = self.problems(client_id="", cookie_secret="", cookie_path="x")
        self.assertEqual(
            [p.partition(":")[0] for p in problems], ["client_id", "cookie_secret", "cookie_path"]
        )


class ProviderRuleTests(ValidateTestCase):
    def test_client_id_is_required(self) -> None:
        self.assertProblem(
            "client_id: required; set --client-id, OAUTHGATE_CLIENT_ID or client_id",
            client_id="",
        )

    def test_client_secret_is_required_unless_pkce(self) -> None:
        self.assertProblem(
            "client_secret: required (or client_secret_file); a public client without a "
            "secret must use PKCE: --code-challenge-method=S256",
            client_secret="",
        )
        self.assertValid(client_secret="", code_challenge_method="S256")

    def test_code_challenge_method(self) -> None:
        self.assertValid(code_challenge_method="plain")
        self.assertProblem(
            "code_challenge_method: must be S256, plain or empty, got 's256x'",
            code_challenge_method="s256x",
        )

    def test_prompts_are_free_strings(self) -> None:
        self.assertValid(prompt="select_account consent", approval_prompt="auto")

    def test_oidc_needs_an_issuer(self) -> None:
        self.assertProblem(
            "oidc_issuer_url: required for provider oidc (or turn on skip_oidc_discovery and "
            "give login_url, redeem_url and oidc_jwks_url)",
            oidc_issuer_url="",
        )
        self.assertValid(provider="github", oidc_issuer_url="")

    def test_skipping_discovery_needs_the_endpoints(self) -> None:
        self.assertEqual(
            self.problems(skip_oidc_discovery=True, oidc_issuer_url=""),
            (
                "login_url: required when skip_oidc_discovery is on",
                "redeem_url: required when skip_oidc_discovery is on",
                "oidc_jwks_url: required when skip_oidc_discovery is on",
            ),
        )
        self.assertValid(
            skip_oidc_discovery=True,
            login_url="https://idp/auth",
            redeem_url="https://idp/token",
            oidc_jwks_url="https://idp/jwks",
        )

    def test_url_options_must_be_absolute_http_urls(self) -> None:
        for key in (
            "oidc_issuer_url",
            "login_url",
            "redeem_url",
            "profile_url",
            "oidc_jwks_url",
            "redirect_url",
            "backend_logout_url",
        ):
            for bad in (
                "idp.example.com",
                "/callback",
                "ftp://idp.example.com",
                "https://",
                "http://host:99999/",
            ):
                self.assertProblem(
                    f"{key}: must be an absolute http:// or https:// URL, got {bad!r}",
                    **{key: bad},
                )
        self.assertValid(backend_logout_url="https://idp/logout?id_token_hint={id_token}")

    def test_a_password_in_a_url_is_not_repeated(self) -> None:
        (problem,) = self.problems(login_url="ftp://user:hunter2@idp")
        self.assertNotIn("hunter2", problem)


class CookieRuleTests(ValidateTestCase):
    def test_cookie_secret_is_required_and_says_how_to_make_one(self) -> None:
        self.assertProblem(
            f"cookie_secret: required (or cookie_secret_file); make one with: "
            f"{MAKE_SECRET_COMMAND}",
            cookie_secret="",
        )

    def test_cookie_secret_length(self) -> None:
        self.assertProblem(
            f"cookie_secret: must be 16, 24 or 32 bytes, got 10; make one with: "
            f"{MAKE_SECRET_COMMAND}",
            cookie_secret="0123456789",
        )
        for raw in (b"a" * 16, b"b" * 24):
            self.assertValid(cookie_secret=base64.b64encode(raw).decode())
        self.assertValid(cookie_secret="0123456789abcdef")

    def test_cookie_secret_value_never_appears(self) -> None:
        (problem,) = self.problems(cookie_secret="not-a-good-secret")
        self.assertNotIn("not-a-good-secret", problem)

    def test_samesite(self) -> None:
        for good in ("lax", "Strict", "NONE", ""):
            self.assertValid(cookie_samesite=good)
        self.assertProblem(
            "cookie_samesite: must be lax, strict, none or empty, got 'sometimes'",
            cookie_samesite="sometimes",
        )

    def test_cookie_name_is_a_token_of_at_most_256_chars(self) -> None:
        self.assertValid(cookie_name="_oauth2_proxy-2.x")
        self.assertValid(cookie_name="a" * 256)
        for bad in ("", "a b", "a;b", "a=b", "caf\u00e9", "a" * 257, "a\tb"):
            (problem,) = self.problems(cookie_name=bad)
            self.assertTrue(problem.startswith("cookie_name: must be 1 to 256 letters"), bad)

    def test_secure_prefixed_names_need_a_secure_cookie(self) -> None:
        self.assertValid(cookie_name="__Host-session")
        self.assertProblem(
            "cookie_name: a __Secure- cookie needs cookie_secure on, or browsers drop it",
            cookie_name="__Secure-session",
            cookie_secure=False,
        )
        self.assertProblem(
            "cookie_name: a __Host- cookie needs cookie_path / and no cookie_domains, or "
            "browsers drop it",
            cookie_name="__Host-session",
            cookie_domains=(".example.com",),
        )

    def test_refresh_must_come_before_expiry(self) -> None:
        self.assertValid(cookie_refresh=3600.0, cookie_expire=7200.0)
        self.assertValid(cookie_refresh=3600.0, cookie_expire=0.0)
        self.assertProblem(
            "cookie_refresh: must be less than cookie_expire (1h0m0s), got 1h0m0s",
            cookie_refresh=3600.0,
            cookie_expire=3600.0,
        )

    def test_cookie_path_starts_with_a_slash(self) -> None:
        self.assertProblem("cookie_path: must start with /, got 'app'", cookie_path="app")

    def test_minimal_sessions_cannot_refresh_or_pass_tokens(self) -> None:
        self.assertValid(session_cookie_minimal=True)
        self.assertProblem(
            "session_cookie_minimal: cannot refresh sessions without tokens; set "
            "cookie_refresh to 0 or turn session_cookie_minimal off",
            session_cookie_minimal=True,
            cookie_refresh=60.0,
        )
        self.assertProblem(
            "session_cookie_minimal: pass_access_token needs the tokens that a minimal "
            "session drops; turn one of them off",
            session_cookie_minimal=True,
            pass_access_token=True,
        )

    def test_session_store_is_cookie_for_now(self) -> None:
        self.assertProblem(
            "session_store_type: redis is not supported yet (it comes in a later version); "
            "use cookie",
            session_store_type="redis",
        )
        self.assertProblem(
            "session_store_type: must be cookie, got 'memcache'", session_store_type="memcache"
        )


class UpstreamRuleTests(ValidateTestCase):
    def test_http_upstreams_are_accepted(self) -> None:
        self.assertValid(upstreams=("http://127.0.0.1:8080/", "https://app.internal/api/"))

    def test_other_kinds_are_not_supported_yet(self) -> None:
        for scheme, url in (
            ("file", "file:///var/www#/static/"),
            ("static", "static://202"),
            ("unix", "unix:///run/app.sock"),
        ):
            self.assertProblem(
                f"upstreams: {url!r}: {scheme}:// upstreams are not supported yet (they come "
                "in a later version); use an http:// or https:// URL",
                upstreams=(url,),
            )

    def test_junk_upstreams_are_refused(self) -> None:
        for bad in ("127.0.0.1:8080", "http://", "ftp://host/", "http://host:port/"):
            self.assertProblem(
                f"upstreams: {bad!r}: must be an http:// or https:// URL with a host, e.g. "
                "http://127.0.0.1:8080/",
                upstreams=("http://ok/", bad),
            )


class AuthorizationRuleTests(ValidateTestCase):
    def emails_file(self) -> str:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "emails")
        with open(path, "w", encoding="utf-8") as f:
            f.write("a@example.com\n")
        return path

    def test_domains_or_an_emails_file_are_required(self) -> None:
        self.assertProblem(
            "email_domains: give at least one email domain (* allows any) or an "
            "authenticated_emails_file",
            email_domains=(),
        )
        self.assertValid(email_domains=(), authenticated_emails_file=self.emails_file())

    def test_the_emails_file_must_be_readable(self) -> None:
        missing = os.path.join(os.path.dirname(self.emails_file()), "missing")
        self.assertProblem(
            f"authenticated_emails_file: {missing!r} does not exist or is not a readable file",
            authenticated_emails_file=missing,
        )

    def test_real_client_ip_header(self) -> None:
        for header in (
            "X-Forwarded-For",
            "x-real-ip",
            "X-ProxyUser-IP",
            "X-Envoy-External-Address",
            "CF-Connecting-IP",
        ):
            self.assertValid(real_client_ip_header=header)
        self.assertProblem(
            "real_client_ip_header: must be one of X-Forwarded-For, X-Real-IP, X-ProxyUser-IP, "
            "X-Envoy-External-Address, CF-Connecting-IP, got 'X-Client-IP'",
            real_client_ip_header="X-Client-IP",
        )


class ServerRuleTests(ValidateTestCase):
    def test_proxy_prefix(self) -> None:
        self.assertValid(proxy_prefix="/auth/oauth2")
        for bad in ("oauth2", "/oauth2/", "/", ""):
            self.assertProblem(
                f"proxy_prefix: must start with / and not end with /, e.g. /oauth2, got {bad!r}",
                proxy_prefix=bad,
            )

    def test_probe_paths_start_with_a_slash(self) -> None:
        self.assertProblem("ping_path: must start with /, got 'ping'", ping_path="ping")

    def test_http_address(self) -> None:
        self.assertValid(http_address="0.0.0.0:4180")
        (problem,) = self.problems(http_address="localhost")
        self.assertTrue(problem.startswith("http_address: 'localhost': expected host:port"))


class ListenDescriptionTests(SynchronousTestCase):
    def test_host_port_forms_become_endpoint_descriptions(self) -> None:
        table = {
            "127.0.0.1:4180": "tcp:4180:interface=127.0.0.1",
            "http://127.0.0.1:4180": "tcp:4180:interface=127.0.0.1",
            "http://0.0.0.0:80/": "tcp:80:interface=0.0.0.0",
            "localhost:8080": "tcp:8080:interface=localhost",
            ":4180": "tcp:4180",
            "[::1]:4180": "tcp6:4180:interface=\\:\\:1",
            "[::]:4180": "tcp6:4180:interface=\\:\\:",
            "unix:///run/oauthgate.sock": "unix:/run/oauthgate.sock",
            "unix:///run/oauthgate.sock,mode=0660": "unix:/run/oauthgate.sock:mode=0660",
        }
        for address, description in table.items():
            self.assertEqual(listen_description(address), description, address)

    def test_twisted_descriptions_pass_through(self) -> None:
        for description in (
            "tcp:4180:interface=0.0.0.0",
            "unix:/run/x.sock:mode=660",
            "ssl:443:privateKey=k.pem",
            "systemd:domain=INET:index=0",
            "haproxy:tcp:4180",
            "tcp6:4180",
        ):
            self.assertEqual(listen_description(description), description)

    def test_junk_is_refused_with_what_would_be_right(self) -> None:
        for junk in (
            "localhost",
            "127.0.0.1:http",
            "127.0.0.1:70000",
            "[::1]",
            "[nope]:80",
            "bad host:80",
            "",
            "unix://",
        ):
            e = self.assertRaises(ValueError, listen_description, junk)
            self.assertTrue(str(e), junk)
        e = self.assertRaises(ValueError, listen_description, "::1:4180")
        self.assertIn("[::1]:4180", str(e))
        e = self.assertRaises(ValueError, listen_description, "https://0.0.0.0:443")
        self.assertIn("ssl:", str(e))
        e = self.assertRaises(ValueError, listen_description, "fd:3")
        self.assertIn("systemd:", str(e))


class WarningTests(ValidateTestCase):
    def test_secure_cookie_with_an_http_redirect_url(self) -> None:
        self.assertEqual(
            self.assertValid(redirect_url="http://app.example.com/oauth2/callback"),
            [
                "cookie_secure is on but redirect_url is http://: the browser will not send the "
                "Secure cookie over http, so logins will fail; use https or --cookie-secure=false"
            ],
        )
        self.assertEqual(
            self.assertValid(redirect_url="http://app/oauth2/callback", cookie_secure=False), []
        )

    def test_insecure_options_are_warned_about(self) -> None:
        warnings = self.assertValid(
            insecure_oidc_allow_unverified_email=True,
            insecure_oidc_skip_issuer_verification=True,
            insecure_oidc_skip_nonce=True,
            ssl_insecure_skip_verify=True,
            ssl_upstream_insecure_skip_verify=True,
        )
        self.assertEqual(len(warnings), 5)
        for warning in warnings:
            self.assertIn("is on:", warning)
            self.assertIn("do not use this in production", warning)
