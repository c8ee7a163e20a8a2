"""Config -> components -> MultiService. The only module that knows concrete classes."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import attrs
from treq.client import HTTPClient
from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import maybeDeferred as maybe_deferred
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.client import Agent
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from oauthgate.authz.bearer import BearerVerifier
from oauthgate.authz.emails import EmailAuthorizer
from oauthgate.authz.groups import GroupsAuthorizer
from oauthgate.authz.htpasswd import Htpasswd, in_thread_pool
from oauthgate.authz.scoped import ProviderAuthorizer
from oauthgate.config.alpha import ProviderConfig, provider_configs, without_provider_options
from oauthgate.config.loader import DEMO_IDP_PORT, DEMO_UPSTREAM_PORT
from oauthgate.config.options import Config
from oauthgate.config.validate import (
    endpoint_problem,
    escape_endpoint_field,
    listen_description,
)
from oauthgate.errors import ConfigError
from oauthgate.interfaces import IAuthorizer, IProvider, ISessionStore, IUpstream
from oauthgate.logs import AccessLog, LogService, access_log_from_config
from oauthgate.metrics import NO_METRICS, MeteredStore, Metrics, MetricsResource
from oauthgate.plugins import Plugins
from oauthgate.pool import persistent_pool
from oauthgate.providers.keycloak import role_groups
from oauthgate.reload import ReloadOnHangup, reload_actions
from oauthgate.sessions.cookie_store import CookieSessionStore
from oauthgate.sessions.cookies import CookieSettings
from oauthgate.sessions.crypto import Sealer, decode_secret
from oauthgate.sessions.redis_store import RedisSessionStore
from oauthgate.shutdown import RequestsInFlight
from oauthgate.systemd import Notifier
from oauthgate.tls import client_tls_policy
from oauthgate.upstreams.build import routing_table
from oauthgate.web.access import AccessRules, Credentials
from oauthgate.web.gate import Gate, GateProvider, GateResource
from oauthgate.web.https import HTTPSPolicy, ReloadableServerTLS, TLSServerEndpoint, https_port
from oauthgate.web.identity import IdentityHeaders
from oauthgate.web.pages import Pages
from oauthgate.web.redirects import RedirectValidator
from oauthgate.web.site import GateSite

__all__ = [
    "Components",
    "OAuthGateService",
    "build_components",
    "build_service",
    "gate_site",
]

log = Logger()


def provider_http_client(config: Config, reactor: Any) -> HTTPClient:
    """The HTTP client providers talk to the identity provider with (pooled, TLS as set)."""
    try:
        policy = client_tls_policy(
            insecure_skip_verify=config.ssl_insecure_skip_verify, ca_files=config.provider_ca_files
        )
    except (OSError, ValueError) as e:
        raise ConfigError([f"provider_ca_files: cannot load: {e}"]) from None
    pool = persistent_pool(reactor)
    return HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))


@attrs.frozen
class Components:
    """The assembled parts; tests build a gate from these without listening anywhere."""

    gate: Gate
    provider: IProvider
    """The first identity provider (the only one, unless the alpha file lists several)."""
    store: ISessionStore
    authorizers: tuple[IAuthorizer, ...]
    upstreams: tuple[IUpstream, ...]
    parts: tuple[IService, ...] = ()
    """Background parts started and stopped with the service (file watchers, the Redis
    connection, the password-check thread pool), in start order."""
    providers: Mapping[str, IProvider] = attrs.field(factory=dict)
    """Every identity provider by id, in sign-in page order."""
    metrics: Metrics | None = None
    """The Prometheus metrics, when a metrics listener is configured."""


def build_components(
    config: Config,
    *,
    reactor: Any,
    plugins: Plugins,
    http_client: Any = None,
    upstream_factory: Callable[[str], IUpstream] | None = None,
    random: Callable[[int], bytes] = os.urandom,
    metrics: Metrics | None = None,
) -> Components:
    """Build and check every component the configuration names.

    Raises ConfigError or PluginError (both end start-up with a readable message).
    """
    entries = provider_configs(config)
    several = len(entries) > 1
    injected = http_client is not None
    if http_client is None:
        http_client = provider_http_client(config, reactor)
    gate_providers: list[GateProvider] = []
    for index, entry in enumerate(entries):
        # Each further provider has TLS settings of its own (caFiles).
        client = (
            http_client if injected or index == 0 else provider_http_client(entry.config, reactor)
        )
        built = _build_provider(entry, plugins, client, reactor, several)
        gate_providers.append(GateProvider(entry.id, built, entry.config))
    provider = gate_providers[0].provider

    parts: list[IService] = []
    sealer = Sealer(decode_secret(config.cookie_secret), random=random)
    store: ISessionStore
    if config.session_store_type == "redis":
        redis = RedisSessionStore.from_config(config, sealer, reactor, random=random)
        parts.append(_Part("redis", redis.start, redis.stop))  # connects when started
        store = redis
    else:
        store = CookieSessionStore(
            sealer,
            reactor,
            purpose=config.cookie_name,
            lifetime=config.cookie_expire,
            minimal=config.session_cookie_minimal,
        )
    verifyObject(ISessionStore, store)
    if metrics is not None:
        store = MeteredStore(store, metrics)

    emails = EmailAuthorizer.from_config(config, reactor)
    parts.append(_Part("emails file", emails.start, emails.stop))
    authorizers: list[IAuthorizer] = [emails]
    if not several:
        # One provider: its groups apply to every session (htpasswd and bearer too), as
        # they always did. --allowed-role (keycloak-oidc) admits the groups role:<role>.
        allowed_groups = (*config.allowed_groups, *role_groups(config.allowed_roles))
        if [g for g in allowed_groups if g]:
            authorizers.append(GroupsAuthorizer(allowed_groups))
    for entry in entries:
        authorizers.extend(_provider_rules(entry, reactor, several))
    for authorizer in authorizers:
        verifyObject(IAuthorizer, authorizer)

    # The routing table is the upstreams, in the order they are tried (rewrites first,
    # then longest path); upstream_factory (tests) builds the http(s) ones.
    upstreams = routing_table(config, reactor, factory=upstream_factory)
    for upstream in upstreams:
        verifyObject(IUpstream, upstream)

    credentials = Credentials(login_fallback=config.bearer_token_login_fallback)
    if config.skip_jwt_bearer_tokens and several:
        # A bearer token is no login through a provider: the per-provider rules would not
        # apply to it. With several providers only extra_jwt_issuers are trusted.
        if not config.extra_jwt_issuers:
            raise ConfigError(
                [
                    "skip_jwt_bearer_tokens: with several providers, list the issuers whose "
                    "bearer tokens are accepted in extra_jwt_issuers (issuer=audience)"
                ]
            )
        credentials.bearer = BearerVerifier.from_config(
            without_provider_options(config), http_client, reactor
        )
    elif config.skip_jwt_bearer_tokens:
        # An optional provider hook: groups a bearer JWT of its issuer adds (keycloak roles).
        credentials.bearer = BearerVerifier.from_config(
            config, http_client, reactor, provider_groups=getattr(provider, "bearer_groups", None)
        )
    if config.htpasswd_file:
        # bcrypt is slow on purpose: checks run in a pool of their own, off the reactor.
        pool = ThreadPool(minthreads=0, maxthreads=4, name="oauthgate-htpasswd")
        parts.append(_Part("password checks", pool.start, pool.stop))
        htpasswd = Htpasswd(
            config.htpasswd_file,
            reactor,
            run_blocking=in_thread_pool(reactor, pool),
            user_groups=config.htpasswd_user_groups,
            random=random,
        )
        parts.append(_Part("htpasswd file", htpasswd.start, htpasswd.stop))
        credentials.htpasswd = htpasswd

    gate = Gate(
        config=config,
        providers=tuple(gate_providers),
        store=store,
        sealer=sealer,
        cookie=CookieSettings.from_config(config),
        authorizers=tuple(authorizers),
        upstreams=upstreams,
        redirects=RedirectValidator.from_domains(config.whitelist_domains),
        identity=IdentityHeaders.from_config(config),
        pages=Pages.from_config(
            config,
            str(provider.display_name),
            providers=[(e.id, str(e.provider.display_name)) for e in gate_providers],
        ),
        clock=reactor,
        http_client=http_client,
        random=random,
        access=AccessRules.from_config(config),
        credentials=credentials,
        metrics=metrics if metrics is not None else NO_METRICS,
    )
    return Components(
        gate,
        provider,
        store,
        tuple(authorizers),
        tuple(upstreams),
        tuple(parts),
        MappingProxyType({e.id: e.provider for e in gate_providers}),
        metrics,
    )


def _build_provider(
    entry: ProviderConfig, plugins: Plugins, http_client: Any, reactor: Any, several: bool
) -> IProvider:
    """The provider ``entry`` names, built by its plugin's factory and checked. With several
    providers, each configuration problem is prefixed with the entry it is about."""
    factory = plugins.provider_factory(entry.type)
    try:
        provider = factory.build(entry.config, http_client, reactor)
    except ConfigError as e:
        if not several:
            raise
        raise ConfigError([f"{entry.where} ({entry.id}): {line}" for line in e.problems]) from None
    verifyObject(IProvider, provider)
    return provider


def _provider_rules(entry: ProviderConfig, reactor: Any, several: bool) -> list[IAuthorizer]:
    """The rules that apply to ``entry``'s sessions only: its ``emailDomains`` (an oauthgate
    extension) and, with several providers, its ``allowedGroups`` (and keycloak roles)."""
    rules: list[IAuthorizer] = []
    if [d for d in entry.email_domains if d.strip()]:
        rules.append(EmailAuthorizer(entry.email_domains, reactor))
    if several:
        roles = role_groups(entry.config.allowed_roles) if entry.type == "keycloak-oidc" else ()
        groups = (*entry.config.allowed_groups, *roles)
        if [g for g in groups if g]:
            rules.append(GroupsAuthorizer(groups))
    return [ProviderAuthorizer(entry.id, rule) for rule in rules]


class _SupervisorNotify(Service):
    """sd_notify for the ``--workers`` supervisor: READY=1 once it listens, WATCHDOG while
    its reactor runs, STOPPING=1 when it stops."""

    def __init__(self, notifier: Notifier, reactor: Any, workers: int) -> None:
        self._notifier = notifier
        self._reactor = reactor
        self._workers = workers
        self._watchdog: LoopingCall | None = None

    def startService(self) -> None:
        Service.startService(self)
        self._notifier.ready(status=f"Supervising {self._workers} workers")
        self._watchdog = self._notifier.start_watchdog(self._reactor)

    def stopService(self) -> Any:
        Service.stopService(self)
        self._notifier.stopping()
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        return None


class _Part(Service):
    """A background part as a child service, so the MultiService starts and stops it."""

    def __init__(self, name: str, start: Callable[[], Any], stop: Callable[[], Any]) -> None:
        self.name = name
        self._start = start
        self._stop = stop

    def startService(self) -> None:
        Service.startService(self)
        self._start()

    def stopService(self) -> Any:
        Service.stopService(self)
        result = self._stop()
        return Deferred.fromCoroutine(_wait(result)) if result is not None else None


class OAuthGateService(MultiService):
    """Starts the listeners, the file watchers, and warms the provider (discovery)."""

    def __init__(
        self,
        components: Components,
        *,
        reactor: Any = None,
        notifier: Notifier | None = None,
        in_flight: RequestsInFlight | None = None,
        shutdown_timeout: float = 30.0,
    ) -> None:
        MultiService.__init__(self)
        self.components = components
        self._reactor: Any = reactor if reactor is not None else components.gate.clock
        self.notifier = notifier if notifier is not None else Notifier()
        self.in_flight = in_flight if in_flight is not None else RequestsInFlight()
        self.shutdown_timeout = shutdown_timeout
        self._watchdog: LoopingCall | None = None
        self._ready: Deferred[None] | None = None
        for part in components.parts:
            part.setServiceParent(self)

    def privilegedStartService(self) -> None:
        try:
            MultiService.privilegedStartService(self)
        except CannotListenError as e:
            # One readable line and exit status 1, instead of a traceback.
            reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
            address = f"{e.interface or '*'}:{e.port}"
            log.critical(
                "oauthgate: cannot listen on {address}: {reason}", address=address, reason=reason
            )
            print(f"oauthgate: cannot listen on {address}: {reason}", file=sys.__stderr__)
            raise SystemExit(1) from None

    def startService(self) -> None:
        MultiService.startService(self)
        # An optional provider hook: warm discovery so the first login is fast.
        providers = self.components.providers or {"": self.components.provider}
        for provider_id, provider in providers.items():
            warm = getattr(provider, "start", None)
            if warm is None:
                continue
            d = Deferred.fromCoroutine(warm()) if _is_coroutine_fn(warm) else warm()
            if isinstance(d, Deferred):
                d.addErrback(_not_reachable_yet, provider_id)
        self._ready = Deferred.fromCoroutine(self._announce_ready())
        self._ready.addErrback(_stopped_before_ready)
        self._watchdog = self.notifier.start_watchdog(self._reactor)

    async def _announce_ready(self) -> None:
        """``READY=1`` once every listener listens and the session store answers (Redis is
        retried until it does, while the service runs)."""
        for service in self._listeners():
            await _listening(service)
        delay = 0.5
        while self.running:
            try:
                await self.components.store.check()
                break
            except CancelledError:
                raise
            except Exception as e:
                log.warn(
                    "Not ready: the session store is not reachable ({error}); retrying in {delay}s",
                    error=str(e),
                    delay=delay,
                )
                await deferLater(self._reactor, delay, lambda: None)
                delay = min(delay * 2, 5.0)
        if self.running:
            log.info("oauthgate is ready")
            self.notifier.ready("Serving")

    def _listeners(self) -> list[IService]:
        return [s for s in self if isinstance(s, StreamServerEndpointService)]

    def stopService(self) -> Any:
        """Stop gracefully: stop listening, let the requests in flight finish (up to
        ``shutdown_timeout`` seconds), then stop the background parts."""
        Service.stopService(self)
        self.notifier.stopping("Stopping")
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        if self._ready is not None and not self._ready.called:
            self._ready.cancel()
        d: Any = Deferred.fromCoroutine(self._stop_gracefully())
        for upstream in self.components.upstreams:
            close = getattr(upstream, "close", None)  # pooled upstreams drop idle connections
            if close is not None:
                d.addBoth(lambda result, close=close: _after(close(), result))
        return d

    async def _stop_gracefully(self) -> None:
        listeners = self._listeners()
        for service in reversed(listeners):
            await _wait(maybe_deferred(service.stopService))
        if self.in_flight.count:
            log.info(
                "Stopped listening; waiting up to {timeout}s for {count} requests in flight",
                timeout=self.shutdown_timeout,
                count=self.in_flight.count,
            )
        if not await self.in_flight.drained(self._reactor, self.shutdown_timeout):
            log.warn(
                "Shutdown timeout: {count} requests still in flight are cut off",
                count=self.in_flight.count,
            )
        for service in reversed([s for s in self if s not in listeners]):
            try:
                await _wait(maybe_deferred(service.stopService))
            except Exception:
                log.failure("Stopping {name} failed", name=getattr(service, "name", service))
        # A stop asked by SIGTERM (systemd's stop) that went as planned is a clean exit:
        # exit status 0, where twistd would otherwise re-raise the signal.
        if getattr(self._reactor, "_exitSignal", None) == signal.SIGTERM:
            self._reactor._exitSignal = None


def _stopped_before_ready(failure: Failure) -> None:
    if not failure.check(CancelledError):
        log.failure("Could not tell systemd oauthgate is ready", failure)


def _listening(service: IService) -> Deferred[None]:
    """Fires once ``service`` (a strports listener) listens, or failed to; never changes
    the listener's own result."""
    done: Deferred[None] = Deferred()
    waiting = getattr(service, "_waitingForPort", None)
    if not isinstance(waiting, Deferred):
        done.callback(None)
        return done

    def observe(result: object) -> object:
        if not done.called:
            done.callback(None)
        return result

    waiting.addBoth(observe)
    return done


