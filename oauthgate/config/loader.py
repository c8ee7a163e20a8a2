"""Merge flags, environment, TOML file and defaults into one validated :class:`Config`.

Precedence is oauth2-proxy's: flags > environment > file > defaults. Every problem found
in any source is collected and raised at once as a :class:`~oauthgate.errors.ConfigError`,
one line each, and no line ever contains a secret value.
"""

from __future__ import annotations

import base64
import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

from oauthgate.config.alpha import AlphaConfig, load_alpha, moved_options
from oauthgate.config.durations import DURATION_HINT, format_duration, parse_duration
from oauthgate.config.flags import parse_bool, parse_text, split_list
from oauthgate.config.options import Config, OptionSpec, option_specs
from oauthgate.config.validate import validate
from oauthgate.errors import ConfigError

__all__ = [
    "DEMO_IDP_PORT",
    "DEMO_UPSTREAM_PORT",
    "SECRET_FILES",
    "UNSUPPORTED_OAUTH2_PROXY_KEYS",
    "demo_defaults",
    "load_config",
]

DEMO_IDP_PORT = 4181
"""Where ``--demo`` expects the built-in test identity provider."""
DEMO_UPSTREAM_PORT = 4182
"""Where ``--demo`` expects the built-in echo upstream."""

SECRET_FILES: tuple[tuple[str, str], ...] = (
    ("cookie_secret", "cookie_secret_file"),
    ("client_secret", "client_secret_file"),
)
"""(secret option, option naming a file that holds it) pairs."""

UNSUPPORTED_OAUTH2_PROXY_KEYS = frozenset(
    {
        # server
        "https_address", "tls_cert_file", "tls_key_file", "tls_min_version",
        "tls_cipher_suites", "force_https", "allow_query_semicolons", "trusted_proxy_ips",
        # cookie
        "cookie_csrf_per_request", "cookie_csrf_per_request_limit", "cookie_csrf_samesite",
        # redis
        "redis_connection_url", "redis_username", "redis_password", "redis_use_sentinel",
        "redis_sentinel_master_name", "redis_sentinel_connection_urls",
        "redis_sentinel_password", "redis_use_cluster", "redis_cluster_connection_urls",
        "redis_ca_path", "redis_insecure_skip_tls_verify", "redis_connection_idle_timeout",
        # provider
        "validate_url", "auth_request_response_mode", "oidc_public_key_files",
        "oidc_enabled_signing_algs", "use_system_trust_store", "allowed_roles", "resource",
        "force_code_challenge_method",
        # provider specific
        "github_org", "github_team", "github_repo", "github_token", "github_users",
        "gitlab_groups", "gitlab_projects", "google_groups",
        "google_admin_email", "google_service_account_json",
        "google_use_application_default_credentials", "google_target_principal",
        "google_use_organization_id", "google_admin_api_user_scope", "azure_tenant",
        "azure_graph_group_field", "entra_id_allowed_tenants", "entra_id_federated_token_auth",
        "keycloak_groups", "bitbucket_team", "bitbucket_repository", "jwt_key", "jwt_key_file",
        "pubjwk_url",
        # authentication / authorization
        "skip_auth_routes", "skip_auth_regex", "skip_auth_preflight", "api_routes",
        "trusted_ips", "skip_jwt_bearer_tokens", "extra_jwt_issuers",
        "bearer_token_login_fallback", "htpasswd_file", "htpasswd_user_groups",
        "encode_state",
        # headers and upstreams
        "signature_key", "proxy_websockets", "flush_interval", "disable_keep_alives",
        # logging
        "standard_logging", "standard_logging_format", "auth_logging_format",
        "request_logging_format", "errors_to_info_log", "request_id_header",
        "logging_filename", "logging_max_size", "logging_max_age", "logging_max_backups",
        "logging_compress", "logging_local_time",
        # metrics
        "metrics_address", "metrics_secure_address", "metrics_tls_cert_file",
        "metrics_tls_key_file",
        # pages and probes
        "display_htpasswd_form", "show_debug_on_error", "ping_user_agent", "gcp_healthchecks",
    }
)  # fmt: skip
UNSUPPORTED_OAUTH2_PROXY_KEYS -= {spec.key for spec in option_specs()}

LEGACY_KEYS = {"google_group": "google_groups"}
"""Old oauth2-proxy keys that still work (with a warning), and the key they stand for."""
"""cfg keys oauth2-proxy knows that this version of oauthgate does not implement yet
(an option added to the table leaves this set by itself)."""

