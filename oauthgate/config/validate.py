"""Check a merged :class:`Config` completely, then fail once with every problem.

Each problem is one line: the cfg key, what is wrong, what would be right. Secret values
(cookie and client secrets, passwords) never appear in a message.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

import attrs
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor

from oauthgate.authz.query import DomainPattern
from oauthgate.config.alpha import provider_configs
from oauthgate.config.durations import format_duration
from oauthgate.config.headers import TOKEN_CLAIMS
from oauthgate.config.options import Config
from oauthgate.errors import ConfigError
from oauthgate.rules import ApiRoutes, TrustedIPs, compile_skip_rules
from oauthgate.sessions.crypto import decode_secret
from oauthgate.sessions.redis_client import redis_problems

__all__ = [
    "MAKE_SECRET_COMMAND",
    "REAL_CLIENT_IP_HEADERS",
    "endpoint_problem",
    "escape_endpoint_field",
    "listen_description",
    "validate",
]

MAKE_SECRET_COMMAND = (
    "python -c 'import os,base64; print(base64.urlsafe_b64encode(os.urandom(32)).decode())'"
)
"""A shell command that prints a good cookie secret."""

REAL_CLIENT_IP_HEADERS = (
    "X-Forwarded-For",
    "X-Real-IP",
    "X-ProxyUser-IP",
    "X-Envoy-External-Address",
    "CF-Connecting-IP",
)
"""The headers ``real_client_ip_header`` may name (oauth2-proxy's list)."""

_URL_OPTIONS = (
    "oidc_issuer_url",
    "login_url",
    "redeem_url",
    "profile_url",
    "oidc_jwks_url",
    "redirect_url",
    "backend_logout_url",
)
_INSECURE_OPTIONS = {
    "insecure_oidc_allow_unverified_email": "emails the provider has not verified are accepted",
    "insecure_oidc_skip_issuer_verification": "the id_token issuer is not checked",
    "insecure_oidc_skip_nonce": "the id_token nonce is not checked (no replay protection)",
    "ssl_insecure_skip_verify": "the provider's TLS certificate is not verified",
    "ssl_upstream_insecure_skip_verify": "the upstream's TLS certificate is not verified",
    "redis_insecure_skip_tls_verify": "the Redis server's TLS certificate is not verified",
}
_ENDPOINT_PREFIXES = ("tcp:", "tcp6:", "unix:", "ssl:", "systemd:", "haproxy:")
_COOKIE_NAME_SEPARATORS = frozenset('()<>@,;:\\"/[]?={} \t')
# What a cookie Path or Domain attribute may carry: visible ASCII without ';' (it would end
# the attribute and start another) or ',' (old parsers split Set-Cookie headers there).
_COOKIE_ATTRIBUTE = re.compile(r"[\x21-\x2b\x2d-\x3a\x3c-\x7e]*")
_COOKIE_ATTRIBUTE_HINT = "only visible ASCII characters without ';' or ',' and no whitespace"
_TEMPLATES = ("sign_in.html", "error.html")
_LOGO_URL_PREFIXES = ("http://", "https://", "data:")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_ADDRESS_HINT = (
    "expected host:port, http://host:port, :port, [::1]:port or a Twisted endpoint "
    "description such as tcp:4180:interface=127.0.0.1"
)


def validate(config: Config) -> list[str]:
    """The warnings about ``config``, after checking every rule.

    Raises:
        ConfigError: with one line per problem found, all of them at once.
    """
    problems: list[str] = []
    _check_provider(config, problems)
    _check_more_providers(config, problems)
    _check_cookie(config, problems)
    _check_urls(config, problems)
    _check_upstreams(config, problems)
    _check_authorization(config, problems)
    _check_access(config, problems)
    _check_server(config, problems)
    _check_pages(config, problems)
    if problems:
        raise ConfigError(problems)
    return _warnings(config)


def listen_description(address: str) -> str:
    """The Twisted server endpoint description for ``--http-address``.

    ``127.0.0.1:4180`` -> ``tcp:4180:interface=127.0.0.1``, ``:4180`` -> ``tcp:4180``,
    ``[::1]:4180`` -> ``tcp6:4180:interface=\\:\\:1``, ``unix:///run/x.sock`` ->
    ``unix:/run/x.sock``; Twisted descriptions (``tcp:``, ``unix:``, ``ssl:``, ``systemd:``,
    ``haproxy:``, ``tcp6:``) are returned as they are.

    Raises:
        ValueError: ``address`` is none of these; the message says what would be right.
    """
    text = address.strip()
    lowered = text.lower()
    if lowered.startswith("unix://"):
        path, _, mode = text[len("unix://") :].partition(",mode=")
        if not path:
            raise ValueError("unix:// needs a socket path, e.g. unix:///run/oauthgate.sock")
        return "unix:" + escape_endpoint_field(path) + (f":mode={mode}" if mode else "")
    if lowered.startswith(_ENDPOINT_PREFIXES):
        return text
    if lowered.startswith("https://"):
        raise ValueError(
            "https:// listeners are not supported yet; use a Twisted ssl: endpoint such as "
            "ssl:443:privateKey=key.pem:certKey=cert.pem"
        )
    if lowered.startswith("fd:"):
        raise ValueError(
            "fd:N is not supported; for systemd socket activation use systemd:domain=INET:index=0"
        )
    if lowered.startswith("http://"):
        text = text[len("http://") :].rstrip("/")
    if text.startswith("["):
        host, closed, port = text[1:].partition("]:")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{address!r}: {_ADDRESS_HINT}") from None
        if not closed:
            raise ValueError(f"{address!r}: {_ADDRESS_HINT}")
        return f"tcp6:{_port(address, port)}:interface={escape_endpoint_field(host)}"
    host, colon, port = text.rpartition(":")
    if not colon:
        raise ValueError(f"{address!r}: {_ADDRESS_HINT}")
    if ":" in host:
        raise ValueError(f"{address!r}: an IPv6 address needs brackets, e.g. [::1]:4180")
    number = _port(address, port)
    if not host:
        return f"tcp:{number}"
    if not _HOST.fullmatch(host):
        raise ValueError(f"{address!r}: {_ADDRESS_HINT}")
    return f"tcp:{number}:interface={host}"


def _port(address: str, text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ValueError(f"{address!r}: the port must be a number from 0 to 65535")
    return int(text)


def escape_endpoint_field(text: str) -> str:
    """Escape ``text`` for one field of a Twisted endpoint description."""
    return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def _check_provider(config: Config, problems: list[str]) -> None:
    if not config.provider:
        problems.append("provider: required, e.g. oidc")
    if not config.client_id:
        problems.append("client_id: required; set --client-id, OAUTHGATE_CLIENT_ID or client_id")
    if (
        not config.client_secret
        and not config.code_challenge_method
        and config.client_auth_method != "private_key_jwt"
        and config.provider != "login.gov"  # authenticates with --jwt-key, never a secret
        and not config.entra_id_federated_token_auth
    ):
        problems.append(
            "client_secret: required (or client_secret_file); a public client without a "
            "secret must use PKCE: --code-challenge-method=S256"
        )
    if config.client_auth_method not in _CLIENT_AUTH_METHODS:
        problems.append(
            f"client_auth_method: must be {', '.join(_CLIENT_AUTH_METHODS)}, "
            f"got {config.client_auth_method!r}"
        )
    if config.forward_auth_mode not in ("auto", "nginx", "redirect"):
        problems.append(
            f"forward_auth_mode: must be auto, nginx or redirect, got {config.forward_auth_mode!r}"
        )
    if config.code_challenge_method not in ("", "S256", "plain"):
        problems.append(
            f"code_challenge_method: must be S256, plain or empty, "
            f"got {config.code_challenge_method!r}"
        )
    if [r for r in config.allowed_roles if r.strip()] and config.provider != "keycloak-oidc":
        problems.append(
            f"allowed_roles: only provider keycloak-oidc has roles, the provider is "
            f"{config.provider!r}; use allowed_groups instead"
        )
    if config.provider == "oidc":
        if config.skip_oidc_discovery:
            for key in ("login_url", "redeem_url", "oidc_jwks_url"):
                if not getattr(config, key):
                    problems.append(f"{key}: required when skip_oidc_discovery is on")
        elif not config.oidc_issuer_url:
            problems.append(
                "oidc_issuer_url: required for provider oidc (or turn on skip_oidc_discovery "
                "and give login_url, redeem_url and oidc_jwks_url)"
            )


_CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")


def _check_more_providers(config: Config, problems: list[str]) -> None:
    """The provider checks for each alpha ``providers`` entry after the first (the first is
    the flat options), each line starting with the entry's place: ``providers[1]: ...``."""
    for entry in provider_configs(config)[1:]:
        found: list[str] = []
        # allowed_roles is shared by every provider: checked once, with the flat options.
        _check_provider(attrs.evolve(entry.config, allowed_roles=()), found)
        for key in _URL_OPTIONS:
            value: str = getattr(entry.config, key)
            if key != "redirect_url" and value and _http_url(value) is None:
                found.append(
                    f"{key}: must be an absolute http:// or https:// URL, got {_shown(value)!r}"
                )
        problems.extend(f"{entry.where} ({entry.id}): {line}" for line in found)


def _check_cookie(config: Config, problems: list[str]) -> None:
    if not config.cookie_secret:
        problems.append(
            f"cookie_secret: required (or cookie_secret_file); make one with: {MAKE_SECRET_COMMAND}"
        )
    else:
        length = len(decode_secret(config.cookie_secret))
        if length not in (16, 24, 32):
            problems.append(
                f"cookie_secret: must be 16, 24 or 32 bytes, got {length}; "
                f"make one with: {MAKE_SECRET_COMMAND}"
            )
    name = config.cookie_name
    if not name or len(name) > 256 or not all(_is_token_char(c) for c in name):
        problems.append(
            f"cookie_name: must be 1 to 256 letters, digits or !#$%&'*+-.^_`|~ "
            f"(a cookie token), got {name!r}"
        )
    if name.startswith(("__Secure-", "__Host-")) and not config.cookie_secure:
        problems.append(
            f"cookie_name: a {name.split('-')[0]}- cookie needs cookie_secure on, or "
            "browsers drop it"
        )
    if name.startswith("__Host-") and (config.cookie_domains or config.cookie_path != "/"):
        problems.append(
            "cookie_name: a __Host- cookie needs cookie_path / and no cookie_domains, or "
            "browsers drop it"
        )
    if config.cookie_samesite.lower() not in ("lax", "strict", "none", ""):
        problems.append(
            f"cookie_samesite: must be lax, strict, none or empty, got {config.cookie_samesite!r}"
        )
    if 0 < config.cookie_expire <= config.cookie_refresh:
        problems.append(
            f"cookie_refresh: must be less than cookie_expire "
            f"({format_duration(config.cookie_expire)}), "
            f"got {format_duration(config.cookie_refresh)}"
        )
    if not config.cookie_path.startswith("/"):
        problems.append(f"cookie_path: must start with /, got {config.cookie_path!r}")
    if not _COOKIE_ATTRIBUTE.fullmatch(config.cookie_path):
        problems.append(f"cookie_path: {_COOKIE_ATTRIBUTE_HINT}, got {config.cookie_path!r}")
    for domain in config.cookie_domains:
        if not _COOKIE_ATTRIBUTE.fullmatch(domain):
            problems.append(f"cookie_domains: {_COOKIE_ATTRIBUTE_HINT}, got {domain!r}")
    if config.session_cookie_minimal:
        if config.cookie_refresh > 0:
            problems.append(
                "session_cookie_minimal: cannot refresh sessions without tokens; "
                "set cookie_refresh to 0 or turn session_cookie_minimal off"
            )
        for key in ("pass_access_token", "pass_authorization_header", "set_authorization_header"):
            if getattr(config, key):
                problems.append(
                    f"session_cookie_minimal: {key} needs the tokens that a minimal "
                    "session drops; turn one of them off"
                )
        for section, rules in (
            ("injectRequestHeaders", config.request_header_rules),
            ("injectResponseHeaders", config.response_header_rules),
        ):
            for rule in rules or ():
                claims = sorted({v.claim for v in rule.values if v.claim in TOKEN_CLAIMS})
                if claims:
                    problems.append(
                        f"session_cookie_minimal: {section} {rule.name} needs the "
                        f"{' and '.join(claims)} that a minimal session drops; turn one of "
                        "them off"
                    )
    if config.session_store_type == "redis":
        problems.extend(redis_problems(config))
    elif config.session_store_type != "cookie":
        problems.append(
            f"session_store_type: must be cookie or redis, got {config.session_store_type!r}"
        )


def _is_token_char(char: str) -> bool:
    return 32 < ord(char) < 127 and char not in _COOKIE_NAME_SEPARATORS


def _check_urls(config: Config, problems: list[str]) -> None:
    for key in _URL_OPTIONS:
        value: str = getattr(config, key)
        if value and _http_url(value) is None:
            problems.append(
                f"{key}: must be an absolute http:// or https:// URL, got {_shown(value)!r}"
            )


def _http_url(value: str) -> SplitResult | None:
    """``value`` split, if it is an absolute http(s) URL with a host and a valid port."""
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return parts


def _shown(url: str) -> str:
    """``url`` without any password it carries, fit for an error message."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:***@{netloc}").geturl()


def _check_upstreams(config: Config, problems: list[str]) -> None:
    """The ``--upstream`` URLs one by one, then the upstreams as a set (unique paths and
    ids, valid patterns: ``routing.spec_problems``), the alpha ``upstreamConfig`` too."""
    from oauthgate.upstreams.legacy import specs_from_config
    from oauthgate.upstreams.routing import spec_problems

    found: list[str] = []
    if not config.upstream_specs:
        for upstream in config.upstreams:
            found.extend(_upstream_url_problems(upstream))
    specs = specs_from_config(config)
    if not found:
        found.extend(spec_problems(specs))
    for spec in specs:
        if not spec.static and spec.uri.lower().startswith("file:"):
            directory = unquote(urlsplit(spec.uri).path)
            if directory and not os.path.isdir(directory):
                found.append(f"upstreams: {spec.id!r}: {directory!r} is not a directory")
    problems.extend(found)


def _upstream_url_problems(url: str) -> list[str]:
    shown = _shown(url)
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "static":
        code = urlsplit(url).netloc
        if not (code.isdigit() and 200 <= int(code) <= 599):
            return [
                f"upstreams: {shown!r}: static://<code> needs an HTTP status 200-599, "
                "e.g. static://202"
            ]
    elif scheme in ("file", "unix"):
        if not urlsplit(url).path.startswith("/"):
            example = "file:///var/www#/static/" if scheme == "file" else "unix:///run/app.sock"
            return [f"upstreams: {shown!r}: {scheme}:// needs an absolute path, e.g. {example}"]
    elif _http_url(url) is None:
        return [
            f"upstreams: {shown!r}: must be an http:// or https:// URL with a host (e.g. "
            "http://127.0.0.1:8080/), unix:///socket, file:///directory#/path/ or "
            "static://<code>"
        ]
    return []


def _check_authorization(config: Config, problems: list[str]) -> None:
    if not (config.email_domains or config.authenticated_emails_file or config.htpasswd_file):
        problems.append(
            "email_domains: give at least one email domain (* allows any) or an "
            "authenticated_emails_file"
        )
    path = config.authenticated_emails_file
    if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
        problems.append(
            f"authenticated_emails_file: {path!r} does not exist or is not a readable file"
        )
    for entry in config.whitelist_domains:
        # The same parsing RedirectValidator.from_domains does when the gate is built.
        if not entry.strip():
            continue
        try:
            DomainPattern.parse(entry)
        except ValueError as e:
            problems.append(f"whitelist_domains: {entry!r} is not a valid domain: {e}")
    headers = {header.lower(): header for header in REAL_CLIENT_IP_HEADERS}
    if config.real_client_ip_header.lower() not in headers:
        problems.append(
            f"real_client_ip_header: must be one of {', '.join(REAL_CLIENT_IP_HEADERS)}, "
            f"got {config.real_client_ip_header!r}"
        )


def _check_access(config: Config, problems: list[str]) -> None:
    """Skip-auth and API routes, trusted networks, JWT issuers, the htpasswd file and the
    protected resource, parsed as the gate will parse them when it is built."""
    from oauthgate.authz.bearer import parse_extra_jwt_issuers  # it imports the providers

    try:
        compile_skip_rules(
            config.skip_auth_routes, config.skip_auth_regex, config.skip_auth_preflight
        )
    except ConfigError as e:
        problems.extend(e.problems)
    try:
        ApiRoutes.parse(config.api_routes)
    except ValueError as e:
        problems.append(f"api_routes: {e}")
    for key in ("trusted_ips", "trusted_proxy_ips"):
        try:
            TrustedIPs.parse(getattr(config, key))
        except ValueError as e:
            problems.append(f"{key}: {e}")
    try:
        issuers = parse_extra_jwt_issuers(config.extra_jwt_issuers)
    except ValueError as e:
        problems.append(f"extra_jwt_issuers: {e}")
    else:
        if config.skip_jwt_bearer_tokens and not (config.oidc_issuer_url or issuers):
            problems.append(
                "skip_jwt_bearer_tokens: needs an issuer to trust: oidc_issuer_url or "
                "extra_jwt_issuers (issuer=audience)"
            )
    path = config.htpasswd_file
    if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
        problems.append(f"htpasswd_file: {path!r} does not exist or is not a readable file")
    resource = config.protected_resource_metadata
    if resource:
        parts = _http_url(resource)
        if parts is None or parts.fragment or "#" in resource:
            problems.append(
                "protected_resource_metadata: must be an absolute https:// (or http://) URL "
                f"without a fragment, e.g. https://api.example.com, got {_shown(resource)!r}"
            )


def _check_server(config: Config, problems: list[str]) -> None:
    try:
        description = listen_description(config.http_address)
    except ValueError as e:
        problems.append(f"http_address: {e}")
    else:
        problem = endpoint_problem(description)
        if problem is not None:
            problems.append(f"http_address: {config.http_address!r}: {problem}")
    from oauthgate.web.https import tls_problems  # it imports listen_description from here

    problems.extend(tls_problems(config))
    prefix = config.proxy_prefix
    if not prefix.startswith("/") or prefix.endswith("/"):
        problems.append(
            f"proxy_prefix: must start with / and not end with /, e.g. /oauth2, got {prefix!r}"
        )
    for key in ("ping_path", "ready_path"):
        value: str = getattr(config, key)
        if not value.startswith("/"):
            problems.append(f"{key}: must start with /, got {value!r}")


def endpoint_problem(description: str) -> str | None:
    """Why Twisted could not listen on ``description``, or None if it parses.

    The description is parsed against a memory reactor, so nothing listens; an ``ssl:``
    endpoint reads its key and certificate files here, so a missing one is found now.
    """
    try:
        serverFromString(MemoryReactor(), description)
    except OSError as e:
        return f"cannot read {e.filename or 'a file it names'}: {e.strerror or e}"
    except (IndexError, KeyError):
        if description.lower().startswith("systemd:"):
            return (
                "no such socket was passed by systemd (is the service socket-activated, "
                "with a matching index or FileDescriptorName?)"
            )
        return "not a valid Twisted endpoint description"
    except Exception as e:  # parsers raise what they like: ValueError, TypeError, SSL errors
        if description.lower().startswith("ssl:") and type(e).__module__.startswith("OpenSSL"):
            return "the TLS privateKey/certKey files are not a PEM key and certificate"
        return f"not a valid Twisted endpoint description: {e}"
    return None


def _check_pages(config: Config, problems: list[str]) -> None:
    folder = config.custom_templates_dir
    if folder:
        if not os.path.isdir(folder):
            problems.append(f"custom_templates_dir: {folder!r} is not a directory")
        else:
            for name in _TEMPLATES:
                problem = _template_problem(Path(folder, name))
                if problem is not None:
                    problems.append(f"custom_templates_dir/{name}: {problem}")
    logo = config.custom_sign_in_logo
    is_path = logo not in ("", "-") and not logo.startswith(_LOGO_URL_PREFIXES)
    if is_path and not (os.path.isfile(logo) and os.access(logo, os.R_OK)):
        problems.append(
            f"custom_sign_in_logo: {logo!r} does not exist or is not a readable file "
            "(give an image file, an http(s):// URL, or - to hide the logo)"
        )


def _template_problem(path: Path) -> str | None:
    """Why the page template at ``path`` cannot be used, or None (a missing one is fine)."""
    if not path.is_file():
        return None  # Pages uses the built-in template then
    try:
        text = path.read_text("utf-8")
    except OSError as e:
        return f"cannot read {path}: {e.strerror or e}"
    except UnicodeDecodeError:
        return f"{path} is not UTF-8 text"
    if "{{" in text:
        # oauth2-proxy's templates are Go templates; here they would render literally.
        return (
            "uses Go template syntax ({{...}}); oauthgate templates use $name placeholders, "
            "see docs/configuration.md"
        )
    return None


def _warnings(config: Config) -> list[str]:
    warnings: list[str] = []
    if config.reverse_proxy and not config.redirect_url:
        warnings.append(
            "reverse_proxy is on and redirect_url is empty: the callback URL is built from "
            "X-Forwarded-Host, which any client that reaches oauthgate directly can set; "
            "set redirect_url, e.g. https://app.example.com/oauth2/callback"
        )
    if config.cookie_secure and urlsplit(config.redirect_url).scheme.lower() == "http":
        warnings.append(
            "cookie_secure is on but redirect_url is http://: the browser will not send the "
            "Secure cookie over http, so logins will fail; use https or --cookie-secure=false"
        )
    if config.trusted_ips and config.reverse_proxy and not config.trusted_proxy_ips:
        warnings.append(
            f"trusted_ips with reverse_proxy and no trusted_proxy_ips: any client that reaches "
            f"oauthgate can claim a trusted address in {config.real_client_ip_header} and skip "
            "the login; set trusted_proxy_ips to your front proxies' addresses"
        )
    for key, consequence in _INSECURE_OPTIONS.items():
        if getattr(config, key):
            warnings.append(f"{key} is on: {consequence}; do not use this in production")
    for spec in config.upstream_specs:
        if spec.insecure_skip_tls_verify and not spec.static:
            warnings.append(
                f"upstreams: {spec.id!r} has insecureSkipTLSVerify: its TLS certificate is "
                "not verified; do not use this in production"
            )
    return warnings