def _not_reachable_yet(failure: Failure, provider_id: str) -> None:
    log.error(
        "Identity provider {provider} not reachable yet ({error}); will retry on first login",
        provider=provider_id,
        error=str(failure.value),
    )


async def _wait(awaitable: Any) -> None:
    await awaitable


def _after(awaitable: Any, result: Any) -> Any:
    """Wait for ``awaitable`` (closing idle pool connections), then pass ``result`` on."""
    d = Deferred.fromCoroutine(_wait(awaitable))
    d.addErrback(lambda f: log.warn("Closing upstream connections failed: {e}", e=f.value))
    d.addCallback(lambda _: result)
    return d


def _is_coroutine_fn(fn: Any) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn)


def build_service(
    config: Config, *, reactor: Any, plugins: Plugins, notifier: Notifier | None = None
) -> MultiService:
    """The whole oauthgate process as one service: the web server and, in demo mode, the
    built-in identity provider and echo upstream."""
    if config.workers != 1:
        # --workers N: this process only supervises N worker processes (oauthgate.workers).
        from oauthgate.workers import supervisor_service

        build_components(config, reactor=reactor, plugins=plugins)  # fail here, not N times
        service = supervisor_service(config, reactor=reactor)
        if config.demo:
            _add_demo(service, config, reactor)
        if notifier is not None and notifier.enabled:
            # Started last: the sockets are bound and listening (connections queue while
            # the workers come up), so systemd may call the service ready.
            service.addService(_SupervisorNotify(notifier, reactor, config.workers))
        return service
    metrics_listeners = _metrics_listeners(config)
    metrics = Metrics() if metrics_listeners else None
    components = build_components(config, reactor=reactor, plugins=plugins, metrics=metrics)
    service = OAuthGateService(
        components,
        reactor=reactor,
        notifier=notifier,
        shutdown_timeout=config.shutdown_timeout,
    )
    # The request and auth lines: buffered, flushed by LogService (stopped after the
    # listener, so the last lines are written).
    access_log = access_log_from_config(config, reactor, components.gate.client_ip)
    if access_log is not None:
        components.gate.access_log = access_log
        log_service: IService = LogService(access_log, reactor)
        log_service.setServiceParent(service)
    site = gate_site(
        config, components, reactor, in_flight=service.in_flight, access_log=access_log
    )
    try:
        description = listen_description(config.http_address)
    except ValueError as e:
        raise ConfigError([f"http_address: {e}"]) from None
    strports.service(description, site, reactor=reactor).setServiceParent(service)
    _add_https(service, config, components, site, reactor)
    if metrics is not None:
        metrics_site = _DemoSite(MetricsResource(metrics))
        for listener in metrics_listeners:
            strports.service(listener, metrics_site, reactor=reactor).setServiceParent(service)
    if config.demo:
        _add_demo(service, config, reactor)
    return service