_ENV_PREFIXES = ("OAUTHGATE_", "OAUTH2_PROXY_")
# What Kubernetes sets for a Service named oauthgate or oauth2-proxy (service links):
# OAUTHGATE_SERVICE_HOST, OAUTHGATE_SERVICE_PORT_HTTP, OAUTHGATE_PORT_4180_TCP_ADDR...
_KUBERNETES_SERVICE_LINK = re.compile(
    r"(?:[A-Z0-9_]+_)?(?:SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?|PORT"
    r"|PORT_[0-9]+_(?:TCP|UDP|SCTP)(?:_(?:PROTO|PORT|ADDR))?)"
)


def demo_defaults(random: Callable[[int], bytes] = os.urandom) -> dict[str, object]:
    """What ``--demo`` uses for options not given anywhere; the cookie secret is fresh."""
    return {
        "provider": "oidc",
        "oidc_issuer_url": f"http://127.0.0.1:{DEMO_IDP_PORT}",
        "client_id": "oauthgate-demo",
        "client_secret": "oauthgate-demo-secret",
        "cookie_secret": base64.urlsafe_b64encode(random(32)).decode("ascii"),
        "cookie_secure": False,
        "email_domains": ("*",),
        "upstreams": (f"http://127.0.0.1:{DEMO_UPSTREAM_PORT}/",),
        "code_challenge_method": "S256",
        "set_xauthrequest": True,
        "pass_access_token": False,
    }


def load_config(
    flags: Mapping[str, object],
    environ: Mapping[str, str],
    config_file: str | None,
    *,
    alpha_file: str | None = None,
    check: bool = True,
    random: Callable[[int], bytes] = os.urandom,
) -> tuple[Config, list[str]]:
    """The validated configuration from the command line, the environment and the file.

    Args:
        flags: what the command line gave, by cfg key (``Options.given``); values already
            parsed, though strings are parsed here too.
        environ: the environment; ``OAUTHGATE_<KEY>`` beats ``OAUTH2_PROXY_<KEY>``.
        config_file: the TOML file (``--config``), or None.
        alpha_file: the alpha YAML file (``--alpha-config``), or None. It sets the
            upstreams and injected headers (and, when it has them, the listen address and
            the provider); the legacy options it takes over may then not be given
            anywhere else (:func:`~oauthgate.config.alpha.moved_options`).
        check: validate the merged configuration; off only for
            ``--convert-config-to-alpha``, which converts what is given, complete or not.
        random: the randomness for the ``--demo`` cookie secret.

    Returns:
        The frozen config and the warnings to log.

    Raises:
        ConfigError: with one line per problem across all sources and validation.
    """
    specs = {spec.key: spec for spec in option_specs()}
    problems: list[str] = []
    warnings: list[str] = []
    failed: set[str] = set()

    file_values: dict[str, object] = {}
    if config_file is not None:
        file_values = _read_file(config_file, specs, problems, failed, warnings)
    env_values = _read_environ(environ, specs, problems, warnings, failed)
    flag_values = _read_flags(flags, specs, problems, failed)

    alpha: AlphaConfig | None = None
    moved: dict[str, str] = {}
    if alpha_file is not None:
        try:
            alpha = load_alpha(alpha_file, environ)
        except ConfigError as e:
            problems.extend(e.problems)
        else:
            warnings.extend(alpha.warnings)
        moved = moved_options(alpha.sections if alpha is not None else ())
        for key, alpha_key in moved.items():
            spec = specs[key]
            where = []
            if key in flag_values:
                where.append(f"--{spec.flag}")
            if key in env_values:
                where.append(next(name for name in spec.env_names if name in environ))
            if key in file_values:
                where.append(f"{config_file}: {key}")
            for place in where:
                problems.append(
                    f"{place}: with --alpha-config this is set in the alpha file "
                    f"({alpha_key}); remove it here"
                )
                failed.add(key)

    given: dict[str, object] = {**file_values, **env_values, **flag_values}
    values: dict[str, Any] = {key: spec.default for key, spec in specs.items()}
    values.update(given)
    if alpha is not None:
        values.update(alpha.options)

    if values["demo"]:
        for key, value in demo_defaults(random).items():
            file_key = key + "_file"
            if key in moved or (alpha is not None and key in alpha.options):
                continue
            if key not in given and not (file_key in specs and values[file_key]):
                values[key] = value

    for secret_key, file_key in SECRET_FILES:
        _read_secret_file(values, secret_key, file_key, problems, failed)

    if alpha is not None:
        values.update(
            upstream_specs=alpha.upstream_specs,
            proxy_raw_path=alpha.proxy_raw_path,
            request_header_rules=alpha.request_header_rules,
            response_header_rules=alpha.response_header_rules,
        )
    config = Config(**values)
    try:
        if check:
            warnings.extend(validate(config))
    except ConfigError as e:
        problems.extend(line for line in e.problems if line.partition(":")[0].strip() not in failed)
    if problems:
        raise ConfigError(problems)
    return config, warnings


