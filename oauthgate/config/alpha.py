"""oauth2-proxy's alpha YAML configuration (``--alpha-config``) and the conversion to it.

The file holds what the flat options cannot say well: the upstreams
(``upstreamConfig``), the injected headers (``injectRequestHeaders`` /
``injectResponseHeaders``), the listen addresses (``server``, ``metricsServer``) and the
identity providers (``providers``, one or several). Everything else stays in flags, the
environment and the TOML file. Like oauth2-proxy, the text first gets ``${VAR}`` environment
substitution (regex references such as ``$1`` are left alone), unknown keys are errors,
and every problem in the file is reported at once, each line starting with its YAML path:
``upstreamConfig.upstreams[1].staticCode: expected an integer, got 'abc'``.

Secret values (client secret, header secrets, Basic passwords) never appear in a message.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import re
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs
import yaml  # type: ignore[import-untyped]

from oauthgate.config.durations import DURATION_HINT, format_duration, parse_duration
from oauthgate.config.headers import CLAIMS, HeaderRule, HeaderValue, legacy_header_rules
from oauthgate.config.options import Config, option_specs
from oauthgate.errors import ConfigError
from oauthgate.upstreams.legacy import specs_from_flags
from oauthgate.upstreams.spec import UpstreamSpec

__all__ = [
    "PROVIDER_KEYS",
    "AlphaConfig",
    "ProviderConfig",
    "ProviderSettings",
    "load_alpha",
    "moved_options",
    "parse_alpha",
    "provider_configs",
    "substitute_env",
    "to_alpha_yaml",
    "without_provider_options",
]

TOP_LEVEL_KEYS = (
    "upstreamConfig",
    "injectRequestHeaders",
    "injectResponseHeaders",
    "server",
    "metricsServer",
    "providers",
)

_UPSTREAM_KEYS = (
    "id",
    "path",
    "uri",
    "rewriteTarget",
    "static",
    "staticCode",
    "flushInterval",
    "passHostHeader",
    "proxyWebSockets",
    "timeout",
    "insecureSkipTLSVerify",
    "disableKeepAlives",
)
_UPSTREAM_SCHEMES = ("http", "https", "file", "unix")
_DEFAULT_SPEC = UpstreamSpec(id="", path="")

# providers[]: alpha key -> (cfg key, kind); "list" is a list of strings. The last three are
# oauthgate extensions (private_key_jwt client authentication).
_PROVIDER_FIELDS: dict[str, tuple[str, str]] = {
    "provider": ("provider", "str"),
    "name": ("provider_display_name", "str"),
    "clientID": ("client_id", "str"),
    "clientSecret": ("client_secret", "secret"),
    "clientSecretFile": ("client_secret_file", "str"),
    "caFiles": ("provider_ca_files", "list"),
    "loginURL": ("login_url", "str"),
    "redeemURL": ("redeem_url", "str"),
    "profileURL": ("profile_url", "str"),
    "skipClaimsFromProfileURL": ("skip_claims_from_profile_url", "bool"),
    "scope": ("scope", "str"),
    "allowedGroups": ("allowed_groups", "list"),
    "code_challenge_method": ("code_challenge_method", "str"),
    "backendLogoutURL": ("backend_logout_url", "str"),
    "clientAuthMethod": ("client_auth_method", "str"),
    "jwtKey": ("jwt_key", "secret"),
    "jwtKeyFile": ("jwt_key_file", "str"),
}
_OIDC_FIELDS: dict[str, tuple[str, str]] = {
    "issuerURL": ("oidc_issuer_url", "str"),
    "insecureAllowUnverifiedEmail": ("insecure_oidc_allow_unverified_email", "bool"),
    "insecureSkipIssuerVerification": ("insecure_oidc_skip_issuer_verification", "bool"),
    "insecureSkipNonce": ("insecure_oidc_skip_nonce", "bool"),
    "skipDiscovery": ("skip_oidc_discovery", "bool"),
    "jwksURL": ("oidc_jwks_url", "str"),
    "emailClaim": ("oidc_email_claim", "str"),
    "groupsClaim": ("oidc_groups_claim", "str"),
    "userIDClaim": ("user_id_claim", "str"),
    "audienceClaims": ("oidc_audience_claims", "list"),
    "extraAudiences": ("oidc_extra_audiences", "list"),
}
_PROVIDER_UNSUPPORTED = (
    "useSystemTrustStore",
    "authRequestResponseMode",
    "resource",
    "validateURL",
    "additionalClaims",
    "keycloakConfig",
    "azureConfig",
    "microsoftEntraIDConfig",
    "ADFSConfig",
    "bitbucketConfig",
    "githubConfig",
    "gitlabConfig",
    "googleConfig",
    "loginGovConfig",
)
_OIDC_UNSUPPORTED = ("publicKeyFiles", "enabledSigningAlgs")
# loginURLParameters names oauthgate maps to the option of the same name.
_LOGIN_PARAMETERS = ("prompt", "approval_prompt", "acr_values")
# Session.provider values that are not identity providers (sign-in forms, bearer tokens).
_RESERVED_PROVIDER_IDS = ("htpasswd", "bearer")
_MAX_PROVIDER_ID = 100

PROVIDER_KEYS = frozenset(
    [key for key, _ in _PROVIDER_FIELDS.values()]
    + [key for key, _ in _OIDC_FIELDS.values()]
    + list(_LOGIN_PARAMETERS)
)
"""The cfg keys a ``providers[]`` entry sets; every other option is shared by all providers."""

_UPSTREAM_OPTIONS = {
    "upstreams": "upstreamConfig.upstreams",
    "pass_host_header": "upstreamConfig.upstreams[].passHostHeader",
    "proxy_websockets": "upstreamConfig.upstreams[].proxyWebSockets",
    "flush_interval": "upstreamConfig.upstreams[].flushInterval",
    "upstream_timeout": "upstreamConfig.upstreams[].timeout",
    "ssl_upstream_insecure_skip_verify": "upstreamConfig.upstreams[].insecureSkipTLSVerify",
    "disable_keep_alives": "upstreamConfig.upstreams[].disableKeepAlives",
}
_HEADER_OPTIONS = {
    "pass_user_headers": "injectRequestHeaders",
    "pass_basic_auth": "injectRequestHeaders",
    "basic_auth_password": "injectRequestHeaders[].values[].claimSource.basicAuthPassword",
    "prefer_email_to_user": "injectRequestHeaders / injectResponseHeaders",
    "pass_access_token": "injectRequestHeaders / injectResponseHeaders",
    "pass_authorization_header": "injectRequestHeaders",
    "skip_auth_strip_headers": "injectRequestHeaders[].preserveRequestValue",
    "set_xauthrequest": "injectResponseHeaders",
    "set_basic_auth": "injectResponseHeaders",
    "set_authorization_header": "injectResponseHeaders",
}


def _provider_options() -> dict[str, str]:
    moved = {key: f"providers[0].{alpha}" for alpha, (key, _) in _PROVIDER_FIELDS.items()}
    moved.update(
        {key: f"providers[0].oidcConfig.{alpha}" for alpha, (key, _) in _OIDC_FIELDS.items()}
    )
    for name in _LOGIN_PARAMETERS:
        moved[name] = "providers[0].loginURLParameters"
    return moved


def _has_option(key: str) -> bool:
    return any(spec.key == key for spec in option_specs())


def moved_options(sections: Collection[str]) -> dict[str, str]:
    """The legacy options an alpha file with these top-level ``sections`` takes over.

    Maps each cfg key to the alpha key that replaces it. As in oauth2-proxy, the upstream
    and header options always move (an alpha file without ``injectRequestHeaders``
    injects nothing); ``http_address``, the metrics address and the provider options
    move when the file has ``server``, ``metricsServer`` or ``providers``.
    """
    moved = {**_UPSTREAM_OPTIONS, **_HEADER_OPTIONS}
    if "server" in sections:
        moved["http_address"] = "server.bindAddress"
    if "metricsServer" in sections and _has_option("metrics_address"):
        moved["metrics_address"] = "metricsServer.bindAddress"
    if "providers" in sections:
        moved.update(_provider_options())
    return moved


@attrs.frozen
class AlphaConfig:
    """What an alpha file says, ready to merge into :class:`Config`.

    ``options`` holds the cfg keys the file sets (``http_address`` from
    ``server.bindAddress``, the provider's options); it may hold the client secret, so
    it is kept out of ``repr``.
    """

    upstream_specs: tuple[UpstreamSpec, ...] = ()
    proxy_raw_path: bool = False
    request_header_rules: tuple[HeaderRule, ...] = ()
    response_header_rules: tuple[HeaderRule, ...] = ()
    options: Mapping[str, object] = attrs.field(factory=dict, repr=False, hash=False)
    sections: frozenset[str] = frozenset()
    warnings: tuple[str, ...] = ()


@attrs.frozen
class ProviderSettings:
    """One entry of the alpha ``providers`` list, as :attr:`Config.providers` keeps it.

    ``options`` are the cfg keys the entry sets (see :data:`PROVIDER_KEYS`), a client
    secret among them, so they stay out of ``repr``. ``email_domains`` is the oauthgate
    extension ``emailDomains``: it applies to the sessions of this provider only.
    """

    id: str
    type: str
    options: tuple[tuple[str, object], ...] = attrs.field(default=(), repr=False)
    email_domains: tuple[str, ...] = ()
    where: str = "providers[0]"


@attrs.frozen
class ProviderConfig:
    """One identity provider of the instance: what its factory is built from.

    ``config`` is the whole configuration as this provider sees it: the shared options
    and its own provider options, so every provider factory takes it unchanged.
    ``where`` names it in error messages (``providers[1]``, or ``provider`` for the flat
    options).
    """

    id: str
    type: str
    config: Config = attrs.field(repr=False)
    email_domains: tuple[str, ...] = ()
    where: str = "provider"


def without_provider_options(config: Config) -> Config:
    """``config`` with every provider option (:data:`PROVIDER_KEYS`) at its default."""
    defaults: dict[str, Any] = {field.name: field.default for field in attrs.fields(Config)}
    return attrs.evolve(config, **{key: defaults[key] for key in PROVIDER_KEYS})


def provider_configs(config: Config) -> tuple[ProviderConfig, ...]:
    """The providers ``config`` names, in sign-in page order; never empty.

    Without an alpha ``providers`` list there is one, from the flat options, whose id is
    its type. With one, entry 0 is the flat options themselves (the loader merged them and
    read its secret files); each further entry is ``config`` with every provider option
    (:data:`PROVIDER_KEYS`) back at its default, then set from the entry.
    """
    if not config.providers:
        return (ProviderConfig(config.provider, config.provider, config),)
    out = []
    for index, settings in enumerate(config.providers):
        view = config
        if index > 0:
            options: dict[str, Any] = dict(settings.options)
            view = attrs.evolve(without_provider_options(config), **options)
        out.append(
            ProviderConfig(settings.id, settings.type, view, settings.email_domains, settings.where)
        )
    return tuple(out)


# --- environment substitution -----------------------------------------------------------

_VARIABLE = re.compile(r"\$(?:(\$)|\{([^{}$]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def substitute_env(text: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """``text`` with ``${VAR}`` and ``$VAR`` replaced from ``environ``, as oauth2-proxy does.

    ``${VAR:-default}`` and ``${VAR-default}`` give a default (the first when the
    variable is unset or empty, the second only when it is unset); ``$$`` is a literal
    ``$``; regex references (``$1``, ``${1}``) and anything else stay as written. An unset
    variable without a default becomes the empty string.

    Returns:
        The text and the names of the unset variables that were replaced by nothing.
    """
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match.group(1) is not None:
            return "$"
        name = match.group(3)
        default: str | None = None
        if name is None:
            inside = match.group(2)
            name_match = _NAME.match(inside)
            if name_match is None:
                return match.group(0)  # ${1} and friends: a regex reference
            name = name_match.group(0)
            rest = inside[len(name) :]
            if rest.startswith(":-"):
                value = environ.get(name, "")
                return value if value else rest[2:]
            if rest.startswith("-"):
                default = rest[1:]
            elif rest:
                return match.group(0)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    return _VARIABLE.sub(replace, text), missing


# --- reading typed values with their YAML path ------------------------------------------


class _DuplicateKeyLoader(yaml.SafeLoader):  # type: ignore[misc]
    """A safe loader that refuses a key given twice in one mapping (YAML keeps the last)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _shown(value: object, secret: bool = False) -> str:
    """``value`` as an error message shows it; a secret shows only its type."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if secret:
            return "a string"
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, int | float):
        return "a number" if secret else str(value)
    if isinstance(value, bytes):
        return "binary data"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _is_unset(value: object) -> bool:
    """True for YAML that sets nothing: null, false, "", [], {} or a mapping of those."""
    if value is None or value is False or value in ("", [], {}):
        return True
    if isinstance(value, dict):
        return all(_is_unset(v) for v in value.values())
    return False


class _Reader:
    """Reads YAML nodes into typed values, recording a problem per bad node."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def fields(
        self,
        node: object,
        path: str,
        known: Collection[str],
        unsupported: Collection[str] = (),
    ) -> dict[str, object]:
        """The known keys of the mapping ``node``; every other key is a problem.

        A key oauth2-proxy knows but oauthgate does not support yet is refused only
        when it sets something (``useSystemTrustStore: false`` is accepted).
        """
        if node is None:
            return {}
        if not isinstance(node, dict):
            self.problem(path or "(top level)", f"expected a mapping of keys, got {_shown(node)}")
            return {}
        out: dict[str, object] = {}
        for key, value in node.items():
            if not isinstance(key, str):
                self.problem(path or "(top level)", f"keys must be strings, got {_shown(key)}")
            elif key in known:
                if value is not None:
                    out[key] = value
            elif key in unsupported:
                if not _is_unset(value):
                    self.problem(_join(path, key), "not supported by this version of oauthgate")
            else:
                self.problem(_join(path, key), f"unknown key{_did_you_mean(key, known)}")
        return out

    def items(self, node: object, path: str) -> list[tuple[str, object]]:
        """The entries of the list ``node`` with their paths (``path[0]``...)."""
        if node is None:
            return []
        if not isinstance(node, list):
            self.problem(path, f"expected a list, got {_shown(node)}")
            return []
        return [(f"{path}[{index}]", item) for index, item in enumerate(node)]

    def string(
        self, fields: Mapping[str, object], key: str, path: str, *, secret: bool = False
    ) -> str:
        value = fields.get(key)
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        self.problem(_join(path, key), f"expected a string, got {_shown(value, secret)}")
        return ""

    def boolean(self, fields: Mapping[str, object], key: str, path: str, default: bool) -> bool:
        value = fields.get(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        self.problem(_join(path, key), f"expected true or false, got {_shown(value)}")
        return default

    def integer(self, fields: Mapping[str, object], key: str, path: str, default: int) -> int:
        value = fields.get(key)
        if value is None:
            return default
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        self.problem(_join(path, key), f"expected an integer, got {_shown(value)}")
        return default

    def duration(self, fields: Mapping[str, object], key: str, path: str, default: float) -> float:
        value = fields.get(key)
        if value is None:
            return default
        where = _join(path, key)
        if isinstance(value, str):
            try:
                return parse_duration(value)
            except ValueError as e:
                self.problem(where, str(e))
                return default
        if isinstance(value, int | float) and not isinstance(value, bool):
            if value < 0:
                self.problem(where, f"must not be negative, got {value}")
                return default
            return float(value)
        self.problem(where, f"expected {DURATION_HINT} (or seconds), got {_shown(value)}")
        return default

    def strings(self, fields: Mapping[str, object], key: str, path: str) -> tuple[str, ...]:
        value = fields.get(key)
        if value is None:
            return ()
        where = _join(path, key)
        if not isinstance(value, list):
            self.problem(where, f"expected a list of strings, got {_shown(value)}")
            return ()
        out: list[str] = []
        for index, item in enumerate(value):
            if isinstance(item, str):
                out.append(item)
            else:
                self.problem(f"{where}[{index}]", f"expected a string, got {_shown(item)}")
        return tuple(out)

    def secret(self, node: object, path: str) -> str | None:
        """A secret source: ``{value: <base64>}``, ``{fromEnv: VAR}`` or ``{fromFile: path}``."""
        fields = self.fields(node, path, ("value", "fromEnv", "fromFile"))
        return self.secret_from(fields, path)

    def secret_from(self, fields: Mapping[str, object], path: str) -> str | None:
        given = [key for key in ("value", "fromEnv", "fromFile") if key in fields]
        if len(given) != 1:
            self.problem(
                path,
                "a secret source needs exactly one of value (base64), fromEnv or fromFile"
                + (f", got {' and '.join(given)}" if given else ""),
            )
            return None
        key = given[0]
        where = _join(path, key)
        raw = fields[key]
        data: bytes
        if key == "value":
            if isinstance(raw, bytes):  # YAML !!binary
                data = raw
            elif isinstance(raw, str):
                try:
                    data = base64.b64decode(raw.strip(), validate=True)
                except (binascii.Error, ValueError):
                    self.problem(
                        where,
                        "expected the secret encoded as base64 (e.g. c2VjcmV0 for 'secret'), "
                        "got text that is not base64",
                    )
                    return None
            else:
                self.problem(where, f"expected base64 text, got {_shown(raw, secret=True)}")
                return None
        elif key == "fromEnv":
            if not isinstance(raw, str) or not raw:
                self.problem(where, f"expected a variable name, got {_shown(raw)}")
                return None
            if raw not in self.environ:
                self.problem(where, f"the environment variable {raw} is not set")
                return None
            data = self.environ[raw].encode("utf-8")
        else:
            if not isinstance(raw, str) or not raw:
                self.problem(where, f"expected a file path, got {_shown(raw)}")
                return None
            try:
                with open(raw, "rb") as f:
                    data = f.read()
            except OSError as e:
                self.problem(where, f"cannot read {raw}: {e.strerror or e}")
                return None
            data = data.rstrip(b"\r\n")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            self.problem(where, "the secret is not UTF-8 text")
            return None


def _did_you_mean(name: str, candidates: Collection[str]) -> str:
    by_lower = {candidate.lower(): candidate for candidate in candidates}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.7)
    return f" (did you mean '{by_lower[close[0]]}'?)" if close else ""


