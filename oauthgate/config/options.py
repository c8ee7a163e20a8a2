"""The options table: every option oauthgate accepts, in one place.

Each field of :class:`Config` is one option. Its name is oauth2-proxy's cfg key (the TOML
key); its metadata gives the flag name, the kind (how a string is parsed) and the help.
The flag parser, the environment reader, the TOML reader and ``--help`` are all derived
from this class, so an option is added by adding a field here and nowhere else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import attrs

if TYPE_CHECKING:  # types only: the config layer imports neither upstreams nor web
    from oauthgate.config.alpha import ProviderSettings
    from oauthgate.config.headers import HeaderRule
    from oauthgate.upstreams.spec import UpstreamSpec

__all__ = ["Config", "Kind", "OptionSpec", "option_specs"]

Kind = Literal["str", "bool", "int", "duration", "list"]


@attrs.frozen
class OptionSpec:
    """How one option is spelled and parsed in each source."""

    key: str  # cfg / TOML key, and the Config attribute name
    flag: str  # --flag name without the dashes
    kind: Kind
    default: Any
    help: str
    secret: bool = False  # never printed in errors, logs or --help defaults

    @property
    def env_names(self) -> tuple[str, str]:
        """``OAUTHGATE_<KEY>`` first, then oauth2-proxy's ``OAUTH2_PROXY_<KEY>``."""
        upper = self.key.upper()
        return (f"OAUTHGATE_{upper}", f"OAUTH2_PROXY_{upper}")


def _opt(
    default: Any,
    help: str,
    *,
    kind: Kind | None = None,
    flag: str | None = None,
    secret: bool = False,
) -> Any:
    if kind is None:
        if isinstance(default, bool):
            kind = "bool"
        elif isinstance(default, int):
            kind = "int"
        elif isinstance(default, tuple):
            kind = "list"
        else:
            kind = "str"
    meta = {"flag": flag, "kind": kind, "help": help, "secret": secret}
    return attrs.field(default=default, metadata={"oauthgate": meta}, repr=not secret)