def _read_flags(
    flags: Mapping[str, object],
    specs: Mapping[str, OptionSpec],
    problems: list[str],
    failed: set[str],
) -> dict[str, object]:
    values: dict[str, object] = {}
    for key, raw in flags.items():
        spec = specs.get(key)
        if spec is None:
            problems.append(f"--{key.replace('_', '-')}: unknown option")
            continue
        if isinstance(raw, str) and spec.kind != "str":
            try:
                values[key] = parse_text(spec, raw)
            except ValueError as e:
                problems.append(f"--{spec.flag}: {e}")
                failed.add(key)
            continue
        values[key] = tuple(raw) if spec.kind == "list" and isinstance(raw, list) else raw
    return values


def _read_environ(
    environ: Mapping[str, str],
    specs: Mapping[str, OptionSpec],
    problems: list[str],
    warnings: list[str],
    failed: set[str],
) -> dict[str, object]:
    """The options set by ``OAUTHGATE_<KEY>`` / ``OAUTH2_PROXY_<KEY>`` variables.

    A variable of either prefix that names no option must not be dropped quietly: a
    misspelt restriction (``OAUTH2_PROXY_ALLOWED_GROUP``, the flag's spelling) would
    otherwise vanish and let everybody in. See :func:`_check_unknown_variable`.
    """
    values: dict[str, object] = {}
    known: set[str] = set()
    for spec in specs.values():
        known.update(spec.env_names)
        for name in spec.env_names:
            if name in environ:
                try:
                    values[spec.key] = parse_text(spec, environ[name])
                except ValueError as e:
                    problems.append(f"{name}: {e}")
                    failed.add(spec.key)
                break
    by_flag = {
        spec.flag.replace("-", "_"): spec
        for spec in specs.values()
        if spec.flag.replace("-", "_") != spec.key
    }
    for old, new in LEGACY_KEYS.items():
        for prefix in _ENV_PREFIXES:
            name = prefix + old.upper()
            if name in environ and new in specs:
                known.add(name)
                warnings.append(f"{name} is deprecated; use {prefix + new.upper()}")
                if new not in values:
                    try:
                        values[new] = parse_text(specs[new], environ[name])
                    except ValueError as e:
                        problems.append(f"{name}: {e}")
                        failed.add(new)
    for name in sorted(environ):
        if name.startswith(_ENV_PREFIXES) and name not in known:
            _check_unknown_variable(name, specs, by_flag, problems, warnings)
    return values


def _check_unknown_variable(
    name: str,
    specs: Mapping[str, OptionSpec],
    by_flag: Mapping[str, OptionSpec],
    problems: list[str],
    warnings: list[str],
) -> None:
    """Report ``name``, a prefixed variable that names no option.

    An oauth2-proxy option oauthgate lacks, any ``OAUTHGATE_`` name and an
    ``OAUTH2_PROXY_`` name spelt like a flag are errors; other ``OAUTH2_PROXY_`` names may
    belong to other tools (a Helm chart's) and only warn. Kubernetes service links
    (``<SERVICE>_SERVICE_HOST``, ``<SERVICE>_PORT``...) are skipped quietly.
    """
    prefix = next(p for p in _ENV_PREFIXES if name.startswith(p))
    key = name[len(prefix) :].lower()
    if key in UNSUPPORTED_OAUTH2_PROXY_KEYS:
        problems.append(
            f"{name}: option '{key}' (oauth2-proxy) is not supported by this version of oauthgate"
        )
        return
    flag_spec = by_flag.get(key)
    if flag_spec is not None:
        right = prefix + flag_spec.key.upper()
        problems.append(
            f"{name}: unknown option; variables are named after the config key, not the flag "
            f"--{flag_spec.flag} (did you mean '{right}'?)"
        )
        return
    if _KUBERNETES_SERVICE_LINK.fullmatch(name[len(prefix) :]):
        return
    names = [prefix + spec_key.upper() for spec_key in specs]
    if prefix == "OAUTHGATE_":
        problems.append(f"{name}: unknown option{_did_you_mean(name, names)}")
    else:
        warnings.append(f"{name}: no such option, ignored{_did_you_mean(name, names)}")