def gate_site(
    config: Config,
    components: Components,
    reactor: Any,
    *,
    in_flight: RequestsInFlight | None = None,
    access_log: AccessLog | None = None,
) -> GateSite:
    """The web site serving ``components``' gate, with the configured access log."""
    gate = components.gate
    root: Any = GateResource(gate)
    if config.force_https or config.hsts_max_age > 0:
        root = HTTPSPolicy(
            root,
            gate.access if gate.access is not None else AccessRules.from_config(config),
            force_https=config.force_https,
            https_port=https_port(config),
            hsts_max_age=config.hsts_max_age,
        )
    return GateSite(
        root,
        reactor,
        enabled=config.request_logging,
        exclude_paths=_excluded_paths(config),
        client_ip=gate.client_ip,
        metrics=gate.metrics,
        in_flight=in_flight,
        access_log=access_log,
        freeze_heap=True,
    )


def _add_https(
    service: MultiService, config: Config, components: Components, site: GateSite, reactor: Any
) -> None:
    """The HTTPS listener (with ``https_address``) and the reloads SIGHUP triggers."""
    gate = components.gate
    reloads = reload_actions(gate)
    if config.https_address:
        try:
            tls = ReloadableServerTLS.from_config(config)
            endpoint = TLSServerEndpoint.from_address(reactor, config.https_address, tls)
        except (OSError, ValueError) as e:
            raise ConfigError([f"https_address: {e}"]) from None
        StreamServerEndpointService(endpoint, site).setServiceParent(service)
        reloads.insert(0, ("the TLS certificate", tls.reload))
    service.addService(ReloadOnHangup(reactor, reloads))


