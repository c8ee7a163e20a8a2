"""Tests for oauthgate.config.alpha: the alpha YAML file, its errors, and the conversion."""

from __future__ import annotations

import base64
import io
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from typing import Any, cast

import attrs
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from oauthgate import tap
from oauthgate.config.alpha import (
    AlphaConfig,
    ProviderSettings,
    moved_options,
    parse_alpha,
    provider_configs,
    substitute_env,
    to_alpha_yaml,
)
from oauthgate.config.flags import Options
from oauthgate.config.headers import HeaderRule, HeaderValue
from oauthgate.config.loader import load_config
from oauthgate.config.options import Config, option_specs
from oauthgate.errors import ConfigError
from oauthgate.session import Session
from oauthgate.upstreams.legacy import specs_from_flags
from oauthgate.upstreams.spec import UpstreamSpec
from oauthgate.web.identity import IdentityHeaders

COOKIE_SECRET = base64.urlsafe_b64encode(b"k" * 32).decode()

#: What an alpha file does not cover, as flags.
REST: dict[str, object] = {
    "cookie_secret": COOKIE_SECRET,
    "email_domains": ("example.com",),
}

#: The provider as flags, for files without ``providers``.
PROVIDER_FLAGS: dict[str, object] = {
    "provider": "oidc",
    "oidc_issuer_url": "https://idp.example.com",
    "client_id": "app",
    "client_secret": "client-secret-value",
}

ALICE = Session(
    user="alice-sub",
    email="alice@example.com",
    groups=("admins", "staff"),
    preferred_username="alice",
    access_token="AT",
    id_token="IDT",
    refresh_token="RT",
)

HAS_METRICS = any(spec.key == "metrics_address" for spec in option_specs())

EVERY_KEY = """\
upstreamConfig:
  proxyRawPath: true
  upstreams:
  - id: app
    path: /
    uri: http://127.0.0.1:8080/
    flushInterval: 500ms
    passHostHeader: false
    proxyWebSockets: false
    timeout: 1m
    insecureSkipTLSVerify: true
    disableKeepAlives: true
  - id: api
    path: ^/api/(.*)$
    rewriteTarget: /v2/$1
    uri: https://api.internal:8443
    timeout: 5
  - id: health
    path: /healthz
    static: true
    staticCode: 204
  - id: socket
    path: /socket/
    uri: unix:///run/app.sock
    flushInterval: 0.25
  - id: files
    path: /static/
    uri: file:///srv/www
injectRequestHeaders:
- name: X-Forwarded-User
  values:
  - claimSource:
      claim: user
- name: X-Forwarded-Groups
  values:
  - claimSource:
      claim: groups
- name: X-Token
  values:
  - claimSource:
      claim: access_token
      prefix: "Bearer "
- name: Authorization
  values:
  - claimSource:
      claim: email
      basicAuthPassword:
        fromEnv: BASIC_PASSWORD
- name: X-Api-Key
  values:
  - secretSource:
      value: c2VjcmV0
- name: X-Tenant
  preserveRequestValue: true
  values:
  - secretSource:
      fromFile: {tenant_file}
injectResponseHeaders:
- name: X-Auth-Request-Email
  values:
  - claim: email
- name: X-Auth-Request-Id-Token
  values:
  - claim: id_token
    prefix: "Bearer "
server:
  bindAddress: 0.0.0.0:4180
metricsServer:
  bindAddress: {metrics_address}
providers:
- id: idp
  provider: oidc
  name: Example IdP
  clientID: ${{CLIENT_ID}}
  clientSecret: ${{CLIENT_SECRET}}
  clientSecretFile: ""
  caFiles: [/etc/ssl/idp.pem]
  loginURL: https://idp.example.com/auth
  redeemURL: https://idp.example.com/token
  profileURL: https://idp.example.com/userinfo
  skipClaimsFromProfileURL: true
  scope: openid email
  allowedGroups: [admins]
  code_challenge_method: S256
  backendLogoutURL: https://idp.example.com/logout?id_token_hint={{id_token}}
  loginURLParameters:
  - name: prompt
    default: [login]
  - name: acr_values
    default: [gold]
  oidcConfig:
    issuerURL: https://idp.example.com
    insecureAllowUnverifiedEmail: true
    insecureSkipIssuerVerification: true
    insecureSkipNonce: false
    skipDiscovery: true
    jwksURL: https://idp.example.com/jwks
    emailClaim: mail
    groupsClaim: roles
    userIDClaim: sub
    audienceClaims: [aud, azp]
    extraAudiences: [other]
"""

ENVIRON = {
    "CLIENT_ID": "gate",
    "CLIENT_SECRET": "s3cret-from-env",
    "BASIC_PASSWORD": "pw",
}