def _read_file(
    path: str,
    specs: Mapping[str, OptionSpec],
    problems: list[str],
    failed: set[str],
    warnings: list[str] | None = None,
) -> dict[str, object]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        problems.append(f"{path}: cannot read the config file: {e.strerror or e}")
        return {}
    except UnicodeDecodeError:
        problems.append(f"{path}: the config file is not UTF-8 text")
        return {}
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problems.append(f"{path}: not valid TOML: {e}")
        return {}

    values: dict[str, object] = {}
    for key, raw in document.items():
        line = _line_of(text, key)
        where = path if line is None else f"{path}:{line}"
        spec = specs.get(key)
        if spec is None and key in LEGACY_KEYS and LEGACY_KEYS[key] in specs:
            new = LEGACY_KEYS[key]
            if warnings is not None:
                warnings.append(f"{where}: '{key}' is deprecated; write '{new}'")
            if new in document:
                continue  # the new key, given too, wins
            key, spec = new, specs[new]
        if spec is None:
            if key in UNSUPPORTED_OAUTH2_PROXY_KEYS:
                problems.append(
                    f"{where}: option '{key}' (oauth2-proxy) is not supported by this "
                    "version of oauthgate"
                )
            else:
                problems.append(f"{where}: unknown option '{key}'{_did_you_mean(key, list(specs))}")
            continue
        try:
            values[key] = _from_toml(spec, raw)
        except ValueError as e:
            problems.append(f"{where}: {key}: {e}")
            failed.add(key)
    return values


def _from_toml(spec: OptionSpec, raw: object) -> object:
    """``raw`` (a TOML value) as the kind ``spec`` needs; ValueError naming the right type."""
    if spec.kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str):
            # oauth2-proxy (viper) reads "false" as false: such files must load unchanged.
            try:
                return parse_bool(raw)
            except ValueError:
                pass
        raise ValueError(f"expected true or false, got {_toml_type(raw)}")
    if spec.kind == "int":
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
            return int(raw)
        raise ValueError(f"expected a whole number, got {_toml_type(raw)}")
    if spec.kind == "duration":
        if isinstance(raw, str):
            return parse_duration(raw)
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            if raw < 0:
                raise ValueError(f"must not be negative, got {raw}")
            return float(raw)
        raise ValueError(f"expected {DURATION_HINT} (a string), got {_toml_type(raw)}")
    if spec.kind == "list":
        if isinstance(raw, str):
            return split_list(raw)
        if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
            return tuple(raw)
        raise ValueError(f'expected an array of strings such as ["a", "b"], got {_toml_type(raw)}')
    if isinstance(raw, str):
        return raw
    raise ValueError(f"expected a string (in quotes), got {_toml_type(raw)}")


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array" if all(isinstance(i, str) for i in value) else "an array of non-strings"
    if isinstance(value, dict):
        return "a table"
    return "a date or time"


def _line_of(text: str, key: str) -> int | None:
    """The 1-based line where ``key`` is set (``key =``, ``"key" =``, ``[key]``), if found."""
    name = re.escape(key)
    quoted = rf"""(?:{name}|"{name}"|'{name}')"""
    assignment = rf"{quoted}[ \t]*[=.]"
    table = rf"\[\[?[ \t]*{quoted}[ \t]*[\].]"
    pattern = re.compile(rf"^[ \t]*(?:{assignment}|{table})", re.MULTILINE)
    match = pattern.search(text)
    if match is None:
        return None
    return text.count("\n", 0, match.start()) + 1


def _did_you_mean(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.8)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _read_secret_file(
    values: dict[str, Any],
    secret_key: str,
    file_key: str,
    problems: list[str],
    failed: set[str],
) -> None:
    """Fill ``values[secret_key]`` from the file named by ``values[file_key]``, if any."""
    path = values[file_key]
    if not path:
        return
    if values[secret_key]:
        problems.append(
            f"{secret_key}: both {secret_key} and {file_key} are set; give only one of them"
        )
        failed.add(secret_key)
        return
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.read()
    except OSError as e:
        problems.append(f"{file_key}: cannot read {path}: {e.strerror or e}")
        failed.add(secret_key)
        return
    except UnicodeDecodeError:
        problems.append(f"{file_key}: {path} is not UTF-8 text")
        failed.add(secret_key)
        return
    values[secret_key] = secret.rstrip("\r\n")


def display_config(config: Config) -> str:
    """The effective configuration as a TOML file oauthgate reads back: every option, in
    table order, with the value of every secret replaced by ``***`` (so it may be pasted
    into a bug report)."""
    import json

    lines = []
    for spec in option_specs():
        value = getattr(config, spec.key)
        if spec.secret and value:
            lines.append(f'{spec.key} = "***"')
        elif isinstance(value, bool):
            lines.append(f"{spec.key} = {'true' if value else 'false'}")
        elif spec.kind == "duration":
            lines.append(f'{spec.key} = "{format_duration(value)}"')
        elif isinstance(value, tuple):
            lines.append(f"{spec.key} = {json.dumps(list(value))}")
        elif isinstance(value, int | float):
            lines.append(f"{spec.key} = {value}")
        else:
            lines.append(f"{spec.key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"