def _metrics_listeners(config: Config) -> list[str]:
    """The endpoint descriptions metrics are served on: ``metrics_address`` as it is, and
    ``metrics_secure_address`` as an ssl: endpoint with the metrics certificate and key."""
    listeners: dict[str, str] = {}
    problems = []
    if config.metrics_address:
        try:
            listeners["metrics_address"] = listen_description(config.metrics_address)
        except ValueError as e:
            problems.append(f"metrics_address: {e}")
    if config.metrics_secure_address:
        if not (config.metrics_tls_cert_file and config.metrics_tls_key_file):
            problems.append(
                "metrics_secure_address: set metrics_tls_cert_file and metrics_tls_key_file too"
            )
        else:
            try:
                listeners["metrics_secure_address"] = _tls_description(
                    listen_description(config.metrics_secure_address),
                    config.metrics_tls_cert_file,
                    config.metrics_tls_key_file,
                )
            except ValueError as e:
                problems.append(f"metrics_secure_address: {e}")
    for key, description in listeners.items():
        # As for http_address: a missing or bad certificate file is one line naming it.
        problem = endpoint_problem(description)
        if problem is not None:
            problems.append(f"{key}: {problem}")
    if problems:
        raise ConfigError(problems)
    return list(listeners.values())


def _tls_description(plain: str, cert_file: str, key_file: str) -> str:
    """``tcp:PORT[:interface=H]`` (or tcp6:) as ``ssl:PORT[:interface=H]`` with the files."""
    kind, _, rest = plain.partition(":")
    if kind not in ("tcp", "tcp6"):
        raise ValueError("give host:port (the TLS listener is built from it)")
    key, cert = escape_endpoint_field(key_file), escape_endpoint_field(cert_file)
    return f"ssl:{rest}:privateKey={key}:certKey={cert}"


