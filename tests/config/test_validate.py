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
from oauthgate.sessions.cookies import CookieSettings
from oauthgate.web.pages import Pages
from oauthgate.web.redirects import RedirectValidator

VALID = Config(
    provider="oidc",
    oidc_issuer_url="https://idp.example.com",
    client_id="app",
    client_secret="client-secret-value",
    cookie_secret=base64.urlsafe_b64encode(b"k" * 32).decode(),
    email_domains=("example.com",),
)


def make_directory(case: SynchronousTestCase, files: dict[str, str | bytes]) -> str:
    """A fresh directory holding ``files``, removed after the test."""
    directory = tempfile.mkdtemp()
    case.addCleanup(shutil.rmtree, directory)
    for name, content in files.items():
        data = content.encode("utf-8") if isinstance(content, str) else content
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    return directory


def self_signed_pem() -> bytes:
    """A private key and a self-signed certificate for localhost, PEM, in one blob."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem + certificate.public_bytes(serialization.Encoding.PEM)


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

    def test_start_up_problems_that_used_to_surface_later_come_in_the_same_error(self) -> None:
        problems = self.problems(
            http_address="tcp:notaport",
            cookie_path="/app; HttpOnly",
            whitelist_domains=("example.com:http",),
            custom_templates_dir="/nonexistent/templates",
        )
        self.assertEqual(
            [p.partition(":")[0] for p in problems],
            ["cookie_path", "whitelist_domains", "http_address", "custom_templates_dir"],
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

    def test_cookie_path_carries_only_cookie_attribute_characters(self) -> None:
        for bad in ("/app;Domain=evil.com", "/a,b", "/a b", "/a\tb", "/a\x00", "/caf\u00e9"):
            self.assertProblem(
                "cookie_path: only visible ASCII characters without ';' or ',' and no "
                f"whitespace, got {bad!r}",
                cookie_path=bad,
            )

    def test_cookie_domains_carry_only_cookie_attribute_characters(self) -> None:
        self.assertEqual(
            self.problems(cookie_domains=(".example.com", ".a.com; HttpOnly", "b.com,c.com")),
            (
                "cookie_domains: only visible ASCII characters without ';' or ',' and no "
                "whitespace, got '.a.com; HttpOnly'",
                "cookie_domains: only visible ASCII characters without ';' or ',' and no "
                "whitespace, got 'b.com,c.com'",
            ),
        )

    def test_cookie_attributes_that_pass_validation_build_cookie_settings(self) -> None:
        """What validation lets through never fails later when the cookies are set up."""
        for bad_path in ("/a;b", "/a\x7f", "/caf\u00e9"):
            self.assertRaises(ValueError, CookieSettings, "_oauth2_proxy", path=bad_path)
            self.problems(cookie_path=bad_path)
        config = attrs.evolve(
            VALID, cookie_path="/app/~x_y-z.1", cookie_domains=(".example.com", "a-b.example.org")
        )
        validate(config)
        CookieSettings.from_config(config)

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

    def test_session_store_is_cookie_or_redis(self) -> None:
        # The redis_* rules are tested in tests/sessions/test_redis_client.py.
        self.assertValid(session_store_type="redis", redis_connection_url="redis://r:6379/0")
        self.assertProblem(
            "session_store_type: must be cookie or redis, got 'memcache'",
            session_store_type="memcache",
        )


class UpstreamRuleTests(ValidateTestCase):
    def test_http_upstreams_are_accepted(self) -> None:
        self.assertValid(upstreams=("http://127.0.0.1:8080/", "https://app.internal/api/"))

    def test_file_static_and_unix_upstreams_are_accepted(self) -> None:
        directory = self.mktemp()
        os.mkdir(directory)
        self.assertValid(
            upstreams=(
                "http://127.0.0.1:8080/app/",
                f"file://{os.path.abspath(directory)}#/static/",
                "static://202/health",
                "unix:///run/app.sock",
            )
        )

    def test_a_static_upstream_needs_a_status_code(self) -> None:
        for bad in ("static://", "static://ok", "static://99", "static://600"):
            self.assertProblem(
                f"upstreams: {bad!r}: static://<code> needs an HTTP status 200-599, "
                "e.g. static://202",
                upstreams=(bad,),
            )

    def test_a_file_upstream_must_be_an_existing_directory(self) -> None:
        self.assertProblem(
            "upstreams: '/static/': '/no/such/dir' is not a directory",
            upstreams=("file:///no/such/dir#/static/",),
        )

    def test_two_upstreams_on_one_path_are_refused(self) -> None:
        self.assertProblem(
            "upstreams: '/': two upstreams serve the path '/'; paths must be unique",
            upstreams=("http://a/", "static://202"),
        )

    def test_junk_upstreams_are_refused(self) -> None:
        for bad in ("127.0.0.1:8080", "http://", "ftp://host/", "http://host:port/"):
            self.assertProblem(
                f"upstreams: {bad!r}: must be an http:// or https:// URL with a host (e.g. "
                "http://127.0.0.1:8080/), unix:///socket, file:///directory#/path/ or "
                "static://<code>",
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

    def test_whitelist_domains_are_checked_like_the_redirect_validator_does(self) -> None:
        bad = ("example.com:http", "[::1", "exa mple.com", "https://example.com")
        entries = (".example.com", "example.org:*", "[::1]:8443", "", *bad)
        redirect_error = self.assertRaises(ConfigError, RedirectValidator.from_domains, entries)
        self.assertEqual(self.problems(whitelist_domains=entries), redirect_error.problems)
        self.assertEqual(len(redirect_error.problems), len(bad))
        self.assertValid(whitelist_domains=entries[:4])

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


class AccessRuleTests(ValidateTestCase):
    def htpasswd_file(self) -> str:
        directory = make_directory(self, {"users": "carol:{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M=\n"})
        return os.path.join(directory, "users")

    def test_good_access_rules_are_valid(self) -> None:
        self.assertValid(
            skip_auth_routes=("^/public/", "GET=^/status$", "POST!=^/admin", "=^/a?b=c"),
            skip_auth_regex=("^/health",),
            skip_auth_preflight=True,
            api_routes=("^/api/",),
            trusted_ips=("10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1"),
            trusted_proxy_ips=("127.0.0.1",),
            skip_jwt_bearer_tokens=True,
            extra_jwt_issuers=("https://issuer.example.com=api://orders",),
            htpasswd_file=self.htpasswd_file(),
            protected_resource_metadata="https://api.example.com/v1",
        )

    def test_bad_skip_auth_regexes_are_named(self) -> None:
        problems = self.problems(
            skip_auth_routes=("GET=^/ok", "GET=(", "^/a?b=c"), skip_auth_regex=("[",)
        )
        self.assertEqual(len(problems), 3, problems)
        self.assertTrue(
            problems[0].startswith("skip_auth_routes: GET=(: error compiling regex /(/: "),
            problems,
        )
        self.assertTrue(problems[1].startswith("skip_auth_routes: ^/a?b=c: "), problems)
        self.assertIn("'=^/a?b=c'", problems[1])
        self.assertTrue(
            problems[2].startswith("skip_auth_regex: [: error compiling regex /[/: "), problems
        )

    def test_bad_api_routes_are_named(self) -> None:
        (problem,) = self.problems(api_routes=("^/api/", "(unclosed"))
        self.assertTrue(
            problem.startswith("api_routes: error compiling regex /(unclosed/: "), problem
        )

    def test_bad_trusted_ips_and_proxies_are_named(self) -> None:
        problems = self.problems(
            trusted_ips=("10.0.0.1/24", "not-an-ip"), trusted_proxy_ips=("[::1]",)
        )
        self.assertEqual(
            [p.partition(":")[0] for p in problems], ["trusted_ips", "trusted_proxy_ips"]
        )
        self.assertIn("'10.0.0.1/24'", problems[0])
        self.assertIn("'not-an-ip'", problems[0])
        self.assertIn("'[::1]'", problems[1])

    def test_bad_extra_jwt_issuers_are_named(self) -> None:
        (problem,) = self.problems(
            extra_jwt_issuers=("https://ok.example.com=aud", "no-equals", "ftp://x=aud")
        )
        self.assertTrue(problem.startswith("extra_jwt_issuers: "), problem)
        self.assertIn("'no-equals': expected issuer=audience", problem)
        self.assertIn("'ftp://x=aud': the issuer must be an http(s) URL", problem)

    def test_bearer_tokens_need_an_issuer_to_trust(self) -> None:
        self.assertProblem(
            "skip_jwt_bearer_tokens: needs an issuer to trust: oidc_issuer_url or "
            "extra_jwt_issuers (issuer=audience)",
            skip_jwt_bearer_tokens=True,
            oidc_issuer_url="",
            skip_oidc_discovery=True,
            login_url="https://idp.example.com/auth",
            redeem_url="https://idp.example.com/token",
            oidc_jwks_url="https://idp.example.com/jwks",
        )

    def test_the_htpasswd_file_must_be_readable(self) -> None:
        missing = os.path.join(os.path.dirname(self.htpasswd_file()), "missing")
        self.assertProblem(
            f"htpasswd_file: {missing!r} does not exist or is not a readable file",
            htpasswd_file=missing,
        )

    def test_a_htpasswd_file_replaces_email_domains(self) -> None:
        """oauth2-proxy's rule: email domains, an emails file or a htpasswd file."""
        self.assertValid(email_domains=(), htpasswd_file=self.htpasswd_file())

    def test_protected_resource_metadata_is_an_absolute_http_url(self) -> None:
        for good in (
            "https://api.example.com",
            "https://api.example.com/v1",
            "http://127.0.0.1:4180",
        ):
            self.assertValid(protected_resource_metadata=good)
        for bad in ("api.example.com", "/v1", "ftp://api.example.com", "https://", "https://a/#x"):
            self.assertProblem(
                "protected_resource_metadata: must be an absolute https:// (or http://) URL "
                f"without a fragment, e.g. https://api.example.com, got {bad!r}",
                protected_resource_metadata=bad,
            )

    def test_access_problems_come_with_the_others_in_one_error(self) -> None:
        problems = self.problems(
            client_id="",
            skip_auth_routes=("(",),
            trusted_ips=("x",),
            htpasswd_file="/nonexistent/htpasswd",
        )
        self.assertEqual(
            [p.partition(":")[0] for p in problems],
            ["client_id", "skip_auth_routes", "trusted_ips", "htpasswd_file"],
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

    def test_endpoint_descriptions_are_parsed_without_listening(self) -> None:
        for good in (
            "tcp:4180:interface=0.0.0.0",
            "tcp6:4180",
            "unix:/run/oauthgate.sock:mode=660",
            "haproxy:tcp:4180",
            "[::1]:4180",
            "unix:///run/oauthgate.sock",
        ):
            self.assertValid(http_address=good)

    def test_endpoint_descriptions_twisted_cannot_parse_are_problems(self) -> None:
        self.assertProblem(
            "http_address: 'tcp:notaport': not a valid Twisted endpoint description: "
            "invalid literal for int() with base 10: 'notaport'",
            http_address="tcp:notaport",
        )
        for bad in ("tcp:4180:backlog=many", "tcp:4180:bogus=1", "unix:/x.sock:mode=rw"):
            (problem,) = self.problems(http_address=bad)
            self.assertTrue(
                problem.startswith(
                    f"http_address: {bad!r}: not a valid Twisted endpoint description: "
                ),
                problem,
            )

    def test_an_ssl_endpoint_whose_key_file_is_missing_is_a_readable_problem(self) -> None:
        self.assertProblem(
            "http_address: 'ssl:4190:privateKey=/nonexistent': cannot read /nonexistent: "
            "No such file or directory",
            http_address="ssl:4190:privateKey=/nonexistent",
        )

    def test_an_ssl_endpoint_needs_a_pem_key_and_certificate(self) -> None:
        directory = make_directory(self, {"junk.pem": "not a key", "good.pem": self_signed_pem()})
        junk = f"ssl:4190:privateKey={os.path.join(directory, 'junk.pem')}"
        self.assertProblem(
            f"http_address: {junk!r}: the TLS privateKey/certKey files are not a PEM key and "
            "certificate",
            http_address=junk,
        )
        self.assertValid(http_address=f"ssl:4190:privateKey={os.path.join(directory, 'good.pem')}")

    def test_a_systemd_endpoint_without_an_inherited_socket_is_a_problem(self) -> None:
        self.assertProblem(
            "http_address: 'systemd:domain=INET:index=0': no such socket was passed by systemd "
            "(is the service socket-activated, with a matching index or FileDescriptorName?)",
            http_address="systemd:domain=INET:index=0",
        )


class PageRuleTests(ValidateTestCase):
    def test_templates_dir_must_be_a_directory(self) -> None:
        self.assertProblem(
            "custom_templates_dir: '/nonexistent/templates' is not a directory",
            custom_templates_dir="/nonexistent/templates",
        )

    def test_oauth2_proxy_go_templates_are_refused_with_a_pointer_to_the_docs(self) -> None:
        directory = make_directory(
            self,
            {
                "sign_in.html": "<h1>{{.ProviderName}}</h1>",
                "error.html": "<p>{{ .Message }}</p>",
            },
        )
        self.assertEqual(
            self.problems(custom_templates_dir=directory),
            (
                "custom_templates_dir/sign_in.html: uses Go template syntax ({{...}}); "
                "oauthgate templates use $name placeholders, see docs/configuration.md",
                "custom_templates_dir/error.html: uses Go template syntax ({{...}}); "
                "oauthgate templates use $name placeholders, see docs/configuration.md",
            ),
        )

    def test_templates_with_placeholders_or_missing_ones_are_fine(self) -> None:
        directory = make_directory(
            self, {"sign_in.html": "<a href='$start_url'>$provider_name</a>"}
        )
        config = attrs.evolve(VALID, custom_templates_dir=directory)
        self.assertEqual(validate(config), [])
        pages = Pages.from_config(config, "OpenID Connect")
        self.assertIn(b"OpenID Connect", pages.render_sign_in("/"))

    def test_a_template_that_is_not_utf8_is_a_problem(self) -> None:
        directory = make_directory(self, {"error.html": b"\xff\xfe<p>"})
        path = os.path.join(directory, "error.html")
        self.assertProblem(
            f"custom_templates_dir/error.html: {path} is not UTF-8 text",
            custom_templates_dir=directory,
        )

    def test_a_local_logo_must_be_a_readable_file(self) -> None:
        self.assertProblem(
            "custom_sign_in_logo: '/nonexistent/logo.png' does not exist or is not a readable "
            "file (give an image file, an http(s):// URL, or - to hide the logo)",
            custom_sign_in_logo="/nonexistent/logo.png",
        )

    def test_logo_urls_a_dash_and_existing_files_are_fine(self) -> None:
        directory = make_directory(self, {"logo.png": b"\x89PNG"})
        for logo in (
            "https://cdn.example.com/logo.svg",
            "http://cdn.example.com/logo.svg",
            "data:image/png;base64,iVBORw0KGgo=",
            "-",
            os.path.join(directory, "logo.png"),
        ):
            self.assertValid(custom_sign_in_logo=logo)


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

    def test_reverse_proxy_without_redirect_url_is_warned_about(self) -> None:
        """The callback URL would come from X-Forwarded-Host, which clients can forge."""
        self.assertEqual(
            self.assertValid(reverse_proxy=True),
            [
                "reverse_proxy is on and redirect_url is empty: the callback URL is built from "
                "X-Forwarded-Host, which any client that reaches oauthgate directly can set; "
                "set redirect_url, e.g. https://app.example.com/oauth2/callback"
            ],
        )
        self.assertEqual(
            self.assertValid(
                reverse_proxy=True, redirect_url="https://app.example.com/oauth2/callback"
            ),
            [],
        )

    def test_trusted_ips_behind_a_proxy_without_trusted_proxies_are_warned_about(self) -> None:
        """Any client could then name a trusted address in the real-IP header."""
        redirect = {"redirect_url": "https://app.example.com/oauth2/callback"}
        self.assertEqual(
            self.assertValid(trusted_ips=("10.0.0.0/8",), reverse_proxy=True, **redirect),
            [
                "trusted_ips with reverse_proxy and no trusted_proxy_ips: any client that "
                "reaches oauthgate can claim a trusted address in X-Real-IP and skip the "
                "login; set trusted_proxy_ips to your front proxies' addresses"
            ],
        )
        for changes in (
            {"trusted_ips": ("10.0.0.0/8",), "trusted_proxy_ips": ("192.0.2.1",)},
            {"trusted_ips": ("10.0.0.0/8",), "reverse_proxy": False},
            {"trusted_ips": ()},
        ):
            self.assertEqual(self.assertValid(**{"reverse_proxy": True, **redirect, **changes}), [])

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


class HTTPSRuleTests(ValidateTestCase):
    def tls_files(self) -> str:
        directory = make_directory(self, {"tls.pem": self_signed_pem(), "junk.pem": "junk"})
        return os.path.join(directory, "tls.pem")

    def test_a_certificate_and_key_serve_https_on_the_https_address(self) -> None:
        pem = self.tls_files()
        self.assertValid(
            https_address="127.0.0.1:8443",
            tls_cert_file=pem,
            tls_key_file=pem,
            tls_min_version="TLS1.3",
            tls_cipher_suites=("ECDHE-ECDSA-AES128-GCM-SHA256",),
        )

    def test_a_missing_key_file_is_a_readable_problem(self) -> None:
        self.assertProblem(
            "tls_cert_file/tls_key_file: cannot read /nonexistent/key.pem: "
            "No such file or directory",
            https_address=":8443",
            tls_cert_file=self.tls_files(),
            tls_key_file="/nonexistent/key.pem",
        )

    def test_a_file_that_is_no_certificate_is_a_problem(self) -> None:
        pem = self.tls_files()
        junk = os.path.join(os.path.dirname(pem), "junk.pem")
        self.assertProblem(
            f"tls_cert_file/tls_key_file: {junk!r} holds no PEM certificate",
            https_address=":8443",
            tls_cert_file=junk,
            tls_key_file=pem,
        )

    def test_an_unknown_min_version_is_a_problem(self) -> None:
        self.assertProblem(
            "tls_min_version: must be TLS1.2 or TLS1.3, got 'TLS1.1'", tls_min_version="TLS1.1"
        )

    def test_an_https_address_needs_the_certificate_and_key(self) -> None:
        self.assertProblem(
            "https_address: set tls_cert_file and tls_key_file too", https_address=":8443"
        )

    def test_a_certificate_without_an_https_address_is_a_problem(self) -> None:
        pem = self.tls_files()
        self.assertProblem(
            "tls_cert_file/tls_key_file: set https_address too, e.g. :443 (oauthgate serves "
            "HTTPS only on an https_address)",
            tls_cert_file=pem,
            tls_key_file=pem,
        )

    def test_oauth2_proxy_cipher_suite_names_are_accepted_and_unknown_ones_refused(self) -> None:
        self.assertValid(tls_cipher_suites=("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",))
        (problem,) = self.problems(tls_cipher_suites=("ECDHE-RSA-AES128-GCM-SHA256", "FAST"))
        self.assertTrue(problem.startswith("tls_cipher_suites: unknown cipher 'FAST'; "), problem)