# --- the sections -----------------------------------------------------------------------


def load_alpha(path: str, environ: Mapping[str, str]) -> AlphaConfig:
    """The alpha configuration in the YAML file at ``path``.

    Raises:
        ConfigError: the file cannot be read or has problems; one line per problem.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(
            [f"{path}: cannot read the alpha config file: {e.strerror or e}"]
        ) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: the alpha config file is not UTF-8 text"]) from None
    return parse_alpha(text, environ, source=path)


def parse_alpha(
    text: str, environ: Mapping[str, str], *, source: str = "alpha config"
) -> AlphaConfig:
    """The alpha configuration in ``text`` (after ``${VAR}`` substitution from ``environ``).

    Raises:
        ConfigError: with every problem found, each starting with its YAML path.
    """
    substituted, missing = substitute_env(text, environ)
    try:
        # _DuplicateKeyLoader is a SafeLoader: no Python objects are built from tags.
        document = yaml.load(substituted, Loader=_DuplicateKeyLoader)
    except yaml.YAMLError as e:
        raise ConfigError([f"{source}: not valid YAML: {_yaml_error(e)}"]) from None
    reader = _Reader(environ)
    for name in sorted(set(missing)):
        reader.warnings.append(
            f"{source}: environment variable {name} is not set; it was replaced by nothing"
        )
    top = reader.fields(document, "", TOP_LEVEL_KEYS)
    options: dict[str, object] = {}
    upstream_config = reader.fields(
        top.get("upstreamConfig"), "upstreamConfig", ("proxyRawPath", "upstreams")
    )
    specs = _upstreams(reader, upstream_config.get("upstreams"), "upstreamConfig.upstreams")
    proxy_raw_path = reader.boolean(upstream_config, "proxyRawPath", "upstreamConfig", False)
    request = _headers(reader, top.get("injectRequestHeaders"), "injectRequestHeaders")
    response = _headers(reader, top.get("injectResponseHeaders"), "injectResponseHeaders")
    _server(reader, top.get("server"), "server", options)
    _metrics_server(reader, top.get("metricsServer"), "metricsServer", options)
    _providers(reader, top.get("providers"), "providers", options)
    if reader.problems:
        raise ConfigError(reader.problems)
    return AlphaConfig(
        upstream_specs=specs,
        proxy_raw_path=proxy_raw_path,
        request_header_rules=request,
        response_header_rules=response,
        options=options,
        sections=frozenset(top),
        warnings=tuple(reader.warnings),
    )


def _yaml_error(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return str(problem)


def _upstreams(reader: _Reader, node: object, path: str) -> tuple[UpstreamSpec, ...]:
    specs: list[UpstreamSpec] = []
    ids: dict[str, str] = {}
    paths: dict[str, str] = {}
    for where, item in reader.items(node, path):
        fields = reader.fields(item, where, _UPSTREAM_KEYS)
        spec = _upstream(reader, fields, where)
        if spec is None:
            continue
        if spec.id in ids:
            reader.problem(
                f"{where}.id", f"{spec.id!r} is also the id of {ids[spec.id]}; ids must be unique"
            )
        ids.setdefault(spec.id, where)
        if spec.path in paths:
            reader.problem(
                f"{where}.path",
                f"{spec.path!r} is also the path of {paths[spec.path]}; paths must be unique",
            )
        paths.setdefault(spec.path, where)
        specs.append(spec)
    return tuple(specs)


def _upstream(reader: _Reader, fields: Mapping[str, object], where: str) -> UpstreamSpec | None:
    default = _DEFAULT_SPEC
    before = len(reader.problems)
    upstream_id = reader.string(fields, "id", where)
    path = reader.string(fields, "path", where)
    uri = reader.string(fields, "uri", where)
    rewrite = reader.string(fields, "rewriteTarget", where)
    static = reader.boolean(fields, "static", where, False)
    static_code = reader.integer(fields, "staticCode", where, default.static_code)
    flush = reader.duration(fields, "flushInterval", where, default.flush_interval)
    pass_host = reader.boolean(fields, "passHostHeader", where, default.pass_host_header)
    websockets = reader.boolean(fields, "proxyWebSockets", where, default.proxy_websockets)
    timeout = reader.duration(fields, "timeout", where, default.timeout)
    insecure = reader.boolean(fields, "insecureSkipTLSVerify", where, False)
    no_keep_alive = reader.boolean(fields, "disableKeepAlives", where, False)

    if "id" not in fields:
        reader.problem(f"{where}.id", "required: a name for the upstream, unique in the list")
    if "path" not in fields:
        reader.problem(
            f"{where}.path", "required: the path it serves, e.g. / or /api/ or ^/app/(.*)$"
        )
    groups = _check_path(reader, path, f"{where}.path")
    if rewrite:
        if not path.startswith("^"):
            reader.problem(
                f"{where}.rewriteTarget",
                "needs a regular-expression path (one starting with ^) whose groups it uses",
            )
        elif groups is not None:
            for reference in re.findall(r"\$\{?(\d+)\}?", rewrite):
                if int(reference) > groups:
                    reader.problem(
                        f"{where}.rewriteTarget",
                        f"${reference} refers to group {reference}, but the path has "
                        f"{groups} group{'' if groups == 1 else 's'}",
                    )
    if static:
        for key in ("uri", "insecureSkipTLSVerify", "passHostHeader", "proxyWebSockets"):
            if key in fields and not (key == "insecureSkipTLSVerify" and not insecure):
                reader.problem(f"{where}.{key}", "has no effect on a static upstream; remove it")
        if flush != default.flush_interval:
            reader.problem(
                f"{where}.flushInterval", "has no effect on a static upstream; remove it"
            )
        if not 100 <= static_code <= 599:
            reader.problem(
                f"{where}.staticCode", f"expected an HTTP status from 100 to 599, got {static_code}"
            )
    else:
        if "staticCode" in fields:
            reader.problem(
                f"{where}.staticCode", "is only used by a static upstream; add static: true"
            )
        if "uri" not in fields or not uri:
            reader.problem(
                f"{where}.uri",
                "required unless static is true: http(s)://host[:port][/path], "
                "unix:///path/to.sock or file:///dir",
            )
        else:
            _check_uri(reader, uri, f"{where}.uri")
    if insecure:
        reader.warnings.append(
            f"{where}.insecureSkipTLSVerify is on: the upstream's TLS certificate is not "
            "verified; do not use this in production"
        )
    if len(reader.problems) > before:
        return None
    return UpstreamSpec(
        id=upstream_id,
        path=path,
        uri=uri,
        rewrite_target=rewrite,
        static=static,
        static_code=static_code,
        flush_interval=flush,
        pass_host_header=pass_host,
        proxy_websockets=websockets,
        timeout=timeout,
        insecure_skip_tls_verify=insecure,
        disable_keep_alives=no_keep_alive,
    )


def _check_path(reader: _Reader, path: str, where: str) -> int | None:
    """Check an upstream path; for a regular expression, return its number of groups."""
    if not path:
        return None
    if path.startswith("^"):
        try:
            return re.compile(path).groups
        except re.error as e:
            reader.problem(where, f"not a valid regular expression: {e}")
            return None
    if not path.startswith("/"):
        reader.problem(where, f"must start with / (or ^ for a regular expression), got {path!r}")
    return None


def _check_uri(reader: _Reader, uri: str, where: str) -> None:
    try:
        parts = urlsplit(uri)
        _ = parts.port
    except ValueError:
        reader.problem(where, f"not a valid URL: {_shown_url(uri)!r}")
        return
    scheme = parts.scheme.lower()
    if scheme not in _UPSTREAM_SCHEMES:
        reader.problem(
            where,
            f"unsupported scheme {parts.scheme + '://' if parts.scheme else 'none'} in "
            f"{_shown_url(uri)!r}; use http://, https://, unix:// or file://",
        )
    elif scheme in ("http", "https") and not parts.hostname:
        reader.problem(where, f"needs a host, e.g. http://127.0.0.1:8080/, got {_shown_url(uri)!r}")
    elif scheme in ("unix", "file") and not parts.path:
        reader.problem(where, f"needs an absolute path, e.g. {scheme}:///srv/app, got {uri!r}")


def _shown_url(url: str) -> str:
    """``url`` without a password it may carry."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Headers that carry the HTTP exchange itself (or the session cookie, which stripping would