class AlphaTestCase(SynchronousTestCase):
    def directory(self) -> str:
        path = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, path)
        return path

    def write(self, text: str, name: str = "alpha.yaml") -> str:
        path = os.path.join(self.directory(), name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def parse(self, text: str, environ: Mapping[str, str] | None = None) -> AlphaConfig:
        return parse_alpha(text, environ or {})

    def problems(self, text: str, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
        e = self.assertRaises(ConfigError, parse_alpha, text, environ or {})
        problems: tuple[str, ...] = e.problems
        return problems

    def every_key(self) -> AlphaConfig:
        tenant_file = self.write("acme\n", "tenant")
        # Without a metrics option, an address is an error (tested below).
        metrics_address = "127.0.0.1:9100" if HAS_METRICS else "''"
        text = EVERY_KEY.format(tenant_file=tenant_file, metrics_address=metrics_address)
        return self.parse(text, ENVIRON)


class EveryKeyTests(AlphaTestCase):
    def test_upstreams_are_read_with_every_option(self) -> None:
        alpha = self.every_key()
        self.assertIs(alpha.proxy_raw_path, True)
        self.assertEqual(
            alpha.upstream_specs,
            (
                UpstreamSpec(
                    id="app",
                    path="/",
                    uri="http://127.0.0.1:8080/",
                    flush_interval=0.5,
                    pass_host_header=False,
                    proxy_websockets=False,
                    timeout=60.0,
                    insecure_skip_tls_verify=True,
                    disable_keep_alives=True,
                ),
                UpstreamSpec(
                    id="api",
                    path="^/api/(.*)$",
                    uri="https://api.internal:8443",
                    rewrite_target="/v2/$1",
                    timeout=5.0,
                ),
                UpstreamSpec(id="health", path="/healthz", static=True, static_code=204),
                UpstreamSpec(
                    id="socket", path="/socket/", uri="unix:///run/app.sock", flush_interval=0.25
                ),
                UpstreamSpec(id="files", path="/static/", uri="file:///srv/www"),
            ),
        )

    def test_header_rules_are_read_from_claims_and_secret_sources(self) -> None:
        alpha = self.every_key()
        self.assertEqual(
            alpha.request_header_rules,
            (
                HeaderRule("X-Forwarded-User", values=(HeaderValue(claim="user"),)),
                HeaderRule("X-Forwarded-Groups", values=(HeaderValue(claim="groups"),)),
                HeaderRule(
                    "X-Token", values=(HeaderValue(claim="access_token", prefix="Bearer "),)
                ),
                HeaderRule(
                    "Authorization",
                    values=(HeaderValue(claim="email", basic_auth_password="pw"),),
                ),
                HeaderRule("X-Api-Key", values=(HeaderValue(value="secret"),)),
                HeaderRule(
                    "X-Tenant", preserve_request_value=True, values=(HeaderValue(value="acme"),)
                ),
            ),
        )
        self.assertEqual(
            alpha.response_header_rules,
            (
                HeaderRule("X-Auth-Request-Email", values=(HeaderValue(claim="email"),)),
                HeaderRule(
                    "X-Auth-Request-Id-Token",
                    values=(HeaderValue(claim="id_token", prefix="Bearer "),),
                ),
            ),
        )

    def test_server_and_provider_become_options(self) -> None:
        options = dict(self.every_key().options)
        (settings,) = cast(tuple[ProviderSettings, ...], options.pop("providers"))
        self.assertEqual(
            (settings.id, settings.type, settings.where), ("idp", "oidc", "providers[0]")
        )
        expected_metrics = {"metrics_address": "127.0.0.1:9100"} if HAS_METRICS else {}
        self.assertEqual(
            options,
            {
                "http_address": "0.0.0.0:4180",
                **expected_metrics,
                "provider": "oidc",
                "provider_display_name": "Example IdP",
                "client_id": "gate",
                "client_secret": "s3cret-from-env",
                "client_secret_file": "",
                "provider_ca_files": ("/etc/ssl/idp.pem",),
                "login_url": "https://idp.example.com/auth",
                "redeem_url": "https://idp.example.com/token",
                "profile_url": "https://idp.example.com/userinfo",
                "skip_claims_from_profile_url": True,
                "scope": "openid email",
                "allowed_groups": ("admins",),
                "code_challenge_method": "S256",
                "backend_logout_url": "https://idp.example.com/logout?id_token_hint={id_token}",
                "prompt": "login",
                "acr_values": "gold",
                "oidc_issuer_url": "https://idp.example.com",
                "insecure_oidc_allow_unverified_email": True,
                "insecure_oidc_skip_issuer_verification": True,
                "insecure_oidc_skip_nonce": False,
                "skip_oidc_discovery": True,
                "oidc_jwks_url": "https://idp.example.com/jwks",
                "oidc_email_claim": "mail",
                "oidc_groups_claim": "roles",
                "user_id_claim": "sub",
                "oidc_audience_claims": ("aud", "azp"),
                "oidc_extra_audiences": ("other",),
            },
        )

    def test_the_client_secret_stays_out_of_repr(self) -> None:
        self.assertNotIn("s3cret-from-env", repr(self.every_key()))

    def test_an_insecure_upstream_is_a_warning(self) -> None:
        self.assertEqual(
            self.every_key().warnings,
            (
                "upstreamConfig.upstreams[0].insecureSkipTLSVerify is on: the upstream's TLS "
                "certificate is not verified; do not use this in production",
            ),
        )

    def test_an_empty_file_sets_nothing(self) -> None:
        self.assertEqual(self.parse(""), AlphaConfig())
        self.assertEqual(self.parse("# nothing yet\n"), AlphaConfig())

    def test_unset_upstream_options_keep_oauth2_proxys_defaults(self) -> None:
        alpha = self.parse(
            "upstreamConfig:\n  upstreams:\n  - {id: a, path: /, uri: 'http://a:1/'}\n"
        )
        self.assertEqual(alpha.upstream_specs, (UpstreamSpec(id="a", path="/", uri="http://a:1/"),))
        spec = alpha.upstream_specs[0]
        self.assertEqual((spec.flush_interval, spec.timeout), (1.0, 30.0))
        self.assertEqual((spec.pass_host_header, spec.proxy_websockets), (True, True))
        self.assertIs(alpha.proxy_raw_path, False)

    def test_a_header_without_values_only_strips_client_copies(self) -> None:
        alpha = self.parse("injectRequestHeaders:\n- name: X-Remote-User\n")
        self.assertEqual(alpha.request_header_rules, (HeaderRule("X-Remote-User"),))

    def test_unsupported_provider_keys_that_set_nothing_are_accepted(self) -> None:
        """Files written by oauth2-proxy's converter carry such defaults."""
        alpha = self.parse(
            "providers:\n- id: x\n  provider: oidc\n  useSystemTrustStore: false\n"
            "  azureConfig: {tenant: ''}\n  oidcConfig:\n    publicKeyFiles: []\n"
        )
        self.assertEqual(
            alpha.options,
            {
                "provider": "oidc",
                "providers": (ProviderSettings("x", "oidc", (("provider", "oidc"),)),),
            },
        )


class ErrorTests(AlphaTestCase):
    def test_type_errors_name_their_yaml_path(self) -> None:
        self.assertEqual(
            self.problems(
                """\
upstreamConfig:
  proxyRawPath: "yes"
  upstreams:
  - {id: a, path: /, uri: "http://a:1/", passHostHeader: maybe, timeout: soon}
  - {id: b, path: /b, static: true, staticCode: abc, flushInterval: -1}
injectRequestHeaders:
- name: 42
  values: {claim: user}
providers:
- provider: oidc
  allowedGroups: admins
  oidcConfig:
    skipDiscovery: 1
"""
            ),
            (
                "upstreamConfig.upstreams[0].passHostHeader: expected true or false, got 'maybe'",
                "upstreamConfig.upstreams[0].timeout: expected a duration such as 168h, 1h30m, "
                "90s or 500ms, got 'soon'",
                "upstreamConfig.upstreams[1].staticCode: expected an integer, got 'abc'",
                "upstreamConfig.upstreams[1].flushInterval: must not be negative, got -1",
                "upstreamConfig.proxyRawPath: expected true or false, got 'yes'",
                "injectRequestHeaders[0].name: expected a string, got 42",
                "injectRequestHeaders[0].values: expected a list, got a mapping",
                "providers[0].allowedGroups: expected a list of strings, got 'admins'",
                "providers[0].oidcConfig.skipDiscovery: expected true or false, got 1",
            ),
        )

    def test_unknown_keys_are_errors_with_a_suggestion(self) -> None:
        self.assertEqual(
            self.problems(
                """\
upstreamconfig: {}
upstreamConfig:
  upstreams:
  - {id: a, pathh: /, uri: "http://a:1/"}
injectRequestHeaders:
- name: X-User
  values:
  - claimSource: {claim: user, prefx: "u:"}
providers:
- clientId: app
  oidcConfig: {issuerUrl: "https://idp"}
banana: 1
"""
            ),
            (
                "upstreamconfig: unknown key (did you mean 'upstreamConfig'?)",
                "banana: unknown key",
                "upstreamConfig.upstreams[0].pathh: unknown key (did you mean 'path'?)",
                "upstreamConfig.upstreams[0].path: required: the path it serves, e.g. / or "
                "/api/ or ^/app/(.*)$",
                "injectRequestHeaders[0].values[0].claimSource.prefx: unknown key "
                "(did you mean 'prefix'?)",
                "providers[0].clientId: unknown key (did you mean 'clientID'?)",
                "providers[0].oidcConfig.issuerUrl: unknown key (did you mean 'issuerURL'?)",
            ),
        )

    def test_each_upstream_mistake_is_named_with_its_path(self) -> None:
        self.assertEqual(
            self.problems(
                """\
upstreamConfig:
  upstreams:
  - {path: /}
  - {id: a, path: /a, uri: "ftp://files"}
  - {id: a, path: /a, uri: "http://"}
  - {id: c, path: "^/c/(+", uri: "http://c:1/"}
  - {id: d, path: "^/d/(.*)$", rewriteTarget: /$2, uri: "http://d:1/"}
  - {id: e, path: /e/, rewriteTarget: /$1, uri: "http://e:1/"}
  - {id: f, path: f/, uri: "http://f:1/"}
  - {id: g, path: /g, staticCode: 201, uri: "http://g:1/"}
  - {id: h, path: /h, static: true, staticCode: 700, uri: "http://h:1/", passHostHeader: true}
  - {id: i, path: /i, uri: "unix://"}
"""
            ),
            (
                "upstreamConfig.upstreams[0].id: required: a name for the upstream, unique in "
                "the list",
                "upstreamConfig.upstreams[0].uri: required unless static is true: "
                "http(s)://host[:port][/path], unix:///path/to.sock or file:///dir",
                "upstreamConfig.upstreams[1].uri: unsupported scheme ftp:// in 'ftp://files'; "
                "use http://, https://, unix:// or file://",
                "upstreamConfig.upstreams[2].uri: needs a host, e.g. http://127.0.0.1:8080/, "
                "got 'http://'",
                "upstreamConfig.upstreams[3].path: not a valid regular expression: nothing to "
                "repeat at position 5",
                "upstreamConfig.upstreams[4].rewriteTarget: $2 refers to group 2, but the path "
                "has 1 group",
                "upstreamConfig.upstreams[5].rewriteTarget: needs a regular-expression path (one "
                "starting with ^) whose groups it uses",
                "upstreamConfig.upstreams[6].path: must start with / (or ^ for a regular "
                "expression), got 'f/'",
                "upstreamConfig.upstreams[7].staticCode: is only used by a static upstream; add "
                "static: true",
                "upstreamConfig.upstreams[8].uri: has no effect on a static upstream; remove it",
                "upstreamConfig.upstreams[8].passHostHeader: has no effect on a static upstream; "
                "remove it",
                "upstreamConfig.upstreams[8].staticCode: expected an HTTP status from 100 to 599, "
                "got 700",
                "upstreamConfig.upstreams[9].uri: needs an absolute path, e.g. "
                "unix:///srv/app, got 'unix://'",
            ),
        )

    def test_upstream_ids_and_paths_are_unique(self) -> None:
        self.assertEqual(
            self.problems(
                "upstreamConfig:\n  upstreams:\n"
                "  - {id: a, path: /, uri: 'http://a:1/'}\n"
                "  - {id: a, path: /, uri: 'http://b:1/'}\n"
            ),
            (
                "upstreamConfig.upstreams[1].id: 'a' is also the id of "
                "upstreamConfig.upstreams[0]; ids must be unique",
                "upstreamConfig.upstreams[1].path: '/' is also the path of "
                "upstreamConfig.upstreams[0]; paths must be unique",
            ),
        )

    def test_each_header_mistake_is_named_with_its_path(self) -> None:
        self.assertEqual(
            self.problems(
                """\
injectRequestHeaders:
- values: [{claim: user}]
- name: "X User"
- name: X-Forwarded-User
  values:
  - {claim: user, secretSource: {value: c2VjcmV0}}
  - {}
  - claimSource: {claim: nickname}
  - claimSource: {claim: user, prefix: "a\\nb"}
- name: x_forwarded_user
  InsecureSkipHeaderNormalization: true
- name: X-Secret
  values:
  - secretSource: {value: YQpi}
- name: Cookie
  values: [{claim: user}]
"""
            ),
            (
                "injectRequestHeaders[0].name: required: the header name, e.g. X-Forwarded-User",
                "injectRequestHeaders[1].name: not a valid header name: 'X User' (letters, "
                "digits and !#$%&'*+-.^_`|~)",
                "injectRequestHeaders[2].values[0]: give exactly one source per value: "
                "claimSource or secretSource, got secretSource and claim",
                "injectRequestHeaders[2].values[1]: give exactly one source per value: "
                "claimSource or secretSource",
                "injectRequestHeaders[2].values[2].claimSource.claim: unknown claim 'nickname'; "
                "oauthgate offers user, email, groups, preferred_username, access_token, "
                "id_token, refresh_token, created_at, expires_on",
                "injectRequestHeaders[2].values[3].claimSource.prefix: must not contain line "
                "breaks or control characters",
                "injectRequestHeaders[3].InsecureSkipHeaderNormalization: not supported by this "
                "version of oauthgate",
                "injectRequestHeaders[3].name: 'x_forwarded_user' is also the name of "
                "injectRequestHeaders[2] (names are compared case-insensitively, _ as -); give "
                "each header once with several values",
                "injectRequestHeaders[4].values[0].secretSource: the value must not contain line "
                "breaks or control characters",
                "injectRequestHeaders[5].name: Cookie carries the HTTP exchange itself and cannot "
                "be injected",
            ),
        )

    def test_secret_source_mistakes_never_show_the_secret(self) -> None:
        problems = self.problems(
            """\
injectRequestHeaders:
- name: A
  values: [{secretSource: {value: "not base64!"}}]
- name: B
  values: [{secretSource: {fromEnv: MISSING}}]
- name: C
  values: [{secretSource: {fromFile: /nonexistent/secret}}]
- name: D
  values: [{secretSource: {value: c2VjcmV0, fromEnv: PASSWORD}}]
- name: E
  values: [{claimSource: {claim: user, basicAuthPassword: {}}}]
- name: F
  values: [{secretSource: {value: 12345}}]
"""
        )
        self.assertEqual(
            problems,
            (
                "injectRequestHeaders[0].values[0].secretSource.value: expected the secret "
                "encoded as base64 (e.g. c2VjcmV0 for 'secret'), got text that is not base64",
                "injectRequestHeaders[1].values[0].secretSource.fromEnv: the environment "
                "variable MISSING is not set",
                "injectRequestHeaders[2].values[0].secretSource.fromFile: cannot read "
                "/nonexistent/secret: No such file or directory",
                "injectRequestHeaders[3].values[0].secretSource: a secret source needs exactly "
                "one of value (base64), fromEnv or fromFile, got value and fromEnv",
                "injectRequestHeaders[4].values[0].claimSource.basicAuthPassword: a secret source "
                "needs exactly one of value (base64), fromEnv or fromFile",
                "injectRequestHeaders[5].values[0].secretSource.value: expected base64 text, got "
                "a number",
            ),
        )
        self.assertNotIn("12345", "\n".join(problems))

    def test_secret_values_never_appear_in_messages(self) -> None:
        problems = self.problems("providers:\n- clientSecret: 987654321\n")
        self.assertEqual(problems, ("providers[0].clientSecret: expected a string, got a number",))

    def test_secret_from_env_file_and_binary_yaml(self) -> None:
        path = self.write("from-file\n", "secret")
        alpha = self.parse(
            f"""\
injectRequestHeaders:
- name: A
  values: [{{secretSource: {{fromEnv: TOKEN}}}}]
- name: B
  values: [{{secretSource: {{fromFile: {path}}}}}]
- name: C
  values: [{{secretSource: {{value: !!binary "YmluYXJ5"}}}}]
- name: D
  values: [{{value: c2VjcmV0}}]
""",
            {"TOKEN": "from-env"},
        )
        self.assertEqual(
            [rule.values[0].value for rule in alpha.request_header_rules],
            ["from-env", "from-file", "binary", "secret"],
        )

    def test_providers_with_supported_keys_only(self) -> None:
        self.assertEqual(
            self.problems("providers:\n- {provider: oidc}\n- {provider: oidc}\n"),
            (
                "providers[1].id: 'oidc' is also the id of providers[0]; give each provider a "
                "unique id (without an id, the id is the type 'oidc')",
            ),
        )
        self.assertEqual(
            self.problems(
                """\
providers:
- provider: github
  githubConfig: {org: acme}
  validateURL: https://api.github.com/
  loginURLParameters:
  - {name: prompt, default: [login], allow: [{value: login}]}
  - {name: login_hint, default: [x]}
  - {name: acr_values, default: [a, b]}
  oidcConfig:
    enabledSigningAlgs: [RS256]
"""
            ),
            (
                "providers[0].githubConfig: not supported by this version of oauthgate",
                "providers[0].validateURL: not supported by this version of oauthgate",
                "providers[0].oidcConfig.enabledSigningAlgs: not supported by this version of "
                "oauthgate",
                "providers[0].loginURLParameters[0].allow: not supported by this version of "
                "oauthgate",
                "providers[0].loginURLParameters[1].name: oauthgate supports prompt, "
                "approval_prompt, acr_values here, got 'login_hint'",
                "providers[0].loginURLParameters[2].default: give one value",
            ),
        )

    def test_server_must_listen_and_metrics_wait_for_a_later_version(self) -> None:
        problems = self.problems(
            "server:\n  bindAddress: '-'\n  secureBindAddress: ':443'\n"
            "metricsServer:\n  bindAddress: ':9100'\n  tls: {key: {fromFile: k}}\n"
        )
        expected = [
            "server.secureBindAddress: not supported by this version of oauthgate",
            "server.bindAddress: oauthgate always serves HTTP; give an address such as "
            "0.0.0.0:4180",
            "metricsServer.tls: not supported by this version of oauthgate",
        ]
        if not HAS_METRICS:
            expected.append(
                "metricsServer.bindAddress: metrics come with a later version of oauthgate; "
                "remove metricsServer"
            )
        self.assertEqual(problems, tuple(expected))
        self.assertEqual(self.parse("metricsServer: {bindAddress: ''}\n").options, {})

    def test_invalid_yaml_is_one_line_with_its_position(self) -> None:
        self.assertEqual(
            self.problems("upstreamConfig:\n  upstreams: [\n"),
            (
                "alpha config: not valid YAML: line 3, column 1: expected the node content, "
                "but found '<stream end>'",
            ),
        )

    def test_a_key_given_twice_is_an_error(self) -> None:
        """YAML would keep the last one silently."""
        (problem,) = self.problems("server:\n  bindAddress: ':1'\n  bindAddress: ':2'\n")
        self.assertEqual(
            problem,
            "alpha config: not valid YAML: line 3, column 3: key 'bindAddress' is given twice",
        )

    def test_the_document_must_be_a_mapping(self) -> None:
        self.assertEqual(
            self.problems("- upstreams\n"),
            ("(top level): expected a mapping of keys, got a list",),
        )


class SubstitutionTests(AlphaTestCase):
    def test_variables_are_replaced_and_regex_references_kept(self) -> None:
        text, missing = substitute_env(
            "a=${A} b=$B c=${C:-dflt} d=${D-dflt} e=${E:-x} f=$$A g=$1 h=${1} i=${A:x}",
            {"A": "1", "B": "2", "E": ""},
        )
        self.assertEqual(text, "a=1 b=2 c=dflt d=dflt e=x f=$A g=$1 h=${1} i=${A:x}")
        self.assertEqual(missing, [])

    def test_unset_variables_become_empty_and_are_reported(self) -> None:
        self.assertEqual(substitute_env("x${NOPE}y$ALSO_NOT", {}), ("xy", ["NOPE", "ALSO_NOT"]))
        alpha = self.parse("server: {bindAddress: '${HOST}:4180'}\n")
        self.assertEqual(alpha.options, {"http_address": ":4180"})
        self.assertEqual(
            alpha.warnings,
            ("alpha config: environment variable HOST is not set; it was replaced by nothing",),
        )

    def test_a_rewrite_target_survives_substitution(self) -> None:
        alpha = self.parse(
            "upstreamConfig:\n  upstreams:\n  - id: a\n    path: ^/a/(.*)/(.*)$\n"
            "    rewriteTarget: /${2}/$1\n    uri: ${UPSTREAM}\n",
            {"UPSTREAM": "http://a:1/"},
        )
        spec = alpha.upstream_specs[0]
        self.assertEqual((spec.rewrite_target, spec.uri), ("/${2}/$1", "http://a:1/"))


class LoadingTestCase(AlphaTestCase):
    """Loads alpha files with the loader, the rest of the options as flags."""

    def load(
        self,
        text: str,
        flags: Mapping[str, object] | None = None,
        environ: Mapping[str, str] | None = None,
        config_file: str | None = None,
    ) -> tuple[Config, list[str]]:
        return load_config(
            {**REST, **(flags or {})},
            environ or {},
            config_file,
            alpha_file=self.write(text),
        )

    def load_problems(
        self,
        text: str,
        flags: Mapping[str, object] | None = None,
        environ: Mapping[str, str] | None = None,
        config_file: str | None = None,
    ) -> tuple[str, ...]:
        e = self.assertRaises(ConfigError, self.load, text, flags, environ, config_file)
        problems: tuple[str, ...] = e.problems
        return problems


class LoaderTests(LoadingTestCase):
    def test_the_file_fills_the_config(self) -> None:
        config, warnings = self.load(
            "upstreamConfig:\n  proxyRawPath: true\n  upstreams:\n"
            "  - {id: a, path: /, uri: 'http://127.0.0.1:8080/'}\n"
            "injectRequestHeaders:\n- name: X-User\n  values: [{claim: user}]\n"
            "server: {bindAddress: '0.0.0.0:4999'}\n"
            "providers:\n- provider: oidc\n  clientID: app\n  clientSecret: ${SECRET}\n"
            "  oidcConfig: {issuerURL: 'https://idp.example.com'}\n",
            environ={"SECRET": "from-env"},
        )
        self.assertEqual(warnings, [])
        self.assertEqual(
            config.upstream_specs, (UpstreamSpec(id="a", path="/", uri="http://127.0.0.1:8080/"),)
        )
        self.assertIs(config.proxy_raw_path, True)
        self.assertEqual(
            config.request_header_rules, (HeaderRule("X-User", values=(HeaderValue("user"),)),)
        )
        self.assertEqual(config.response_header_rules, ())
        self.assertEqual(config.http_address, "0.0.0.0:4999")
        self.assertEqual((config.client_id, config.client_secret), ("app", "from-env"))

    def test_a_file_without_headers_injects_none(self) -> None:
        """As in oauth2-proxy: the legacy header defaults do not apply with an alpha file."""
        config, _ = self.load("{}\n", PROVIDER_FLAGS)
        self.assertEqual((config.request_header_rules, config.response_header_rules), ((), ()))
        self.assertEqual(IdentityHeaders.from_config(config).upstream(ALICE), [])

    def test_legacy_options_it_replaces_are_refused_one_line_each(self) -> None:
        toml = self.write('set_xauthrequest = true\nhttp_address = ":4000"\n', "o.cfg")
        problems = self.load_problems(
            "providers:\n- {provider: oidc, clientID: app, clientSecret: s}\n",
            {"upstreams": ("http://127.0.0.1:8080/",), "oidc_issuer_url": "https://idp"},
            {"OAUTH2_PROXY_PASS_ACCESS_TOKEN": "true"},
            toml,
        )
        self.assertEqual(
            problems,
            (
                "--upstream: with --alpha-config this is set in the alpha file "
                "(upstreamConfig.upstreams); remove it here",
                "OAUTH2_PROXY_PASS_ACCESS_TOKEN: with --alpha-config this is set in the alpha "
                "file (injectRequestHeaders / injectResponseHeaders); remove it here",
                f"{toml}: set_xauthrequest: with --alpha-config this is set in the alpha file "
                "(injectResponseHeaders); remove it here",
                "--oidc-issuer-url: with --alpha-config this is set in the alpha file "
                "(providers[0].oidcConfig.issuerURL); remove it here",
            ),
        )

    def test_server_and_provider_options_move_only_with_their_sections(self) -> None:
        config, _ = self.load("{}\n", {**PROVIDER_FLAGS, "http_address": ":4001"})
        self.assertEqual((config.http_address, config.client_id), (":4001", "app"))
        self.assertEqual(
            self.load_problems(
                "server: {bindAddress: ':4002'}\n", {**PROVIDER_FLAGS, "http_address": ":4001"}
            ),
            (
                "--http-address: with --alpha-config this is set in the alpha file "
                "(server.bindAddress); remove it here",
            ),
        )
        self.assertIn("http_address", moved_options({"server"}))
        self.assertNotIn("client_id", moved_options({"server"}))
        self.assertEqual(moved_options({"providers"})["client_id"], "providers[0].clientID")

    def test_file_problems_come_with_the_other_problems(self) -> None:
        problems = self.load_problems(
            "upstreamConfig: {upstreams: [{id: a}]}\n", {**PROVIDER_FLAGS, "cookie_name": "a b"}
        )
        self.assertEqual(
            problems,
            (
                "upstreamConfig.upstreams[0].path: required: the path it serves, e.g. / or "
                "/api/ or ^/app/(.*)$",
                "upstreamConfig.upstreams[0].uri: required unless static is true: "
                "http(s)://host[:port][/path], unix:///path/to.sock or file:///dir",
                "cookie_name: must be 1 to 256 letters, digits or !#$%&'*+-.^_`|~ (a cookie "
                "token), got 'a b'",
            ),
        )

    def test_an_unreadable_file_is_one_line(self) -> None:
        path = os.path.join(self.directory(), "missing.yaml")
        e = self.assertRaises(
            ConfigError, load_config, {**REST, **PROVIDER_FLAGS}, {}, None, alpha_file=path
        )
        self.assertEqual(
            e.problems,
            (f"{path}: cannot read the alpha config file: No such file or directory",),
        )

    def test_the_client_secret_file_of_the_provider_is_read(self) -> None:
        secret = self.write("file-secret\n", "client-secret")
        config, _ = self.load(
            f"providers:\n- provider: oidc\n  clientID: app\n  clientSecretFile: {secret}\n"
            "  oidcConfig: {issuerURL: 'https://idp.example.com'}\n"
        )
        self.assertEqual(config.client_secret, "file-secret")

    def test_a_minimal_session_cannot_feed_token_headers(self) -> None:
        problems = self.load_problems(
            "injectRequestHeaders:\n- name: X-Token\n  values: [{claim: access_token}]\n",
            {**PROVIDER_FLAGS, "session_cookie_minimal": True},
        )
        self.assertEqual(
            problems,
            (
                "session_cookie_minimal: injectRequestHeaders X-Token needs the access_token that "
                "a minimal session drops; turn one of them off",
            ),
        )

    def test_demo_mode_does_not_add_legacy_upstreams_or_headers(self) -> None:
        config, _ = load_config({"demo": True}, {}, None, alpha_file=self.write("{}\n"))
        self.assertEqual((config.upstreams, config.set_xauthrequest), ((), False))
        self.assertEqual(config.upstream_specs, ())


class ConversionTests(AlphaTestCase):
    LEGACY = Config(
        provider="oidc",
        client_id="app",
        client_secret="pa$$word",
        oidc_issuer_url="https://idp.example.com",
        oidc_audience_claims=("aud", "azp"),
        insecure_oidc_skip_nonce=True,
        prompt="login",
        acr_values="gold",
        allowed_groups=("admins",),
        http_address="0.0.0.0:4180",
        upstreams=(
            "https://api.internal:8443/api/",
            "file:///srv/www#/static/",
            "unix:///run/app.sock",
            "static://204/healthz",
        ),
        flush_interval=0.5,
        upstream_timeout=60.0,
        pass_host_header=False,
        ssl_upstream_insecure_skip_verify=True,
        basic_auth_password="basic-pw",
        pass_access_token=True,
        pass_authorization_header=True,
        prefer_email_to_user=True,
        set_xauthrequest=True,
        set_basic_auth=True,
        set_authorization_header=True,
    )

    def test_convert_then_load_gives_the_same_upstreams_and_headers(self) -> None:
        alpha = self.parse(to_alpha_yaml(self.LEGACY))
        legacy_specs = specs_from_flags(self.LEGACY)
        self.assertEqual(len(alpha.upstream_specs), len(legacy_specs))
        for loaded, expected in zip(alpha.upstream_specs, legacy_specs, strict=True):
            if expected.static:
                # Proxy options mean nothing to a static upstream and are not written.
                fields = ("id", "path", "static", "static_code")
                self.assertEqual(
                    [getattr(loaded, f) for f in fields], [getattr(expected, f) for f in fields]
                )
            else:
                self.assertEqual(loaded, expected)

        from_legacy = IdentityHeaders.from_config(self.LEGACY)
        from_alpha = IdentityHeaders.from_rules(
            alpha.request_header_rules, alpha.response_header_rules
        )
        self.assertEqual(from_alpha, from_legacy)
        self.assertEqual(from_alpha.upstream(ALICE), from_legacy.upstream(ALICE))
        for tokens in (True, False):
            self.assertEqual(
                from_alpha.response(ALICE, tokens=tokens),
                from_legacy.response(ALICE, tokens=tokens),
            )

    def test_convert_then_load_gives_the_same_provider_and_address(self) -> None:
        alpha = self.parse(to_alpha_yaml(self.LEGACY))
        options: dict[str, Any] = dict(alpha.options)
        reloaded = attrs.evolve(Config(), **options)
        for key in set(moved_options({"providers", "server"})) - set(moved_options(())):
            self.assertEqual(getattr(reloaded, key), getattr(self.LEGACY, key), key)
        self.assertEqual(reloaded.client_secret, "pa$$word")

    def test_a_client_secret_file_is_converted_as_the_file(self) -> None:
        secret = self.write("from-file\n", "secret")
        config, _ = load_config(
            {"client_id": "app", "client_secret_file": secret}, {}, None, check=False
        )
        self.assertEqual(config.client_secret, "from-file")
        text = to_alpha_yaml(config)
        self.assertNotIn("from-file", text)
        self.assertEqual(self.parse(text).options["client_secret_file"], secret)

    def test_the_provider_id_is_the_display_name_or_type_and_client(self) -> None:
        self.assertIn("- id: oidc=app\n", to_alpha_yaml(self.LEGACY))
        named = attrs.evolve(self.LEGACY, provider_display_name="Example")
        self.assertIn("- id: Example\n", to_alpha_yaml(named))


class CommandLineTests(AlphaTestCase):
    def test_alpha_config_and_convert_are_recorded(self) -> None:
        options = Options()
        options.parseOptions(["--alpha-config=/etc/alpha.yaml"])
        self.assertEqual(
            (options["alpha-config"], options["convert-config-to-alpha"]),
            ("/etc/alpha.yaml", False),
        )
        self.assertEqual(options.given, {})
        options = Options()
        options.parseOptions(["--convert-config-to-alpha"])
        self.assertEqual(
            (options["alpha-config"], options["convert-config-to-alpha"]), (None, True)
        )

    def test_alpha_config_and_convert_exclude_each_other(self) -> None:
        e = self.assertRaises(
            usage.UsageError,
            Options().parseOptions,
            ["--alpha-config=a.yaml", "--convert-config-to-alpha"],
        )
        self.assertIn("cannot be used together", str(e))

    def test_convert_prints_the_yaml_and_exits_0(self) -> None:
        options = Options()
        options.parseOptions(
            ["--convert-config-to-alpha", "--upstream=http://127.0.0.1:8080/", "--client-id=app"]
        )
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(os, "environ", {})
        e = self.assertRaises(SystemExit, tap.makeService, options)
        self.assertEqual(e.code, 0)
        alpha = self.parse(out.getvalue())
        self.assertEqual(
            alpha.upstream_specs[0], UpstreamSpec(id="/", path="/", uri="http://127.0.0.1:8080/")
        )
        self.assertEqual(alpha.options["client_id"], "app")


class DocumentationTests(AlphaTestCase):
    def test_the_documented_example_loads(self) -> None:
        """docs/configuration.md's complete example is a valid file (paths swapped for real)."""
        docs = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "configuration.md")
        with open(docs, encoding="utf-8") as f:
            text = f.read()
        example = text.split("A complete example:", 1)[1].split("```yaml\n", 1)[1]
        example = example.split("```", 1)[0]
        secret = self.write("secret\n", "secret")
        for path in ("/etc/oauthgate/api-key", "/etc/oauthgate/client-secret"):
            example = example.replace(path, secret)
        alpha = self.parse(example, {"UPSTREAM_PASSWORD": "pw"})
        self.assertEqual([spec.id for spec in alpha.upstream_specs], ["app", "api", "health"])
        self.assertEqual(len(alpha.request_header_rules), 5)
        self.assertEqual(alpha.options["client_id"], "grafana")
        self.assertEqual(alpha.warnings, ())


SEVERAL = """\
upstreamConfig:
  upstreams: [{id: app, path: /, uri: "http://127.0.0.1:8080/"}]
providers:
- id: corp
  provider: oidc
  clientID: corp-app
  clientSecret: corp-secret
  allowedGroups: [admins]
  oidcConfig: {issuerURL: "https://corp.example.com"}
- id: partner
  provider: keycloak-oidc
  name: Partner
  clientID: partner-app
  clientSecretFile: {secret_file}
  clientAuthMethod: client_secret_post
  emailDomains: [partner.example]
  loginURLParameters: [{name: prompt, default: [login]}]
  oidcConfig: {issuerURL: "https://sso.partner.example/realms/x", emailClaim: mail}
"""


class MultipleProvidersTests(LoadingTestCase):
    def several(self, **changes: str) -> str:
        text = SEVERAL.replace("{secret_file}", self.write("partner-secret\n", "partner"))
        for old, new in changes.items():
            text = text.replace(old, new)
        return text

    def test_every_provider_is_kept_with_its_id_type_and_options(self) -> None:
        alpha = self.parse(self.several())
        corp, partner = cast(tuple[ProviderSettings, ...], alpha.options["providers"])
        self.assertEqual((corp.id, corp.type, corp.where), ("corp", "oidc", "providers[0]"))
        self.assertEqual(
            (partner.id, partner.type, partner.where), ("partner", "keycloak-oidc", "providers[1]")
        )
        options = dict(partner.options)
        self.assertEqual(options["client_secret"], "partner-secret")
        self.assertEqual(options["client_auth_method"], "client_secret_post")
        self.assertEqual(options["prompt"], "login")
        self.assertEqual(options["oidc_email_claim"], "mail")
        self.assertEqual(partner.email_domains, ("partner.example",))
        # The first provider is also the flat options, as in oauth2-proxy.
        self.assertEqual(alpha.options["client_id"], "corp-app")
        self.assertNotIn("partner-secret", repr(alpha))
        self.assertNotIn("corp-secret", repr(partner) + repr(corp))

    def test_each_provider_sees_the_shared_options_and_only_its_own(self) -> None:
        config, _ = self.load(self.several())
        corp, partner = provider_configs(config)
        self.assertIs(corp.config, config)
        self.assertEqual(partner.config.provider, "keycloak-oidc")
        self.assertEqual(partner.config.client_id, "partner-app")
        self.assertEqual(partner.config.allowed_groups, ())
        self.assertEqual(partner.config.approval_prompt, "force")
        self.assertEqual(partner.config.oidc_email_claim, "mail")
        self.assertEqual(corp.config.oidc_email_claim, "email")
        self.assertEqual(partner.config.email_domains, ("example.com",))
        self.assertEqual(partner.config.cookie_secret, config.cookie_secret)

    def test_without_a_list_there_is_one_provider_named_by_its_type(self) -> None:
        (only,) = provider_configs(attrs.evolve(Config(), provider="oidc"))
        self.assertEqual((only.id, only.type, only.where), ("oidc", "oidc", "provider"))

    def test_ids_must_be_unique_and_not_reserved(self) -> None:
        self.assertEqual(
            self.problems(
                "providers:\n- {id: a, provider: oidc}\n- {id: a, provider: github}\n"
                '- {id: htpasswd, provider: oidc}\n- {id: "x\\ny", provider: oidc}\n'
            ),
            (
                "providers[1].id: 'a' is also the id of providers[0]; give each provider a "
                "unique id",
                "providers[2].id: 'htpasswd' is reserved by oauthgate; choose another id",
                "providers[3].id: must not contain line breaks or control characters",
            ),
        )

    def test_email_domains_is_a_list(self) -> None:
        self.assertEqual(
            self.problems("providers:\n- {provider: oidc, emailDomains: example.com}\n"),
            ("providers[0].emailDomains: expected a list of strings, got 'example.com'",),
        )

    def test_a_secret_and_its_file_at_once_or_an_unreadable_file_are_errors(self) -> None:
        both = self.several(**{"  clientID: partner-app\n": "  clientID: p\n  clientSecret: s\n"})
        self.assertEqual(
            self.problems(both),
            ("providers[1].clientSecretFile: give clientSecret or clientSecretFile, not both",),
        )
        missing = os.path.join(self.directory(), "missing")
        text = SEVERAL.replace("{secret_file}", missing)
        self.assertEqual(
            self.problems(text),
            (f"providers[1].clientSecretFile: cannot read {missing}: No such file or directory",),
        )

    def test_problems_of_a_further_provider_name_it(self) -> None:
        text = self.several(
            **{
                "  clientID: partner-app\n": "",
                'issuerURL: "https://sso.partner.example/realms/x"': 'issuerURL: "sso"',
                "  clientAuthMethod: client_secret_post\n": "  clientAuthMethod: magic\n",
            }
        )
        problems = self.load_problems(text)
        self.assertIn(
            "providers[1] (partner): client_id: required; set --client-id, "
            "OAUTHGATE_CLIENT_ID or client_id",
            problems,
        )
        self.assertIn(
            "providers[1] (partner): client_auth_method: must be client_secret_basic, "
            "client_secret_post, private_key_jwt, got 'magic'",
            problems,
        )
        self.assertIn(
            "providers[1] (partner): oidc_issuer_url: must be an absolute http:// or https:// "
            "URL, got 'sso'",
            problems,
        )

    def test_private_key_jwt_keys_move_to_the_provider_entry(self) -> None:
        moved = moved_options({"providers"})
        self.assertEqual(moved["client_auth_method"], "providers[0].clientAuthMethod")
        self.assertEqual(moved["jwt_key_file"], "providers[0].jwtKeyFile")
        alpha = self.parse(
            "providers:\n- {provider: oidc, clientAuthMethod: private_key_jwt, "
            "jwtKeyFile: /etc/key.pem}\n"
        )
        self.assertEqual(alpha.options["client_auth_method"], "private_key_jwt")
        self.assertEqual(alpha.options["jwt_key_file"], "/etc/key.pem")