def _excluded_paths(config: Config) -> list[str]:
    paths = list(config.exclude_logging_paths)
    if config.silence_ping_logging:
        paths += [config.ping_path, config.ready_path]
    return paths


class _DemoSite(Site):
    """The demo provider and echo app: no access log of their own (the provider logs what
    it issues; the query strings it would log carry login state)."""

    noisy = False

    def __init__(self, resource: Any) -> None:
        Site.__init__(self, resource)

    def log(self, request: Any) -> None:
        pass


def _add_demo(service: MultiService, config: Config, reactor: Any) -> None:
    from oauthgate.testing.echo import EchoResource
    from oauthgate.testing.fakeidp import FakeIdP

    idp = FakeIdP(
        config.oidc_issuer_url.rstrip("/"),
        reactor,
        clients={config.client_id: config.client_secret},
    )
    idp_site = _DemoSite(idp.resource())
    echo_site = _DemoSite(EchoResource())
    strports.service(
        f"tcp:{DEMO_IDP_PORT}:interface=127.0.0.1", idp_site, reactor=reactor
    ).setServiceParent(service)
    strports.service(
        f"tcp:{DEMO_UPSTREAM_PORT}:interface=127.0.0.1", echo_site, reactor=reactor
    ).setServiceParent(service)
    log.info(
        "Demo mode: open http://127.0.0.1:4180/ (identity provider on {idp}, echo upstream on "
        "{echo}). Never use --demo in production.",
        idp=config.oidc_issuer_url,
        echo=f"http://127.0.0.1:{DEMO_UPSTREAM_PORT}/",
    )