# remove before it is read): a rule may not replace them.
_RESERVED_HEADERS = frozenset(
    {
        "connection",
        "content-length",
        "cookie",
        "host",
        "keep-alive",
        "proxy-connection",
        "set-cookie",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _headers(reader: _Reader, node: object, path: str) -> tuple[HeaderRule, ...]:
    rules: list[HeaderRule] = []
    names: dict[str, str] = {}
    for where, item in reader.items(node, path):
        fields = reader.fields(
            item,
            where,
            ("name", "preserveRequestValue", "values"),
            unsupported=("InsecureSkipHeaderNormalization",),
        )
        name = reader.string(fields, "name", where)
        if "name" not in fields:
            reader.problem(f"{where}.name", "required: the header name, e.g. X-Forwarded-User")
        elif not isinstance(fields["name"], str):
            pass  # reported by reader.string
        elif not _TOKEN.fullmatch(name):
            reader.problem(
                f"{where}.name",
                f"not a valid header name: {name!r} (letters, digits and !#$%&'*+-.^_`|~)",
            )
        elif name.lower().replace("_", "-") in _RESERVED_HEADERS:
            reader.problem(
                f"{where}.name", f"{name} carries the HTTP exchange itself and cannot be injected"
            )
        else:
            key = name.lower().replace("_", "-")
            if key in names:
                reader.problem(
                    f"{where}.name",
                    f"{name!r} is also the name of {names[key]} (names are compared "
                    "case-insensitively, _ as -); give each header once with several values",
                )
            names.setdefault(key, where)
        preserve = reader.boolean(fields, "preserveRequestValue", where, False)
        values = tuple(
            value
            for value_where, value_node in reader.items(fields.get("values"), f"{where}.values")
            if (value := _header_value(reader, value_node, value_where)) is not None
        )
        rules.append(HeaderRule(name, preserve_request_value=preserve, values=values))
    return tuple(rules)


_CLAIM_KEYS = ("claim", "prefix", "basicAuthPassword")
_SECRET_KEYS = ("value", "fromEnv", "fromFile")


def _header_value(reader: _Reader, node: object, where: str) -> HeaderValue | None:
    """One entry of ``values``: ``claimSource: {...}`` or ``secretSource: {...}``.

    oauth2-proxy before 7.14 wrote the same keys without the wrapper (``claim: user``,
    ``value: ...``); that form is read too.
    """
    fields = reader.fields(
        node, where, ("claimSource", "secretSource", *_CLAIM_KEYS, *_SECRET_KEYS)
    )
    claim_flat = {k: v for k, v in fields.items() if k in _CLAIM_KEYS}
    secret_flat = {k: v for k, v in fields.items() if k in _SECRET_KEYS}
    sources = [
        name
        for name, present in (
            ("claimSource", "claimSource" in fields),
            ("secretSource", "secretSource" in fields),
            ("claim", bool(claim_flat)),
            ("a secret (value, fromEnv or fromFile)", bool(secret_flat)),
        )
        if present
    ]
    if len(sources) != 1:
        reader.problem(
            where,
            "give exactly one source per value: claimSource or secretSource"
            + (f", got {' and '.join(sources)}" if sources else ""),
        )
        return None
    if "secretSource" in fields or secret_flat:
        source_path = f"{where}.secretSource" if "secretSource" in fields else where
        source = (
            reader.fields(fields["secretSource"], source_path, _SECRET_KEYS)
            if "secretSource" in fields
            else secret_flat
        )
        text = reader.secret_from(source, source_path)
        if text is None:
            return None
        if _CONTROL.search(text):
            reader.problem(
                source_path, "the value must not contain line breaks or control characters"
            )
            return None
        return HeaderValue(value=text)
    source_path = f"{where}.claimSource" if "claimSource" in fields else where
    source = (
        reader.fields(fields["claimSource"], source_path, _CLAIM_KEYS)
        if "claimSource" in fields
        else claim_flat
    )
    claim = reader.string(source, "claim", source_path)
    prefix = reader.string(source, "prefix", source_path)
    if not claim:
        reader.problem(f"{source_path}.claim", f"required: one of {', '.join(CLAIMS)}")
        return None
    if claim not in CLAIMS:
        reader.problem(
            f"{source_path}.claim",
            f"unknown claim {claim!r}{_did_you_mean(claim, CLAIMS)}; "
            f"oauthgate offers {', '.join(CLAIMS)}",
        )
        return None
    if _CONTROL.search(prefix):
        reader.problem(
            f"{source_path}.prefix", "must not contain line breaks or control characters"
        )
        return None
    password: str | None = None
    if "basicAuthPassword" in source:
        password = reader.secret(source["basicAuthPassword"], f"{source_path}.basicAuthPassword")
        if password is None:
            return None
    return HeaderValue(claim=claim, prefix=prefix, basic_auth_password=password)


def _server(reader: _Reader, node: object, path: str, options: dict[str, object]) -> None:
    fields = reader.fields(node, path, ("bindAddress",), unsupported=("secureBindAddress", "tls"))
    address = reader.string(fields, "bindAddress", path)
    if address == "-":
        reader.problem(
            f"{path}.bindAddress",
            "oauthgate always serves HTTP; give an address such as 0.0.0.0:4180",
        )
    elif address:
        options["http_address"] = address


def _metrics_server(reader: _Reader, node: object, path: str, options: dict[str, object]) -> None:
    fields = reader.fields(node, path, ("bindAddress",), unsupported=("secureBindAddress", "tls"))
    address = reader.string(fields, "bindAddress", path)
    if not address or address == "-":
        return
    if _has_option("metrics_address"):
        options["metrics_address"] = address
    else:
        reader.problem(
            f"{path}.bindAddress",
            "metrics come with a later version of oauthgate; remove metricsServer",
        )


def _providers(reader: _Reader, node: object, path: str, options: dict[str, object]) -> None:
    """The ``providers`` list: entry 0 also becomes the flat options, as in oauth2-proxy;
    all of them become ``options["providers"]`` (:class:`ProviderSettings`)."""
    settings: list[ProviderSettings] = []
    ids: dict[str, str] = {}
    for index, (where, item) in enumerate(reader.items(node, path)):
        before = len(reader.problems)
        entry, given_id, email_domains = _provider(reader, item, where)
        kind = str(entry.get("provider") or attrs.fields(Config).provider.default)
        provider_id = given_id or kind
        if given_id and _CONTROL.search(given_id):
            reader.problem(f"{where}.id", "must not contain line breaks or control characters")
        elif len(provider_id) > _MAX_PROVIDER_ID:
            reader.problem(f"{where}.id", f"must be at most {_MAX_PROVIDER_ID} characters")
        elif provider_id in _RESERVED_PROVIDER_IDS:
            reader.problem(
                f"{where}.id", f"{provider_id!r} is reserved by oauthgate; choose another id"
            )
        elif provider_id in ids:
            reader.problem(
                f"{where}.id",
                f"{provider_id!r} is also the id of {ids[provider_id]}; give each provider "
                "a unique id"
                + ("" if given_id else f" (without an id, the id is the type {kind!r})"),
            )
        ids.setdefault(provider_id, where)
        if index == 0:
            options.update(entry)
        else:
            _read_client_secret_file(reader, entry, where)
        if len(reader.problems) == before:
            settings.append(
                ProviderSettings(
                    provider_id, kind, tuple(entry.items()), email_domains, where=where
                )
            )
    if settings and not reader.problems:
        options["providers"] = tuple(settings)


def _provider(
    reader: _Reader, item: object, where: str
) -> tuple[dict[str, object], str, tuple[str, ...]]:
    """One ``providers[]`` entry: its options by cfg key, its id and its ``emailDomains``."""
    entry: dict[str, object] = {}
    fields = reader.fields(
        item,
        where,
        ("id", *_PROVIDER_FIELDS, "emailDomains", "loginURLParameters", "oidcConfig"),
        unsupported=_PROVIDER_UNSUPPORTED,
    )
    provider_id = reader.string(fields, "id", where)
    _copy_fields(reader, fields, where, _PROVIDER_FIELDS, entry)
    oidc = reader.fields(
        fields.get("oidcConfig"),
        f"{where}.oidcConfig",
        tuple(_OIDC_FIELDS),
        unsupported=_OIDC_UNSUPPORTED,
    )
    _copy_fields(reader, oidc, f"{where}.oidcConfig", _OIDC_FIELDS, entry)
    seen: dict[str, str] = {}
    parameters_path = f"{where}.loginURLParameters"
    for param_where, param in reader.items(fields.get("loginURLParameters"), parameters_path):
        parameter = reader.fields(param, param_where, ("name", "default"), unsupported=("allow",))
        name = reader.string(parameter, "name", param_where)
        defaults = reader.strings(parameter, "default", param_where)
        if name not in _LOGIN_PARAMETERS:
            reader.problem(
                f"{param_where}.name",
                f"oauthgate supports {', '.join(_LOGIN_PARAMETERS)} here, got {_shown(name)}",
            )
            continue
        if name in seen:
            reader.problem(f"{param_where}.name", f"{name!r} is also given at {seen[name]}")
        seen.setdefault(name, param_where)
        if len(defaults) > 1:
            reader.problem(f"{param_where}.default", "give one value")
            continue
        entry[name] = defaults[0] if defaults else ""
    email_domains = reader.strings(fields, "emailDomains", where)
    return entry, provider_id, email_domains


def _read_client_secret_file(reader: _Reader, entry: dict[str, object], where: str) -> None:
    """Replace ``clientSecretFile`` by the secret it holds (the loader does it for entry 0)."""
    path = entry.get("client_secret_file")
    if not isinstance(path, str) or not path:
        return
    if entry.get("client_secret"):
        reader.problem(
            f"{where}.clientSecretFile", "give clientSecret or clientSecretFile, not both"
        )
        return
    try:
        with open(path, encoding="utf-8") as f:
            entry["client_secret"] = f.read().rstrip("\r\n")
    except OSError as e:
        reader.problem(f"{where}.clientSecretFile", f"cannot read {path}: {e.strerror or e}")
    except UnicodeDecodeError:
        reader.problem(f"{where}.clientSecretFile", f"{path} is not UTF-8 text")


def _copy_fields(
    reader: _Reader,
    fields: Mapping[str, object],
    path: str,
    table: Mapping[str, tuple[str, str]],
    options: dict[str, object],
) -> None:
    for alpha_key, (key, kind) in table.items():
        if alpha_key not in fields:
            continue
        if kind == "bool":
            options[key] = reader.boolean(fields, alpha_key, path, False)
        elif kind == "list":
            options[key] = reader.strings(fields, alpha_key, path)
        else:
            options[key] = reader.string(fields, alpha_key, path, secret=kind == "secret")


# --- legacy -> alpha --------------------------------------------------------------------


def _upstream_yaml(spec: UpstreamSpec) -> dict[str, object]:
    out: dict[str, object] = {"id": spec.id, "path": spec.path}
    if spec.rewrite_target:
        out["rewriteTarget"] = spec.rewrite_target
    if spec.static:
        out["static"] = True
        out["staticCode"] = spec.static_code
        return out
    out["uri"] = spec.uri
    out["flushInterval"] = format_duration(spec.flush_interval)
    out["passHostHeader"] = spec.pass_host_header
    out["proxyWebSockets"] = spec.proxy_websockets
    out["timeout"] = format_duration(spec.timeout)
    if spec.insecure_skip_tls_verify:
        out["insecureSkipTLSVerify"] = True
    if spec.disable_keep_alives:
        out["disableKeepAlives"] = True
    return out


def _secret_yaml(text: str) -> dict[str, object]:
    return {"value": base64.b64encode(text.encode("utf-8")).decode("ascii")}


def _rule_yaml(rule: HeaderRule) -> dict[str, object]:
    values: list[dict[str, object]] = []
    for value in rule.values:
        if not value.claim:
            values.append({"secretSource": _secret_yaml(value.value or "")})
            continue
        claim: dict[str, object] = {"claim": value.claim}
        if value.prefix:
            claim["prefix"] = value.prefix
        if value.basic_auth_password is not None:
            claim["basicAuthPassword"] = _secret_yaml(value.basic_auth_password)
        values.append({"claimSource": claim})
    out: dict[str, object] = {"name": rule.name}
    if rule.preserve_request_value:
        out["preserveRequestValue"] = True
    out["values"] = values
    return out


def _provider_yaml(config: Config) -> dict[str, object]:
    defaults = Config()
    display = config.provider_display_name
    out: dict[str, object] = {"id": display or f"{config.provider}={config.client_id}"}

    def put(target: dict[str, object], table: Mapping[str, tuple[str, str]]) -> None:
        for alpha_key, (key, kind) in table.items():
            value = getattr(config, key)
            if key == "client_secret" and config.client_secret_file:
                continue  # the loader read it from the file, which is what to keep
            if value != getattr(defaults, key) or key in ("provider", "client_id"):
                target[alpha_key] = list(value) if kind == "list" else value

    put(out, _PROVIDER_FIELDS)
    parameters: list[dict[str, object]] = []
    if config.acr_values:
        parameters.append({"name": "acr_values", "default": [config.acr_values]})
    if config.prompt:
        parameters.append({"name": "prompt", "default": [config.prompt]})
    else:
        parameters.append(
            {"name": "approval_prompt", "default": [config.approval_prompt or "force"]}
        )
    out["loginURLParameters"] = parameters
    oidc: dict[str, object] = {}
    put(oidc, _OIDC_FIELDS)
    if oidc:
        out["oidcConfig"] = oidc
    return out


def to_alpha_yaml(config: Config) -> str:
    """The alpha YAML for the legacy options in ``config`` (``--convert-config-to-alpha``).

    Covers what an alpha file takes over: upstreams, injected headers, the listen
    address and the provider. The output holds the secrets the options hold (client
    secret, Basic password), as the options themselves do; keep it as private.
    """
    request, response = legacy_header_rules(config)
    document: dict[str, object] = {
        "upstreamConfig": {
            "upstreams": [_upstream_yaml(spec) for spec in specs_from_flags(config)],
        },
        "injectRequestHeaders": [_rule_yaml(rule) for rule in request],
        "injectResponseHeaders": [_rule_yaml(rule) for rule in response],
        "server": {"bindAddress": config.http_address},
    }
    metrics = getattr(config, "metrics_address", "")
    if metrics:
        document["metricsServer"] = {"bindAddress": metrics}
    document["providers"] = [_provider_yaml(config)]
    body = yaml.safe_dump(_escape_dollars(document), sort_keys=False, default_flow_style=False)
    return _CONVERTED_HEADER + str(body)


_CONVERTED_HEADER = """\
# oauthgate alpha configuration, converted from the legacy options.
# Use it with --alpha-config=FILE, and remove from flags, environment and the TOML file:
# the upstream options, the header options, http_address and the provider options.
"""


def _escape_dollars(node: object) -> Any:
    """``node`` with every ``$`` in strings doubled, so loading does not substitute them."""
    if isinstance(node, str):
        return node.replace("$", "$$")
    if isinstance(node, list):
        return [_escape_dollars(item) for item in node]
    if isinstance(node, dict):
        return {key: _escape_dollars(value) for key, value in node.items()}
    return node