@attrs.frozen(kw_only=True)
class Config:
    """The merged, validated configuration (flags > environment > file > defaults).

    Durations are seconds (floats); lists are tuples. Secrets are kept out of ``repr``.
    """

    # --- server -----------------------------------------------------------------------
    http_address: str = _opt(
        "127.0.0.1:4180",
        "[http://]host:port, or a Twisted endpoint "
        "description such as tcp:4180:interface=0.0.0.0 or unix:/run/oauthgate.sock",
    )
    proxy_prefix: str = _opt("/oauth2", "the path prefix of oauthgate's own endpoints")
    reverse_proxy: bool = _opt(
        False,
        "trust X-Forwarded-Proto/-Host/-Uri and the real client IP header "
        "(only behind a proxy that sets them)",
    )
    forward_auth_mode: str = _opt(
        "auto",
        "how /oauth2/auth answers a browser without a session: nginx (always 401, for "
        "nginx auth_request), redirect (302 to the sign-in, for Caddy forward_auth and "
        "Traefik forwardAuth), auto (redirect when a trusted proxy sent X-Forwarded-Method)",
    )
    real_client_ip_header: str = _opt(
        "X-Real-IP",
        "header with the client address when --reverse-proxy "
        "is on: X-Real-IP, X-Forwarded-For, X-ProxyUser-IP, "
        "X-Envoy-External-Address or CF-Connecting-IP",
    )
    redirect_url: str = _opt(
        "",
        "the OAuth redirect URL, e.g. https://app.example.com/oauth2/callback "
        "(default: derived from each request's host)",
    )
    relative_redirect_url: bool = _opt(
        False, "send a relative redirect_uri (/oauth2/callback) to the provider"
    )

    # --- provider ---------------------------------------------------------------------
    provider: str = _opt(
        "google", "the identity provider type (an installed oauthgate.providers plugin)"
    )
    provider_display_name: str = _opt("", "the provider name on the sign-in button")
    client_id: str = _opt("", "the OAuth client id")
    client_secret: str = _opt("", "the OAuth client secret", secret=True)
    client_secret_file: str = _opt("", "a file holding the OAuth client secret")
    login_url: str = _opt("", "the authorization endpoint (default: from discovery)")
    redeem_url: str = _opt("", "the token endpoint (default: from discovery)")
    profile_url: str = _opt("", "the userinfo endpoint (default: from discovery)")
    scope: str = _opt(
        "",
        "space-separated OAuth scopes (default: 'openid email profile', plus "
        "'groups' when --allowed-group is set)",
    )
    prompt: str = _opt(
        "",
        "OIDC prompt parameter (none, login, consent, select_account); overrides --approval-prompt",
    )
    approval_prompt: str = _opt(
        "force", "legacy approval_prompt parameter, sent when --prompt is empty"
    )
    acr_values: str = _opt("", "acr_values sent to the provider")
    code_challenge_method: str = _opt(
        "", "PKCE code challenge method: S256 or plain (empty: PKCE off)"
    )
    oidc_issuer_url: str = _opt("", "the OpenID Connect issuer URL (discovery and iss check)")
    skip_oidc_discovery: bool = _opt(
        False,
        "do not use discovery; then --login-url, --redeem-url and --oidc-jwks-url are required",
    )
    oidc_jwks_url: str = _opt("", "the JWKS URL when discovery is skipped")
    oidc_email_claim: str = _opt("email", "the claim holding the email (dotted paths allowed)")
    oidc_groups_claim: str = _opt("groups", "the claim holding the groups (dotted paths allowed)")
    user_id_claim: str = _opt(
        "email",
        "deprecated: the claim used as user id; when it differs from "
        "'email' and --oidc-email-claim is default it becomes the email claim",
    )
    oidc_audience_claims: tuple[str, ...] = _opt(
        ("aud",), "claims checked for the audience, first present wins", flag="oidc-audience-claim"
    )
    oidc_extra_audiences: tuple[str, ...] = _opt(
        (), "audiences accepted besides the client id", flag="oidc-extra-audience"
    )
    insecure_oidc_allow_unverified_email: bool = _opt(False, "accept email_verified=false")
    insecure_oidc_skip_issuer_verification: bool = _opt(
        False, "do not check the id_token iss (multi-tenant Azure)"
    )
    insecure_oidc_skip_nonce: bool = _opt(
        False,
        "do not check the id_token nonce (oauth2-proxy "
        "defaults to skipping it; oauthgate checks it)",
    )
    skip_claims_from_profile_url: bool = _opt(
        False, "never call the userinfo endpoint for missing claims"
    )
    allowed_groups: tuple[str, ...] = _opt(
        (), "only users in at least one of these groups may pass", flag="allowed-group"
    )
    allowed_roles: tuple[str, ...] = _opt(
        (),
        "keycloak-oidc only: users with at least one of these roles may pass (a realm "
        "role, or client:role for a client role)",
        flag="allowed-role",
    )
    backend_logout_url: str = _opt(
        "", "URL called (GET) on sign-out; {id_token} is replaced by the session's id_token"
    )
    provider_ca_files: tuple[str, ...] = _opt(
        (),
        "CA certificates (PEM) trusted for the provider's TLS instead of the system store",
        flag="provider-ca-file",
    )
    ssl_insecure_skip_verify: bool = _opt(
        False, "skip TLS verification of the provider (testing only)"
    )

    # --- google -----------------------------------------------------------------------
    google_groups: tuple[str, ...] = _opt(
        (),
        "google: only members of at least one of these Google groups (group emails) may pass",
        flag="google-group",
    )
    google_admin_email: str = _opt(
        "", "google: the Workspace admin the service account acts as for the Directory API"
    )
    google_service_account_json: str = _opt(
        "", "google: the service account key file (JSON) used for the Directory API"
    )
    google_use_application_default_credentials: bool = _opt(
        False, "google: use Application Default Credentials (not supported yet)"
    )
    google_target_principal: str = _opt(
        "", "google: the service account to impersonate (IAM signJwt) for the Directory API"
    )
    google_use_organization_id: bool = _opt(
        False, "google: use the user's organization id as preferred username (not supported yet)"
    )
    google_admin_api_user_scope: str = _opt(
        "readonly", "google: the Directory API users scope (readonly, user or cloud)"
    )

    # --- azure and entra-id -------------------------------------------------------------
    azure_tenant: str = _opt(
        "common", "azure: the tenant (id, domain, common or organizations) of the default URLs"
    )
    azure_graph_group_field: str = _opt(
        "id", "azure: the Graph group field used as group name (id or displayName)"
    )
    entra_id_allowed_tenants: tuple[str, ...] = _opt(
        (),
        "entra-id: tenant ids whose users may sign in (default: any the issuer allows)",
        flag="entra-id-allowed-tenant",
    )
    entra_id_federated_token_auth: bool = _opt(
        False,
        "entra-id: authenticate with the workload identity token in "
        "AZURE_FEDERATED_TOKEN_FILE instead of a client secret",
    )
    resource: str = _opt("", "azure (v1) and adfs: the protected resource sent to the provider")

    # --- keycloak (legacy, non-OIDC) ----------------------------------------------------
    keycloak_groups: tuple[str, ...] = _opt(
        (),
        "keycloak (legacy): only members of at least one of these Keycloak groups may pass "
        "(group paths as the userinfo groups claim gives them, e.g. /admins)",
        flag="keycloak-group",
    )

    # --- login.gov --------------------------------------------------------------------
    jwt_key: str = _opt(
        "",
        "login.gov (and private_key_jwt clients): the RSA private key (PEM) that signs the "
        "client assertion",
        secret=True,
    )
    jwt_key_file: str = _opt("", "a file holding the RSA private key (PEM) of --jwt-key")
    pubjwk_url: str = _opt(
        "",
        "login.gov: the JWKS URL the id_token is verified with (default with the default "
        "URLs: https://secure.login.gov/api/openid_connect/certs)",
    )

    # --- client authentication (OIDC providers) ----------------------------------------
    client_auth_method: str = _opt(
        "client_secret_basic",
        "how OIDC providers authenticate at the token endpoint: client_secret_basic, "
        "client_secret_post or private_key_jwt (signed with --jwt-key / --jwt-key-file)",
    )

    # --- provider API (github, bitbucket, ...) -------------------------------------------
    validate_url: str = _opt(
        "",
        "the provider's API base or token validation URL (github: the REST API base, e.g. "
        "https://ghe.example.com/api/v3; bitbucket: the /2.0/user/emails URL)",
    )

    # --- github -----------------------------------------------------------------------
    github_org: str = _opt("", "github: only members of this organization may pass")
    github_team: str = _opt(
        "",
        "github: only members of one of these teams may pass (comma-separated team slugs "
        "of --github-org, or org:team)",
    )
    github_repo: str = _opt(
        "",
        "github: only users with push access to this owner/repo (or pull access, if it is "
        "private) may pass",
    )
    github_token: str = _opt(
        "",
        "github: a token that can read --github-repo's collaborators; then every "
        "collaborator may pass",
        secret=True,
    )
    github_users: tuple[str, ...] = _opt(
        (),
        "github: these logins may always pass, whatever the org, team and repo rules",
        flag="github-user",
    )

    # --- gitlab -----------------------------------------------------------------------
    gitlab_groups: tuple[str, ...] = _opt(
        (),
        "gitlab: only members of at least one of these groups (full paths) may pass",
        flag="gitlab-group",
    )
    gitlab_projects: tuple[str, ...] = _opt(
        (),
        "gitlab: members of these projects may pass, as group/project[=access level] "
        "(10 guest, 20 reporter, 30 developer, 40 maintainer; default 20)",
        flag="gitlab-project",
    )

    # --- bitbucket --------------------------------------------------------------------
    bitbucket_team: str = _opt("", "bitbucket: only members of this team (workspace slug) may pass")
    bitbucket_repository: str = _opt(
        "", "bitbucket: only contributors to this workspace/repository may pass"
    )

    # --- cookie and session -----------------------------------------------------------
    cookie_name: str = _opt("_oauth2_proxy", "the session cookie name")
    cookie_secret: str = _opt(
        "", "the cookie sealing secret: 16, 24 or 32 bytes, raw or base64", secret=True
    )
    cookie_secret_file: str = _opt("", "a file holding the cookie secret")
    cookie_domains: tuple[str, ...] = _opt(
        (),
        "cookie domains; the longest one the request host ends with is used",
        flag="cookie-domain",
    )
    cookie_path: str = _opt("/", "the cookie Path")
    cookie_expire: float = _opt(
        7 * 24 * 3600.0,
        "session lifetime (Go duration, e.g. 168h); 0 makes a browser-session cookie",
        kind="duration",
    )
    cookie_refresh: float = _opt(
        0.0,
        "refresh the session at the provider when it is older than this (0: off)",
        kind="duration",
    )
    cookie_secure: bool = _opt(True, "set the cookie Secure attribute")
    cookie_httponly: bool = _opt(True, "set the cookie HttpOnly attribute")
    cookie_samesite: str = _opt("", "the cookie SameSite attribute: lax, strict, none or empty")
    cookie_csrf_expire: float = _opt(
        15 * 60.0, "lifetime of the login (CSRF) cookie", kind="duration"
    )
    session_store_type: str = _opt("cookie", "where sessions live: cookie or redis")
    session_cookie_minimal: bool = _opt(False, "keep tokens out of the session")

    # --- redis session store ----------------------------------------------------------
    redis_connection_url: str = _opt(
        "", "redis://[user:password@]host[:port][/db] (rediss:// for TLS)", secret=True
    )
    redis_username: str = _opt("", "Redis user (overrides the one in the URLs)")
    redis_password: str = _opt("", "Redis password (overrides the one in the URLs)", secret=True)
    redis_use_sentinel: bool = _opt(False, "find the Redis master through Sentinel")
    redis_sentinel_master_name: str = _opt("", "the Sentinel master name")
    redis_sentinel_connection_urls: tuple[str, ...] = _opt((), "Sentinel URLs")
    redis_sentinel_password: str = _opt("", "password of the Sentinels themselves", secret=True)
    redis_use_cluster: bool = _opt(False, "use Redis Cluster")
    redis_cluster_connection_urls: tuple[str, ...] = _opt((), "Redis Cluster seed URLs")
    redis_ca_path: str = _opt("", "a CA certificate (PEM) trusted for rediss:// connections")
    redis_insecure_skip_tls_verify: bool = _opt(False, "skip TLS verification of Redis")
    redis_connection_idle_timeout: int = _opt(
        0,
        "close Redis connections idle this many seconds (0: never); keep it below the "
        "server's timeout",
    )
    redis_expiration: float = _opt(
        0.0,
        "how long Redis keeps a session (0: --cookie-expire); may extend it",
        kind="duration",
    )

    # --- authorization ----------------------------------------------------------------
    email_domains: tuple[str, ...] = _opt(
        (),
        "allowed email domains: example.com, .example.com (sub-domains) or * (any)",
        flag="email-domain",
    )
    authenticated_emails_file: str = _opt(
        "", "a file of allowed emails, one per line (reloaded when it changes)"
    )
    whitelist_domains: tuple[str, ...] = _opt(
        (),
        "domains allowed as absolute redirect targets: "
        "example.com, .example.com, example.com:8443, "
        "example.com:*",
        flag="whitelist-domain",
    )
    skip_provider_button: bool = _opt(
        False, "skip the sign-in page and go straight to the provider"
    )
    force_json_errors: bool = _opt(False, "answer 401/403 with JSON instead of pages or redirects")

    # --- access rules and non-browser credentials ---------------------------------------
    skip_auth_routes: tuple[str, ...] = _opt(
        (),
        "requests that need no login: REGEX, METHOD=REGEX or METHOD!=REGEX (path only)",
        flag="skip-auth-route",
    )
    skip_auth_regex: tuple[str, ...] = _opt(
        (), "deprecated: path regexes that need no login (any method)", flag="skip-auth-regex"
    )
    skip_auth_preflight: bool = _opt(False, "let CORS preflight (OPTIONS) requests through")
    api_routes: tuple[str, ...] = _opt(
        (),
        "request URIs (regex) that get 401 JSON instead of the sign-in page",
        flag="api-route",
    )
    trusted_ips: tuple[str, ...] = _opt(
        (), "client IPs or CIDRs that need no login", flag="trusted-ip"
    )
    trusted_proxy_ips: tuple[str, ...] = _opt(
        (),
        "front proxies (IPs or CIDRs) allowed to set X-Forwarded-* and the real client IP "
        "header (default with --reverse-proxy: any)",
        flag="trusted-proxy-ip",
    )
    skip_jwt_bearer_tokens: bool = _opt(
        False, "accept Authorization: Bearer JWTs from the provider and --extra-jwt-issuers"
    )
    extra_jwt_issuers: tuple[str, ...] = _opt(
        (), "other JWT issuers as issuer=audience", flag="extra-jwt-issuers"
    )
    bearer_token_login_fallback: bool = _opt(
        True, "a refused bearer token is ignored (login as usual); false: 403"
    )
    htpasswd_file: str = _opt("", "users and bcrypt/SHA1 passwords for basic auth and the form")
    htpasswd_user_groups: tuple[str, ...] = _opt(
        (), "groups given to htpasswd users", flag="htpasswd-user-group"
    )
    display_htpasswd_form: bool = _opt(
        True, "show a username/password form on the sign-in page (with --htpasswd-file)"
    )
    protected_resource_metadata: str = _opt(
        "",
        "publish RFC 9728 metadata for this resource URL (e.g. https://api.example.com) "
        "and point 401s for bearer clients at it",
    )

    # --- headers ----------------------------------------------------------------------
    pass_user_headers: bool = _opt(
        True, "send X-Forwarded-User/-Email/-Groups/-Preferred-Username upstream"
    )
    pass_basic_auth: bool = _opt(
        True, "send user headers and, with --basic-auth-password, Authorization: Basic upstream"
    )
    basic_auth_password: str = _opt(
        "", "the password of the Basic Authorization header", secret=True
    )
    prefer_email_to_user: bool = _opt(False, "use the email as the user in X-Forwarded-User")
    pass_access_token: bool = _opt(False, "send X-Forwarded-Access-Token upstream")
    pass_authorization_header: bool = _opt(False, "send Authorization: Bearer <id_token> upstream")
    set_xauthrequest: bool = _opt(
        False,
        "answer X-Auth-Request-User/-Email/-Groups/"
        "-Preferred-Username (and -Access-Token with "
        "--pass-access-token)",
    )
    set_authorization_header: bool = _opt(False, "answer Authorization: Bearer <id_token>")
    set_basic_auth: bool = _opt(False, "answer Authorization: Basic")
    pass_host_header: bool = _opt(True, "send the client's Host header upstream")
    skip_auth_strip_headers: bool = _opt(
        True, "remove client copies of identity headers (always on in oauthgate's proxy path)"
    )

    # --- upstreams --------------------------------------------------------------------
    upstreams: tuple[str, ...] = _opt(
        (), "the upstream: http(s)://host[:port][/path]", flag="upstream"
    )
    upstream_timeout: float = _opt(
        30.0, "how long to wait for the upstream's response headers", kind="duration"
    )
    ssl_upstream_insecure_skip_verify: bool = _opt(False, "skip TLS verification of the upstream")
    upstream_ca_files: tuple[str, ...] = _opt(
        (),
        "CA certificates (PEM) trusted for https upstreams instead of the system store",
        flag="upstream-ca-file",
    )
    proxy_websockets: bool = _opt(True, "tunnel authenticated WebSocket upgrades to the upstream")
    flush_interval: float = _opt(
        1.0,
        "how often streamed responses are flushed to the client (0: at once)",
        kind="duration",
    )
    disable_keep_alives: bool = _opt(False, "open a new upstream connection for every request")

    # --- metrics ----------------------------------------------------------------------
    metrics_address: str = _opt(
        "",
        "where Prometheus metrics are served (any path): host:port or a Twisted endpoint "
        "description; empty: no metrics listener",
    )
    metrics_secure_address: str = _opt(
        "",
        "host:port where metrics are served over TLS, with --metrics-tls-cert-file and "
        "--metrics-tls-key-file; empty: none",
    )
    metrics_tls_cert_file: str = _opt("", "the certificate (PEM) of the TLS metrics listener")
    metrics_tls_key_file: str = _opt("", "the private key (PEM) of the TLS metrics listener")

    # --- workers ----------------------------------------------------------------------
    workers: int = _opt(
        1,
        "oauthgate extension: the number of worker processes serving http_address (a tcp "
        "address), supervised and restarted by the main process; 1: serve in-process",
    )

    # --- https ------------------------------------------------------------------------
    https_address: str = _opt(
        "",
        "[https://]host:port of the HTTPS listener, with --tls-cert-file and --tls-key-file; "
        "empty: none (http_address keeps serving too)",
    )
    tls_cert_file: str = _opt(
        "", "the certificate (PEM, intermediates after it) of the HTTPS listener; SIGHUP re-reads"
    )
    tls_key_file: str = _opt("", "the private key (PEM) of the HTTPS listener; SIGHUP re-reads")
    tls_min_version: str = _opt("", "the lowest TLS version accepted: TLS1.2 (empty) or TLS1.3")
    tls_cipher_suites: tuple[str, ...] = _opt(
        (),
        "OpenSSL cipher names for TLS 1.2, e.g. ECDHE-RSA-AES128-GCM-SHA256 (TLS 1.3 suites "
        "are fixed); empty: Twisted's defaults",
        flag="tls-cipher-suite",
    )
    force_https: bool = _opt(
        False, "redirect (308) plain-HTTP requests to HTTPS, to the https_address port"
    )
    hsts_max_age: int = _opt(
        0, "seconds of Strict-Transport-Security sent on HTTPS responses; 0: no header"
    )

    # --- shutdown ---------------------------------------------------------------------
    shutdown_timeout: float = _opt(
        30.0,
        "oauthgate extension: on SIGTERM, stop listening and let requests in flight finish "
        "for up to this long before exiting",
        kind="duration",
    )

    # --- log files and formats (oauthgate/logs.py) ---------------------------------------
    standard_logging: bool = _opt(True, "log oauthgate's own events (the standard log)")
    standard_logging_format: str = _opt(
        "[{{.Timestamp}}] [{{.File}}] {{.Message}}",
        "accepted for compatibility; the standard log uses twisted.logger's format",
    )
    request_logging_format: str = _opt(
        "{{.Client}} - {{.RequestID}} - {{.Username}} [{{.Timestamp}}] {{.Host}} "
        "{{.RequestMethod}} {{.Upstream}} {{.RequestURI}} {{.Protocol}} {{.UserAgent}} "
        "{{.StatusCode}} {{.ResponseSize}} {{.RequestDuration}}",
        "the request log line template",
    )
    auth_logging_format: str = _opt(
        "{{.Client}} - {{.RequestID}} - {{.Username}} [{{.Timestamp}}] [{{.Status}}] {{.Message}}",
        "the auth log line template",
    )
    logging_filename: str = _opt(
        "", "the file the request and auth logs are written to (empty: stdout)"
    )
    logging_max_size: int = _opt(100, "rotate the log file past this many megabytes")
    logging_max_age: int = _opt(7, "remove rotated log files older than this many days (0: keep)")
    logging_max_backups: int = _opt(0, "keep at most this many rotated log files (0: all)")
    logging_local_time: bool = _opt(True, "log timestamps in local time (false: UTC)")
    logging_format: str = _opt(
        "text", "request and auth log lines as text (the templates) or json (one object per line)"
    )

    # --- pages ------------------------------------------------------------------------
    custom_templates_dir: str = _opt("", "a folder with sign_in.html and error.html overrides")
    custom_sign_in_logo: str = _opt("", "a logo URL or file for the sign-in page ('-' hides it)")
    banner: str = _opt("", "text above the sign-in button ('-' hides it)")
    footer: str = _opt("", "text in the page footer ('-' hides it)")
    ping_path: str = _opt("/ping", "the liveness path")
    ready_path: str = _opt("/ready", "the readiness path")

    # --- logging ----------------------------------------------------------------------
    request_logging: bool = _opt(True, "log one line per request")
    auth_logging: bool = _opt(True, "log authentication events")
    silence_ping_logging: bool = _opt(False, "do not log ping and ready requests")
    exclude_logging_paths: tuple[str, ...] = _opt(
        (), "paths not logged", flag="exclude-logging-path"
    )

    # --- oauthgate only ---------------------------------------------------------------
    demo: bool = _opt(False, "run with the built-in test identity provider and an echo upstream")

    # --- not options: filled by the loader from the alpha YAML (--alpha-config) ---------
    # Fields without "oauthgate" metadata have no flag, variable or file key.
    upstream_specs: tuple[UpstreamSpec, ...] = ()
    """The alpha ``upstreamConfig.upstreams``; empty: convert ``upstreams`` (legacy)."""
    proxy_raw_path: bool = False
    """The alpha ``upstreamConfig.proxyRawPath``: send the path upstream as received."""
    request_header_rules: tuple[HeaderRule, ...] | None = None
    """The alpha ``injectRequestHeaders``; None: derive them from the legacy header flags."""
    response_header_rules: tuple[HeaderRule, ...] | None = None
    """The alpha ``injectResponseHeaders``; None: derive them from the legacy header flags."""
    providers: tuple[ProviderSettings, ...] = ()
    """The alpha ``providers`` list; empty: one provider from the flat options. The first
    entry's options are also the flat options (see ``alpha.provider_configs``)."""


def option_specs() -> tuple[OptionSpec, ...]:
    """Every option, in table order."""
    return _SPECS


def _build_specs() -> tuple[OptionSpec, ...]:
    specs = []
    for field in attrs.fields(Config):
        meta = field.metadata.get("oauthgate")
        if meta is None:  # filled by the loader, not an option
            continue
        specs.append(
            OptionSpec(
                key=field.name,
                flag=meta["flag"] or field.name.replace("_", "-"),
                kind=meta["kind"],
                default=field.default,
                help=meta["help"],
                secret=meta["secret"],
            )
        )
    return tuple(specs)


_SPECS = _build_specs()
